"""SmoothQuant on the ONNX graph: activation outliers migrated into the weights that read them.

A few channels of a transformer's LayerNorm output can be 10-100x wider than the rest; one
per-tensor int8 scale for the whole tensor then leaves the other channels a handful of steps.
Weights are quantized per output channel, so they can take the width instead. For a
LayerNormalization whose output only MatMul/Gemm layers with constant weights read (one: an
MLP's first Linear; several: Q, K and V), per input channel j

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

(``max|X_j|`` over the calibration data, ``calibrate.channels``; ``max|W_j|`` over every reader's
row j), and LayerNorm's gamma and beta are divided by s and each reader's weight row j multiplied
by s: (X / s)(s W) = X W, the same function in FP32 (Xiao et al., SmoothQuant, 2023, eq. 4).
Applied to the FP32 graph before its ranges are calibrated, so the calibrated ranges are the
smoothed tensors'; the FP16 graph takes the same smoothed initializers in its own dtypes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from pipeline.graphview import GraphView
from pipeline.onnxutil import attribute, constant_value
from pipeline.results import Smoothed

# alpha judged by ``errors`` for ``smoothquant = "auto"``; "off" is the graph left as it is.
ALPHA_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
OFF = "off"
SCALE_LIMITS = (1e-4, 1e4)  # s never so extreme that a row of weights leaves FP16's range


@dataclass(frozen=True)
class Reader:
    """A MatMul or Gemm reading the LayerNorm output as its first input."""

    node: str
    weight: str  # the initializer it multiplies by
    axis: int  # the weight's input-channel (K) axis: rows scaled by s


@dataclass(frozen=True)
class Target:
    """A LayerNorm output that can be smoothed, and where its scale goes."""

    norm: str  # the LayerNormalization node
    tensor: str  # its output: the activation smoothed
    gamma: str
    beta: str | None
    readers: tuple[Reader, ...]


def targets(view: GraphView) -> tuple[list[Target], list[tuple[str, str]]]:
    """The LayerNorm outputs that can be smoothed, and ``(node, reason)`` for each that cannot."""
    found, skipped = [], []
    for node in view.nodes:
        if node.op_type != "LayerNormalization":
            continue
        target, reason = _target(view, node)
        if target is not None:
            found.append(target)
        else:
            skipped.append((node.name, reason))
    return found, skipped


def _target(view: GraphView, node: onnx.NodeProto) -> tuple[Target | None, str]:
    out = node.output[0]
    shape = view.shape(out)
    if shape is None or attribute(node, "axis", -1) not in (-1, len(shape) - 1):
        return None, "normalizes over more than the last axis: no per-channel scale to fold"
    gamma, beta = node.input[1], node.input[2] if len(node.input) > 2 and node.input[2] else None
    if any(t not in view.initializers for t in (gamma, beta) if t):
        return None, "gamma or beta is not an initializer"
    if out in view.outputs:
        return None, "its output is a graph output"
    readers = []
    for reader in view.consumers.get(out, []):
        r = _reader(view, reader, out)
        if r is None:
            return None, f"{reader.op_type} {reader.name} reads its output and is not a MatMul/Gemm on weights"
        readers.append(r)
    if not readers:
        return None, "nothing reads its output"
    return Target(node.name, out, gamma, beta, tuple(readers)), ""


def _reader(view: GraphView, node: onnx.NodeProto, tensor: str) -> Reader | None:
    """``node`` as a Reader of ``tensor``: its input A, times an initializer only it reads."""
    if node.op_type not in ("MatMul", "Gemm") or node.input[0] != tensor or node.input[1] == tensor:
        return None
    weight = node.input[1]
    if weight not in view.initializers or _readers_of(view, weight) != 1 or len(view.shape(weight) or []) != 2:
        return None
    if node.op_type == "Gemm":
        if attribute(node, "transA", 0):
            return None
        return Reader(node.name, weight, 1 if attribute(node, "transB", 0) else 0)
    return Reader(node.name, weight, 0)


def _readers_of(view: GraphView, tensor: str) -> int:
    return len(view.consumers.get(tensor, []))


def weight_absmax(view: GraphView, target: Target) -> np.ndarray:
    """max|W_j| per input channel j over every reader's weights."""
    rows = [np.abs(np.moveaxis(view.array(r.weight), r.axis, 0)).max(axis=1) for r in target.readers]
    return np.max(rows, axis=0).astype(np.float64)


