"""Argument checking for the stand-in: a call binds to one of the real method's signatures or fails.

``names/tensorrt-11.4.0.106.json`` keeps every signature pybind11 wrote into the real bindings'
docstrings, every overload included (``set_input_shape(self: IExecutionContext, name: str, shape:
tuple) -> bool``, then ``list``, then ``Dims``). A stand-in method is called only when its arguments
bind to one of them the way pybind11 binds them; otherwise it raises the ``TypeError`` pybind11
raises ("incompatible function arguments"), so code that would pass a Polygraphy ``Stream`` where
TensorRT wants its handle, or a bare int where it wants a shape, fails here as on a GPU machine.

What each annotation accepts follows pybind11's casters with conversions allowed (the pass that
decides whether a call succeeds): ``typing.SupportsInt`` any non-float with ``__index__`` or
``__int__``; ``bool`` True/False, None and anything with ``__bool__``; ``str`` str and bytes;
``tuple``/``list`` exactly those; ``Dims`` a Dims or any sequence of ints (TensorRT declares the
implicit conversion); ``collections.abc.Sequence[X]`` any sequence but str/bytes whose items are X;
``typing_extensions.Buffer`` anything with the buffer protocol; a ``void*`` (``CapsuleType``) None, a
capsule or a bound TensorRT object; a class or enum name an instance of it (or of a subclass, as the
names file lists bases). An annotation not modelled here accepts anything: the stand-in refuses only
what TensorRT certainly refuses.
"""

from __future__ import annotations

import collections.abc
from dataclasses import dataclass
from functools import cache
from typing import Any


@dataclass(frozen=True)
class Parameter:
    name: str
    annotation: str
    has_default: bool
    default_is_none: bool
    positional_only: bool


@dataclass(frozen=True)
class Signature:
    text: str
    parameters: tuple[Parameter, ...]  # ``self`` excluded
    variadic: bool  # *args or **kwargs: anything binds


def _split(inside: str) -> list[str]:
    """Top-level comma-separated parts: brackets and ``<Enum.MEMBER: 0>`` defaults hold commas of their own."""
    parts, depth, current = [], 0, ""
    for ch in inside:
        if ch in "[(<":
            depth += 1
        elif ch in "])>":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current.strip())
    return parts


@cache
def parse(text: str) -> Signature:
    inside = text[text.index("(") + 1 : text.rindex(") ->") if ") ->" in text else text.rindex(")")]
    parts = _split(inside)
    slash = parts.index("/") if "/" in parts else -1
    parameters, variadic = [], False
    for index, part in enumerate(parts):
        if part in ("/", "*"):
            continue
        if part.startswith("*"):
            variadic = True
            continue
        head, _, default = part.partition("=")
        name, _, annotation = head.partition(":")
        name = name.strip()
        if index == 0 and name == "self":
            continue
        parameters.append(
            Parameter(
                name,
                annotation.strip(),
                bool(default.strip()),
                default.strip() == "None",
                index < slash or name.startswith("arg") and name[3:].isdigit(),  # pybind11's unnamed arguments
            )
        )
    return Signature(text, tuple(parameters), variadic)


def binds(signature: Signature, args: tuple, kwargs: dict, classes: dict[str, dict]) -> bool:
    """Do these arguments bind to ``signature`` as pybind11 would bind them?"""
    if signature.variadic:
        return True
    params = signature.parameters
    if len(args) > len(params):
        return False
    bound = dict(zip((p.name for p in params), args, strict=False))
    for key, value in kwargs.items():
        match = next((p for p in params if p.name == key and not p.positional_only), None)
        if match is None or key in bound:
            return False
        bound[key] = value
    for p in params:
        if p.name not in bound:
            if not p.has_default:
                return False
            continue
        value = bound[p.name]
        if not (value is None and p.default_is_none) and not accepts(p.annotation, value, classes):
            return False
    return True


def incompatible(owner: str, name: str, signatures: list[str], args: tuple, kwargs: dict) -> TypeError:
    """The TypeError pybind11 raises when no overload binds."""
    listed = "\n".join(f"    {i}. {s[s.index('(') :]}" for i, s in enumerate(signatures, 1))
    invoked = ", ".join([*(_short(a) for a in args), *(f"{k}={_short(v)}" for k, v in kwargs.items())])
    return TypeError(
        f"{name}(): incompatible function arguments. The following argument types are supported:\n"
        f"{listed}\n\nInvoked with: {invoked}"
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_standin(value: Any) -> bool:
    from tests.trt_standin._strict import Strict

    return isinstance(value, Strict)


def _real_names(value: Any, classes: dict[str, dict]) -> set[str]:
    """The real class names a stand-in object answers to: its own and its bases' (per the names file)."""
    from tests.trt_standin._strict import standin_class

    base = standin_class(type(value))
    if base is None:
        return set()
    own = type.__getattribute__(base, "_si_name")
    return {own, *classes.get(own, {}).get("bases", ())}


def _is_int(value: Any) -> bool:
    return not isinstance(value, float) and (hasattr(value, "__index__") or hasattr(value, "__int__"))


def _is_sequence(value: Any) -> bool:
    if isinstance(value, str | bytes | bytearray):
        return False
    return isinstance(value, collections.abc.Sequence) or (
        hasattr(type(value), "__getitem__") and hasattr(type(value), "__len__") and not isinstance(value, dict)
    )


def _has_buffer(value: Any) -> bool:
    try:
        memoryview(value)
    except TypeError:
        return False
    return True


def accepts(annotation: str, value: Any, classes: dict[str, dict]) -> bool:
    a = annotation.replace("nvinfer1::", "")
    if a in ("typing.SupportsInt", "int"):
        return _is_int(value)
    if a in ("typing.SupportsFloat", "float"):
        return isinstance(value, int | float) or hasattr(value, "__float__") or hasattr(value, "__index__")
    if a == "bool":
        return value is None or hasattr(type(value), "__bool__")
    if a == "str":
        return isinstance(value, str | bytes | bytearray)
    if a in ("tuple", "list", "slice"):
        return isinstance(value, {"tuple": tuple, "list": list, "slice": slice}[a])
    if a in ("object", "typing.Any"):
        return True
    if a == "typing_extensions.Buffer":
        return _has_buffer(value)
    if a == "typing_extensions.CapsuleType":  # a void*: None, a capsule or any bound TensorRT object
        return value is None or type(value).__name__ == "PyCapsule" or _is_standin(value)
    if a.startswith("collections.abc.Sequence[") and a.endswith("]"):
        inner = a[len("collections.abc.Sequence[") : -1]
        return _is_sequence(value) and all(accepts(inner, item, classes) for item in value)
    if a in ("Dims", "Dims2", "Dims3", "Dims4", "DimsHW"):  # or any sequence of ints, converted implicitly
        return (_is_standin(value) and a in _real_names(value, classes)) or (
            _is_sequence(value) and all(_is_int(v) for v in value)
        )
    if a in classes:
        return _is_standin(value) and a in _real_names(value, classes)
    return True  # not modelled: only what TensorRT certainly refuses is refused
