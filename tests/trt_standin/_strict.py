"""Name checking for the stand-in: every attribute touched must exist in the real bindings.

``names/tensorrt-11.4.0.106.json`` lists, per class, what the real ``tensorrt`` module of
TensorRT 11.4 exposes (see ``extract_names.py``). A name it lacks raises ``NotInTensorRT``
(an ``AttributeError``, as the real bindings raise) and is recorded in ``REFUSED``: code that
probes with ``hasattr``/``try`` still sees what it would see on a GPU machine, and a test can
still tell that the name was touched. A name the real bindings have but the stand-in does not
implement raises ``StandInGap`` (not an ``AttributeError``, so no probe can swallow it).

Implementation state of stand-in objects lives in attributes named ``_si_*``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

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


def _standin_base(cls: type) -> type | None:
    """The stand-in class a (possibly user-derived) class descends from."""
    for klass in cls.__mro__:
        if "_si_name" in klass.__dict__:
            return klass
    return None


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
    """Metaclass: class-level access (``trt.BuilderFlag.FP16``, ``trt.Logger.WARNING``) is checked too."""

    def __getattribute__(cls, name: str) -> Any:
        if name.startswith("_si_") or name in _OBJECT or name in ("__init__", "__new__", "__call__"):
            return type.__getattribute__(cls, name)
        base = _standin_base(cls)
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
        owner = _standin_base(cls)._si_name
        if real_attr(owner, name) is None:
            raise refuse(owner, name)
        CALLS[f"{owner}.{name}"] += 1
        try:
            return object.__getattribute__(self, name)
        except AttributeError:
            raise gap(owner, name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        cls = type(self)
        if name.startswith("_si_"):
            object.__setattr__(self, name, value)
            return
        owner = _standin_base(cls)._si_name
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
