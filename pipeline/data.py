"""Real input data: calibration batches and held-out batches, validated as they stream.

A calibration source is a folder or a ``module:callable`` / ``file.py:callable``. A folder holds
``.npz`` files (any number of rows per file, keys = input names), ``.npy`` files (a single-input
model: each file one sample or a batch of rows, told apart by rank) or image files preprocessed as
``[calibration.image]`` says; every file is read without pickle. A callable is called as
``fn(samples=, batch_size=, **args)`` and returns any iterable of batches (feed dicts, tuples or
lists of arrays in input order, bare arrays, torch tensors: a torch ``DataLoader`` as it is; a torch
``Dataset`` yields samples) or one bare array (one batch). Held-out data is such a callable yielding
``(feed, labels)`` or a folder: ``.npz`` files with a labels array, or images in one subfolder per
class. Every batch is checked against the config's inputs; nothing ever falls back to random data.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import sys
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.callables import load_callable, source_file, user_code
from pipeline.config import BATCH_AXIS, CLASS_METRICS, Config, Shape, TensorSpec, shape_label
from pipeline.console import info
from pipeline.errors import PipelineError
from pipeline.fileio import sha256_file
from pipeline.images import is_image, read_image

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
        batches = _folder_batches(source, cfg, samples)
    elif ":" in section.source:
        fn = load_callable(section.source, cfg.root, key)
        kwargs = {"samples": samples, "batch_size": section.batch_size, **section.args}
        made = _guarded(_iterable(_call(fn, kwargs, key, section.source), key, section.source), key, section.source)
        where = f"{key} {section.source!r} batch"
        batches = ((f"{where} {i}", _as_feed(item, cfg, f"{where} {i}")) for i, item in enumerate(made))
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


NPZ, NPY, IMAGES = "npz", "npy", "images"


@dataclass(frozen=True)
class DataFolder:
    """A folder's data files of one kind; for images in one subfolder per class, each file's class
    (the index of its subfolder's name in sorted order, as ImageNet-style folders number them)."""

    path: Path
    kind: str
    files: tuple[Path, ...]
    classes: tuple[int, ...] = ()


def data_folder(folder: Path) -> DataFolder:
    """The data files of ``folder``: .npz, .npy, or images directly in it or in class subfolders."""
    found = {NPZ: _files(folder.glob("*.npz")), NPY: _files(folder.glob("*.npy"))}
    found[IMAGES] = _files(p for p in folder.iterdir() if is_image(p))
    kinds = [kind for kind, files in found.items() if files]
    if len(kinds) > 1:
        raise PipelineError(f"{folder}: holds {' and '.join(kinds)} files; a data folder holds one kind")
    if kinds:
        return DataFolder(folder, kinds[0], tuple(found[kinds[0]]))
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = [_files(p for p in sub.iterdir() if is_image(p)) for sub in subfolders]
    if not any(per_class):
        raise PipelineError(
            f"{folder}: no data files (.npz, .npy, or PNG/JPEG/BMP images, directly or one subfolder per class)"
        )
    # Class by class in turn, so the first rows read (calibration's samples, a capped held-out set)
    # cover every class, not the first few.
    turns = itertools.zip_longest(*[[(path, index) for path in files] for index, files in enumerate(per_class)])
    pairs = [pair for turn in turns for pair in turn if pair is not None]
    return DataFolder(folder, IMAGES, tuple(p for p, _ in pairs), tuple(i for _, i in pairs))


def _files(paths: Iterable[Path]) -> list[Path]:
    """Sorted; a folder, FIFO or device of a data file's name is refused before it is opened (a FIFO
    would block the read forever)."""
    files = sorted(paths)
    odd = next((p for p in files if not p.is_file()), None)
    if odd is not None:
        raise PipelineError(f"{odd}: not a regular file (a folder, FIFO or device); a data folder holds data files")
    return files


def _folder_batches(folder: Path, cfg: Config, samples: int) -> Iterator[tuple[str, object]]:
    """Each file's rows, at most the ``samples`` rows still needed."""
    found = data_folder(folder)
    read = {NPZ: _npz_rows, NPY: _npy_rows, IMAGES: _image_rows}[found.kind]
    left = samples
    for path in found.files:
        if left <= 0:
            return
        feed = read(path, cfg, left)
        yield str(path), feed
        left -= max((len(v) for v in feed.values() if v.ndim), default=0)


def _npz_rows(path: Path, cfg: Config, rows: int) -> Feed:
    """Members are streamed row by row from the archive, their headers checked first, so a small file
    declaring (or inflating to) more rows than it holds, or than calibration uses, is never loaded whole."""
    return read_npz(path, rows)


def _single_input(path: Path, cfg: Config, kind: str) -> TensorSpec:
    if len(cfg.inputs) != 1:
        names = ", ".join(spec.name for spec in cfg.inputs)
        raise PipelineError(f"{path}: {kind} feed one input; this model takes {names}: save .npz files keyed by them")
    return cfg.inputs[0]


def _npy_rows(path: Path, cfg: Config, rows: int) -> Feed:
    """An .npy file of the input's rank is a batch (its first ``rows`` rows are read); one axis less is
    one sample, given a batch axis of 1."""
    spec = _single_input(path, cfg, ".npy files")
    rank = len(spec.shape)

    def take(shape: tuple[int, ...]) -> int | None:
        if len(shape) == rank:
            return rows
        if len(shape) == rank - 1 and spec.batch_axis is not None:
            return None
        raise PipelineError(
            f"{path}: array of shape {list(shape)}; input {spec.name!r} is {list(spec.shape)}: give rank {rank} "
            f"(a batch) or {rank - 1} (one sample)"
        )

    try:
        with path.open("rb") as stream:
            array = _read_npy(stream, path.stat().st_size, take, path, path.name)
    except (OSError, EOFError, ValueError) as exc:
        raise PipelineError(f"{path}: not a readable .npy file ({exc}); save plain arrays with np.save") from None
    if array.ndim == rank - 1:
        array = np.expand_dims(array, spec.batch_axis)
    return {spec.name: array}


def read_npy(path: Path, rows: int = 2) -> np.ndarray:
    """A few rows of an .npy file whose model is not known yet (``trtpipe init``): rank 3 is taken for
    one sample (an image) and given a batch axis; any other rank for a batch, its first ``rows`` read."""
    try:
        with path.open("rb") as stream:
            array = _read_npy(stream, path.stat().st_size, lambda s: None if len(s) == 3 else rows, path, path.name)
    except (OSError, EOFError, ValueError) as exc:
        raise PipelineError(f"{path}: not a readable .npy file ({exc}); save plain arrays with np.save") from None
    return array[None] if array.ndim == 3 else array


def _image_rows(path: Path, cfg: Config, rows: int) -> Feed:
    spec = _single_input(path, cfg, "images")
    image = cfg.calibration.image
    if image is None:
        raise PipelineError(
            f"{path}: an image; declare its preprocessing in [calibration.image] of {cfg.path} "
            f"(size = [height, width], resize, channels, layout, dtype, mean, std)"
        )
    return {spec.name: read_image(path, image)[None]}


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
    with archive.open(info) as stream:
        return _read_npy(stream, info.file_size, lambda shape: rows, path, info.filename)


def _read_npy(stream, size: int, rows: Callable[[tuple[int, ...]], int | None], path: Path, name: str) -> np.ndarray:
    """An array in .npy format from ``stream`` of ``size`` bytes, never unpickled: its first
    ``rows(shape)`` rows (None: all of it)."""
    from numpy.lib import format as npy

    version = npy.read_magic(stream)
    # Version 1.0 headers, and 2.0 or 3.0 (a longer header, UTF-8 field names) read as 2.0.
    read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    shape, fortran, dtype = read_header(stream, max_header_size=10_000)
    if dtype.hasobject:
        raise PipelineError(
            f"{path}: cannot read without pickle: {name} holds Python objects (dtype {dtype}), which trtpipe "
            f"never unpickles; save plain numeric arrays"
        )
    if fortran and len(shape) > 1:
        raise PipelineError(f"{path}: {name} is in Fortran order; save it with np.ascontiguousarray")
    declared = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if declared > size:  # the zip, or the file system, records the size: a header cannot claim more
        raise PipelineError(f"{path}: {name} declares shape {list(shape)} ({declared} bytes) but holds {size}")
    wanted = rows(shape) if shape else None
    take = shape[0] if wanted is None and shape else (min(wanted, shape[0]) if shape else 1)
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize if shape else dtype.itemsize
    data = stream.read(take * row_bytes)
    if len(data) != take * row_bytes:
        raise PipelineError(f"{path}: {name} is cut short ({len(data)} of {take * row_bytes} bytes)")
    return np.frombuffer(data, dtype=dtype).reshape((take, *shape[1:]) if shape else ()).copy()


def source_fingerprint(cfg: Config, source: str | None = None) -> str | None:
    """sha256 of what a data source reads: a folder's data files (names and bytes; for images, with
    the preprocessing they go through), or the file defining the callable. The calibration cache and
    the stage records keep it, so new or edited data, or an edited callable, is seen as a change.
    ``source`` defaults to the calibration's."""
    source = cfg.calibration.source if source is None else source
    folder = cfg.resolve(source)
    if not folder.is_dir():
        path = source_file(source, cfg.root)
        return None if path is None else sha256_file(path)
    found = data_folder(folder)
    h = hashlib.sha256()
    if found.kind == IMAGES:
        h.update(f"{cfg.calibration.image}\n".encode())
    for path in found.files:
        h.update(f"{path.relative_to(folder).as_posix()}\0{sha256_file(path)}\n".encode())
    return h.hexdigest()


def heldout_batches(cfg: Config, batch_size: int) -> Iterator[tuple[Feed, np.ndarray | None]]:
    """Held-out batches of ``batch_size`` rows (the last may be smaller) with labels; calibration data
    (no labels) when no evaluation source is configured."""
    if cfg.evaluation is None:
        rows = rebatch(calibration_batches(cfg), cfg, batch_size)
        yield from ((feed, None) for feed in rows)
        return
    yield from _rebatch_labelled(_heldout_rows(cfg, batch_size), cfg, batch_size)


def _heldout_rows(cfg: Config, batch_size: int) -> Iterator[tuple[Feed, np.ndarray | None]]:
    """Validated (feed, labels) batches as the source gives them, at most ``[evaluation] samples`` rows."""
    evaluation = cfg.evaluation
    key, source = "evaluation.source", evaluation.source
    batches, seen, most = 0, 0, evaluation.samples
    for where, item in _heldout_items(cfg, batch_size):
        batches += 1
        feed, labels = _as_labelled(item, cfg, where)
        feed = check_shape(validate_feed(feed, cfg.inputs, where), cfg, where)
        rows = batch_size_of(feed, cfg)
        if rows == 0:  # an endless stream of empty batches would never end
            raise PipelineError(f"{where}: a batch without rows")
        labels = _labels(labels, rows, where, evaluation.metric in CLASS_METRICS)
        if seen + rows > most:  # an endless stream, or more than [evaluation] samples
            keep = most - seen
            feed, labels = slice_rows(feed, cfg, 0, keep), None if labels is None else labels[:keep]
        seen += batch_size_of(feed, cfg)
        yield feed, labels
        if seen >= most:
            info(f"{cfg.name}: read the first {most} held-out rows ([evaluation] samples); the rest is left")
            break
    if not batches:  # an accuracy check over no data would pass having checked nothing
        raise PipelineError(f"{cfg.path}: {key} = {source!r} yielded no batches")


def _heldout_items(cfg: Config, batch_size: int) -> Iterator[tuple[str, object]]:
    """(where, item) pairs from the held-out source: a folder's files, or what the callable yields."""
    evaluation = cfg.evaluation
    key, source = "evaluation.source", evaluation.source
    folder = cfg.resolve(source)
    if folder.is_dir():
        yield from _labelled_files(data_folder(folder), cfg)
        return
    fn = load_callable(source, cfg.root, key)
    kwargs = {"batch_size": batch_size, **evaluation.args}
    made = _iterable(_call(fn, kwargs, key, source), key, source)
    for i, item in enumerate(_guarded(made, key, source)):
        yield f"{key} {source!r} batch {i}", item


def _labelled_files(found: DataFolder, cfg: Config) -> Iterator[tuple[str, object]]:
    """(feed, labels) per file: .npz files hold the labels under ``[evaluation] labels``; an image's
    label is its class subfolder's index."""
    if found.kind == NPY:
        raise PipelineError(
            f"{found.path}: .npy files hold no labels; held-out data is .npz files with a "
            f"{cfg.evaluation.labels!r} array, or images in one subfolder per class"
        )
    if found.kind == IMAGES and not found.classes:
        raise PipelineError(
            f"{found.path}: held-out images go in one subfolder per class (the labels); these have none"
        )
    left = cfg.evaluation.samples
    for index, path in enumerate(found.files):
        if left <= 0:
            return
        if found.kind == IMAGES:
            yield str(path), (_image_rows(path, cfg, 1), np.array([found.classes[index]], np.int64))
            left -= 1
            continue
        feed = read_npz(path, left)
        labels = feed.pop(cfg.evaluation.labels, None)
        if labels is None:
            raise PipelineError(
                f"{path}: no array {cfg.evaluation.labels!r} holding the labels ([evaluation] labels in {cfg.path})"
            )
        yield str(path), (feed, labels)
        left -= len(labels) if labels.ndim else 1


def _as_labelled(item: object, cfg: Config, where: str) -> tuple[object, object]:
    """A held-out item as (feed, labels): ``(feed_dict, labels)``, or a tuple or list of the inputs in
    order then the labels (what a torch DataLoader of (x, y) yields)."""
    if isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[0], dict):
        return _as_feed(item[0], cfg, where), item[1]
    if isinstance(item, tuple | list) and len(item) == len(cfg.inputs) + 1:
        return _as_feed(tuple(item[:-1]), cfg, where), _array(item[-1])
    raise PipelineError(
        f"{where}: expected (feed_dict, labels) or ({', '.join(s.name for s in cfg.inputs)}, labels), "
        f"got {_describe(item)}"
    )


