"""Resolve ``"package.module:callable"`` or ``"path/to/file.py:callable"`` specs."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError, UserCodeError
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
                with user_code(f"importing {key} {target}"):
                    module = importlib.import_module(target)
            except UserCodeError as exc:
                missing = exc.__context__
                if isinstance(missing, ModuleNotFoundError) and f"{target}.".startswith(f"{missing.name}."):
                    raise PipelineError(f"{key} = {spec!r}: cannot import module {target!r} ({missing})") from None
                raise
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise PipelineError(f"{key} = {spec!r}: {target} has no callable named {attr!r}")
    return fn


@contextlib.contextmanager
def user_code(what: str) -> Iterator[None]:
    """Run the user's code: an exception it raises (not ours, not Ctrl-C) becomes one line naming the
    user's file and line where it was raised and ``what`` was being done, its traceback kept."""
    try:
        yield
    except (PipelineError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:
        raise UserCodeError(
            f"{_where(exc)}: {type(exc).__name__}: {_first_line(exc)} ({what})", _traceback(exc)
        ) from None


def _where(exc: BaseException) -> str:
    """file:line of the innermost frame in the user's code (not trtpipe's, not an installed library's)."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    ours = Path(__file__).resolve().parent
    libraries = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename).resolve() if not frame.filename.startswith("<") else None
        if (
            path is not None
            and not path.is_relative_to(ours)
            and not any(path.is_relative_to(lib) for lib in libraries)
        ):
            found = f"{frame.filename}:{frame.lineno}"
    return found or "your code"


def _first_line(exc: BaseException) -> str:
    text = exc.msg if isinstance(exc, SyntaxError) else str(exc)
    return (text.strip().splitlines() or [""])[0][:300]


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


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
    with user_code(f"importing {key} {path.name}"):
        code = compile(read_checked(path), str(path), "exec")  # the bytes hashed are the bytes run
        sys.modules[name] = module
        try:
            exec(code, module.__dict__)
        except BaseException:
            del sys.modules[name]  # half-run: the next import runs it again, as Python's own does
            raise
    return module
