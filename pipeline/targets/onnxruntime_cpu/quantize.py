"""``OrtCpuQdqFromOnnx``: the ONNX Runtime CPU w8a8 graph, from ORT's own QDQ quantizer.

ONNX Runtime's CPU kernels fuse DQ -> op -> Q into QLinearConv, QLinearMatMul
and friends, and want uint8 activations with int8 per-channel weights (U8S8).
We keep ORT's fusion rules by calling ``quantize_static`` itself, and feed it
our ranges through its calibration-cache file instead of its calibrators
(which hold every activation in memory and collapse entropy to max).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

from pipeline.calibration.cache import Ranges
from pipeline.config import QuantizeSection
from pipeline.errors import PipelineError
from pipeline.graphview import GraphView
from pipeline.onnxutil import constant_value, read_back, skeleton
from pipeline.placement import WEIGHTED, Placement, excluded_reason, tied_groups, weight_axis
from pipeline.targets.onnxruntime_cpu.norms import normalizations, residual_stream_adds, stream_passes

# Ops ORT's CPU EP runs quantized (QLinear*/QGemm) or passes through in 8 bit.
# LayerNorm, Softmax and GELU's Erf stay float, as in the TensorRT graph.
OP_TYPES = (
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Add",
    "Mul",
    "Relu",
    "Clip",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Concat",
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Gather",
)


def fuse_gelu(model: onnx.ModelProto, in_place: bool = False) -> onnx.ModelProto:
    """``model`` itself when it has no Erf, else a copy (``model`` itself when ``in_place``) with
    each exact GELU subgraph (Div, Erf, Add, Mul, Mul, as PyTorch exports it at opset 19) replaced
    by one com.microsoft Gelu, by ONNX Runtime's own transformer fusion.

    Left decomposed, the quantizer runs GELU's Add and Muls in uint8 around a float Erf
    (two Q/DQ pairs and three requantizations per GELU): a third of the quantized ViT's
    time on one CPU thread, and GELU in 8 bit. Fused, it runs in float between one DQ
    and one Q, as it stays FP16 in the TensorRT graph. Tensor names outside the
    subgraphs are kept, so the FP32 graph's calibration ranges still apply.
    """
    if not any(n.op_type == "Erf" for n in model.graph.node):  # the fusion starts from each Erf
        return model
    from onnxruntime.transformers.fusion_gelu import FusionGelu
    from onnxruntime.transformers.onnx_model import OnnxModel

    copy = model if in_place else onnx.ModelProto()
    if not in_place:
        copy.CopyFrom(model)
    fused = OnnxModel(copy)
    fusion = FusionGelu(fused)
    fusion.apply()
    if fusion.nodes_to_add:
        fused.topological_sort(is_deterministic=True)  # the fusion appends its nodes at the end
        if not any(o.domain == "com.microsoft" for o in copy.opset_import):
            copy.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return copy


def _fused_structure(view: GraphView) -> onnx.ModelProto:
    """The GELU-fused graph's nodes, fused on a skeleton: no copy of the weights (the fusion reads
    only its small constants, which a skeleton keeps)."""
    return fuse_gelu(skeleton(view.model), in_place=True)


def tensors_to_calibrate(model: onnx.ModelProto | GraphView, fused: onnx.ModelProto | None = None) -> set[str]:
    """Float activations at the inputs and outputs of the ops ORT will quantize in the
    GELU-fused graph (``fused``, when the caller has it), except those a Relu folds into
    (they take the Relu output's range, see ``relu_folded``), attention masks (``masks``) and what
    only the Adds into a Softmax read or make: those Adds stay float (``softmax_input_adds``)."""
    view = GraphView.of(model)
    float_tensors = {n for n, v in view.value_infos.items() if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    folded = relu_folded(view)
    varying = view.input_dependent()
    skipped = masks(view)
    scores = set(softmax_input_adds(view))  # they stay float, and so does the Softmax they feed
    return {
        t
        for n in (fused if fused is not None else _fused_structure(view)).graph.node
        if n.op_type in OP_TYPES and n.name not in scores
        for t in (*n.input, *n.output)
        if t and t in float_tensors and t in varying and t not in folded and t not in skipped
    }


# Ops that move a mask's values without computing new ones: a mask reaches the scores through them.
_MOVES = ("Reshape", "Expand", "Unsqueeze", "Squeeze", "Transpose", "Flatten", "Identity", "Cast")


def masks(view: GraphView) -> set[str]:
    """Additive attention masks: tensors computed from no float input (a padding mask, token ids)
    that reach only the Adds into a Softmax, through ops that move values. PyTorch's
    ``src_key_padding_mask`` puts -inf where it pads: no range of a mask is used (those Adds stay
    float), and a mask is never quantized."""
    float_inputs = {i for i in view.inputs if view.value_infos[i].type.tensor_type.elem_type in _FLOATS}
    from_floats = set(float_inputs)
    for node in view.nodes:  # topologically sorted
        if any(i in from_floats for i in node.input if i):
            from_floats.update(node.output)
    adds = set(softmax_input_adds(view))
    found: set[str] = set()
    todo = [i for n in view.nodes if n.name in adds for i in n.input if i and i not in from_floats]
    while todo:
        tensor = todo.pop()
        readers = view.consumers.get(tensor, [])
        into_scores = all(r.name in adds or set(r.output) <= found for r in readers)
        if tensor in found or tensor in from_floats or not into_scores:
            continue
        found.add(tensor)
        producer = view.producer.get(tensor)
        if producer is not None and producer.op_type in _MOVES:
            todo.extend(i for i in producer.input[:1] if i)
    return found


def placement(view: GraphView, settings: QuantizeSection) -> Placement:
    """Where ``quantize_static`` puts Q/DQ, as auto's whole-graph check simulates it: on every float
    activation in or out of an op of ``OP_TYPES`` it quantizes (in the GELU-fused graph, less the
    ``excluded_nodes``) but the outputs of Gemms and MatMuls that only float ops read
    (``unrequantized``), read through them by every reader; a folded Relu's input with the Relu
    output's range, a data-movement or pooling op's output (``SAME_SCALE``) with its input's, a
    Concat's group one range (``concat_groups``); Conv/Gemm/MatMul weights int8 per output channel.
    Constants that op reads (biases, which it stores int32 or uint8) stay float: their rounding is
    the same under any range."""
    excluded = set(excluded_nodes(view, settings))
    varying = view.input_dependent()
    floats = {n for n, v in view.value_infos.items() if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    activations: dict[str, None] = {}
    weights = []
    for node in _fused_structure(view).graph.node:
        if node.op_type not in OP_TYPES or node.name in excluded:
            continue
        activations.update({t: None for t in (*node.input, *node.output) if t in varying and t in floats})
        for i, t in enumerate(node.input[:2]):
            if node.op_type in WEIGHTED and view.is_weight(t):
                weights.append((node.name, i, t, weight_axis(node.op_type, node, len(view.shape(t)), i)))
    read_as_is = set(unrequantized(view, excluded))  # their outputs go without Q/DQ
    for t in (t for node in view.nodes if node.name in read_as_is for t in node.output):
        activations.pop(t, None)
    ties = {t: out for t, out in relu_folded(view).items() if view.producer[out].name not in excluded}
    ties |= {
        node.output[0]: node.input[0]
        for node in view.nodes
        if node.op_type in SAME_SCALE and node.name not in excluded and node.input[0] in activations
    }
    groups = concat_groups(view, set(activations), excluded)
    return Placement(False, activations, tuple(weights), groups, {t: _end(ties, t) for t in activations if t in ties})


def concat_groups(view: GraphView, quantized: set[str], excluded: set[str]) -> tuple[tuple[str, ...], ...]:
    """Each quantized Concat's output and inputs, which ``OrtCpuQdqFromOnnx`` gives one range, the
    union of theirs: ONNX Runtime's QLinearConcat then copies 8-bit values, where with a scale of its
    own per input it rounds each value a second time (NNCF unifies them too; an LSTM's last state,
    stacked with the others by a Concat and read on by a Gather, was rounded twice). A group reaches
    back across the ops whose output ONNX Runtime gives its input's scale (``SAME_SCALE``)."""
    joins = [
        (node.output[0], *node.input)
        for node in view.nodes
        if node.op_type == "Concat" and node.name not in excluded and node.output[0] in quantized
    ]
    if not joins:
        return ()
    moves = [
        (node.output[0], node.input[0])
        for node in view.nodes
        if node.op_type in SAME_SCALE and node.name not in excluded and node.input[0] in quantized
    ]
    joined = {t for group in tied_groups(quantized, joins) for t in group}
    return tuple(g for g in tied_groups(quantized, joins + moves) if joined & set(g))


# Ops whose output ONNX Runtime's quantizer gives its input's scale and zero point
# (``quantize_output_same_as_input``: QDQDirect8BitOp, QDQMaxPool, QDQGather): its CPU kernels then
# move 8-bit values through them, and its QDQ transformers drop a DQ -> op -> Q whose scales match.
SAME_SCALE = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "MaxPool", "AveragePool", "Gather")