def _as_feed(item: object, cfg: Config, where: str) -> object:
    """A calibration item as a feed dict: a dict as it is, a bare array for the one input, or a tuple
    or list of the inputs in order (one more item, the labels of a DataLoader of (x, y), is left)."""
    if isinstance(item, dict):
        return {name: _array(value) for name, value in item.items()}
    if isinstance(item, tuple | list) and len(item) in (len(cfg.inputs), len(cfg.inputs) + 1):
        return {spec.name: _array(value) for spec, value in zip(cfg.inputs, item, strict=False)}
    if _is_array(item) and len(cfg.inputs) == 1:
        return {cfg.inputs[0].name: _array(item)}
    names = ", ".join(spec.name for spec in cfg.inputs)
    raise PipelineError(f"{where}: expected a dict of input name -> array or arrays ({names}), got {_describe(item)}")


def _describe(item: object) -> str:
    if isinstance(item, tuple | list):
        return f"a {type(item).__name__} of {len(item)}"
    return type(item).__name__


def _is_array(value: object) -> bool:
    return isinstance(value, np.ndarray) or _torch_tensor(value)


def _torch_tensor(value: object) -> bool:
    torch = sys.modules.get("torch")  # a torch tensor can exist only once torch is imported
    return torch is not None and isinstance(value, torch.Tensor)


