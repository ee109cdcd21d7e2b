"""``Fp16OnnxFromOnnx``: the FP16 graph TensorRT 11 builds an FP16 engine from.

TensorRT 11 networks are strongly typed, so precision comes from the graph's
dtypes. The FP16 graph is derived from the FP32 one, so tensor names line up
with the calibration ranges; ops listed in ``export.keep_fp32`` stay FP32
behind Casts.
"""

from __future__ import annotations

import warnings

import onnx
from onnxconverter_common import float16

from pipeline import onnxutil
from pipeline.config import Config

FP16_MAX = 65504.0


class Fp16OnnxFromOnnx:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def __call__(self, fp32: onnx.ModelProto) -> onnx.ModelProto:
        cfg = self.cfg
        with warnings.catch_warnings():
            # It warns per clipped weight; we clip only values FP16 cannot hold anyway.
            warnings.simplefilter("ignore", UserWarning)
            fp16 = float16.convert_float_to_float16(
                fp32,
                keep_io_types=cfg.export.io_dtype == "float32",
                op_block_list=list(cfg.export.keep_fp32),
                max_finite_val=FP16_MAX,
                min_positive_val=5.96e-8,
            )
        onnx.helper.set_model_props(fp16, {"trtpipe.model": cfg.name, "trtpipe.precision": "fp16"})
        return onnxutil.check(fp16, f"{cfg.name} fp16 graph")