def _end(ties: dict[str, str], tensor: str) -> str:
    """The tensor at the end of ``tensor``'s chain of ties."""
    seen = {tensor}
    while ties.get(tensor, tensor) not in seen:
        tensor = ties[tensor]
        seen.add(tensor)
    return tensor


def relu_folded(model: onnx.ModelProto | GraphView) -> dict[str, str]:
    """{Relu input: Relu output} for each Relu that ORT's QDQ quantizer removes.

    With asymmetric activations it drops a Relu whose input has no other consumer
    and quantizes that input with the Relu output's range ([0, max]: the clamp at
    zero is the Relu). So that input needs no statistics of its own, which spares
    the calibration pass a histogram per Conv -> Relu.
    """
    view = GraphView.of(model)
    return {
        n.input[0]: n.output[0]
        for n in view.nodes
        if n.op_type == "Relu"
        and n.input[0] in view.producer
        and len(view.consumers.get(n.input[0], [])) == 1
        and n.input[0] not in view.outputs
    }


_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def excluded_nodes(view: GraphView, settings: QuantizeSection) -> list[str]:
    """The nodes [quantize] excludes, by the same rules as the TensorRT plan; nodes reading a tensor
    computed from constants and shapes only (the same for every input: nothing to quantize); every
    normalisation's own nodes, however exported (``norms.py``: a LayerNorm runs float, so does an RMSNorm
    spelled in Pow/ReduceMean/Mul); the residual-stream Adds (``residual_stream_adds``) and the Gathers
    and Reshapes that move the stream into them (``stream_passes``); the ops that would run 8-bit
    with no weighted layer beside them (``float_islands``); and those that would only requantize a
    Gemm's or MatMul's output for float ops to read (``float_tails``).

    The stream carries the outlier channels per-tensor uint8 cannot hold (a ViT-B/16 CPU graph fell to
    cosine 0.963 with them quantized, 0.9985 without), rows of very different scales that the norm
    then normalizes one by one (ViT's class-token row, lost to one uint8 step of the patch rows'
    range), and an Add gains little on a CPU. A CNN's residual Add (into a Relu or a Conv) stays
    quantized: QLinearAdd."""
    patterns = [re.compile(p) for p in settings.exclude_patterns]
    varying = view.input_dependent()
    constant = [  # a node reading a computed constant: such tensors get no range (they may hold -inf)
        n.name
        for n in view.nodes
        if n.op_type in OP_TYPES and any(t and not view.is_weight(t) and t not in varying for t in n.input)
    ]
    excluded = [n.name for n in view.nodes if excluded_reason(n, settings, patterns)]
    made_masks = [view.producer[t].name for t in sorted(masks(view)) if t in view.producer]  # never quantized
    norms = normalizations(view)
    inside = [name for norm in norms for name in norm.nodes]
    stream = residual_stream_adds(view, norms)
    moves = stream_passes(view, stream, norms)
    found = excluded + constant + inside + stream + moves + softmax_input_adds(view) + made_masks
    found += float_islands(view, set(found))
    return found + float_tails(view, set(found))


