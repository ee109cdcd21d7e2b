"""Real input data: calibration batches and held-out batches, validated as they stream.

A calibration source is either a folder of ``.npz`` files (any number of rows
per file, keys = input names, loaded without pickle) or a ``module:callable`` /
``file.py:callable`` called as ``fn(samples=, batch_size=, **args)`` that yields
feed dicts. An evaluation source is a callable ``fn(batch_size=, **args)`` that
yields ``(feed_dict, labels)``. Every batch is checked against the config's
inputs; nothing ever falls back to random data.
"""

from __future__ import annotations

import hashlib
import inspect
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from pipeline.callables import load_callable, source_file, user_code
from pipeline.config import BATCH_AXIS, Config, Shape, TensorSpec, shape_label
from pipeline.console import info
from pipeline.errors import PipelineError
from pipeline.fileio import sha256_file

Feed = dict[str, np.ndarray]


def validate_feed(feed: object, inputs: tuple[TensorSpec, ...], where: str) -> Feed:
    """Check names, dtypes, static dims, one shared batch size and finiteness."""
    if not isinstance(feed, dict):
        raise PipelineError(f"{where}: expected a dict of input name -> array, got {type(feed).__name__}")
    expected = {spec.name for spec in inputs}
    extra = set(feed) - expected
    if extra:
        raise PipelineError(
            f"{where}: unexpected tensor(s) {sorted(extra)}; the config's inputs are {sorted(expected)}"
        )
    batch_sizes = set()
    out: Feed = {}
    for spec in inputs:
        if spec.name not in feed:
            raise PipelineError(f"{where}: tensor {spec.name!r} is missing (keys: {sorted(feed)})")
        arr = np.asarray(feed[spec.name])
        if arr.dtype != np.dtype(spec.dtype):
            raise PipelineError(
                f"{where}: tensor {spec.name!r} has dtype {arr.dtype}, the config says {spec.dtype}; convert the data"
            )
        if arr.ndim != len(spec.shape):
            raise PipelineError(
                f"{where}: tensor {spec.name!r} has shape {list(arr.shape)}, expected rank {len(spec.shape)} "
                f"like {list(spec.shape)}"
            )
        for axis, (got, want) in enumerate(zip(arr.shape, spec.shape, strict=True)):
            if isinstance(want, int) and got != want:
                raise PipelineError(
                    f"{where}: tensor {spec.name!r} has shape {list(arr.shape)}, axis {axis} should be {want} "
                    f"(config shape {list(spec.shape)})"
                )
        if spec.batch_axis is not None:
            batch_sizes.add(arr.shape[spec.batch_axis])
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise PipelineError(f"{where}: tensor {spec.name!r} holds NaN or Inf values; clean the data")
        out[spec.name] = arr
    if len(batch_sizes) > 1:
        raise PipelineError(f"{where}: inputs disagree on the batch size ({sorted(batch_sizes)})")
    return out


def shape_of(feed: Feed, cfg: Config) -> dict[str, int]:
    """The size of each [[axes]] axis in ``feed`` (a validated batch: its inputs agree on them)."""
    found: dict[str, int] = {}
    for spec in cfg.inputs:
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, str) and dim != BATCH_AXIS:
                found.setdefault(dim, feed[spec.name].shape[axis])
    return {a.name: found[a.name] for a in cfg.axes if a.name in found}


def check_shape(feed: Feed, cfg: Config, where: str) -> Feed:
    """``feed`` once its inputs agree on each [[axes]] axis and each size is inside the axis' range:
    an engine built for the range takes no other."""
    ranges = {a.name: a for a in cfg.axes}
    seen: dict[str, tuple[str, int]] = {}
    for spec in cfg.inputs:
        for axis, dim in enumerate(spec.shape):
            if not isinstance(dim, str) or dim not in ranges:
                continue
            size = feed[spec.name].shape[axis]
            first = seen.setdefault(dim, (spec.name, size))
            if first[1] != size:
                raise PipelineError(
                    f"{where}: tensor {spec.name!r} has {dim} {size}, tensor {first[0]!r} has {dim} {first[1]}; "
                    f"the inputs of one batch share each axis"
                )
            r = ranges[dim]
            if not r.min <= size <= r.max:
                raise PipelineError(
                    f"{where}: tensor {spec.name!r} has {dim} {size}, outside its [[axes]] range [{r.min}, {r.max}] "
                    f"in {cfg.path}; widen the range or crop the data to it"
                )
    return feed


