"""Resolve ``"package.module:callable"`` or ``"path/to/file.py:callable"`` specs."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.fileio import read_checked


def load_callable(spec: str, base: Path, key: str) -> Callable[..., Any]:
    """Import the callable named by ``spec``; file paths resolve relative to ``base``.

    ``key`` names the config key in error messages.
    """
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise PipelineError(f"{key} = {spec!r}: expected 'package.module:callable' or 'path/to/file.py:callable'")
    with _no_bytecode():  # nothing written beside the user's files (a __pycache__ folder)
        if target.endswith(".py"):
            module = _module_from_file(target, base, key)
        else:
            try:
                module = importlib.import_module(target)
            except ModuleNotFoundError as exc:
                raise PipelineError(f"{key} = {spec!r}: cannot import module {target!r} ({exc})") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise PipelineError(f"{key} = {spec!r}: {target} has no callable named {attr!r}")
    return fn


@contextlib.contextmanager
def _no_bytecode() -> Iterator[None]:
    before = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = before


def source_file(spec: str, base: Path) -> Path | None:
    """The file defining the callable ``spec`` names (a module's file or ``file.py``), found without
    running it; None where there is none (a built-in, a namespace package, a bad spec)."""
    target, sep, _ = spec.rpartition(":")
    if not sep or not target:
        return None
    if target.endswith(".py"):
        path = Path(target).expanduser()
        path = (path if path.is_absolute() else base / path).resolve()
        return path if path.is_file() else None
    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError):
        return None
    return Path(found.origin) if found is not None and found.origin and Path(found.origin).is_file() else None


def _module_from_file(target: str, base: Path, key: str) -> Any:
    path = Path(target).expanduser()
    path = path if path.is_absolute() else (base / path)
    path = path.resolve()
    if not path.is_file():
        raise PipelineError(f"{key}: file {path} does not exist")
    name = f"_trtpipe_user_{abs(hash(str(path)))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PipelineError(f"{key}: cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    code = compile(read_checked(path), str(path), "exec")  # the bytes hashed are the bytes run
    sys.modules[name] = module
    exec(code, module.__dict__)  # user errors inside the file keep their traceback
    return module
