"""Where the FP32 graph comes from: the one seam between a user's model and every later stage.

Everything after export reads ``engines/NAME/onnx/model.fp32.onnx`` only; a source makes that graph
and the reference outputs export's parity checks it (and its FP16 conversion) against. A new source
is one module or folder here and one line in ``pipeline/sources/__init__.py`` (docs/extending.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from pipeline.config import Config, ModelSection
    from pipeline.data import Feed


class Source(ABC):
    """One kind of model a config can name in its [model] section."""

    kind: str  # for people and records: "PyTorch module"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    @staticmethod
    @abstractmethod
    def names(model: ModelSection) -> bool:
        """Whether a [model] section names a model of this kind."""

    @abstractmethod
    def files(self) -> list[tuple[str, Path]]:
        """(what, file) for each file the model is made from, hashed into export's record; read
        without running the model."""

    @abstractmethod
    def load(self) -> None:
        """Load the model and check it against the config's inputs, before any data is read: a
        mismatch is the model's error, not the data's."""

    @abstractmethod
    def fp32_graph(self, example: Feed, log: Path) -> onnx.ModelProto:
        """The FP32 ONNX graph with the config's inputs, outputs and dynamic axes; ``example`` is a
        real batch, ``log`` where a long diagnosis goes."""

    @abstractmethod
    def reference(self, feed: Feed) -> list[np.ndarray]:
        """The model's own outputs for ``feed``, in the config's [[outputs]] order."""
