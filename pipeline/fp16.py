"""``Fp16OnnxFromOnnx``: the FP16 graph TensorRT 11 builds an FP16 engine from.

TensorRT 11 networks are strongly typed, so precision comes from the graph's
dtypes. The FP16 graph is derived from the FP32 one, so node and tensor names
line up with the placement plan and the calibration ranges.

The conversion is typed tensor by tensor rather than by renaming value infos:
each node computes in FP16 unless its op is in ``export.keep_fp32`` or its ONNX
schema has no FP16 form; each input slot takes the type its schema allows; a
Cast is inserted (one per tensor and type) wherever a tensor's type and a slot's
differ. Attributes that fix an output type (``Cast.to``, ``ConstantOfShape.value``,
``Constant.value``, ...) follow their node, and each graph output is cast to the
I/O type whatever produced it. Every tensor's type is then re-derived by strict
shape inference, so a mistyped tensor cannot hide in stale value infos.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pipeline import onnxutil
from pipeline.config import Config
from pipeline.console import info
from pipeline.data import Feed
from pipeline.errors import PipelineError
from pipeline.graphview import GraphView
from pipeline.targets.base import FP16

FP16_MAX = 65504.0
KEPT_FP32 = "trtpipe.kept_fp32"  # the FP16 graph's record of the nodes it keeps FP32 beyond FP16's range, and why
FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
_TYPE_STR = {FLOAT: "tensor(float)", FLOAT16: "tensor(float16)"}
_DTYPE_ATTRS = ("to", "dtype")  # Cast.to, EyeLike/Random*.dtype: an output type set by attribute


def to_fp16(array: np.ndarray) -> np.ndarray:
    """FP16 values, clipped to its finite range (a weight beyond 65504 would become inf)."""
    return np.clip(array, -FP16_MAX, FP16_MAX).astype(np.float16)


class Fp16OnnxFromOnnx:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def __call__(self, fp32: onnx.ModelProto, feed: Feed | None = None) -> onnx.ModelProto:
        """The FP16 graph of ``fp32``; nodes whose constants, or whose activations on ``feed`` (export's
        parity rows), go beyond FP16's range stay FP32, named in the output and the graph's metadata."""
        cfg = self.cfg
        unknown = onnxutil.unknown_op_types(cfg.export.keep_fp32, fp32)
        if unknown:
            raise PipelineError(
                f"{cfg.path}: export.keep_fp32 names {unknown[0]!r}, which is no ONNX op type (spelled as ONNX "
                f"does, e.g. LayerNormalization)"
            )
        reasons = {name: f"a constant reaches {value:.6g}" for name, (_, value) in overflowing_nodes(fp32).items()}
        op_types = {n.name: n.op_type for n in fp32.graph.node}
        for name, (_, tensor, value) in (overflowing_activations(fp32, cfg, feed) if feed else {}).items():
            reasons.setdefault(name, f"activation {tensor!r} reaches {value:.6g} on the parity rows")
        for name, reason in sorted(reasons.items()):
            info(
                f"{cfg.name}: kept in FP32 in the FP16 graph: {op_types[name]} {name} "
                f"({reason}, beyond FP16's {FP16_MAX:g})"
            )
        model = fp16_graph(fp32, cfg.export.keep_fp32, cfg.export.io_dtype, tuple(sorted(reasons)))
        kept = (
            {KEPT_FP32: "; ".join(f"{name}: {reason}" for name, reason in sorted(reasons.items()))} if reasons else {}
        )
        onnx.helper.set_model_props(
            model,
            {
                **{p.key: p.value for p in fp32.metadata_props},
                "trtpipe.model": cfg.name,
                "trtpipe.precision": FP16,
                **kept,
            },
        )
        return onnxutil.check(model, f"{cfg.name} fp16 graph")


def fp16_graph(
    fp32: onnx.ModelProto, keep_fp32: tuple[str, ...], io_dtype: str = "float32", keep_nodes: tuple[str, ...] = ()
) -> onnx.ModelProto:
    """The FP16 graph, unchecked: ops in ``keep_fp32`` and the nodes named in ``keep_nodes`` stay FP32;
    graph I/O in ``io_dtype``."""
    io_type = FLOAT if io_dtype == "float32" else FLOAT16
    return _Converter(fp32, set(keep_fp32), io_type, keep_nodes=set(keep_nodes)).run()


def overflowing_nodes(model: onnx.ModelProto) -> dict[str, tuple[str, float]]:
    """Nodes with a float constant beyond FP16's range, by name: (op type, the largest magnitude).
    Converted, the constant would be clipped to 65,504 (a BatchNorm's running variance of 497,160 in a
    trained CNN put its FP16 graph 10% off), so the node computes in FP32 instead."""
    consts = {i.name: i for i in model.graph.initializer}
    consts |= {n.output[0]: _constant_value(n) for n in model.graph.node if n.op_type == "Constant"}
    found = {}
    for node in model.graph.node:
        for tensor in node.input:
            largest = _largest(consts.get(tensor))
            if largest > FP16_MAX:
                found[node.name] = (node.op_type, max(largest, found.get(node.name, ("", 0.0))[1]))
    return found


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """A Constant node's tensor (None: a Constant of another attribute, a scalar or list of ints...)."""
    return next((a.t for a in node.attribute if a.name == "value"), None)