def _array(value: object) -> object:
    """numpy from a torch tensor (detached, on the CPU); anything else for validate_feed to judge."""
    if _torch_tensor(value):
        return value.detach().cpu().numpy()
    return value


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
    """What a data callable returned, as batches: a bare array is one batch; a torch Dataset yields
    samples, each made a batch of one."""
    if _is_array(made):
        return [made]
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(made, torch.utils.data.Dataset):
        return (_one_row(sample) for sample in made)
    if made is None or isinstance(made, (str, bytes, dict)) or not hasattr(made, "__iter__"):
        kind = type(made).__name__
        raise PipelineError(f"{key} = {source!r} returned {kind}, not an iterable of batches (yield them)")
    return made


def _one_row(sample: object) -> object:
    """A Dataset's sample with a batch axis of 1 on each array, in dicts, tuples and lists alike (its
    label a batch of one label)."""
    if isinstance(sample, dict):
        return {name: _one_row(value) for name, value in sample.items()}
    if isinstance(sample, tuple | list):
        return type(sample)(_one_row(value) for value in sample)
    return np.asarray(_array(sample))[None]


def _labels(labels: object, rows: int, where: str, classes: bool) -> np.ndarray | None:
    """One label per row: for class metrics a class index (a (B, 1) array would broadcast against (B,)
    predictions silently), else any numeric array with a row per input row (targets, masks)."""
    if labels is None:
        return None
    found = np.asarray(_array(labels))
    if classes and found.shape != (rows,):
        expected = f"one class index per row, shape ({rows},)"
        raise PipelineError(f"{where}: labels of shape {found.shape}; expected {expected}")
    if not classes and (found.ndim == 0 or found.shape[0] != rows):
        raise PipelineError(f"{where}: labels of shape {found.shape}; expected one row per input row ({rows})")
    if classes and not (np.issubdtype(found.dtype, np.integer) or np.issubdtype(found.dtype, np.bool_)):
        # Strings or floats never equal a predicted index: top-1 would be 0% for FP32 and every artifact alike.
        raise PipelineError(f"{where}: labels of dtype {found.dtype}; give class indices as integers")
    if not classes and found.dtype.kind not in "biuf":
        raise PipelineError(f"{where}: labels of dtype {found.dtype}; give numbers")
    return found


