"""Loading, checking and atomically saving ONNX graphs."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import onnx

from pipeline.errors import PipelineError
from pipeline.fileio import at_once, atomic_path, discard_unless_held, settle, temp_prefix

# Protobuf cannot serialize a single message past 2 GiB; leave headroom.
_EXTERNAL_DATA_THRESHOLD = 1800 << 20


def load(path: str | os.PathLike[str], what: str = "graph") -> onnx.ModelProto:
    return _load(Path(path), what)[0]


def load_hashed(path: str | os.PathLike[str], what: str = "graph") -> tuple[onnx.ModelProto, str]:
    """``load``, and the sha256 calibration caches know the graph by: of the file's bytes as they were
    parsed (no serialized copy of the weights made to hash them), or ``graph_hash`` of a graph whose
    weights are in external data files."""
    model, sha256 = _load(Path(path), what, hashed=True)
    return model, sha256 or graph_hash(model)


def _load(path: Path, what: str, hashed: bool = False) -> tuple[onnx.ModelProto, str | None]:
    """The graph at ``path`` with its external data, and the sha256 of its bytes (``hashed``; None
    where weights are in external data files, which the file's bytes do not cover)."""
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    if not path.is_file():
        raise PipelineError(f"{path}: {what} not found; run the stage that makes it first")
    try:
        data = path.read_bytes()
        model = onnx.load_model_from_string(data)
        sha256 = hashlib.sha256(data).hexdigest() if hashed else None
        del data  # before the external data is read in
        if any(uses_external_data(t) for t in model.graph.initializer):
            load_external_data_for_model(model, str(path.parent))
            sha256 = None
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read the {what} ({exc.strerror or exc}); check the file") from None
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise PipelineError(f"{path}: not a readable ONNX file ({exc}); delete it and re-run its stage") from None
    if not model.graph.node:  # protobuf reads an empty (0-byte) file as an empty model
        raise PipelineError(f"{path}: an ONNX file without a graph (empty?); delete it and re-run its stage")
    return model, sha256


def check(model: onnx.ModelProto, what: str) -> onnx.ModelProto:
    """Full checker pass plus strict shape inference; returns ``model`` itself with the inferred types.

    Both run on the graph without its weights' data (``_without_data``): each serializes and parses
    the graph it is given, two to four copies of the weights at once, where types need only dims
    (a weight's byte count against its dims is what this leaves unchecked: numpy_helper writes them)."""
    bare = skeleton(model, every_dtype=True)
    try:
        with tempfile.TemporaryDirectory(prefix="trtpipe.check.") as tmp:
            onnx.checker.check_model(_without_data(bare, Path(tmp)), full_check=True)
        inferred = onnx.shape_inference.infer_shapes(bare, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise PipelineError(f"{what}: the ONNX checker rejected the graph: {exc}") from None
    for field in ("input", "output", "value_info"):
        del getattr(model.graph, field)[:]
        getattr(model.graph, field).extend(getattr(inferred.graph, field))
    return model


def _without_data(bare: onnx.ModelProto, folder: Path) -> str:
    """``bare`` (a skeleton) saved in ``folder`` with each data-less tensor pointing into one sparse
    file of zeros as long as their data would be: what the checker verifies of external data, with
    no byte of it written or read. The saved graph's path."""
    weights = folder / "weights.bin"
    offset = 0
    graph = onnx.ModelProto()
    graph.CopyFrom(bare)
    for tensor in graph.graph.initializer:
        if _has_data(tensor) or not _elements(tensor):
            continue
        length = _elements(tensor) * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", weights.name), ("offset", str(offset)), ("length", str(length))):
            tensor.external_data.add(key=key, value=value)
        offset += length
    with open(weights, "wb") as f:
        f.truncate(offset)
    path = folder / "graph.onnx"
    onnx.save(graph, str(path))
    return str(path)


def save(model: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Save atomically; graphs near the 2 GB protobuf limit keep weights in ``<name>.data``."""
    path = Path(path)
    if model.ByteSize() < _EXTERNAL_DATA_THRESHOLD:
        with atomic_path(path) as tmp:
            onnx.save(model, str(tmp))
        return path
    data_name = path.name + ".data"
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # saving with external data rewrites the model in place: keep the caller's intact
    model = copy
    with atomic_path(path) as tmp:
        tmp_data = tmp.parent / (tmp.name + ".data")
        try:
            onnx.save(model, str(tmp), save_as_external_data=True, location=tmp_data.name)
            onnx.checker.check_model(str(tmp), full_check=True)
            # Point the graph at the final data file name, then move the data first.
            m = onnx.load(str(tmp), load_external_data=False)
            for init in m.graph.initializer:
                for entry in init.external_data:
                    if entry.key == "location":
                        entry.value = data_name
            onnx.save(m, str(tmp))
            settle(tmp_data, path.parent / data_name)
        finally:
            discard_unless_held(tmp_data, path.parent / data_name)
    return path


@contextlib.contextmanager
def staged(graphs: dict[Path, onnx.ModelProto]) -> Iterator[dict[Path, Path]]:
    """Save each graph under a hidden folder beside its destination and yield {destination: staged
    path}; only when the block succeeds do they move into place, except those the block popped from
    that mapping. A check that fails (or a kill) leaves no graph that looks complete. ``graphs`` is
    taken: each graph leaves it as it is written (a caller holding no other reference frees it then)."""
    folders: list[Path] = []
    moves: dict[Path, Path] = {}
    try:
        for dest in list(graphs):
            model = graphs.pop(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            folders.append(Path(tempfile.mkdtemp(dir=dest.parent, prefix=temp_prefix(dest.name) + "staged.")))
            with at_once():  # the block reads them there; ``place`` holds them if the stage holds its outputs
                moves[dest] = save(model, folders[-1] / dest.name)
            del model
        yield moves
        for dest, src in moves.items():
            place(src, dest)
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


def place(src: Path, dest: Path) -> Path:
    """Move a graph saved under ``dest``'s name (the name its external weights, moved first, carry)."""
    for data in src.parent.glob(src.name + ".data"):
        settle(data, dest.parent / data.name)
    settle(src, dest)
    return dest


def unknown_op_types(names: Iterable[str], model: onnx.ModelProto) -> list[str]:
    """Op types among ``names`` that neither the graph uses nor ONNX defines: typos, most likely."""
    used = {node.op_type for node in model.graph.node}
    return [n for n in names if n not in used and n not in _onnx_op_types()]


@functools.cache
def _onnx_op_types() -> frozenset[str]:
    return frozenset(schema.name for schema in onnx.defs.get_all_schemas_with_history())


def exporter(model: onnx.ModelProto) -> str:
    """Which torch exporter made the graph (recorded by ``OnnxFromTorch``)."""
    return next((p.value for p in model.metadata_props if p.key == "trtpipe.exporter"), "unknown")


# Float tensors this large are weights, never an op's shape argument (a Resize's scales has rank entries).
_WEIGHT_ELEMENTS = 256
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)


def save_weights_beside(model: onnx.ModelProto, path: Path) -> Path:
    """``model`` written to ``path`` with each tensor beyond a small one in ``PATH.data`` beside it,
    one at a time: the graph is never serialized whole in memory. ``model`` keeps only where its
    tensors' data went (``array`` reads one back), so its weights leave memory as they are written."""
    onnx.save(model, str(path), save_as_external_data=True, location=f"{path.name}.data", size_threshold=1024)
    return path


def weights_to_file(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """``model`` written as ``save_weights_beside`` writes it, and read back without its weights' data
    (each tensor names where it is): a new graph. A parsed graph's tensors live in one block of memory
    that clearing them does not shrink: only once ``model`` is dropped are its weights gone."""
    save_weights_beside(model, path)
    return onnx.load(str(path), load_external_data=False)


def read_back(path: Path) -> onnx.ModelProto:
    """The graph ``save_weights_beside`` (or ONNX Runtime's quantizer) wrote to ``path`` with its
    tensors beside it, with them in it again as they were: each tensor's data location, which
    reading external data sets, cleared (a Constant node's too)."""
    model = onnx.load(str(path))
    constants = (a.t for n in model.graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR)
    for tensor in (*model.graph.initializer, *constants):
        tensor.ClearField("data_location")
    return model


def with_data(model: onnx.ModelProto, folder: Path, in_place: bool = False) -> onnx.ModelProto:
    """``model`` itself, or, where tensors of it name their data in files in ``folder``
    (``save_weights_beside``), a copy with that data in it (``model`` itself, given it, with
    ``in_place``)."""
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    if not any(uses_external_data(t) for t in model.graph.initializer):
        return model
    copy = model if in_place else onnx.ModelProto()
    if not in_place:
        copy.CopyFrom(model)
    moved = [t for t in copy.graph.initializer if uses_external_data(t)]
    load_external_data_for_model(copy, str(folder))
    for tensor in moved:
        tensor.ClearField("data_location")  # as it was before it moved: the same bytes when written
    return copy


def array(tensor: onnx.TensorProto, folder: Path | None = None):
    """``tensor``'s values; one whose data is in a file (``save_weights_beside``) is read from
    ``folder`` into a copy, not into ``tensor``: it stays without its data."""
    from onnx import numpy_helper

    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return numpy_helper.to_array(tensor)
    if folder is None:
        raise ValueError(f"tensor {tensor.name!r} has its data in a file, and no folder was given to read it from")
    bare = onnx.TensorProto()
    bare.CopyFrom(tensor)  # names where its data is: no data to copy
    return numpy_helper.to_array(bare, base_dir=str(folder))


def skeleton(model: onnx.ModelProto, every_dtype: bool = False) -> onnx.ModelProto:
    """A copy of ``model`` whose float weights (with ``every_dtype``, every tensor beyond a shape
    argument's size) keep their names, dtypes and dims but no data.

    Enough for shape inference, the quantization plans and the tensor lists (weights enter
    them by their dims only), without holding the weights a second time.
    """
    out = onnx.ModelProto(ir_version=model.ir_version)
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)  # local functions: shape inference looks inside them
    graph, src = out.graph, model.graph
    graph.name = src.name
    for name in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(graph, name).extend(getattr(src, name))
    graph.initializer.extend(_dims_only(init, every_dtype) for init in src.initializer)
    return out


def _dims_only(init: onnx.TensorProto, every_dtype: bool = False) -> onnx.TensorProto:
    if (init.data_type not in _FLOATS and not every_dtype) or _elements(init) <= _WEIGHT_ELEMENTS:
        return init
    return onnx.TensorProto(name=init.name, data_type=init.data_type, dims=init.dims)


def _elements(tensor: onnx.TensorProto) -> int:
    size = 1
    for d in tensor.dims:
        size *= d
    return size


def _has_data(tensor: onnx.TensorProto) -> bool:
    """Does ``tensor`` hold its values (in any field), or name where they are?"""
    fields = ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data")
    return tensor.data_location == onnx.TensorProto.EXTERNAL or any(len(getattr(tensor, f)) for f in fields)


def infer_shapes_lean(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference on ``skeleton(model)``: the same types, without the 2-3 serialized
    copies of the weights ``onnx.shape_inference`` makes (300 MB at the peak for 100 MB of
    weights). The result has no weight data."""
    return onnx.shape_inference.infer_shapes(skeleton(model))


def copy_with_outputs(src: Path, dst: Path, values: Iterable[onnx.ValueInfoProto]) -> Path:
    """The graph file ``src`` copied to ``dst`` with ``values`` appended to its outputs, never parsed.

    Protobuf parses concatenated messages as their merge, repeated fields appended
    (protobuf.dev/programming-guides/encoding, "Last One Wins"), so the copy is ``src``'s
    bytes followed by a ModelProto holding only the new outputs: no copy of the weights in memory.
    """
    shutil.copyfile(src, dst)
    with open(dst, "ab") as f:
        f.write(onnx.ModelProto(graph=onnx.GraphProto(output=list(values))).SerializeToString())
    return dst


_METADATA_PROPS = 14  # onnx.proto: ModelProto.metadata_props
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5  # protobuf wire types


def metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata of the ONNX file at ``path``, read by walking the file's top-level fields and
    seeking past the rest (the graph with its weights is never read): what decides how a graph file
    is run, without parsing it."""
    found: dict[str, str] = {}
    with open(path, "rb") as f:
        while (key := _varint(f)) is not None:
            field, wire = key >> 3, key & 7
            if wire == _VARINT:
                _varint(f)
            elif wire in (_FIXED64, _FIXED32):
                f.seek(8 if wire == _FIXED64 else 4, os.SEEK_CUR)
            elif wire == _LENGTH and field == _METADATA_PROPS:
                entry = _metadata_entry(path, f.read(_varint(f) or 0))
                found[entry.key] = entry.value
            elif wire == _LENGTH:
                f.seek(_varint(f) or 0, os.SEEK_CUR)
            else:
                raise PipelineError(
                    f"{path}: not a readable ONNX file (wire type {wire}); delete it and re-run its stage"
                )
    return found


def _metadata_entry(path: str | os.PathLike[str], data: bytes) -> onnx.StringStringEntryProto:
    from google.protobuf.message import DecodeError

    try:
        return onnx.StringStringEntryProto.FromString(data)
    except DecodeError as exc:
        raise PipelineError(f"{path}: not a readable ONNX file ({exc}); delete it and re-run its stage") from None


def _varint(f) -> int | None:
    """The next varint in ``f``, None at the end of the file."""
    value = shift = 0
    while byte := f.read(1):
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
    return None


def graph_hash(model: onnx.ModelProto) -> str:
    """Hash of the serialized graph: calibration caches and manifests record it."""
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def producer_map(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def consumer_map(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for inp in node.input:
            if inp:
                consumers.setdefault(inp, []).append(node)
    return consumers


def constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a Constant node holds as its ``value`` (the form exporters write), else None."""
    if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
        return node.attribute[0].t
    return None


def constants_as_initializers(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """The graph with each top-level Constant node's ``value`` moved to an initializer of its output's
    name (the same values: Paddle2ONNX writes every weight so), and how many moved. Weight folding, the
    FP16 range check and the quantizers read weights as initializers. A Constant whose output is a
    graph output stays."""
    outputs = {o.name for o in model.graph.output}
    moving = [n for n in model.graph.node if constant_value(n) is not None and n.output[0] not in outputs]
    if not moving:
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = []
    for node in out.graph.node:
        value = constant_value(node)
        if value is None or node.output[0] in outputs:
            kept.append(node)
            continue
        tensor = onnx.TensorProto()
        tensor.CopyFrom(value)
        tensor.name = node.output[0]
        out.graph.initializer.append(tensor)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    return out, len(moving)


def attribute(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default
