"""Name and call checking for the stand-in: every attribute touched must exist in the real bindings,
and every call must bind to one of the real signatures.

``names/tensorrt-11.4.0.106.json`` lists, per class, what the real ``tensorrt`` module of
TensorRT 11.4 exposes (see ``extract_names.py``). A name it lacks raises ``NotInTensorRT``
(an ``AttributeError``, as the real bindings raise) and is recorded in ``REFUSED``: code that
probes with ``hasattr``/``try`` still sees what it would see on a GPU machine, and a test can
still tell that the name was touched. A name the real bindings have but the stand-in does not
implement raises ``StandInGap`` (not an ``AttributeError``, so no probe can swallow it).

A method the real bindings have is called only when its arguments bind to one of the signatures
(every overload) the names file keeps from the wheel's docstrings; else it raises the ``TypeError``
pybind11 raises (``_signatures.py``). So do constructors called from outside the stand-in: a class
the real bindings give no constructor refuses to be made ("No constructor defined!").

Implementation state of stand-in objects lives in attributes named ``_si_*``.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tests.trt_standin import _signatures

NAMES_FILE = Path(__file__).parent / "names" / "tensorrt-11.4.0.106.json"
NAMES: dict[str, Any] = json.loads(NAMES_FILE.read_text())
VERSION: str = NAMES["version"]
CLASSES: dict[str, dict] = NAMES["classes"]
MODULE: dict[str, dict] = NAMES["module"]

# Names every Python object has; checking them would only break the interpreter's own machinery.
_OBJECT = set(dir(object)) | {
    "__dict__",
    "__class__",
    "__module__",
    "__weakref__",
    "__qualname__",
    "__name__",
    "__mro__",
    "__bases__",
    "__orig_bases__",
    "__annotations__",
    "__slots__",
    "__abstractmethods__",
    "__parameters__",
    "__wrapped__",
}

REFUSED: list[str] = []  # "Class.name" of every refused access, in order
CALLS: Counter[str] = Counter()  # "Class.name" of every allowed access from outside the stand-in
STATE = {"active": False}


class NotInTensorRT(AttributeError):
    """The real TensorRT 11 bindings have no such name."""


class StandInGap(NotImplementedError):
    """The real bindings have this name, the stand-in does not implement it: extend the stand-in."""


class StandInInactive(RuntimeError):
    """A stand-in object was used outside ``tests.trt_standin.standin()``."""


def refuse(owner: str, name: str) -> NotInTensorRT:
    REFUSED.append(f"{owner}.{name}")
    return NotInTensorRT(f"{owner}.{name}: not in the TensorRT {VERSION} Python bindings")


def gap(owner: str, name: str) -> StandInGap:
    return StandInGap(
        f"{owner}.{name} exists in TensorRT {VERSION} but the stand-in does not implement it: extend tests/trt_standin"
    )


def check_active() -> None:
    if not STATE["active"]:
        raise StandInInactive("TensorRT stand-in used outside tests.trt_standin.standin()")


def standin_class(cls: type) -> type | None:
    """The stand-in class a (possibly user-derived) class descends from."""
    for klass in cls.__mro__:
        if "_si_name" in klass.__dict__:
            return klass
    return None


def _from_standin(depth: int) -> bool:
    """Is the caller ``depth`` frames up the stand-in itself (which makes objects TensorRT hands out)?"""
    return sys._getframe(depth + 1).f_globals.get("__name__", "").startswith("tests.trt_standin")


def checked(owner: str, name: str, signatures: list[str], function: Any) -> Any:
    """``function`` (a bound stand-in method or a module function), called only with arguments that bind
    to one of the real ``signatures``."""
    if not signatures:  # bound with a custom docstring: nothing to check against
        return function

    def call(*args: Any, **kwargs: Any) -> Any:
        if not any(_signatures.binds(_signatures.parse(s), args, kwargs, CLASSES) for s in signatures):
            REFUSED.append(f"{owner}.{name}()")
            raise _signatures.incompatible(owner, name, signatures, args, kwargs)
        return function(*args, **kwargs)

    call.__name__ = name
    call.__wrapped__ = function
    return call


def _user_defined(cls: type, name: str) -> bool:
    """Defined by user code subclassing a stand-in class (Polygraphy's logger, output allocator)."""
    for klass in cls.__mro__:
        if "_si_name" in klass.__dict__:
            return False
        if name in klass.__dict__:
            return True
    return False


def real_attr(owner: str, name: str) -> dict | None:
    return CLASSES[owner]["attrs"].get(name)


class StrictType(type):
    """Metaclass: class-level access (``trt.BuilderFlag.FP16``, ``trt.Logger.WARNING``) is checked too,
    and so is a constructor called from outside the stand-in."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        own = type.__getattribute__(cls, "__dict__").get("_si_name")
        if own is not None and own in CLASSES and not _from_standin(1):
            check_active()
            signatures = CLASSES[own].get("special", {}).get("__init__")
            if signatures is None:
                raise TypeError(f"tensorrt.{own}: No constructor defined!")
            checked(own, "__init__", signatures, lambda *a, **k: None)(*args, **kwargs)
        return super().__call__(*args, **kwargs)

    def __getattribute__(cls, name: str) -> Any:
        if name.startswith("_si_") or name in _OBJECT or name in ("__init__", "__new__", "__call__"):
            return type.__getattribute__(cls, name)
        base = standin_class(cls)
        if base is None or _user_defined(cls, name):
            return type.__getattribute__(cls, name)
        check_active()
        owner = type.__getattribute__(base, "_si_name")
        if real_attr(owner, name) is None:
            raise refuse(owner, name)
        CALLS[f"{owner}.{name}"] += 1
        try:
            return type.__getattribute__(cls, name)
        except AttributeError:
            raise gap(owner, name) from None


class Strict(metaclass=StrictType):
    """Base of every stand-in class; ``_si_name`` is the real class name in the names file."""

    _si_name = "pybind11_object"

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("_si_") or name in _OBJECT:
            return object.__getattribute__(self, name)
        cls = type(self)
        if _user_defined(cls, name) or name in object.__getattribute__(self, "__dict__"):
            return object.__getattribute__(self, name)
        check_active()
        owner = standin_class(cls)._si_name
        if real_attr(owner, name) is None:
            raise refuse(owner, name)
        CALLS[f"{owner}.{name}"] += 1
        try:
            value = object.__getattribute__(self, name)
        except AttributeError:
            raise gap(owner, name) from None
        real = real_attr(owner, name)
        if real["kind"] == "method" and callable(value) and not _from_standin(1):
            return checked(owner, name, real["signatures"], value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        cls = type(self)
        if name.startswith("_si_"):
            object.__setattr__(self, name, value)
            return
        owner = standin_class(cls)._si_name
        real = real_attr(owner, name)
        if real is None:
            if cls.__dict__.get("_si_name") is None:  # a user subclass keeps its own state
                object.__setattr__(self, name, value)
                return
            raise refuse(owner, name)
        check_active()
        if real["kind"] != "property" or not real["writable"]:
            raise AttributeError(f"{owner}.{name} is read-only in TensorRT {VERSION}")
        object.__setattr__(self, name, value)


def class_names(owner: str) -> set[str]:
    return set(CLASSES[owner]["attrs"])