def _rebatch_labelled(
    pairs: Iterable[tuple[Feed, np.ndarray | None]], cfg: Config, batch_size: int
) -> Iterator[tuple[Feed, np.ndarray | None]]:
    """(feed, labels) in batches of ``batch_size`` rows; rows of one shape ([[axes]] sizes) are never
    joined with another's, so a batch ends early where the shape changes (and the last may be smaller).
    Splitting a batch yields views of it; only rows gathered from several batches are copied."""
    pending: list[tuple[Feed, np.ndarray | None]] = []
    count = 0
    shape: dict[str, int] | None = None
    for feed, labels in pairs:
        if count and shape_of(feed, cfg) != shape:
            yield _joined(pending, cfg)
            pending, count = [], 0
        shape = shape_of(feed, cfg)
        rows, start = batch_size_of(feed, cfg), 0
        while start < rows:
            take = min(batch_size - count, rows - start)
            part = feed if take == rows else slice_rows(feed, cfg, start, start + take)
            pending.append((part, None if labels is None else labels[start : start + take]))
            count += take
            start += take
            if count == batch_size:
                yield _joined(pending, cfg)
                pending, count = [], 0
    if count:
        yield _joined(pending, cfg)


def _joined(pending: list[tuple[Feed, np.ndarray | None]], cfg: Config) -> tuple[Feed, np.ndarray | None]:
    if len(pending) == 1:
        return pending[0]
    feed = concat([f for f, _ in pending], cfg)
    labels = [lab for _, lab in pending]
    return feed, None if any(lab is None for lab in labels) else np.concatenate(labels)