def _largest(proto: onnx.TensorProto | None) -> float:
    """The largest finite magnitude of a float constant (0 for none, or one of another type)."""
    if proto is None or proto.data_type not in (FLOAT, TensorProto.DOUBLE):
        return 0.0
    return _peak(numpy_helper.to_array(proto))[0]


def overflowing_activations(fp32: onnx.ModelProto, cfg: Config, feed: Feed) -> dict[str, tuple[str, str, float]]:
    """Nodes making or reading a float activation beyond FP16's range on ``feed`` (export's parity
    rows) run through ``fp32``, by name: (op type, the tensor, its largest magnitude). Converted, such
    a value would become inf (or a clamp would change it), so the node computes in FP32 instead."""
    view = GraphView(fp32)
    peaks = _peaks(view, cfg, feed)
    found: dict[str, tuple[str, str, float]] = {}
    for node in view.nodes:
        for tensor in (*node.input, *node.output):
            peak = peaks.get(tensor, (0.0, False))[0]
            if peak > FP16_MAX and peak > found.get(node.name, ("", "", 0.0))[2]:
                found[node.name] = (node.op_type, tensor, peak)
    return found


def overflow_origins(fp16: onnx.ModelProto, cfg: Config, feed: Feed) -> list[str]:
    """The nodes of the FP16 graph making inf or NaN from finite inputs on ``feed``, as "op name"; a Cast
    into FP16 with the node whose output it casts. (ONNX Runtime's CPU kernels compute FP16 ops in FP32
    and round once, so on a CPU a value overflows where it is cast: at a graph output in FP16 I/O.)"""
    view = GraphView(fp16)
    peaks = _peaks(view, cfg, feed)
    finite = lambda t: not peaks.get(t, (0.0, False))[1]  # noqa: E731  constants and integers count as finite
    found = []
    for node in view.nodes:
        if all(finite(t) for t in node.input if t) and not all(finite(t) for t in node.output if t):
            src = view.producer.get(node.input[0]) if node.op_type == "Cast" else None
            found.append(f"{node.op_type} {node.name}" + (f" (of {src.op_type} {src.name})" if src else ""))
    return found