def batch_size_of(feed: Feed, cfg: Config) -> int:
    spec = cfg.inputs[0]
    return feed[spec.name].shape[spec.batch_axis] if spec.batch_axis is not None else 1


def calibration_batches(cfg: Config, samples: int | None = None) -> Iterator[Feed]:
    """Stream validated calibration batches of ``[calibration] batch_size`` until ``samples`` rows are produced.

    Every source is re-batched, so the configured batch size (what calibration's memory
    scales with) holds for a folder of .npz files of any size too.
    """
    section = cfg.calibration
    samples = section.samples if samples is None else samples
    source = cfg.resolve(section.source)
    key = "calibration.source"
    if source.is_dir():
        batches = _npz_batches(source, cfg, samples)
    elif ":" in section.source:
        fn = load_callable(section.source, cfg.root, key)
        kwargs = {"samples": samples, "batch_size": section.batch_size, **section.args}
        made = _guarded(_iterable(_call(fn, kwargs, key, section.source), key, section.source), key, section.source)
        batches = ((f"{key} {section.source!r} batch {i}", feed) for i, feed in enumerate(made))
    else:
        raise PipelineError(
            f"{cfg.path}: {key} = {section.source!r}: folder {source} does not exist "
            f"(or give 'module:callable' / 'file.py:callable')"
        )
    yield from rebatch(_first_rows(batches, cfg, samples), cfg, section.batch_size)


def _first_rows(batches: Iterator[tuple[str, object]], cfg: Config, samples: int) -> Iterator[Feed]:
    """Validated batches, the last one trimmed to exactly ``samples`` rows in all."""
    seen = 0
    for where, raw in batches:
        feed = check_shape(validate_feed(raw, cfg.inputs, where), cfg, where)
        n = batch_size_of(feed, cfg)
        if n == 0:  # endless empty batches would never reach ``samples``
            raise PipelineError(f"{where}: a batch without rows")
        if seen + n > samples:
            feed = slice_rows(feed, cfg, 0, samples - seen)
            n = samples - seen
        seen += n
        yield feed
        if seen >= samples:
            return
    section = cfg.calibration
    if seen == 0:
        raise PipelineError(f"{cfg.path}: calibration.source = {section.source!r} produced no calibration data")
    info(f"{cfg.name}: calibration.source {section.source!r} ran out after {seen} of the {samples} samples asked for")


def _npz_files(folder: Path, cfg: Config) -> list[Path]:
    """The folder's .npz files; a folder, FIFO or device of that name is refused before it is opened
    (a FIFO would block the read forever)."""
    files = sorted(folder.glob("*.npz"))
    odd = next((p for p in files if not p.is_file()), None)
    if odd is not None:
        raise PipelineError(f"{odd}: not a regular file (a folder, FIFO or device); a data folder holds .npz files")
    return files


def _npz_batches(folder: Path, cfg: Config, samples: int) -> Iterator[tuple[str, object]]:
    """Each file's arrays, at most the ``samples`` rows still needed: members are streamed row by row
    from the archive, their headers checked first, so a small file declaring (or inflating to) more
    rows than it holds, or than calibration uses, is never loaded whole."""
    files = _npz_files(folder, cfg)
    if not files:
        raise PipelineError(f"{folder}: no .npz files (calibration.source in {cfg.path})")
    left = samples
    for path in files:
        if left <= 0:
            return
        feed = read_npz(path, left)
        yield str(path), feed
        left -= max((len(v) for v in feed.values() if v.ndim), default=0)


def read_npz(path: Path, rows: int) -> Feed:
    """The arrays of an .npz file, each cut to its first ``rows`` rows, read without pickle."""
    try:
        with zipfile.ZipFile(path) as archive:
            return {
                info.filename.removesuffix(".npy"): _read_member(archive, info, rows, path)
                for info in archive.infolist()
                if info.filename.endswith(".npy")
            }
    except (OSError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise PipelineError(f"{path}: not a readable .npz file ({exc}); save plain arrays with np.savez") from None


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, rows: int, path: Path) -> np.ndarray:
    from numpy.lib import format as npy

    with archive.open(info) as stream:
        version = npy.read_magic(stream)
        # Version 1.0 headers, and 2.0 or 3.0 (a longer header, UTF-8 field names) read as 2.0.
        read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, fortran, dtype = read_header(stream, max_header_size=10_000)
        if dtype.hasobject:
            raise PipelineError(
                f"{path}: cannot read without pickle: {info.filename} holds Python objects, which trtpipe never "
                f"unpickles; save plain arrays with np.savez"
            )
        if fortran and len(shape) > 1:
            raise PipelineError(f"{path}: {info.filename} is in Fortran order; save it with np.ascontiguousarray")
        declared = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if declared > info.file_size:  # the zip records each member's size: a header cannot claim more
            raise PipelineError(
                f"{path}: {info.filename} declares shape {list(shape)} ({declared} bytes) but holds {info.file_size}"
            )
        take = min(rows, shape[0]) if shape else 1
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize if shape else dtype.itemsize
        data = stream.read(take * row_bytes)
        if len(data) != take * row_bytes:
            raise PipelineError(f"{path}: {info.filename} is cut short ({len(data)} of {take * row_bytes} bytes)")
        return np.frombuffer(data, dtype=dtype).reshape((take, *shape[1:]) if shape else ()).copy()


