"""A PyTorch module: a builder callable (``[model] source``), its keyword arguments and a state dict
(``weights``), exported by torch.export or TorchScript (``onnx_from_torch``), bound to the config's
inputs (``binding``), its weights loaded safely (``torch_model``)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.sources.base import Source

if TYPE_CHECKING:
    from pipeline.config import ModelSection


class TorchSource(Source):
    kind = "PyTorch module"

    @staticmethod
    def names(model: ModelSection) -> bool:
        return model.source is not None

    def files(self) -> list[tuple[str, Path]]:
        from pipeline.callables import source_file

        cfg, found = self.cfg, []
        model = source_file(cfg.model.source, cfg.root)
        if model is not None:
            found.append(("model source", model))
        if cfg.model.weights is not None and cfg.resolve(cfg.model.weights).is_file():
            found.append(("weights", cfg.resolve(cfg.model.weights).resolve()))  # "models/../x.pt" is x.pt
        return found

    @cached_property
    def model(self):
        from pipeline.sources.torch.binding import BoundModel
        from pipeline.sources.torch.torch_model import model_from_config

        return BoundModel(model_from_config(self.cfg), self.cfg)

    def load(self) -> None:
        self.model  # noqa: B018  (bound to the config's inputs as it loads)

    def fp32_graph(self, example, log: Path):
        from pipeline.sources.torch.onnx_from_torch import OnnxFromTorch

        self.reference(example)  # outputs must match [[outputs]] before exporting
        return OnnxFromTorch(self.cfg, example, log)(self.model)

    def reference(self, feed):
        from pipeline.callables import user_code
        from pipeline.sources.torch.onnx_from_torch import torch_outputs

        with user_code("running the model's forward"):
            return torch_outputs(self.model, feed, self.cfg)
