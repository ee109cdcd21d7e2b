"""Where Q/DQ go for TensorRT: a plan made on the FP32 graph, applied to the FP16 graph.

The rules (TensorRT's explicit-quantization guidance, as ModelOpt applies it):

* quantize the inputs of Conv, ConvTranspose, Gemm and MatMul (attention's
  batched MatMuls included), never their outputs; weights per-channel;
* at a residual Add fed by a quantized Conv, quantize the skip input and leave
  the Conv's input alone: the Add becomes the Conv's epilogue;
* quantize a pooling op's input when its output is quantized, so it runs INT8;
* give a Concat whose output is quantized the same scale on every input;
* everything else (LayerNorm, Softmax, GELU, ...) stays FP16;
* layers too small to gain (channels, K or N under ``min_channels``, GEMV)
  stay FP16, and the plan says why.

A plan names edges ``(node name, input index)``, so it applies to the FP16 graph
whose nodes keep their names even where the converter inserted Casts.
"""

from __future__ import annotations

import copy
import re
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from pipeline.config import QuantizeSection
from pipeline.errors import PipelineError
from pipeline.onnxutil import (
    attribute,
    constant_value,
    consumer_map,
    infer_shapes_lean,
    producer_map,
    unknown_op_types,
)

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
POOLING = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")

Edge = tuple[str, int]  # (consumer node name, input index)


@dataclass(frozen=True)
class WeightQuant:
    node: str
    op_type: str
    input_index: int
    tensor: str
    axis: int


@dataclass(frozen=True)
class Skipped:
    node: str
    op_type: str
    reason: str


@dataclass
class Plan:
    activations: dict[str, list[Edge]] = field(default_factory=dict)  # tensor -> edges to quantize
    weights: list[WeightQuant] = field(default_factory=list)
    shared_scale: list[tuple[str, ...]] = field(default_factory=list)  # Concat groups
    quantized: list[tuple[str, str]] = field(default_factory=list)  # (node, op_type) running INT8
    skipped: list[Skipped] = field(default_factory=list)

    def add_edge(self, tensor: str, edge: Edge) -> None:
        edges = self.activations.setdefault(tensor, [])
        if edge not in edges:
            edges.append(edge)

    @property
    def tensors(self) -> set[str]:
        return set(self.activations)