def float_islands(view: GraphView, excluded: set[str]) -> list[str]:
    """The ops of ``OP_TYPES`` (less ``excluded``) in groups, joined where one reads the other's output,
    that hold no weighted layer: a layer-scale Mul between a BatchNorm and a GELU, an Add between a
    Sub and a PReLU. Quantized, such a group is only requantization: a Q after the float op before
    it and a DQ before the float op after it around an elementwise op that was cheap in float (the
    NNCF rule: quantize the inputs of weighted layers, not of ops that run float anyway)."""
    nodes = [n for n in view.nodes if n.op_type in OP_TYPES and n.name not in excluded]
    names = {n.name for n in nodes}
    group = {name: name for name in names}

    def root(name: str) -> str:
        while group[name] != name:
            group[name] = group[group[name]]
            name = group[name]
        return name

    for node in nodes:
        for t in node.input:
            producer = view.producer.get(t)
            if producer is not None and producer.name in names:
                group[root(producer.name)] = root(node.name)
    weighted = {root(n.name) for n in nodes if n.op_type in WEIGHTED}
    return [n.name for n in nodes if root(n.name) not in weighted]


# Weighted ops ONNX Runtime's CPU EP fuses with no Q on their output (QGemm with a float output,
# MatMulIntegerToFloat); a QLinearConv needs one.
FLOAT_OUTPUT_OK = ("Gemm", "MatMul")
# Ops a float tail passes through: data movement. Not a Relu or Clip: with no Q after it, ONNX Runtime
# fuses it into the layer as a float FusedGemm where it has one reader, and the QGemm is lost.
_TAIL_OPS = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Gather")


