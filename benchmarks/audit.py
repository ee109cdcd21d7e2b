"""Every path a Python process writes, logged by an audit hook: what the writes-stay-inside test and
the fault catalogue (``benchmarks/catalogue.py``) judge.

``audited(env, folder)`` returns an environment whose Python processes load a ``sitecustomize`` from
``folder`` that logs each path Python opens for writing, creates, renames, replaces or removes (what
ONNX Runtime's quantizer, onnx, Polygraphy and torch do through Python included; C++ writes are not
seen). ``written_outside`` lists the logged paths outside the folders a run may write to.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path

# A sitecustomize that runs before the pipeline: the log file is opened before the hook exists.
AUDIT_HOOK = textwrap.dedent(
    """
    import os, sys

    _log = open(os.environ["WRITES_LOG"], "a", buffering=1)
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    _PATH_EVENTS = {"os.mkdir": 1, "os.remove": 1, "os.rmdir": 1, "os.truncate": 1, "shutil.rmtree": 1}

    def _note(path):
        if isinstance(path, (str, bytes, os.PathLike)):
            path = os.fsdecode(path)
            _log.write(os.path.abspath(path) + "\\n")

    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & _WRITE:
                _note(path)
        elif event in ("os.rename", "os.replace"):
            if args[2] is None and args[3] is None:
                _note(args[0]), _note(args[1])
        elif event in _PATH_EVENTS and args[-1] is None:  # relative to a folder fd: its rmtree was logged
            _note(args[0])

    sys.addaudithook(_hook)
    """
)
REPO = Path(__file__).resolve().parent.parent


def audited(env: dict[str, str], folder: Path) -> dict[str, str]:
    """``env`` for a ``python -m pipeline`` child of this checkout whose writes are logged to
    ``folder/writes.log`` (the hook lives in ``folder`` too). Bytecode is written as on a user's
    machine: a __pycache__ beside the user's model or data file is a write outside the project's
    folders; the interpreter's own caches of trtpipe and installed packages are left out
    (``written_outside``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(AUDIT_HOOK)
    return {
        **env,
        "PYTHONPATH": os.pathsep.join([str(folder), str(REPO)]),
        "WRITES_LOG": str(log_of(folder)),
    }


def log_of(folder: Path) -> Path:
    return folder / "writes.log"


def written(folder: Path) -> set[Path]:
    """Every path the audited processes of ``folder`` wrote (none yet: an empty set)."""
    log = log_of(folder)
    return {Path(line) for line in log.read_text().splitlines()} if log.is_file() else set()


def written_outside(folder: Path, roots: Iterable[Path]) -> list[str]:
    """The paths written outside ``roots`` (the terminal's /dev/ files aside)."""
    roots = [Path(r).absolute() for r in roots]
    found = (p for p in written(folder) if not any(p.is_relative_to(r) for r in roots))
    return sorted(str(p) for p in found if not str(p).startswith("/dev/") and not _interpreter_cache(p))


def _interpreter_cache(path: Path) -> bool:
    """Bytecode Python caches for trtpipe's own source or an installed package: not trtpipe's write."""
    if "__pycache__" not in path.parts:
        return False
    owners = [REPO / "pipeline", REPO / "benchmarks", Path(sys.prefix), Path(sys.base_prefix)]
    return any(path.is_relative_to(o) for o in owners)
