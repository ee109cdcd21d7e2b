"""The kinds of model a config can start from, by what its [model] section names.

A kind is one module or folder here and one line below (``"kind": "module:class"``); the class
implements ``pipeline.sources.base.Source``. Loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.sources.base import Source

REGISTRY: dict[str, str] = {
    "torch": "pipeline.sources.torch:TorchSource",
    "onnx": "pipeline.sources.onnx_file:OnnxFileSource",
}


def source_class(name: str) -> type[Source]:
    module, _, attr = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def source_for(cfg: Config) -> Source:
    """The source the config's [model] section names."""
    for name in REGISTRY:
        cls = source_class(name)
        if cls.names(cfg.model):
            return cls(cfg)
    raise PipelineError(f"{cfg.path}: [model] names no model trtpipe can read; see docs/config.md#model")