def float_tails(view: GraphView, excluded: set[str]) -> list[str]:
    """The ops of ``OP_TYPES`` that move a Gemm's or MatMul's output to ops that run float (a norm, a
    Softmax, a Tanh) or to the graph's outputs, where it reaches no quantized op: quantized, they
    would requantize the layer's output only for a float op to read it again (the NNCF rule:
    quantize what weighted layers read). Left float, the layer runs with a float output
    (``FLOAT_OUTPUT_OK``)."""
    tails: list[str] = []
    for node in view.nodes:
        if node.op_type in FLOAT_OUTPUT_OK and node.name not in excluded:
            tails += _tail(view, node, excluded) or []
    return tails


def _tail(view: GraphView, layer: onnx.NodeProto, excluded: set[str]) -> list[str] | None:
    """The quantizable ops (``_TAIL_OPS``) between ``layer`` and the float ops reading on, or None
    where a quantized op of another kind reads what it computes."""
    chain: list[str] = []
    todo = list(layer.output)
    while todo:
        for reader in view.consumers.get(todo.pop(), ()):
            if reader.op_type not in OP_TYPES or reader.name in excluded or reader.name in chain:
                continue
            if reader.op_type not in _TAIL_OPS:
                return None
            chain.append(reader.name)
            todo += list(reader.output)
    return chain


def unrequantized(view: GraphView, excluded: set[str]) -> list[str]:
    """The Gemm and MatMul nodes (not ``excluded``) whose output no quantized op reads: their output
    goes without Q/DQ (``without_output_qdq``)."""
    return [
        node.name
        for node in view.nodes
        if node.op_type in FLOAT_OUTPUT_OK
        and node.name not in excluded
        and not any(
            r.op_type in OP_TYPES and r.name not in excluded for t in node.output for r in view.consumers.get(t, ())
        )
    ]


def without_output_qdq(model: onnx.ModelProto, nodes: list[str]) -> onnx.ModelProto:
    """``model`` (changed in place) where the outputs of ``nodes`` are read as they are, not through
    the Q/DQ pair ONNX Runtime's quantizer puts on a quantized op's output; a graph output keeps its
    name (the layer writes it again)."""
    from pipeline.onnxutil import consumer_map
    from pipeline.targets.tensorrt.qdq import drop_unused_initializers

    names = set(nodes)
    readers = consumer_map(model.graph)
    outputs = [t for n in model.graph.node if n.name in names for t in n.output]
    pairs = [
        (q, dq)
        for t in outputs
        for q in readers.get(t, ())
        if q.op_type == "QuantizeLinear"
        for dq in readers.get(q.output[0], ())
        if dq.op_type == "DequantizeLinear"
    ]
    graph_outputs = {o.name for o in model.graph.output}
    renamed = {}
    for q, dq in pairs:
        if dq.output[0] in graph_outputs:
            renamed[q.input[0]] = dq.output[0]
        else:
            renamed[dq.output[0]] = q.input[0]
    dropped = {id(n) for pair in pairs for n in pair}
    kept = [n for n in model.graph.node if id(n) not in dropped]
    for node in kept:
        node.input[:] = [renamed.get(t, t) for t in node.input]
        node.output[:] = [renamed.get(t, t) for t in node.output]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    drop_unused_initializers(model)
    return model


def softmax_input_adds(view: GraphView) -> list[str]:
    """Adds into a Softmax: attention scores plus a position bias and padding mask. The mask's
    large negatives (finfo.min in transformers) and the scores share no useful uint8 range, and
    the Softmax runs float anyway (a T5 encoder's CPU graph: cosine 0.965 with them quantized,
    0.9993 without)."""
    return sorted(
        n.name
        for n in view.nodes
        if n.op_type == "Add" and any(r.op_type == "Softmax" for r in view.consumers.get(n.output[0], []))
    )


