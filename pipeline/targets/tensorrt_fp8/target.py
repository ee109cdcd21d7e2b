"""TensorRT FP8: the TensorRT target with E4M3 in place of int8.

The same plan on the FP16 graph (``placement``: GEMMs, Conv only under ``[quantize] fp8_conv``),
per-tensor activation scales amax / 448 in the tensor's dtype, per-channel weight scales, weights
stored as FLOAT8E4M3FN behind a DequantizeLinear (``e4m3``), FP16 elsewhere. Its graph,
``model.fp8.onnx``, builds into ``fp8.plan`` beside the FP16 and w8a8 engines, on GPUs of compute
capability 8.9 or newer only (FP8 tensor cores: Ada, Hopper, Blackwell). On a CPU, ONNX Runtime runs
its Q/DQ as written (opset 19 defines FLOAT8E4M3FN Q/DQ), so its accuracy is measured everywhere.
"""

from __future__ import annotations

import numpy as np

from pipeline.config import QuantizeSection
from pipeline.graphview import GraphView
from pipeline.placement import Plan
from pipeline.targets.base import FP8
from pipeline.targets.tensorrt.target import TensorRT
from pipeline.targets.tensorrt_fp8.e4m3 import SCHEME, fake_quant
from pipeline.targets.tensorrt_fp8.placement import plan_fp8

ARTIFACT = FP8  # engines/NAME/onnx/model.fp8.onnx, gated by [accuracy.fp8]


class TensorRtFp8(TensorRT):
    name = "tensorrt-fp8"
    artifact = ARTIFACT
    precision = FP8
    label = "TensorRT"
    scheme = SCHEME
    min_compute_capability = (8, 9)

    def plan(self, view: GraphView, settings: QuantizeSection) -> Plan:
        return plan_fp8(view, settings)

    def fake_quant(self, x: np.ndarray, amax: float, lo: float, hi: float) -> np.ndarray:
        return fake_quant(x, amax)  # E4M3 over +-amax: relative error, about the same at every magnitude
