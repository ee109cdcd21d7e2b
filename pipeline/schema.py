"""Frozen dataclasses to JSON and back, by their fields: the one mapping every saved result uses
(``pipeline.results``), so a type and its file cannot drift apart.

A field is saved under its name, or the name ``saved(key=...)`` gives it; ``saved(inline=True)``
puts a nested dataclass's keys beside its parent's; ``saved(omitted=True)`` leaves out a field that
is None (absent, it reads back as None). A type may add keys computed from its fields for readers
of the file (``derived()``: a throughput, a coverage); they are not read back. Reading checks every
value against its field's type (int, float, str, bool, None, unions of them, lists, tuples, dicts
and dataclasses): a missing key or a wrong type is a ``Malformed`` naming where it is.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")


class Malformed(ValueError):
    """A saved value that is not what its type holds; the message names where (``runs[0][1].batch``)."""


def saved(*, key: str | None = None, inline: bool = False, omitted: bool = False, **kwargs: Any) -> Any:
    """A dataclass field saved under ``key`` (else its name), its keys inline in the parent's (a
    nested dataclass), or left out when None (``omitted``; such a field defaults to None)."""
    if omitted:
        kwargs.setdefault("default", None)
    return dataclasses.field(metadata={"key": key, "inline": inline, "omitted": omitted}, **kwargs)


def encode(value: Any) -> Any:
    """``value`` as JSON: a dataclass as an object of its fields (and its ``derived()`` keys), tuples
    as lists, dict keys as strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        found: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if item is None and f.metadata.get("omitted"):
                continue
            if f.metadata.get("inline"):
                found.update(encode(item))
            else:
                found[_key(f)] = encode(item)
        derived = getattr(value, "derived", None)
        return {**found, **encode(derived())} if derived is not None else found
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    return value


def decode(kind: type[T], raw: Any, where: str = "") -> T:
    """``raw`` (parsed JSON) as ``kind``; a ``Malformed`` naming where it is not. Keys the type does
    not hold (derived ones) are ignored."""
    return _decode(kind, raw, where)


def _decode(kind: Any, raw: Any, where: str) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if dataclasses.is_dataclass(kind):
        return _dataclass(kind, raw, where)
    if origin in (typing.Union, types.UnionType):
        if raw is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # X | None: what X says is wrong
            return _decode(options[0], raw, where)
        for option in options:
            try:
                return _decode(option, raw, where)
            except Malformed:
                continue
        raise Malformed(_at(where, f"{_kind(raw)}, expected {_name(kind)}"))
    if origin in (list, tuple) and isinstance(raw, list):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(raw) != len(args):
                raise Malformed(f"{where}: {len(raw)} items, expected {len(args)}")
            return tuple(_decode(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, raw, strict=True)))
        items = [_decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(raw)]
        return tuple(items) if origin is tuple else items
    if origin is dict and isinstance(raw, dict):
        return {_dict_key(args[0], k, where): _decode(args[1], v, f"{where}[{k!r}]") for k, v in raw.items()}
    if kind is float and isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if kind in (int, str, bool) and type(raw) is kind:
        return raw
    if kind is type(None) and raw is None:
        return None
    raise Malformed(_at(where, f"{_kind(raw)}, expected {_name(kind)}"))


def _dataclass(kind: Any, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise Malformed(_at(where, f"{_kind(raw)}, expected an object"))
    hints = _hints(kind)
    values = {}
    for f in dataclasses.fields(kind):
        if not f.init:
            continue
        inner = f"{where}.{_key(f)}" if where else _key(f)
        if f.metadata.get("inline"):
            nested = typing.get_args(hints[f.name]) or (hints[f.name],)
            nested_type = next(t for t in nested if t is not type(None))
            present = any(_key(g) in raw for g in dataclasses.fields(nested_type))
            values[f.name] = _dataclass(nested_type, raw, where) if present or not f.metadata["omitted"] else None
        elif _key(f) in raw:
            values[f.name] = _decode(hints[f.name], raw[_key(f)], inner)
        elif not f.metadata.get("omitted"):
            raise Malformed(_at(where, f"no key {_key(f)!r}"))
    try:
        return kind(**values)
    except ValueError as exc:  # the type's own check (__post_init__)
        raise Malformed(_at(where, str(exc))) from None


def _at(where: str, what: str) -> str:
    return f"{where}: {what}" if where else what


def _dict_key(kind: Any, key: str, where: str) -> Any:
    if kind is int:
        try:
            return int(key)
        except ValueError:
            raise Malformed(f"{where}: key {key!r}, expected an integer") from None
    return key


@cache
def _hints(kind: type) -> dict[str, Any]:
    return typing.get_type_hints(kind)


def _key(f: dataclasses.Field) -> str:
    return f.metadata.get("key") or f.name


def _kind(raw: Any) -> str:
    return "null" if raw is None else f"{raw!r}" if isinstance(raw, int | float | bool) else f"a {type(raw).__name__}"


def _name(kind: Any) -> str:
    return kind.__name__ if isinstance(kind, type) else str(kind).replace("typing.", "")