class GraphView:
    """Lookups over one graph: producers, consumers, constants, static shapes."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model  # the graph as given (no inferred shapes), for passes that rewrite it
        self.graph = infer_shapes_lean(model).graph  # its initializers have no data: the model's are used
        self.nodes = list(self.graph.node)
        self.producer = producer_map(self.graph)
        self.consumers = consumer_map(self.graph)
        self.initializers = {i.name: i for i in model.graph.initializer}
        for node in self.nodes:  # Constant nodes count as initializers
            if (value := constant_value(node)) is not None:
                self.initializers[node.output[0]] = value
        self.shapes: dict[str, list[int | None]] = {}
        for v in (*self.graph.value_info, *self.graph.input, *self.graph.output):
            if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
                self.shapes[v.name] = [
                    d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim
                ]
        self.outputs = {o.name for o in self.graph.output}
        self.inputs = {i.name for i in self.graph.input}
        self.value_infos = {v.name: v for v in (*self.graph.value_info, *self.graph.input, *self.graph.output)}

    @classmethod
    def of(cls, model: onnx.ModelProto | GraphView) -> GraphView:
        """Shape inference is the costly part on large graphs: callers that already have a view pass it."""
        return model if isinstance(model, GraphView) else cls(model)

    def with_weights(self, model: onnx.ModelProto) -> GraphView:
        """This view (of ``model``'s skeleton) reading its weights' data from ``model``: no second
        shape inference."""
        view = copy.copy(self)
        view.initializers = {**self.initializers, **{i.name: i for i in model.graph.initializer}}
        return view

    def is_const(self, tensor: str) -> bool:
        return tensor in self.initializers

    def array(self, tensor: str) -> np.ndarray:
        return numpy_helper.to_array(self.initializers[tensor])

    def shape(self, tensor: str) -> list[int | None] | None:
        if tensor in self.initializers:
            return list(self.initializers[tensor].dims)
        return self.shapes.get(tensor)

    def constant(self, tensor: str) -> np.ndarray | None:
        """The value of a tensor made from constants alone through ops that only move values (a tied
        LM head's ``Transpose(embedding)``), or None for an activation."""
        if tensor in self.initializers:
            return self.array(tensor)
        node = self.producer.get(tensor)
        if node is None or node.op_type not in _FOLDABLE or not node.input:
            return None
        inputs = [self.constant(t) if t else None for t in node.input]
        if any(v is None for t, v in zip(node.input, inputs, strict=True) if t):
            return None
        return _FOLDABLE[node.op_type](node, *inputs)

    def is_weight(self, tensor: str) -> bool:
        """Made from constants alone (what ``constant`` folds), judged from the structure: no weight
        data is read, so it works on a view of a graph without its weights too."""
        if tensor in self.initializers:
            return True
        node = self.producer.get(tensor)
        return (
            node is not None
            and node.op_type in _FOLDABLE
            and bool(node.input)
            and all(self.is_weight(t) for t in node.input if t)
        )

    def input_dependent(self) -> set[str]:
        """Tensors whose values depend on the graph inputs' values. A Shape or Size output depends on
        shapes only, and what is computed from constants and shapes is the same for every input
        (T5's relative-position buckets, with a log(0) = -inf inside): nothing to calibrate or quantize."""
        if not hasattr(self, "_input_dependent"):
            found = set(self.inputs)
            for node in self.nodes:  # topologically sorted
                if node.op_type not in ("Shape", "Size") and any(i in found for i in node.input if i):
                    found.update(node.output)
            self._input_dependent = found
        return self._input_dependent

    def depth(self) -> dict[str, int]:
        """Longest path (in nodes) from a graph input to each tensor."""
        depth: dict[str, int] = {}
        for node in self.nodes:  # ONNX graphs are topologically sorted
            d = 1 + max((depth.get(i, 0) for i in node.input if i), default=0)
            for o in node.output:
                depth[o] = d
        return depth


def _reshape(node: onnx.NodeProto, x: np.ndarray, shape: np.ndarray) -> np.ndarray:
    dims = [x.shape[i] if d == 0 and not attribute(node, "allowzero", 0) else int(d) for i, d in enumerate(shape)]
    return x.reshape(dims)


def _axes(node: onnx.NodeProto, axes: np.ndarray | None) -> tuple[int, ...]:
    return tuple(int(a) for a in (axes if axes is not None else attribute(node, "axes", [])))


# numpy for the ops ``GraphView.constant`` folds through: each only moves or casts values.
_FOLDABLE = {
    "Identity": lambda node, x: x,
    "Transpose": lambda node, x: np.transpose(x, attribute(node, "perm", None)),
    "Reshape": _reshape,
    "Flatten": lambda node, x: x.reshape(int(np.prod(x.shape[: attribute(node, "axis", 1)])), -1),
    "Squeeze": lambda node, x, axes=None: np.squeeze(x, _axes(node, axes)) if _axes(node, axes) else np.squeeze(x),
    "Unsqueeze": lambda node, x, axes=None: np.expand_dims(x, _axes(node, axes)),
    "Cast": lambda node, x: x.astype(onnx.helper.tensor_dtype_to_np_dtype(attribute(node, "to"))),
}


def weight_axis(op_type: str, node: onnx.NodeProto, rank: int, input_index: int = 1) -> int:
    """Output-channel axis of the weight: TensorRT's per-channel rule for each op."""
    if op_type == "Conv":
        return 0
    if op_type == "ConvTranspose":
        return 1
    if op_type == "Gemm":
        if input_index == 0:  # a constant A: its rows are the output channels
            return 1 if attribute(node, "transA", 0) else 0
        return 0 if attribute(node, "transB", 0) else 1
    return rank - 2 if input_index == 0 else rank - 1  # MatMul: A [.., M, K], B [.., K, N]


def plan_tensorrt(model: onnx.ModelProto | GraphView, settings: QuantizeSection) -> Plan:
    view = GraphView.of(model)
    check_exclusions(view, settings)
    plan = Plan()
    patterns = [re.compile(p) for p in settings.exclude_patterns]
    quantized_nodes: set[str] = set()

    for node in view.nodes:
        if node.op_type not in WEIGHTED:
            continue
        reason = excluded_reason(node, settings, patterns) or _too_small(node, view, settings.min_channels)
        if reason:
            plan.skipped.append(Skipped(node.name, node.op_type, reason))
            continue
        for idx in (0, 1):  # Conv: data, weight; Gemm/MatMul: A, B (either may be an activation)
            tensor = node.input[idx]
            shape = view.shape(tensor) if view.is_weight(tensor) else None
            if shape is not None:
                axis = weight_axis(node.op_type, node, len(shape), idx)
                plan.weights.append(WeightQuant(node.name, node.op_type, idx, tensor, axis))
            else:
                plan.add_edge(tensor, (node.name, idx))
        quantized_nodes.add(node.name)
        plan.quantized.append((node.name, node.op_type))

    _residual_adds(view, plan, quantized_nodes)
    _pooling_and_concat(view, plan)
    return plan


def excluded_reason(node: onnx.NodeProto, settings: QuantizeSection, patterns: list[re.Pattern[str]]) -> str | None:
    if node.name in settings.exclude_nodes:
        return "excluded by name (quantize.exclude_nodes)"
    if node.op_type in settings.exclude_op_types:
        return "excluded by op type (quantize.exclude_op_types)"
    for p in patterns:
        if p.search(node.name):
            return f"excluded by pattern {p.pattern!r} (quantize.exclude_patterns)"
    return None


def _too_small(node: onnx.NodeProto, view: GraphView, minimum: int) -> str | None:
    """Why a weighted layer would not gain from INT8, or None."""
    op = node.op_type
    if not any(t in view.input_dependent() for t in node.input[:2] if t):
        return "computes on constants and shapes only, the same for every input: nothing to quantize"
    if op in ("Conv", "ConvTranspose"):
        shape = view.shape(node.input[1]) if view.is_weight(node.input[1]) else None
        if shape is None or None in shape:
            return "weights are not constants"
        return _conv_too_small(op, tuple(shape), attribute(node, "group", 1), minimum)
    a, b = view.shape(node.input[0]), view.shape(node.input[1])
    if a is None or b is None or len(a) < 1 or len(b) < 1:
        return None
    if op == "Gemm":
        k = a[0] if attribute(node, "transA", 0) else a[-1]
        n = b[0] if attribute(node, "transB", 0) else b[-1]
        m = a[-1] if attribute(node, "transA", 0) else a[0]
    else:
        k, n = a[-1], b[-1]
        m = a[-2] if len(a) >= 2 else 1
    if k is not None and k < minimum:
        return f"K={k} < {minimum}: too small to gain from INT8"
    if n is not None and n < minimum:
        return f"N={n} < {minimum}: too small to gain from INT8"
    if m == 1 and (len(a) < 3 or all(d == 1 for d in a[:-1] if d is not None)):
        return "GEMV (M=1): memory-bound, INT8 does not help"
    return None


def _conv_too_small(op: str, w: tuple[int, ...], group: int, minimum: int) -> str | None:
    """A convolution as the GEMM it runs: K = input channels per group x kernel area, N = output
    channels. ViT's 16x16 patch embedding from 3 channels has K = 768. A depthwise conv (one input
    channel per group) is judged by its channel count: TensorRT runs it INT8 between INT8 neighbours."""
    kernel = int(np.prod(w[2:])) if len(w) > 2 else 1
    per_group_in, cout = (w[1], w[0]) if op == "Conv" else (w[0] // group, w[1] * group)
    channels = per_group_in * group
    if per_group_in == 1 and group > 1:
        return f"{channels} channel(s) < {minimum}: too small to gain from INT8" if channels < minimum else None
    k = per_group_in * kernel
    if k < minimum:
        taps = f"{per_group_in} input channel(s) x {kernel} kernel taps"
        return f"K={k} ({taps}) < {minimum}: too small to gain from INT8"
    if cout < minimum:
        return f"{cout} output channel(s) < {minimum}: too small to gain from INT8"
    return None


def _residual_adds(view: GraphView, plan: Plan, quantized: set[str]) -> None:
    """At an Add fed by a quantized Conv, quantize the other (skip) input."""
    depth = view.depth()
    for node in view.nodes:
        if node.op_type != "Add" or len(node.input) != 2 or any(view.is_const(i) for i in node.input):
            continue
        fusible = [idx for idx, t in enumerate(node.input) if _fuses_as_epilogue(t, view, quantized)]
        if not fusible:
            continue
        # Two conv branches (a downsampling block): the deeper one is the main path and
        # takes the Add as its epilogue; the shallower (shortcut) branch is quantized.
        main = max(fusible, key=lambda idx: depth.get(node.input[idx], 0))
        skip = 1 - main
        plan.add_edge(node.input[skip], (node.name, skip))


def _fuses_as_epilogue(tensor: str, view: GraphView, quantized: set[str]) -> bool:
    producer = view.producer.get(tensor)
    if producer is not None and producer.op_type == "BatchNormalization" and len(view.consumers.get(tensor, [])) == 1:
        tensor = producer.input[0]
        producer = view.producer.get(tensor)
    return (
        producer is not None
        and producer.op_type in ("Conv", "ConvTranspose")
        and producer.name in quantized
        and len(view.consumers.get(tensor, [])) == 1
    )


def _pooling_and_concat(view: GraphView, plan: Plan) -> None:
    """Extend quantization backwards through pooling and Concat until nothing changes."""
    changed = True
    grouped: set[str] = set()
    while changed:
        changed = False
        for node in view.nodes:
            out = node.output[0] if node.output else ""
            if out not in plan.activations:
                continue
            if node.op_type in POOLING and node.input[0] not in plan.activations:
                plan.add_edge(node.input[0], (node.name, 0))
                plan.quantized.append((node.name, node.op_type))
                changed = True
            elif node.op_type == "Concat" and node.name not in grouped:
                inputs = [t for t in node.input if not view.is_const(t)]
                for idx, t in enumerate(node.input):
                    if not view.is_const(t):
                        plan.add_edge(t, (node.name, idx))
                plan.shared_scale.append((out, *inputs))
                plan.quantized.append((node.name, node.op_type))
                grouped.add(node.name)
                changed = True


def summary_rows(plan: Plan, model: onnx.ModelProto) -> list[list[object]]:
    """Per op type: how many layers run INT8, how many stay FP16, Q/DQ pairs on inputs."""
    by_type: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    op_of = {n.name: n.op_type for n in model.graph.node}
    for _, op in plan.quantized:
        by_type[op][0] += 1
    for s in plan.skipped:
        by_type[s.op_type][1] += 1
    for edges in plan.activations.values():
        for node, _ in edges:
            by_type[op_of.get(node, "?")][2] += 1
    for w in plan.weights:
        by_type[w.op_type][2] += 1
    return [[op, *counts] for op, counts in sorted(by_type.items())]


def check_exclusions(view: GraphView, settings: QuantizeSection) -> None:
    """A node name the graph does not have, or an op type neither it nor ONNX knows, is a typo that
    would otherwise exclude nothing, silently."""
    names = {node.name for node in view.nodes}
    missing = [n for n in settings.exclude_nodes if n not in names]
    if missing:
        raise PipelineError(f"quantize.exclude_nodes names {missing[0]!r}, which is no node of the FP32 graph")
    unknown = unknown_op_types(settings.exclude_op_types, view.model)
    if unknown:
        raise PipelineError(f"quantize.exclude_op_types names {unknown[0]!r}, which is no ONNX op type")
