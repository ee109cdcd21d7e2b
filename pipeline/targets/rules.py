"""Check a Q/DQ graph against the quantization rules of the runtime it is for.

TensorRT (``IQuantizeLayer``/``IDequantizeLayer``, strongly typed networks):
zero-point 0 and a build-time constant, of the graph's 8-bit type (int8, or
FLOAT8E4M3FN for FP8); scales constant, positive, finite, a float type; a
scale's dtype equal to the dtype of the tensor it (de)quantizes; per-channel
scales only on constants (weights along the output-channel axis of the op that
reads them, a bias along its one axis); an FP8 QuantizeLinear saturates, as
TensorRT clamps FP8 to [-448, 448]. The ONNX Runtime CPU graph is not a
TensorRT graph: uint8 activations with a zero point are its scheme and an int32
bias is how its quantizer stores biases; the rest holds for it too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pipeline.onnxutil import attribute, constant_value, consumer_map, infer_shapes_lean
from pipeline.placement import WEIGHTED, weight_axis

BIAS_INPUT = 2  # Conv, ConvTranspose, Gemm: the bias is input 2
FLOAT_SCALES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)
FP8_TYPES = (TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2, TensorProto.FLOAT8E5M2FNUZ)


@dataclass(frozen=True)
class Violation:
    node: str
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.node}: rule '{self.rule}': {self.detail}"


def violations(model: onnx.ModelProto, symmetric: bool = True, stored: int = TensorProto.INT8) -> list[Violation]:
    """Every rule broken in ``model``; empty when it is fine. ``symmetric``: zero points must be zeros
    of type ``stored`` (TensorRT: int8, or FLOAT8E4M3FN in an FP8 graph); else a zero point is allowed
    (ONNX Runtime's uint8 activations)."""
    graph = infer_shapes_lean(model).graph  # types only: no copies of the weights
    consts = _Constants({i.name: i for i in model.graph.initializer})
    for node in model.graph.node:
        if (value := constant_value(node)) is not None:
            consts.tensors[node.output[0]] = value
    elem: dict[str, int] = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input)}
    elem.update({i.name: i.data_type for i in graph.initializer})
    consumers = consumer_map(graph)
    problems: list[Violation] = []
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            problems.extend(_node_problems(node, symmetric, stored, consts, elem, consumers))
    return problems


class _Constants:
    """The graph's constants by name, each read into an array when a rule looks at it: the rules see
    scales and zero points, and a weight's rank, never every weight at once."""

    def __init__(self, tensors: dict[str, onnx.TensorProto]) -> None:
        self.tensors = tensors

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __getitem__(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.tensors[name])

    def rank(self, name: str) -> int:
        return len(self.tensors[name].dims)


def _node_problems(node, symmetric, stored, consts, elem, consumers) -> list[Violation]:
    where = f"{node.op_type} {node.name!r}"
    scale_name = node.input[1]
    zp_name = node.input[2] if len(node.input) > 2 else ""
    if scale_name not in consts:
        return [Violation(where, "constant-scale", f"scale {scale_name!r} is not a constant")]
    scale = consts[scale_name]
    out = []
    if not np.all(np.isfinite(scale)) or not np.all(scale > 0):
        out.append(Violation(where, "positive-scale", "scale has non-positive or non-finite values"))
    scale_type = helper.np_dtype_to_tensor_dtype(scale.dtype)
    if scale_type not in FLOAT_SCALES:
        out.append(Violation(where, "scale-dtype", f"scale dtype {TensorProto.DataType.Name(scale_type)} is no float"))
    float_type = elem.get(node.input[0])
    if node.op_type == "QuantizeLinear" and float_type is not None and float_type != scale_type:
        out.append(
            Violation(
                where,
                "scale-dtype",
                f"scale dtype {TensorProto.DataType.Name(scale_type)} differs from input dtype "
                f"{TensorProto.DataType.Name(float_type)}",
            )
        )
    if zp_name and zp_name not in consts:
        out.append(Violation(where, "constant-zero-point", "zero point is not a constant"))
    elif zp_name and symmetric:
        zp = consts[zp_name]
        want = TensorProto.DataType.Name(stored).lower()  # int8, float8e4m3fn
        if helper.np_dtype_to_tensor_dtype(zp.dtype) != stored or np.any(zp.astype(np.float32) != 0):
            got = f"{zp.dtype} {zp.ravel()[:4]}"
            out.append(Violation(where, f"symmetric-{want}", f"zero point must be {want} zeros, got {got}"))
    if (
        node.op_type == "QuantizeLinear"
        and zp_name in consts
        and helper.np_dtype_to_tensor_dtype(consts[zp_name].dtype) in FP8_TYPES
        and attribute(node, "saturate", 1) != 1
    ):
        out.append(Violation(where, "fp8-saturate", "saturate=0: TensorRT clamps FP8 to [-448, 448], this would not"))
    if scale.size > 1:
        out.extend(_per_channel_problems(node, where, consts, consumers))
    return out


def _per_channel_problems(node, where, consts, consumers) -> list[Violation]:
    if node.op_type == "QuantizeLinear" or node.input[0] not in consts:
        return [Violation(where, "per-channel-on-constants", "per-channel scales on an activation")]
    rank = consts.rank(node.input[0])
    axis = attribute(node, "axis", 1)
    axis = axis + rank if axis < 0 else axis
    out = []
    for consumer in consumers.get(node.output[0], []):
        if consumer.op_type not in WEIGHTED:
            continue
        for slot, tensor in enumerate(consumer.input):
            if tensor != node.output[0]:
                continue
            want = 0 if slot == BIAS_INPUT else weight_axis(consumer.op_type, consumer, rank, slot)
            if axis != want:
                what = "bias" if slot == BIAS_INPUT else "weight"
                out.append(
                    Violation(
                        where,
                        "per-channel-axis",
                        f"{what} of {consumer.op_type} {consumer.name!r} per-channel along axis {axis}, "
                        f"expected {want}",
                    )
                )
    return out
