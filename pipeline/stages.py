"""One function per stage: what each CLI command and Makefile target calls.

Each reads the config, makes its outputs under ``engines/NAME`` (or
``calib/NAME``) and returns a small summary. Heavy imports stay inside the
functions so ``trtpipe --help`` is fast and missing optional backends only
affect the stage that needs them.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.artifacts import Artifacts
from pipeline.config import Config
from pipeline.console import info


def export(cfg: Config, root: Path | None = None) -> list:
    """FP32 and FP16 ONNX graphs from the PyTorch model, checked against it."""
    from pipeline import onnxutil
    from pipeline.data import sample_inputs
    from pipeline.export.fp16 import Fp16OnnxFromOnnx
    from pipeline.export.onnx_from_torch import OnnxFromTorch, torch_outputs
    from pipeline.export.parity import check_parity, format_parity
    from pipeline.export.torch_model import model_from_config

    out = Artifacts.of(cfg, root)
    model = model_from_config(cfg)
    example = sample_inputs(cfg, 2)  # batch 2: torch.export specializes axes of size 0 and 1
    torch_outputs(model, example, cfg)  # outputs must match [[outputs]] before exporting
    fp32 = OnnxFromTorch(cfg, example)(model)
    fp16 = Fp16OnnxFromOnnx(cfg)(fp32)
    onnxutil.save(fp32, out.graph("fp32"))
    onnxutil.save(fp16, out.graph("fp16"))
    rows = check_parity(cfg, model, {"fp32": out.graph("fp32"), "fp16": out.graph("fp16")})
    info(f"{cfg.name}: wrote {out.graph('fp32')} and {out.graph('fp16')}")
    info(format_parity(rows))
    return rows