def with_folded_weights(fp32: onnx.ModelProto, view: GraphView) -> onnx.ModelProto:
    """``fp32`` itself, or a copy where each tensor made from constants through a Transpose, Reshape
    or Identity (a tied LM head, weights the TorchScript exporter shares) is an initializer, so ONNX
    Runtime's quantizer sees a weight (int8, per channel) rather than an activation it wants a range
    for; and where each Constant node (the TorchScript exporter's constants) is an initializer too."""
    folded = {  # any reader: the TorchScript exporter shares equal weights through Identity nodes (T5)
        t: view.constant(t)
        for n in view.nodes
        for t in n.input
        if t and not view.is_const(t) and view.is_weight(t)  # is_weight reads no data: cheap for activations
    }
    constants = {n.output[0]: v for n in fp32.graph.node if (v := constant_value(n)) is not None}
    if not folded and not constants:
        return fp32
    copy = onnx.ModelProto()
    copy.CopyFrom(fp32)
    for node in copy.graph.node:
        node.input[:] = [f"{t}.folded" if t in folded else t for t in node.input]
    copy.graph.initializer.extend(numpy_helper.from_array(v, f"{t}.folded") for t, v in folded.items())
    kept = [n for n in copy.graph.node if constant_value(n) is None]
    for name, value in constants.items():
        init = copy.graph.initializer.add()
        init.CopyFrom(value)
        init.name = name
    del copy.graph.node[:]
    copy.graph.node.extend(kept)
    return copy


def _tensor_data(lo: float, hi: float) -> TensorData:
    """ONNX Runtime's range record; uint8 with a zero point needs 0 inside the range."""
    return TensorData(lowest=np.array(min(lo, 0.0), np.float32), highest=np.array(max(hi, 0.0), np.float32))


class OrtCpuQdqFromOnnx:
    def __init__(self, ranges: Ranges, method: str, settings: QuantizeSection) -> None:
        self.ranges = ranges
        self.method = method
        self.settings = settings

    def __call__(self, fp32: onnx.ModelProto, view: GraphView | None = None) -> onnx.ModelProto:
        view = view or GraphView(fp32)
        folded = with_folded_weights(fp32, view)
        fused = fuse_gelu(folded, in_place=folded is not fp32)  # a copy made here is changed, not copied again
        needed = tensors_to_calibrate(view, fused)
        missing = needed - set(self.ranges.tensors)
        if missing:
            raise PipelineError(
                f"no calibration range for {sorted(missing)[0]!r} (and {len(missing) - 1} more); re-run calibrate"
            )
        bounds = {}
        for name in needed:
            r = self.ranges.tensors[name]
            amax = r.amax[self.method]
            # Asymmetric uint8: the observed range, clipped by the method's threshold.
            bounds[name] = (max(r.min, -amax), min(r.max, amax))
        excluded = excluded_nodes(view, self.settings)
        for group in concat_groups(view, set(bounds), set(excluded)):
            joined = (min(bounds[t][0] for t in group), max(bounds[t][1] for t in group))
            bounds.update(dict.fromkeys(group, joined))
        data = {name: _tensor_data(lo, hi) for name, (lo, hi) in bounds.items()}
        for relu_input, relu_output in relu_folded(view).items():
            if relu_input not in data and relu_output in data:
                data[relu_input] = data[relu_output]
        with tempfile.TemporaryDirectory(prefix="trtpipe.ortq.") as tmp, _source_file(view, Path(tmp)) as source:
            # A file, not the graph: given a ModelProto, ONNX Runtime's quantizer deep-copies it and loads
            # the copy again, three copies of the weights beside ours. A copy made here is written with its
            # weights beside it (moved out of memory); the caller's graph is written whole.
            if fused is fp32:
                onnx.save(fp32, str(source))
            else:
                onnx.save(fused, str(source), save_as_external_data=True, location=f"{source.name}.data")
            del fused
            cache = Path(tmp) / "ranges.json"
            save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
            out = Path(tmp) / "model.onnx"
            root = logging.getLogger()
            level = root.level
            root.setLevel(logging.ERROR)  # ORT's quantizer logs a pre-processing hint we do not need
            try:
                quantize_static(
                    source,
                    out,
                    calibration_data_reader=None,
                    calibration_cache_path=cache,
                    calibrate_method=CalibrationMethod.MinMax,
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(OP_TYPES),
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=excluded,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                    use_external_data_format=True,  # written a tensor at a time: not serialized whole in memory
                )
            finally:
                root.setLevel(level)
            model = without_output_qdq(read_back(out), unrequantized(view, set(excluded)))
        onnx.helper.set_model_props(model, {"trtpipe.precision": "w8a8", "trtpipe.target": "onnxruntime-cpu"})
        return model