def source_fingerprint(cfg: Config, source: str | None = None) -> str | None:
    """sha256 of what a data source reads: a folder's .npz files (names and bytes), or the file
    defining the callable. The calibration cache and the stage records keep it, so new or edited
    data, or an edited callable, is seen as a change. ``source`` defaults to the calibration's."""
    source = cfg.calibration.source if source is None else source
    folder = cfg.resolve(source)
    if not folder.is_dir():
        path = source_file(source, cfg.root)
        return None if path is None else sha256_file(path)
    h = hashlib.sha256()
    for path in _npz_files(folder, cfg):
        h.update(f"{path.name}\0{sha256_file(path)}\n".encode())
    return h.hexdigest()


def heldout_batches(cfg: Config, batch_size: int) -> Iterator[tuple[Feed, np.ndarray | None]]:
    """Held-out batches with labels; calibration data (no labels) when no evaluator is configured."""
    if cfg.evaluation is None:
        rows = rebatch(calibration_batches(cfg), cfg, batch_size)
        yield from ((feed, None) for feed in rows)
        return
    key = "evaluation.source"
    fn = load_callable(cfg.evaluation.source, cfg.root, key)
    i, seen, most = -1, 0, cfg.evaluation.samples
    kwargs = {"batch_size": batch_size, **cfg.evaluation.args}
    made = _iterable(_call(fn, kwargs, key, cfg.evaluation.source), key, cfg.evaluation.source)
    for i, item in enumerate(_guarded(made, key, cfg.evaluation.source)):
        where = f"{key} {cfg.evaluation.source!r} batch {i}"
        if not (isinstance(item, tuple) and len(item) == 2):
            raise PipelineError(f"{where}: expected (feed_dict, labels) tuples")
        feed = check_shape(validate_feed(item[0], cfg.inputs, where), cfg, where)
        rows = batch_size_of(feed, cfg)
        if rows == 0:  # an endless stream of empty batches would never end
            raise PipelineError(f"{where}: a batch without rows")
        labels = _labels(item[1], rows, where)
        if seen + rows > most:  # an endless stream, or more than [evaluation] samples
            keep = most - seen
            feed, labels = slice_rows(feed, cfg, 0, keep), None if labels is None else labels[:keep]
        seen += batch_size_of(feed, cfg)
        yield feed, labels
        if seen >= most:
            info(f"{cfg.name}: read the first {most} held-out rows ([evaluation] samples); the rest is left")
            break
    if i < 0:  # an accuracy check over no data would pass having checked nothing
        raise PipelineError(f"{cfg.path}: {key} = {cfg.evaluation.source!r} yielded no batches")


def _call(fn, kwargs: dict, key: str, source: str) -> object:
    """``fn(**kwargs)``, once its signature takes them; what it raises is the user's code's (one line)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to read (a builtin): it is called as it is
        signature = None
    if signature is not None:
        try:
            signature.bind(**kwargs)
        except TypeError as exc:
            raise PipelineError(f"{key} = {source!r} cannot be called with {', '.join(kwargs)}: {exc}") from None
    with user_code(f"calling {key} {source!r}"):
        return fn(**kwargs)


def _guarded(batches: Iterable, key: str, source: str) -> Iterator:
    """``batches`` as the user's code yields them: what it raises midway is one line naming its line."""
    it = iter(batches)
    while True:
        with user_code(f"reading a batch from {key} {source!r}"):
            try:
                item = next(it)
            except StopIteration:
                return
        yield item


def _iterable(made: object, key: str, source: str) -> Iterable:
    if made is None or isinstance(made, (str, bytes, dict)) or not hasattr(made, "__iter__"):
        kind = type(made).__name__
        raise PipelineError(f"{key} = {source!r} returned {kind}, not an iterable of batches (yield them)")
    return made


