"""Ctrl-C while a compiled extension initialises is held until its import is done.

numpy, onnx, ONNX Runtime and torch call back into Python while their native parts initialise, and a
KeyboardInterrupt raised there cannot unwind: the process then died by SIGINT (exit -2) or abort
(exit -6, "what(): KeyboardInterrupt") after saying "interrupted", or the import failed with
"initialization failed" / "cannot load module more than once". Inside ``imports_held()`` the first
import of each of them runs with Ctrl-C held, and a Ctrl-C that came meanwhile is raised once its
code has run.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import signal
import sys
import threading
from collections.abc import Iterator
from types import ModuleType

HELD = frozenset({"numpy", "onnx", "onnxruntime", "torch", "tensorrt"})
_depth = 0  # holds in progress: only the outermost one raises what it caught


@contextlib.contextmanager
def held() -> Iterator[None]:
    """A Ctrl-C during the block is raised at its end (in the main thread, the one signals reach)."""
    global _depth
    if _depth or threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


@contextlib.contextmanager
def imports_held(names: frozenset[str] | None = None) -> Iterator[None]:
    """While the block runs, the first import of each top-level package in ``names`` (``HELD``) is ``held``."""
    finder = _Finder(HELD if names is None else names)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds ``names`` through the other finders, and hands importlib their loader wrapped in ``held``."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.names:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = None if finder is self or find is None else find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _HeldLoader(spec.loader)
                return spec
        return None


class _HeldLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = module.__spec__.loader = self.loader  # the package sees its own loader
        with held():
            self.loader.exec_module(module)
