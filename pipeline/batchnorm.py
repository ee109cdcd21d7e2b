"""Inference BatchNormalization folded into the layer before it, in FP32, before the FP16 conversion.

A BatchNorm after a Conv, a Gemm or a MatMul + Add (bias) scales each output channel by
``scale / sqrt(var + epsilon)`` and shifts it: the same as that layer with its weights scaled along
the output-channel axis and its bias shifted. TensorRT folds it so when it builds; folded here, the
FP16 graph never holds a running variance beyond FP16's 65,504 (CREPE full's, trained, reach 497,160)
nor the tiny ``1 / sqrt(var)`` of a channel that hardly varies, and every graph derived from the FP32
one (the FP16 graph, both w8a8 graphs, their plans and ranges) computes the same layer.

The layer's output tensor gives way to the BatchNorm's, so every tensor name after it is unchanged.
A BatchNorm folds only when its input is read by it alone, its parameters and the layer's weights
are constants read by nothing else, and its channel axis (1) is the layer's output channel.

Nor does it fold where it would shrink a channel's weights below what an 8-bit scale stored in FP16
resolves: the TensorRT graph's per-channel weight scale (largest |weight| / 127) would fall under
FP16's smallest normal, be floored there, and round the channel's weights to a few levels
(RapidOCR's detector: running variances near 1e8 shrink a conv's weights four thousandfold). Left
as it is, such a BatchNorm stays FP32 in the FP16 graph, and TensorRT folds it into the dequantized
weights when it builds, in FP32.

A scalar Mul -> Add after a Conv (a learned scale and shift, ``fold_scalar_affines``) folds the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from pipeline.graphview import GraphView
from pipeline.onnxutil import attribute

FLOAT = TensorProto.FLOAT
# The smallest largest-|weight| of a channel whose int8 scale (/ 127) is still a normal FP16 number.
FP16_SCALABLE_WEIGHT = 127 * float(np.finfo(np.float16).tiny)


@dataclass(frozen=True)
class _Fold:
    bn: onnx.NodeProto
    layer: onnx.NodeProto  # the Conv, Gemm or Add whose output the BatchNorm reads
    weight: str  # the constant scaled along ``axis``
    axis: int
    bias: str | None  # the constant shifted (None: the layer has none yet)


def fold_batchnorm(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """``model`` with each BatchNormalization that folds folded, and their names (``model`` itself, none)."""
    view = GraphView(model)
    folds = [f for node in view.nodes if node.op_type == "BatchNormalization" if (f := _foldable(node, view))]
    if not folds:
        return model, []
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    layers = {n.output[0]: n for n in out.graph.node}  # by output: names may be empty or repeated
    at = _positions(out.graph, [f.bn for f in folds])
    for fold in folds:
        _apply(fold, inits, layers[fold.layer.output[0]], out.graph)
    parameters = {t for f in folds for t in f.bn.input[1:5]}  # read by their BatchNorm alone
    renamed = {f.layer.output[0] for f in folds}
    return out, _drop(out.graph, [f.bn for f in folds], at, parameters, renamed)


def _positions(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> set[int]:
    """Where ``nodes`` stand in ``graph``, found by output (names may be empty or repeated): taken
    before a fold gives its layer the folded node's output."""
    gone = {n.output[0] for n in nodes}
    return {i for i, n in enumerate(graph.node) if n.output[0] in gone}


def _drop(
    graph: onnx.GraphProto, nodes: list[onnx.NodeProto], at: set[int], constants: set[str], renamed: set[str]
) -> list[str]:
    """Removes the folded ``nodes`` (at positions ``at``), the ``constants`` only they read and the
    value infos of the ``renamed`` tensors; returns the nodes' names (or outputs, where they have none)."""
    kept = [n for i, n in enumerate(graph.node) if i not in at]
    del graph.node[:]
    graph.node.extend(kept)
    weights = [i for i in graph.initializer if i.name not in constants]
    del graph.initializer[:]
    graph.initializer.extend(weights)
    values = [v for v in graph.value_info if v.name not in renamed]
    del graph.value_info[:]
    graph.value_info.extend(values)
    return sorted(n.name or n.output[0] for n in nodes)


