"""Atomic writes and content hashes.

Every output goes to a temporary file in the destination folder and is renamed
into place, so an interrupted run never leaves a file that looks complete. Inside
``after_record()`` the renames wait: a stage writes its record (the sha256 of each output)
first and then renames its outputs, so no output ever stands without a record
that vouches for it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import IO, Any

from pipeline.errors import PipelineError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def temp_prefix(name: str) -> str:
    """A hidden temporary name beside ``name``, tagged with this process's id: ``sweep`` removes it
    once its writer is gone (killed), never while it runs."""
    return f".{name}.trtpipe-{os.getpid()}."


_WRITER = re.compile(r"\.trtpipe-(\d+)\.")


def sweep(folder: Path) -> list[Path]:
    """Remove the temporary files and folders in ``folder`` whose writing process has died."""
    gone = []
    for entry in folder.iterdir() if folder.is_dir() else ():
        if entry.name.startswith(".") and _WRITER.search(entry.name) and not writer_alive(entry.name):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            gone.append(entry)
    return gone


def keep_temporaries_in(folder: Path) -> Callable[[], None]:
    """Point this process's temporary files (ours, and those ONNX Runtime's quantizer, onnx and
    Polygraphy make through ``tempfile``) at a folder of its own inside ``folder``: a run may write
    only inside its output folders. Returns what removes it and points them back; a killed run's
    folder is swept by the next run (its name carries this process's id)."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # removed again if left empty
    with disk_full_is_user_error(folder):
        folder.mkdir(parents=True, exist_ok=True)
        sweep(folder)
        scratch = Path(tempfile.mkdtemp(dir=folder, prefix=temp_prefix("scratch")))
    before = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = str(scratch)
    os.environ["TMPDIR"] = str(scratch)  # for any child process

    def restore() -> None:
        tempfile.tempdir = before[0]
        if before[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = before[1]
        shutil.rmtree(scratch, ignore_errors=True)
        for created in made:  # innermost first: a command that wrote nothing leaves no engines/ behind
            with contextlib.suppress(OSError):  # not empty: something was written there, and stays
                created.rmdir()

    return restore


def writer_alive(name: str) -> bool:
    """Whether the process that named ``name`` with ``temp_prefix`` still runs (False without a tag)."""
    found = _WRITER.search(name)
    return found is not None and _alive(int(found[1]))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


# While a stage runs: the files it reads whole (weights, the user's modules), by the sha256 its record
# will name for them, taken when it started (``records.begin``).
_EXPECTED: ContextVar[dict[Path, tuple[str, str]] | None] = ContextVar("expected", default=None)


@contextlib.contextmanager
def expecting(files: dict[Path, str], reader: str) -> Iterator[None]:
    """Inside the block ``read_checked`` refuses any of ``files`` whose bytes are not the sha256 given
    (``reader`` names who expects them: "trtpipe export")."""
    token = _EXPECTED.set({Path(p).resolve(): (sha, reader) for p, sha in files.items()})
    try:
        yield
    finally:
        _EXPECTED.reset(token)


def read_checked(path: str | os.PathLike[str]) -> bytes:
    """A file's bytes, read once: the very bytes that are hashed are the ones used. Where the running
    stage expects the file, other bytes than it recorded when it started are refused in one line: a
    record must name the bytes its stage read (a checkpoint saved anew while export runs)."""
    data = Path(path).read_bytes()
    expected = (_EXPECTED.get() or {}).get(Path(path).resolve())
    if expected is not None and hashlib.sha256(data).hexdigest() != expected[0]:
        raise PipelineError(
            f"{path}: changed after {expected[1]} started, before it read the file; nothing was recorded: "
            f"re-run {expected[1]} once the file is written"
        )
    return data


# Inside ``after_record()``: final path -> the complete temporary file waiting to be renamed onto it.
_WAITING: ContextVar[dict[Path, Path] | None] = ContextVar("waiting", default=None)


@contextlib.contextmanager
def after_record() -> Iterator[None]:
    """Files finished in the block keep their temporary names until ``place_held``, which the
    stage's record calls once it is written. A failed block's files are removed, so the outputs of
    the run before stay as they were; a block that ends with files still waiting is a bug."""
    waiting: dict[Path, Path] = {}
    token = _WAITING.set(waiting)
    try:
        yield
    finally:
        _WAITING.reset(token)
        for tmp in waiting.values():
            tmp.unlink(missing_ok=True)
    if waiting:
        raise RuntimeError(f"{', '.join(map(str, waiting))}: written but never placed (no record called place_held)")


@contextlib.contextmanager
def at_once() -> Iterator[None]:
    """Files finished in the block take their names at once, as outside ``after_record()``:
    scratch files (a staging folder's, a temporary folder's) that the block reads back."""
    token = _WAITING.set(None)
    try:
        yield
    finally:
        _WAITING.reset(token)


def place_held(record: Path) -> None:
    """Rename the held files onto their final paths, ``record`` (the record naming them) before the
    rest; outside ``after_record()`` there are none."""
    waiting = _WAITING.get() or {}
    for dest in sorted(waiting, key=lambda d: d != _key(record)):
        os.replace(waiting[dest], dest)
        del waiting[dest]  # only once renamed: a failed rename leaves its temporary to the block's cleanup


def newest(path: str | os.PathLike[str]) -> Path:
    """Where ``path``'s newest bytes are: its held temporary file inside ``after_record()``, else ``path``."""
    waiting = _WAITING.get()
    return waiting.get(_key(path), Path(path)) if waiting else Path(path)


def settle(tmp: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Rename a complete temporary file onto ``dest``, or inside ``after_record()`` hold it beside ``dest``."""
    waiting = _WAITING.get()
    if waiting is None:
        os.replace(tmp, dest)
        return
    if Path(tmp).parent.resolve() != Path(dest).parent.resolve():  # a rename must not cross folders later
        beside = _temporary_beside(Path(dest))
        os.replace(tmp, beside)
        tmp = beside
    previous = waiting.pop(_key(dest), None)
    if previous is not None:
        previous.unlink(missing_ok=True)
    waiting[_key(dest)] = Path(tmp)


def discard_unless_held(tmp: Path, dest: Path) -> None:
    """Remove a temporary file that failed or is not waiting to become ``dest``."""
    if newest(dest) != tmp:
        tmp.unlink(missing_ok=True)


def _temporary_beside(dest: Path, suffix: str = "") -> Path:
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=temp_prefix(dest.name), suffix=suffix + ".tmp")
    os.close(fd)
    return Path(tmp)


def _key(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.abspath(path))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success (inside
    ``after_record()``, at ``place_held``)."""
    dest = Path(path)
    with disk_full_is_user_error(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temporary_beside(dest, suffix)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
        try:
            yield tmp
            settle(tmp, dest)
        finally:
            discard_unless_held(tmp, dest)


# No space (ENOSPC), a quota (EDQUOT), a file size limit (EFBIG): the user frees space and re-runs.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def disk_full_is_user_error(dest: Path) -> Iterator[None]:
    """A write to ``dest`` that runs out of space is one line naming the file, not a traceback."""
    try:
        yield
    except OSError as exc:
        error = disk_full(exc, dest)
        if error is None:
            raise
        raise error from None


def disk_full(exc: OSError, dest: Path | None = None) -> PipelineError | None:
    """The one-line error for a write that ran out of space, naming ``dest``, else the file the error
    names, else the folder holding this process's temporary folder (a library's temporary file);
    None for any other error."""
    if exc.errno not in _DISK_FULL:
        return None
    where = Path(dest or exc.filename or tempfile.gettempdir())
    return PipelineError(f"{outside_temporaries(where)}: disk full ({exc.strerror}); free space there and re-run")


# Causes a user fixes where the path is (a read-only folder, a file where a folder should be, a name
# too long for the file system): one line naming the path, never a traceback.
_PATH_CAUSES = {
    errno.EACCES: "permission denied",
    errno.EPERM: "not permitted",
    errno.EROFS: "a read-only file system",
    errno.ENOTDIR: "a file where a folder is needed",
    errno.EISDIR: "a folder where a file is needed",
    errno.ENAMETOOLONG: "a name too long for the file system",
    errno.EEXIST: "exists and is in the way",
    errno.ELOOP: "a loop of symbolic links",
}


def path_error(exc: OSError) -> PipelineError | None:
    """The one-line error for an OSError on a named path whose cause the user fixes there (a full
    disk, a read-only folder, a file in a folder's place, a name too long); None for any other."""
    full = disk_full(exc)
    if full is not None:
        return full
    if exc.errno not in _PATH_CAUSES or not exc.filename:
        return None
    where = outside_temporaries(Path(os.fsdecode(exc.filename)))
    return PipelineError(f"{where}: cannot be written or read here: {_PATH_CAUSES[exc.errno]} ({exc.strerror})")


def outside_temporaries(path: Path) -> Path:
    """``path`` without its temporary folders (``.NAME.trtpipe-PID.…``): a temporary's final name, or
    the output folder this process's temporary folder lives in."""
    return Path(*(part for part in Path(path).parts if not _WRITER.search(part)))


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    with atomic_open(path) as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def read_json(path: str | os.PathLike[str], stage: str | None = None) -> Any:
    """A saved result. Missing: ``None`` when ``stage`` is None, else an error naming the stage to run."""
    path = Path(path)
    if not path.is_file():
        if stage is None:
            return None
        raise PipelineError(f"{path}: no saved {stage}; run trtpipe {stage} first")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:  # truncated by a kill or a full disk
        rerun = f"re-run trtpipe {stage}" if stage else "re-run the stage that writes it"
        raise PipelineError(f"{path}: not readable JSON ({exc}); {rerun}") from None


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(newest(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
