"""Where the FP8 graph puts Q/DQ: the TensorRT plan (``pipeline.targets.tensorrt.placement``) on
MatMul and Gemm, attention's batched MatMuls and the MLPs' GEMMs included; Conv only under
``[quantize] fp8_conv`` and only where TensorRT has an FP8 convolution for it; everything else FP16.

Which convolutions run FP8 follows NVIDIA ModelOpt's TensorRT policy for its FP8 mode
(``modelopt/onnx/quantization/graph_utils.py``, ``find_nodes_from_convs_to_exclude``, read at
NVIDIA/Model-Optimizer 0f3b2d4): a Conv (not ConvTranspose) with constant weights, more than 16
input channels per group and more than 16 output channels, and at most 32 kernel taps (5x5 at
most). Like every FP8 layer it needs compute capability 8.9 or newer. In ``tensorrt11.md``'s terms:
ModelOpt's rule is [V] (its source), that TensorRT 11 then picks an FP8 convolution kernel is [U]
(the engine's layer report, ``layers-fp8.json``, says which layers ran FP8). Off by default.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import onnx

from pipeline.config import QuantizeSection
from pipeline.graphview import GraphView
from pipeline.placement import Plan, excluded_reason
from pipeline.targets.tensorrt.placement import plan_tensorrt

CONVOLUTIONS = ("Conv", "ConvTranspose")
MORE_THAN_CHANNELS = 16  # FP8 convolution wants more than this many input (per group) and output channels
MAX_TAPS = 32  # and a kernel of at most this many taps
OFF = "FP8 convolution is off ([quantize] fp8_conv = false): FP16"


def plan_fp8(model: onnx.ModelProto | GraphView, settings: QuantizeSection) -> Plan:
    """The TensorRT plan with the convolutions FP8 leaves in FP16 excluded, each with its reason."""
    view = GraphView.of(model)
    patterns = [re.compile(p) for p in settings.exclude_patterns]
    fp16: dict[str, str] = {}
    for node in view.nodes:
        if node.op_type in CONVOLUTIONS and excluded_reason(node, settings, patterns) is None:
            reason = _no_fp8_convolution(node, view) if settings.fp8_conv else OFF
            if reason is not None:
                fp16[node.name] = reason
    plan = plan_tensorrt(view, dataclasses.replace(settings, exclude_nodes=settings.exclude_nodes + tuple(fp16)))
    plan.skipped = [dataclasses.replace(s, reason=fp16[s.node]) if s.node in fp16 else s for s in plan.skipped]
    return plan


def _no_fp8_convolution(node: onnx.NodeProto, view: GraphView) -> str | None:
    """Why TensorRT has no FP8 convolution for ``node`` (ModelOpt's rule), or None."""
    if node.op_type != "Conv":
        return f"{node.op_type}: no FP8 kernel (ModelOpt's FP8 mode quantizes Conv only): FP16"
    shape = view.shape(node.input[1]) if view.is_weight(node.input[1]) else None
    if shape is None or None in shape or len(shape) < 3:
        return "weights are not constants: FP16"
    cout, cin, taps = shape[0], shape[1], int(np.prod(shape[2:]))
    if cout <= MORE_THAN_CHANNELS or cin <= MORE_THAN_CHANNELS:
        return f"{cin} input channel(s) per group, {cout} output: FP8 convolution needs more than 16 of each: FP16"
    if taps > MAX_TAPS:
        return f"{taps} kernel taps > {MAX_TAPS}: no FP8 convolution kernel: FP16"
    return None
