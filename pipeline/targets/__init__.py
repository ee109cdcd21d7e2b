"""The quantization targets, by the name ``[quantize] targets`` gives them.

A target is one folder here and one line below (``"name": "module:class"``); the class implements
``pipeline.targets.base.Target``. Loaded on first use, so reading a config imports no target.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.targets.base import Target

REGISTRY: dict[str, str] = {
    "tensorrt": "pipeline.targets.tensorrt.target:TensorRT",
    "tensorrt-fp8": "pipeline.targets.tensorrt_fp8.target:TensorRtFp8",
    "onnxruntime-cpu": "pipeline.targets.onnxruntime_cpu.target:OnnxRuntimeCpu",
}


@cache
def get(name: str) -> Target:
    """The target registered as ``name`` (``[quantize] targets`` has been checked against ``REGISTRY``)."""
    module, _, attr = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attr)()


def configured(cfg: Config) -> list[Target]:
    """The targets a config quantizes for, in registry order (the order bench prefers them in)."""
    return [get(name) for name in REGISTRY if name in cfg.quantize.targets]


def everything() -> list[Target]:
    return [get(name) for name in REGISTRY]


def by_artifact(cfg: Config) -> dict[str, Target]:
    """The configured targets by the artifact each makes."""
    return {t.artifact: t for t in configured(cfg)}
