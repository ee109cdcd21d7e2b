"""An independent reference for Q/DQ graphs: numpy, op by op, everything in FP32.

QuantizeLinear is fake quantization (round half to even of x / scale, plus the zero
point, saturated to int8) and DequantizeLinear multiplies back; every other op runs in
FP32 whatever the graph's dtype, so FP16 tensors are read as FP32 and Casts to FP16 do
not round. No ONNX Runtime: what ONNX Runtime's graph optimizations do cannot leak in.
Only the ops of the tiny test graphs are here; any other op is an error.
"""

from __future__ import annotations

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import helper, numpy_helper


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    values = {i.name: _f32(numpy_helper.to_array(i)) for i in model.graph.initializer}
    values.update({k: _f32(v) for k, v in feed.items()})
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        args = [values[t] if t else None for t in node.input]
        op = _OPS.get(node.op_type)
        if op is None:
            raise NotImplementedError(f"reference evaluator has no {node.op_type}")
        values[node.output[0]] = op(*args, **attrs)
    return [values[o.name] for o in model.graph.output]


def _f32(a: np.ndarray) -> np.ndarray:
    """Floats become FP32; integers (int8 weights, zero points) stay exact."""
    return a.astype(np.float32) if a.dtype.kind == "f" else a


def _per_axis(v: np.ndarray, x: np.ndarray, axis: int) -> np.ndarray:
    """A per-channel scale or zero point shaped to broadcast along ``axis`` of ``x``."""
    if v.ndim == 0:
        return v
    shape = [1] * x.ndim
    shape[axis] = -1
    return v.reshape(shape)


def quantize(x, scale, zero_point=None, axis=1, **_):
    zp = np.zeros_like(scale, np.int8) if zero_point is None else zero_point
    info = np.iinfo(zp.dtype)
    q = np.round(x / _per_axis(scale, x, axis)) + _per_axis(zp.astype(np.float32), x, axis)  # half to even
    return np.clip(q, info.min, info.max).astype(zp.dtype)


def dequantize(q, scale, zero_point=None, axis=1, **_):
    zp = 0 if zero_point is None else _per_axis(zero_point.astype(np.float32), q, axis)
    return ((q.astype(np.float32) - zp) * _per_axis(scale, q, axis)).astype(np.float32)


def conv(x, w, b=None, pads=(0, 0, 0, 0), strides=(1, 1), group=1, dilations=(1, 1), **_):
    if any(d != 1 for d in dilations):
        raise NotImplementedError("reference evaluator has no dilated Conv")
    t, left, bottom, right = pads
    x = np.pad(x, ((0, 0), (0, 0), (t, bottom), (left, right)))
    kh, kw = w.shape[2:]
    patches = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, :: strides[0], :: strides[1]]
    n, c, h, wd = patches.shape[:4]
    patches = patches.reshape(n, group, c // group, h, wd, kh, kw)
    weights = w.reshape(group, w.shape[0] // group, *w.shape[1:])
    y = np.einsum("ngchwij,gocij->ngohw", patches, weights, dtype=np.float32).reshape(n, -1, h, wd)
    return y if b is None else y + b.reshape(1, -1, 1, 1)


def gemm(a, b, c=None, transA=0, transB=0, alpha=1.0, beta=1.0):
    y = alpha * ((a.T if transA else a) @ (b.T if transB else b))
    return y if c is None else y + beta * c


def reduce_mean(x, axes=None, keepdims=1, **_):
    axes = None if axes is None else tuple(int(a) for a in np.ravel(axes))  # an input from opset 18, else an attribute
    return x.mean(axis=axes, keepdims=bool(keepdims))


_OPS = {
    "QuantizeLinear": quantize,
    "DequantizeLinear": dequantize,
    "Cast": lambda x, to: x.astype(np.float32) if helper.tensor_dtype_to_np_dtype(to).kind == "f" else x,
    "Conv": conv,
    "Gemm": gemm,
    "Relu": lambda x: np.maximum(x, 0),
    "Add": lambda a, b: a + b,
    "Flatten": lambda x, axis=1: x.reshape(int(np.prod(x.shape[:axis])), -1),
    "ReduceMean": reduce_mean,
}