def _foldable(bn: onnx.NodeProto, view: GraphView) -> _Fold | None:
    if attribute(bn, "training_mode", 0) or len([o for o in bn.output if o]) != 1:
        return None
    if not all(view.is_const(t) and _only_reader(t, view) for t in bn.input[1:5]):
        return None
    src = bn.input[0]
    layer = view.producer.get(src)
    if layer is None or len(view.consumers.get(src, [])) != 1 or src in view.outputs:
        return None
    if layer.op_type == "Conv" and len(layer.input) >= 2:
        return _checked(bn, layer, layer.input[1], 0, layer.input[2] if len(layer.input) > 2 else None, view)
    if layer.op_type == "Gemm" and not attribute(layer, "transA", 0):
        axis = 0 if attribute(layer, "transB", 0) else 1
        if attribute(layer, "alpha", 1.0) != 1.0 or attribute(layer, "beta", 1.0) != 1.0:
            return None
        return _checked(bn, layer, layer.input[1], axis, layer.input[2] if len(layer.input) > 2 else None, view)
    if layer.op_type == "Add":
        return _matmul_add(bn, layer, view)
    return None


def _matmul_add(bn: onnx.NodeProto, add: onnx.NodeProto, view: GraphView) -> _Fold | None:
    """MatMul(x, W) + b over [batch, N]: BatchNorm's channel axis is N, W's last axis."""
    for idx in (0, 1):
        matmul, bias = view.producer.get(add.input[idx]), add.input[1 - idx]
        if matmul is None or matmul.op_type != "MatMul" or not view.is_const(bias):
            continue
        shape = view.shape(add.output[0])
        weight = matmul.input[1]
        if shape is None or len(shape) != 2 or len(view.consumers.get(add.input[idx], [])) != 1:
            return None
        if not view.is_const(weight) or len(view.shape(weight)) != 2:
            return None
        return _checked(bn, add, weight, 1, bias, view)
    return None


def _checked(bn, layer, weight: str, axis: int, bias: str | None, view: GraphView) -> _Fold | None:
    """The fold, where the weight (float) and bias are constants only this layer reads, with one value
    per output channel, as the BatchNorm has."""
    # Initializers only: a Constant node's value (Paddle2ONNX writes weights so) is left unfolded.
    stored = {i.name for i in view.model.graph.initializer}
    if any(t not in stored for t in (weight, *([bias] if bias else []), *bn.input[1:5])):
        return None
    shape = view.shape(weight)
    if not _only_reader(weight, view) or view.initializers[weight].data_type != FLOAT:
        return None
    channels = shape[axis]
    if bias is not None and not _only_reader(bias, view):
        return None
    if bias is not None and int(np.prod(view.shape(bias))) not in (1, channels):
        return None
    if any(int(np.prod(view.shape(t))) != channels for t in bn.input[1:5]):
        return None
    fold = _Fold(bn, layer, weight, axis, bias)
    return None if _shrinks_below_fp16_scales(fold, view) else fold


def _factor(bn: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> np.ndarray:
    """The BatchNorm's per-channel multiplier, ``scale / sqrt(var + epsilon)``, in float64."""
    scale, var = (numpy_helper.to_array(inits[t]).astype(np.float64).reshape(-1) for t in (bn.input[1], bn.input[4]))
    return scale / np.sqrt(var + attribute(bn, "epsilon", 1e-5))


def _channel_peaks(weight: np.ndarray, axis: int) -> np.ndarray:
    return np.abs(np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)).max(axis=1)


def _shrinks_below_fp16_scales(fold: _Fold, view: GraphView) -> bool:
    """Would folding take some channel's largest |weight| from above ``FP16_SCALABLE_WEIGHT`` to below it?"""
    before = _channel_peaks(view.array(fold.weight).astype(np.float64), fold.axis)
    after = before * np.abs(_factor(fold.bn, view.initializers))
    return bool(np.any((after < FP16_SCALABLE_WEIGHT) & (before >= FP16_SCALABLE_WEIGHT)))


def _only_reader(tensor: str, view: GraphView) -> bool:
    return len(view.consumers.get(tensor, [])) == 1 and tensor not in view.outputs


def _apply(fold: _Fold, inits: dict[str, onnx.TensorProto], layer: onnx.NodeProto, graph: onnx.GraphProto) -> None:
    """Scale the weight, shift (or add) the bias, and hand the layer the BatchNorm's output; in float64."""
    bn = fold.bn
    shift, mean = (numpy_helper.to_array(inits[t]).astype(np.float64).reshape(-1) for t in bn.input[2:4])
    factor = _factor(bn, inits)
    weight = numpy_helper.to_array(inits[fold.weight])
    shape = [1] * weight.ndim
    shape[fold.axis] = -1
    folded = weight.astype(np.float64) * factor.reshape(shape)
    inits[fold.weight].CopyFrom(numpy_helper.from_array(folded.astype(weight.dtype), fold.weight))
    bias = numpy_helper.to_array(inits[fold.bias]).astype(np.float64).reshape(-1) if fold.bias else 0.0
    shifted = ((bias - mean) * factor + shift).astype(weight.dtype)
    if fold.bias:
        inits[fold.bias].CopyFrom(numpy_helper.from_array(shifted, fold.bias))
    else:
        name = f"{layer.name or bn.name}.bias"
        graph.initializer.append(numpy_helper.from_array(shifted, name))
        layer.input.append(name)
    layer.output[0] = bn.output[0]