def scales(x_absmax: np.ndarray, w_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """s_j = max|X_j|^alpha / max|W_j|^(1-alpha); 1 where a channel or its weights are all zero."""
    x, w = np.asarray(x_absmax, np.float64), np.asarray(w_absmax, np.float64)
    live = (x > 0) & (w > 0)
    s = np.ones_like(x)
    s[live] = x[live] ** alpha / w[live] ** (1.0 - alpha)
    return np.clip(s, *SCALE_LIMITS)


@dataclass(frozen=True)
class Edit:
    """Input ``index`` of node ``node`` reads a new value: initializer ``new`` (``old`` replaced when
    the names agree; a parameter other nodes share gets a name of its own instead)."""

    node: str
    index: int
    old: str
    new: str
    value: np.ndarray  # float32: each graph stores it in the dtype it holds ``old`` in


def smooth(
    fp32: onnx.ModelProto, view: GraphView, alphas: Mapping[str, float | None], x_absmax: Mapping[str, np.ndarray]
) -> tuple[onnx.ModelProto, list[Edit], list[Smoothed]]:
    """``fp32`` with each target named in ``alphas`` (by its tensor) smoothed at its alpha (None: left
    alone), from the per-channel maxima ``x_absmax``; the edits (to give the FP16 graph); what was done."""
    by_tensor = {t.tensor: t for t in targets(view)[0]}
    edits: list[Edit] = []
    done = []
    for tensor, alpha in sorted(alphas.items()):
        target = by_tensor[tensor]
        x = np.asarray(x_absmax[tensor], np.float64)
        s = np.ones_like(x) if alpha is None else scales(x, weight_absmax(view, target), alpha)
        if alpha is not None:
            edits.extend(_edits(view, target, s.astype(np.float32)))
        ratios = outlier_ratio(x), outlier_ratio(x / s)
        readers = tuple(r.node for r in target.readers)
        done.append(Smoothed(target.norm, tensor, readers, alpha, float(s.min()), float(s.max()), *ratios))
    return apply(fp32, edits), edits, done


def _edits(view: GraphView, target: Target, s: np.ndarray) -> list[Edit]:
    """gamma and beta over s, each reader's weight rows times s. A value other nodes share, or a
    Constant node's (the TorchScript exporter's), becomes a new initializer for this node alone."""
    stored = {i.name for i in view.model.graph.initializer}

    def edit(node: str, index: int, name: str, value: np.ndarray) -> Edit:
        own = name in stored and _readers_of(view, name) == 1
        return Edit(node, index, name, name if own else f"{name}.smoothed.{node}", value)

    out = [edit(target.norm, i, t, view.array(t) / s) for i, t in ((1, target.gamma), (2, target.beta)) if t]
    for r in target.readers:
        shape = [1, 1]
        shape[r.axis] = -1
        out.append(edit(r.node, 1, r.weight, view.array(r.weight) * s.reshape(shape)))
    return out


def apply(model: onnx.ModelProto, edits: list[Edit]) -> onnx.ModelProto:
    """A copy of ``model`` (the FP32 graph or the FP16 graph made from it: same node names) with
    ``edits`` applied, each value in the dtype ``model`` holds the old one in (the FP16 graph keeps
    FP16 weights and FP32 LayerNorm parameters)."""
    from pipeline.fp16 import to_fp16

    if not edits:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    inits = {i.name: i for i in copy.graph.initializer}
    consts = {n.output[0]: v for n in copy.graph.node if (v := constant_value(n)) is not None}
    nodes = {n.name: n for n in copy.graph.node}
    for e in edits:
        node, old = nodes.get(e.node), inits.get(e.old, consts.get(e.old))
        if node is None or old is None or node.input[e.index] != e.old:
            raise ValueError(f"{e.node} input {e.index} is not {e.old!r} in this graph")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(old.data_type)
        value = numpy_helper.from_array(to_fp16(e.value) if dtype == np.float16 else e.value.astype(dtype), e.new)
        if e.new == e.old:
            inits[e.old].CopyFrom(value)
        else:
            copy.graph.initializer.append(value)
            node.input[e.index] = e.new
    # An old value no node reads any more (every LayerNorm sharing it has its own copy now) goes.
    read, old = {t for n in copy.graph.node for t in n.input}, {e.old for e in edits} - {e.new for e in edits}
    for init in [i for i in copy.graph.initializer if i.name in old and i.name not in read]:
        copy.graph.initializer.remove(init)
    for name in old - read:
        if name in consts:
            copy.graph.node.remove(next(n for n in copy.graph.node if n.output and n.output[0] == name))
    return copy


def outlier_ratio(x_absmax: np.ndarray) -> float:
    median = float(np.median(x_absmax))
    return float(np.max(x_absmax)) / median if median > 0 else float("inf")