def _peaks(view: GraphView, cfg: Config, feed: Feed) -> dict[str, tuple[float, bool]]:
    """Per float activation: (its largest finite magnitude on ``feed``, whether it held inf or NaN), each
    group of tensors captured in its own pass within calibration's memory budget."""
    from pipeline import ortsession
    from pipeline.calibration.memory import capture_plan
    from pipeline.data import batch_size_of, slice_rows

    varying = view.input_dependent()
    tensors = [
        t
        for t, v in view.value_infos.items()
        if v.type.tensor_type.elem_type in (FLOAT, FLOAT16) and t in varying and t not in view.inputs
    ]
    rows = batch_size_of(feed, cfg)
    plan = capture_plan(view, tensors, rows)
    peaks = {name: _peak(value) for name, value in feed.items()}
    probe = onnx.ModelProto()
    probe.CopyFrom(view.model)
    for group in plan.groups:
        del probe.graph.output[:]
        probe.graph.output.extend(view.value_infos[t] for t in group)
        session = ortsession.session(probe, cpu_only=True, arena=False)
        for start in range(0, rows, plan.micro_batch):
            outs = session.run(
                None, ortsession.feed_for(session, slice_rows(feed, cfg, start, start + plan.micro_batch))
            )
            for name, value in zip(group, outs, strict=True):
                peak, bad = _peak(value)
                old = peaks.get(name, (0.0, False))
                peaks[name] = (max(peak, old[0]), bad or old[1])
    return peaks


def _peak(value: np.ndarray) -> tuple[float, bool]:
    value = np.asarray(value)
    if value.dtype.kind != "f" or not value.size:
        return 0.0, False
    finite = np.isfinite(value)
    magnitude = float(np.abs(value[finite]).max()) if finite.any() else 0.0
    return magnitude, not bool(finite.all())


@dataclass
class _Converter:
    fp32: onnx.ModelProto
    keep_fp32: set[str]
    io_type: int
    types: dict[str, int] = field(default_factory=dict)  # each tensor's elem type as it is now
    casts: dict[tuple[str, int], str] = field(default_factory=dict)  # (tensor, type) -> cast output
    opset: int = 19
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    keep_nodes: set[str] = field(default_factory=set)  # nodes kept FP32 by name (a constant beyond FP16)

    def run(self) -> onnx.ModelProto:
        model = onnx.ModelProto()
        model.CopyFrom(self.fp32)
        graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 19)
        inferred = onnx.shape_inference.infer_shapes(self.fp32).graph
        original = {v.name: v.type.tensor_type.elem_type for v in (*inferred.value_info, *inferred.input)}
        original.update({o.name: o.type.tensor_type.elem_type for o in inferred.output})
        original.update({i.name: i.data_type for i in inferred.initializer})
        wants = self._slot_types(graph.node, original)
        self._convert_sources(graph, wants)
        for position, node in enumerate(graph.node):
            self._convert_node(position, node, wants, original)
        self._cast_outputs(graph)
        del graph.node[:]
        graph.node.extend(self.nodes)
        del graph.value_info[:]  # re-derived by shape inference from the nodes as they now are
        return model

    def _fp16_node(self, node: onnx.NodeProto) -> bool:
        if node.op_type in self.keep_fp32 or node.name in self.keep_nodes or node.domain not in ("", "ai.onnx"):
            return False
        if node.op_type == "Constant" and _largest(_constant_value(node)) > FP16_MAX:
            return False  # its readers stay FP32 (overflowing_nodes); the value it makes must not be clipped
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            return False  # control flow: its subgraphs read outer tensors by name, left as they were
        return _schema(node, self.opset) is not None

    def _slot_types(self, nodes, original: dict[str, int]) -> dict[tuple[int, int], int]:
        """The float type each (node position, input index) takes: FP16 where the node computes in FP16 and its
        schema allows it, else FP32."""
        wants = {}
        for position, node in enumerate(nodes):
            fp16 = self._fp16_node(node)
            for idx, tensor in enumerate(node.input):
                if tensor and original.get(tensor) in (FLOAT, FLOAT16):
                    allowed = _allowed(node, idx, self.opset, is_input=True)
                    wants[(position, idx)] = FLOAT16 if fp16 and _TYPE_STR[FLOAT16] in allowed else FLOAT
        return wants

    def _convert_sources(self, graph: onnx.GraphProto, wants: dict[tuple[int, int], int]) -> None:
        """Initializers and graph inputs: FP16 when every reader takes FP16 (or the I/O type says so)."""
        readers: dict[str, set[int]] = {}
        for position, node in enumerate(graph.node):
            for idx, tensor in enumerate(node.input):
                if (position, idx) in wants:
                    readers.setdefault(tensor, set()).add(wants[(position, idx)])
        for init in graph.initializer:
            if init.data_type == FLOAT and readers.get(init.name) == {FLOAT16}:
                init.CopyFrom(numpy_helper.from_array(to_fp16(numpy_helper.to_array(init)), init.name))
            self.types[init.name] = init.data_type
        for value in graph.input:
            tensor_type = value.type.tensor_type
            if tensor_type.elem_type == FLOAT and self.io_type == FLOAT16:
                tensor_type.elem_type = FLOAT16
            self.types[value.name] = tensor_type.elem_type

    def _convert_node(self, position: int, node: onnx.NodeProto, wants, original: dict[str, int]) -> None:
        for idx, tensor in enumerate(node.input):
            want = wants.get((position, idx))
            if want is not None and self.types.get(tensor) in (FLOAT, FLOAT16) and self.types[tensor] != want:
                node.input[idx] = self._cast(tensor, want)
        fp16 = self._fp16_node(node)
        if fp16:
            _retype_attributes(node)
        for idx, out in enumerate(node.output):
            was = original.get(out)
            fixed_fp32 = _TYPE_STR[FLOAT16] not in _allowed(node, idx, self.opset, is_input=False)
            self.types[out] = FLOAT16 if fp16 and was == FLOAT and not fixed_fp32 else (was or 0)
        self.nodes.append(node)

    def _cast(self, tensor: str, to: int) -> str:
        key = (tensor, to)
        if key not in self.casts:
            name = f"{tensor}.{'fp16' if to == FLOAT16 else 'fp32'}"
            self.nodes.append(helper.make_node("Cast", [tensor], [name], name=f"{name}.Cast", to=to))
            self.casts[key] = name
            self.types[name] = to
        return self.casts[key]

    def _cast_outputs(self, graph: onnx.GraphProto) -> None:
        """Each float graph output in the I/O type: the producer's tensor is renamed, a Cast makes the output."""
        for value in graph.output:
            tensor_type = value.type.tensor_type
            if tensor_type.elem_type not in (FLOAT, FLOAT16):
                continue
            tensor_type.elem_type = self.io_type
            made = self.types.get(value.name)
            if made in (FLOAT, FLOAT16) and made != self.io_type:
                inner = f"{value.name}.{'fp16' if made == FLOAT16 else 'fp32'}_out"
                for node in self.nodes:
                    node.input[:] = [inner if t == value.name else t for t in node.input]
                    node.output[:] = [inner if t == value.name else t for t in node.output]
                self.nodes.append(
                    helper.make_node("Cast", [inner], [value.name], name=f"{value.name}.Cast", to=self.io_type)
                )


