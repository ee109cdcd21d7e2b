"""Check a Q/DQ graph against TensorRT's explicit-quantization rules.

TensorRT (``IQuantizeLayer``/``IDequantizeLayer``, strongly typed networks):
zero-point 0 and a build-time constant; scales constant, positive, finite; a
scale's dtype equal to the dtype of the tensor it (de)quantizes; per-channel
scales only on weights, along the output-channel axis of the consuming op.
The ONNX Runtime CPU graph is checked with ``symmetric=False``: uint8
activations with a zero point are its scheme, the rest still holds.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pipeline.onnxutil import attribute, consumer_map
from pipeline.quantize.placement import weight_axis


def violations(model: onnx.ModelProto, symmetric: bool = True) -> list[str]:
    """Every rule broken in ``model``; empty when it is fine."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    elem: dict[str, int] = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input)}
    elem.update({i.name: i.data_type for i in graph.initializer})
    consumers = consumer_map(graph)
    problems: list[str] = []

    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        where = f"{node.op_type} {node.name!r}"
        x, scale_name = node.input[0], node.input[1]
        zp_name = node.input[2] if len(node.input) > 2 else ""
        if scale_name not in consts:
            problems.append(f"{where}: scale {scale_name!r} is not a constant")
            continue
        scale = consts[scale_name]
        if not np.all(np.isfinite(scale)) or not np.all(scale > 0):
            problems.append(f"{where}: scale has non-positive or non-finite values")
        if node.op_type == "QuantizeLinear":
            float_type = elem.get(x)
        else:
            float_type = helper.np_dtype_to_tensor_dtype(scale.dtype)  # DQ output takes the scale's dtype
        scale_type = helper.np_dtype_to_tensor_dtype(scale.dtype)
        if node.op_type == "QuantizeLinear" and float_type is not None and float_type != scale_type:
            problems.append(
                f"{where}: scale dtype {TensorProto.DataType.Name(scale_type)} differs from input "
                f"dtype {TensorProto.DataType.Name(float_type)}"
            )
        if zp_name:
            if zp_name not in consts:
                problems.append(f"{where}: zero point is not a constant")
            elif symmetric:
                zp = consts[zp_name]
                if zp.dtype != np.int8 or np.any(zp != 0):
                    problems.append(
                        f"{where}: zero point must be int8 zeros (symmetric), got {zp.dtype} {zp.ravel()[:4]}"
                    )
        if scale.size > 1:
            problems.extend(_per_channel_problems(node, where, consts, consumers))
    return problems


def _per_channel_problems(node, where, consts, consumers) -> list[str]:
    if node.op_type == "QuantizeLinear" or node.input[0] not in consts:
        return [f"{where}: per-channel scales on an activation (TensorRT allows them on weights only)"]
    axis = attribute(node, "axis", 1)
    rank = consts[node.input[0]].ndim
    axis = axis + rank if axis < 0 else axis
    out = []
    for consumer in consumers.get(node.output[0], []):
        if consumer.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            want = weight_axis(consumer.op_type, consumer, rank)
            if axis != want:
                out.append(
                    f"{where}: per-channel axis {axis} for {consumer.op_type} {consumer.name!r}, expected {want}"
                )
    return out
