"""``OrtCpuQdqFromOnnx``: the ONNX Runtime CPU w8a8 graph, from ORT's own QDQ quantizer.

ONNX Runtime's CPU kernels fuse DQ -> op -> Q into QLinearConv, QLinearMatMul
and friends, and want uint8 activations with int8 per-channel weights (U8S8).
We keep ORT's fusion rules by calling ``quantize_static`` itself, and feed it
our ranges through its calibration-cache file instead of its calibrators
(which hold every activation in memory and collapse entropy to max).
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

from pipeline.calibrate.cache import Ranges
from pipeline.config import QuantizeSection
from pipeline.errors import PipelineError
from pipeline.quantize.placement import GraphView, excluded_reason

# Ops ORT's CPU EP runs quantized (QLinear*/QGemm) or passes through in 8 bit.
# LayerNorm, Softmax and GELU's Erf stay float, as in the TensorRT graph.
OP_TYPES = (
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Add",
    "Mul",
    "Relu",
    "Clip",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Concat",
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Gather",
)


def tensors_to_calibrate(model: onnx.ModelProto | GraphView) -> set[str]:
    """Float activations at the inputs and outputs of the ops ORT will quantize."""
    view = GraphView.of(model)
    float_tensors = {n for n, v in view.value_infos.items() if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    return {
        t
        for n in view.nodes
        if n.op_type in OP_TYPES
        for t in (*n.input, *n.output)
        if t and t in float_tensors and not view.is_const(t)
    }


def excluded_nodes(model: onnx.ModelProto, settings: QuantizeSection) -> list[str]:
    """The nodes [quantize] excludes, by the same rules as the TensorRT plan."""
    patterns = [re.compile(p) for p in settings.exclude_patterns]
    return [n.name for n in model.graph.node if excluded_reason(n, settings, patterns)]


class OrtCpuQdqFromOnnx:
    def __init__(self, ranges: Ranges, method: str, settings: QuantizeSection) -> None:
        self.ranges = ranges
        self.method = method
        self.settings = settings

    def __call__(self, fp32: onnx.ModelProto, view: GraphView | None = None) -> onnx.ModelProto:
        needed = tensors_to_calibrate(view or fp32)
        missing = needed - set(self.ranges.tensors)
        if missing:
            raise PipelineError(
                f"no calibration range for {sorted(missing)[0]!r} (and {len(missing) - 1} more); re-run calibrate"
            )
        data = {}
        for name in needed:
            r = self.ranges.tensors[name]
            amax = r.amax[self.method]
            # Asymmetric uint8: the observed range, clipped by the method's threshold.
            lo, hi = max(r.min, -amax), min(r.max, amax)
            data[name] = TensorData(
                lowest=np.array(min(lo, 0.0), np.float32), highest=np.array(max(hi, 0.0), np.float32)
            )
        with tempfile.TemporaryDirectory(prefix="trtpipe.ortq.") as tmp:
            cache = Path(tmp) / "ranges.json"
            save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
            out = Path(tmp) / "model.onnx"
            root = logging.getLogger()
            level = root.level
            root.setLevel(logging.ERROR)  # ORT's quantizer logs a pre-processing hint we do not need
            try:
                quantize_static(
                    fp32,
                    out,
                    calibration_data_reader=None,
                    calibration_cache_path=cache,
                    calibrate_method=CalibrationMethod.MinMax,
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(OP_TYPES),
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=excluded_nodes(fp32, self.settings),
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                )
            finally:
                root.setLevel(level)
            model = onnx.load(str(out))
        onnx.helper.set_model_props(model, {"trtpipe.precision": "w8a8", "trtpipe.target": "onnxruntime-cpu"})
        return model