def _retype_attributes(node: onnx.NodeProto) -> None:
    """Attributes that decide a float output's type follow the node into FP16."""
    if node.op_type == "ConstantOfShape" and not any(a.name == "value" for a in node.attribute):
        # No value means float32 zeros: spell it out, in FP16 (Swin's attention masks are made so).
        node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(np.zeros(1, np.float16))))
        return
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT:
            attr.t.CopyFrom(numpy_helper.from_array(to_fp16(numpy_helper.to_array(attr.t)), attr.t.name))
        elif attr.type == onnx.AttributeProto.INT and attr.name in _DTYPE_ATTRS and attr.i == FLOAT:
            attr.i = FLOAT16


def _schema(node: onnx.NodeProto, opset: int):
    try:
        return onnx.defs.get_schema(node.op_type, opset, node.domain or "")
    except onnx.defs.SchemaError:
        return None


def _allowed(node: onnx.NodeProto, idx: int, opset: int, is_input: bool) -> set[str]:
    """Types the schema allows at an input or output slot (variadic slots repeat the last formal)."""
    schema = _schema(node, opset)
    if schema is None:
        return {_TYPE_STR[FLOAT]}
    formals = schema.inputs if is_input else schema.outputs
    if not formals:
        return {_TYPE_STR[FLOAT]}
    type_str = formals[min(idx, len(formals) - 1)].type_str
    for constraint in schema.type_constraints:
        if constraint.type_param_str == type_str:
            return set(constraint.allowed_type_strs)
    return {type_str}