def rebatch(batches: Iterable[Feed], cfg: Config, batch_size: int) -> Iterator[Feed]:
    """The same rows in batches of ``batch_size``, as ``_rebatch_labelled`` makes them."""
    return (feed for feed, _ in _rebatch_labelled(((feed, None) for feed in batches), cfg, batch_size))


def concat(feeds: list[Feed], cfg: Config) -> Feed:
    """Rows of batches of one shape in one batch (rows of different shapes cannot share a batch)."""
    shapes = {shape_label(shape_of(f, cfg)) for f in feeds}
    if len(shapes) > 1:
        raise ValueError(f"rows of different shapes ({', '.join(sorted(shapes))}) cannot share a batch")
    return {spec.name: np.concatenate([f[spec.name] for f in feeds], axis=spec.batch_axis or 0) for spec in cfg.inputs}


def slice_rows(feed: Feed, cfg: Config, start: int, stop: int) -> Feed:
    """Rows ``start:stop`` along each input's batch axis, as views; inputs without one are kept whole."""
    return {spec.name: rows_along(feed[spec.name], spec.batch_axis, slice(start, stop)) for spec in cfg.inputs}


def rows_along(value: np.ndarray, axis: int | None, rows: slice) -> np.ndarray:
    """``rows`` of ``value`` along ``axis``, a view; ``value`` itself where it has no batch axis (None)."""
    if axis is None:
        return value
    index = [slice(None)] * value.ndim
    index[axis] = rows
    return value[tuple(index)]


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