def _labels(labels: object, rows: int, where: str) -> np.ndarray | None:
    """One class index per row: a (B, 1) array would broadcast against (B,) predictions silently."""
    if labels is None:
        return None
    found = np.asarray(labels)
    if found.shape != (rows,):
        expected = f"one class index per row, shape ({rows},)"
        raise PipelineError(f"{where}: labels of shape {found.shape}; expected {expected}")
    if not (np.issubdtype(found.dtype, np.integer) or np.issubdtype(found.dtype, np.bool_)):
        # Strings or floats never equal a predicted index: top-1 would be 0% for FP32 and every artifact alike.
        raise PipelineError(f"{where}: labels of dtype {found.dtype}; give class indices as integers")
    return found


def rebatch(batches: Iterable[Feed], cfg: Config, batch_size: int) -> Iterator[Feed]:
    """The same rows in batches of ``batch_size``; rows of one shape ([[axes]] sizes) are never joined
    with another's, so a batch ends early where the shape changes (and the last may be smaller).
    Splitting a batch yields views of it; only rows gathered from several batches are copied."""
    pending: list[Feed] = []
    count = 0
    shape: dict[str, int] | None = None
    for feed in batches:
        if count and shape_of(feed, cfg) != shape:
            yield pending[0] if len(pending) == 1 else concat(pending, cfg)
            pending, count = [], 0
        shape = shape_of(feed, cfg)
        rows, start = batch_size_of(feed, cfg), 0
        while start < rows:
            take = min(batch_size - count, rows - start)
            pending.append(feed if take == rows else slice_rows(feed, cfg, start, start + take))
            count += take
            start += take
            if count == batch_size:
                yield pending[0] if len(pending) == 1 else concat(pending, cfg)
                pending, count = [], 0
    if count:
        yield pending[0] if len(pending) == 1 else concat(pending, cfg)


def concat(feeds: list[Feed], cfg: Config) -> Feed:
    """Rows of batches of one shape in one batch (rows of different shapes cannot share a batch)."""
    shapes = {shape_label(shape_of(f, cfg)) for f in feeds}
    if len(shapes) > 1:
        raise ValueError(f"rows of different shapes ({', '.join(sorted(shapes))}) cannot share a batch")
    return {spec.name: np.concatenate([f[spec.name] for f in feeds], axis=spec.batch_axis or 0) for spec in cfg.inputs}


def slice_rows(feed: Feed, cfg: Config, start: int, stop: int) -> Feed:
    """Rows ``start:stop`` along each input's batch axis, as views; inputs without one are kept whole."""
    out = {}
    for spec in cfg.inputs:
        arr = feed[spec.name]
        if spec.batch_axis is None:
            out[spec.name] = arr
        else:
            index = [slice(None)] * arr.ndim
            index[spec.batch_axis] = slice(start, stop)
            out[spec.name] = arr[tuple(index)]
    return out


def sample_inputs(cfg: Config, batch: int, shape: Shape | None = None) -> Feed:
    """Exactly ``batch`` rows of real held-out (or calibration) data, repeated if the set is smaller,
    at ``shape`` (default: the first rows' own): rows of another shape are cut or repeated along each
    [[axes]] axis (``fit_shape``), as parity and timing need that shape, not the rows' meaning."""
    rows: list[Feed] = []
    count = 0
    for feed, _ in heldout_batches(cfg, batch):
        shape = shape_of(feed, cfg) if shape is None else shape
        rows.append(fit_shape(feed, cfg, shape))
        count += batch_size_of(feed, cfg)
        if count >= batch:
            break
    if not rows:
        raise PipelineError(f"{cfg.path}: the data source produced no rows")
    merged = concat(rows, cfg)
    while batch_size_of(merged, cfg) < batch:
        merged = concat([merged, merged], cfg)
    return slice_rows(merged, cfg, 0, batch)


def fit_shape(feed: Feed, cfg: Config, shape: Shape) -> Feed:
    """``feed`` with each [[axes]] axis at its size in ``shape``: cut to its first positions, or its
    positions repeated in order (a length-4 sequence at 10: positions 0 1 2 3 0 1 2 3 0 1)."""
    out = {}
    for spec in cfg.inputs:
        arr = feed[spec.name]
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, str) and dim in shape and arr.shape[axis] != shape[dim]:
                arr = np.take(arr, np.arange(shape[dim]) % arr.shape[axis], axis=axis)
        out[spec.name] = arr
    return out