@contextlib.contextmanager
def _source_file(view: GraphView, tmp: Path) -> Iterator[Path]:
    """Where ONNX Runtime's quantizer reads the graph from: in ``tmp``, or, where the graph's weights
    are in a file (``GraphView.move_weights``), beside that file, whose name the graph keeps (a file
    of ours, gone when done, with the quantizer's shape-inferred copy)."""
    if view.weights_folder is None:
        yield tmp / "fp32.onnx"
        return
    fd, name = tempfile.mkstemp(dir=view.weights_folder, prefix="ortq.", suffix=".onnx")
    os.close(fd)
    source = Path(name)
    try:
        yield source
    finally:
        for made in (source, Path(f"{source}.data"), source.with_name(f"{source.stem}-inferred.onnx")):
            made.unlink(missing_ok=True)


def float_layers(view: GraphView, nodes: tuple[str, ...]) -> tuple[str, ...]:
    """The nodes to exclude so that each of ``nodes`` computes in float from float inputs: each, and
    the Relu or Clip producing one of its inputs, which ONNX Runtime's quantizer would otherwise fold
    into the quantized op before it (and so drop from the graph)."""
    names = set(nodes)
    found = list(nodes)
    for node in view.nodes:
        if node.name not in names:
            continue
        for t in node.input:
            src = view.producer.get(t)
            if src is not None and src.op_type in ("Relu", "Clip") and src.name not in names:
                found.append(src.name)
                names.add(src.name)
    return tuple(found)


# Ops of OP_TYPES that join activations: a layer's epilogue takes the first it reaches, not the next.
JOINS = ("Add", "Mul", "Concat")


def with_epilogues(view: GraphView, nodes: tuple[str, ...]) -> tuple[str, ...]:
    """``nodes`` (weighted layers) and the ops this graph quantizes between each and the layers after
    it: what it feeds through pooling, reshapes and activations, and the first join it reaches (a
    residual Add, a squeeze-excitation Mul, a Concat) with what follows that up to the next join.
    Keeping a layer float keeps these float too: without them, every weighted layer of
    RegNetY-400MF's CPU graph in float still left its SE Muls, pooling and residual Adds in uint8,
    at 0.938 centered cosine against FP32."""
    by_name = {n.name: n for n in view.nodes}
    found = dict.fromkeys(nodes)
    for node in nodes:
        todo = [(t, False) for t in by_name[node].output]
        while todo:
            tensor, joined = todo.pop()
            for reader in view.consumers.get(tensor, ()):
                if reader.op_type in WEIGHTED or reader.name in found or (joined and reader.op_type in JOINS):
                    continue
                if reader.op_type in OP_TYPES:
                    found[reader.name] = None
                todo += [(t, joined or reader.op_type in JOINS) for t in reader.output]
    return tuple(found)


def float_inputs(model: onnx.ModelProto, nodes: tuple[str, ...]) -> onnx.ModelProto:
    """``model`` (changed in place) where ``nodes`` (excluded from quantization) read their activation
    inputs unquantized.

    ONNX Runtime's QDQ quantizer leaves an excluded node in float but still feeds it the DequantizeLinear
    of a tensor its producer's quantized output made (a Conv's output is quantized for the next
    QLinearConv): the excluded layer would still see int8 values. Each such input is taken from before
    its QuantizeLinear instead, and Q/DQ pairs nothing reads any more are dropped.
    """
    from pipeline.onnxutil import producer_map
    from pipeline.targets.tensorrt.qdq import drop_dead_nodes, drop_unused_initializers

    out = model
    producer = producer_map(out.graph)
    names = set(nodes)
    for node in out.graph.node:
        if node.name not in names:
            continue
        for i, t in enumerate(node.input):
            dq = producer.get(t)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
    drop_dead_nodes(out)
    drop_unused_initializers(out)
    return out
