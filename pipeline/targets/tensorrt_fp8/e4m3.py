"""FP8 E4M3 (ONNX ``FLOAT8E4M3FN``) as TensorRT's FP8 Q/DQ store it.

E4M3 has 4 exponent bits and 3 mantissa bits: between consecutive powers of two there are 8
values, so rounding costs up to 1/16 of a value (relative), wherever it lies in the range;
int8's step is one fixed 1/127 of the range (absolute). The largest finite value is 448, the
smallest normal 2^-6, and below it the subnormals step by 2^-9. QuantizeLinear with a
FLOAT8E4M3FN zero point (``saturate=1``, its default) rounds ``x / scale`` to the nearest value,
ties to even, and clamps to +-448, as TensorRT's FP8 clamp does; DequantizeLinear multiplies
back by the scale. A tensor's scale is its amax / 448.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from pipeline.targets.base import FP8
from pipeline.targets.tensorrt.qdq import Scheme, activation_scale

E4M3_MAX = 448.0
SMALLEST_NORMAL_EXPONENT = -6
MANTISSA_BITS = 3
FLOAT8E4M3FN = np.dtype(helper.tensor_dtype_to_np_dtype(TensorProto.FLOAT8E4M3FN))  # ml_dtypes', through onnx


def e4m3(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to the nearest E4M3 value (ties to even) and clamped to +-448, as float32."""
    x = np.clip(np.asarray(x, np.float32), -E4M3_MAX, E4M3_MAX)
    _, exponent = np.frexp(x)  # |x| = m * 2**exponent with m in [0.5, 1): x lies in [2**(e-1), 2**e)
    binade = np.maximum(exponent - 1, SMALLEST_NORMAL_EXPONENT)  # the subnormals share the lowest step
    step = np.ldexp(np.float32(1.0), binade - MANTISSA_BITS).astype(np.float32)
    return (np.round(x / step) * step).astype(np.float32)  # np.round: half to even; steps are powers of 2


def _stored(x: np.ndarray) -> np.ndarray:
    return e4m3(x).astype(FLOAT8E4M3FN)  # exact: every value is on the E4M3 grid


SCHEME = Scheme(FP8, E4M3_MAX, FLOAT8E4M3FN, _stored, relative=True)  # what the FP8 graph stores


def fake_quant(x: np.ndarray, amax: float) -> np.ndarray:
    """FP8 quantize-dequantize of an activation over +-amax, as the graph's Q/DQ pair computes it."""
    scale = float(activation_scale(amax, np.dtype(np.float32), SCHEME))
    return (e4m3(np.asarray(x, np.float32) / scale) * scale).astype(np.float32)
