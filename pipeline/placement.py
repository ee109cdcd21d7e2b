"""What every target's Q/DQ placement shares: the plan and placement types, which layers are weighted,
the per-channel weight axis, and why a layer stays float (excluded, or too small to gain).

The TensorRT rules are in ``pipeline.targets.tensorrt.placement``, the ONNX Runtime CPU ones in
``pipeline.targets.onnxruntime_cpu.quantize``. A plan names edges ``(node name, input index)``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx

from pipeline.config import QuantizeSection
from pipeline.errors import PipelineError
from pipeline.graphview import GraphView
from pipeline.onnxutil import attribute, unknown_op_types

if TYPE_CHECKING:
    from pipeline.targets.tensorrt.qdq import Scheme

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
POOLING = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")
# Ops that only move or select values: TensorRT moves a Q/DQ pair across them (a Gather only on a
# constant index), so the tensors on either side share one scale.
MOVES = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Gather")

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


@dataclass(frozen=True)
class Placement:
    """Where one target's graph quantizes, as the check simulates it.

    ``activations`` maps each quantized tensor to the edges that read it through Q/DQ (None: every
    reader, and the graph output it may be); ``weights`` are (node, input index, weight tensor,
    per-channel axis); ``shared`` are tensors given one scale (a Concat's inputs and output);
    ``range_of`` names the tensor whose range a tensor takes (a folded Relu's input, its output's;
    resolved to the end of a chain).
    """

    symmetric: bool  # int8 over +-amax, zero point 0 (TensorRT); else uint8 over [min, max] clipped to +-amax
    activations: Mapping[str, tuple[Edge, ...] | None]
    weights: tuple[tuple[str, int, str, int], ...]
    shared: tuple[tuple[str, ...], ...] = ()
    range_of: Mapping[str, str] = field(default_factory=dict)
    scheme: Scheme | None = None  # symmetric: the 8-bit type its Q/DQ store (None: int8; FP8 E4M3 for FP8)


@dataclass
class Plan:
    activations: dict[str, list[Edge]] = field(default_factory=dict)  # tensor -> edges to quantize
    weights: list[WeightQuant] = field(default_factory=list)
    shared_scale: list[tuple[str, ...]] = field(default_factory=list)  # Concat groups
    # A pooling or data-movement op's output takes its input's range: TensorRT carries one scale
    # through the op, and a range chosen apart could only be wider than what the op can emit (or clip
    # what it passes on).
    range_of: dict[str, str] = field(default_factory=dict)
    quantized: list[tuple[str, str]] = field(default_factory=list)  # (node, op_type) running INT8
    skipped: list[Skipped] = field(default_factory=list)

    def add_edge(self, tensor: str, edge: Edge) -> None:
        edges = self.activations.setdefault(tensor, [])
        if edge not in edges:
            edges.append(edge)

    @property
    def tensors(self) -> set[str]:
        return set(self.activations)

    def simulated(self) -> Placement:
        """This plan as auto's whole-graph check simulates it: int8 on exactly these edges."""
        edges = {tensor: tuple(e) for tensor, e in self.activations.items()}
        weights = tuple((w.node, w.input_index, w.tensor, w.axis) for w in self.weights)
        ranged = {t: self.ranged_as(t) for t in self.range_of}
        return Placement(True, edges, weights, self.scale_groups(), ranged)

    def scale_groups(self) -> tuple[tuple[str, ...], ...]:
        """The quantized tensors that must share one scale, in groups of two or more: those a pooling
        or data-movement op ties (``range_of``) joined with each Concat's inputs and output."""
        return tied_groups(self.tensors, [*self.range_of.items(), *self.shared_scale])

    def ranged_as(self, tensor: str) -> str:
        """The tensor whose range ``tensor`` takes (itself, or a pooling op's input, transitively)."""
        seen = {tensor}
        while tensor in self.range_of and self.range_of[tensor] not in seen:
            tensor = self.range_of[tensor]
            seen.add(tensor)
        return tensor


def tied_groups(tensors: set[str], ties: list[tuple[str, ...]]) -> tuple[tuple[str, ...], ...]:
    """``tensors`` joined by ``ties`` (each a tuple of tensors sharing a scale), transitively: the
    groups of two or more, each sorted, members outside ``tensors`` dropped."""
    parent: dict[str, str] = {}

    def root(t: str) -> str:
        while parent.setdefault(t, t) != t:
            t = parent[t]
        return t

    for tie in ties:
        for t in tie[1:]:
            parent[root(t)] = root(tie[0])
    groups: dict[str, list[str]] = defaultdict(list)
    for t in sorted(tensors):
        groups[root(t)].append(t)
    return tuple(tuple(g) for g in sorted(groups.values()) if len(g) > 1)


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


def excluded_reason(node: onnx.NodeProto, settings: QuantizeSection, patterns: list[re.Pattern[str]]) -> str | None:
    if node.name in settings.exclude_nodes:
        return "excluded by name (quantize.exclude_nodes)"
    if node.op_type in settings.exclude_op_types:
        return "excluded by op type (quantize.exclude_op_types)"
    for p in patterns:
        if p.search(node.name):
            return f"excluded by pattern {p.pattern!r} (quantize.exclude_patterns)"
    return None


def too_small(node: onnx.NodeProto, view: GraphView, minimum: int) -> str | None:
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
            by_type[op_of[node]][2] += 1  # an edge names a node of the graph
    for w in plan.weights:
        by_type[w.op_type][2] += 1
    return [[op, *counts] for op, counts in sorted(by_type.items())]


def scale_lines(plan: Plan, view: GraphView) -> list[str]:
    """The placement report's account of shared scales: one line per group joined by a Concat (its
    scale, the widest of the group's ranges), and one counting the ties across pooling and data movement."""
    producer_op = {out: n.op_type for n in view.nodes for out in n.output}
    concats = {group[0]: group for group in plan.shared_scale}
    lines = []
    for group in plan.scale_groups():
        joined = [t for t in group if t in concats]
        if joined:
            lines.append(
                f"one scale, the widest of their ranges, for {len(group)} tensors joined by "
                f"{len(joined)} Concat(s) (a fused Concat copies 8-bit values): {', '.join(group)}"
            )
    ops = sorted({producer_op[t] for t in plan.range_of if t in producer_op})
    if plan.range_of:
        lines.append(
            f"{len(plan.range_of)} tensor(s) take their input's scale across {', '.join(ops)}: TensorRT moves "
            f"Q/DQ across these ops"
        )
    return lines


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