@dataclass(frozen=True)
class _Affine:
    conv: onnx.NodeProto
    mul: onnx.NodeProto
    add: onnx.NodeProto
    factor: float  # the Mul's constant
    shift: float  # the Add's constant


def fold_scalar_affines(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """``model`` with each Conv -> Mul(c) -> Add(d) by scalar constants folded into the conv (weights x c,
    bias x c + d), and the folded Muls' and Adds' names (``model`` itself, none).

    A learned scale and shift after a conv (PP-LCNetV3's, in RapidOCR's detector) is a BatchNorm of
    one channel: TensorRT folds it when it builds, and a graph that keeps it quantizes the conv's
    output twice more in ONNX Runtime's CPU graph, in uint8 ranges of their own (QLinearMul,
    QLinearAdd). It folds under the same conditions as a BatchNorm: every tensor read by its one
    reader, constants from initializers, and no channel's weights shrunk below an FP16 8-bit scale."""
    view = GraphView(model)
    folds = [f for node in view.nodes if node.op_type == "Conv" if (f := _scalar_affine(node, view))]
    if not folds:
        return model, []
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    layers = {n.output[0]: n for n in out.graph.node}  # by output: names may be empty or repeated
    folded = [n for f in folds for n in (f.mul, f.add)]
    at = _positions(out.graph, folded)
    for fold in folds:
        conv = layers[fold.conv.output[0]]
        weight = numpy_helper.to_array(inits[conv.input[1]])
        inits[conv.input[1]].CopyFrom(
            numpy_helper.from_array((weight * fold.factor).astype(weight.dtype), conv.input[1])
        )
        channels, has_bias = weight.shape[0], len(conv.input) > 2 and bool(conv.input[2])
        bias = (
            numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
            if len(conv.input) > 2
            else np.zeros(channels)
        )
        shifted = (bias * fold.factor + fold.shift).astype(weight.dtype)
        if has_bias:
            inits[conv.input[2]].CopyFrom(numpy_helper.from_array(shifted, conv.input[2]))
        else:
            name = f"{conv.name or fold.conv.output[0]}.bias"  # unique where the conv has no name
            out.graph.initializer.append(numpy_helper.from_array(shifted, name))
            del conv.input[2:]
            conv.input.append(name)
        conv.output[0] = fold.add.output[0]
    constants = {t for f in folds for n in (f.mul, f.add) for t in n.input if t in inits}
    renamed = {t for f in folds for t in (f.conv.output[0], f.mul.output[0])}
    return out, _drop(out.graph, folded, at, constants, renamed)


def _scalar_affine(conv: onnx.NodeProto, view: GraphView) -> _Affine | None:
    """The Mul and Add by scalar constants that follow ``conv`` alone, where they fold into it."""
    stored = {i.name for i in view.model.graph.initializer}
    weight = conv.input[1] if len(conv.input) > 1 else ""
    if weight not in stored or not _only_reader(weight, view) or view.initializers[weight].data_type != FLOAT:
        return None
    if len(conv.input) > 2 and conv.input[2] and (conv.input[2] not in stored or not _only_reader(conv.input[2], view)):
        return None
    found = []
    tensor = conv.output[0]
    for op in ("Mul", "Add"):
        readers = view.consumers.get(tensor, [])
        if len(readers) != 1 or tensor in view.outputs or readers[0].op_type != op:
            return None
        node = readers[0]
        others = [t for t in node.input if t != tensor]
        if len(others) != 1 or others[0] not in stored or not _only_reader(others[0], view):
            return None
        value = view.array(others[0])
        if value.size != 1 or view.initializers[others[0]].data_type != FLOAT:
            return None
        found.append((node, float(value.reshape(()))))
        tensor = node.output[0]
    (mul, factor), (add, shift) = found
    peaks = _channel_peaks(view.array(weight).astype(np.float64), 0)
    if np.any((peaks * abs(factor) < FP16_SCALABLE_WEIGHT) & (peaks >= FP16_SCALABLE_WEIGHT)):
        return None
    return _Affine(conv, mul, add, factor, shift)
