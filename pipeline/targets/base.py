"""What a quantization target is: the one type every stage asks instead of spelling a target's name.

A target turns the exported graphs and their calibrated ranges into one quantized artifact (its own
Q/DQ placement, its own rules) and knows how that artifact runs: the float artifact it is measured
against, whether this machine runs it as it deploys, and how to time it. Stages loop over
``targets.configured(cfg)``; a new target is one folder under ``pipeline/targets/`` and one line in
``pipeline/targets/__init__.py``'s registry (docs/extending.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

    from pipeline.calibration.cache import Ranges
    from pipeline.config import Config, QuantizeSection
    from pipeline.evaluate.sensitivity import Target as SensitivityTarget
    from pipeline.graphview import GraphView
    from pipeline.layout import Layout
    from pipeline.placement import Placement, Skipped
    from pipeline.results import BuildResult, Smoothing, SpeedSearch
    from pipeline.runners import Artifact
    from pipeline.targets.rules import Violation

# The exported graphs every target starts from: the FP32 reference and its FP16 conversion.
FP32 = "fp32"
FP16 = "fp16"
# Deploy's 8-bit choice: the artifact of the configured target that runs where the build deploys.
QUANTIZED = "w8a8"
# The other 8-bit precision: FP8 E4M3 Q/DQ for TensorRT on Ada and newer (``deploy --precision fp8``).
FP8 = "fp8"
# Where an artifact runs: a TensorRT engine, or an ONNX graph on ONNX Runtime.
ENGINE = "tensorrt"
ONNXRUNTIME = "onnxruntime"


@dataclass(frozen=True)
class QuantizationInputs:
    """What every target's quantizer starts from: the FP32 graph (smoothed under [quantize] smoothquant)
    and the FP16 graph with the same edits, the FP32 graph's view, its calibrated ranges, the range
    method and the [quantize] settings."""

    fp32: onnx.ModelProto
    fp16: onnx.ModelProto
    view: GraphView
    ranges: Ranges
    method: str
    settings: QuantizeSection
    smoothing: Smoothing | None = None  # what SmoothQuant did, for quantize's result
    fp32_file: Path | None = None  # a file of ``fp32`` (as exported, or where its weights went), for sessions


@dataclass(frozen=True)
class BenchPair:
    """The two artifacts bench times against each other, and what their timings include."""

    backend: str  # how it is timed: "tensorrt", "onnxruntime-cuda", "onnxruntime-cpu"
    runtime: str  # the same for people: "TensorRT", "ONNX Runtime CUDA", "ONNX Runtime CPU"
    baseline: Artifact  # light grey in the chart
    quantized: Artifact  # dark red
    batches: tuple[int, ...]
    threads: int | None
    includes: str
    # Other configured targets' 8-bit artifacts timed beside it: same runtime, same baseline (FP8 by w8a8).
    others: tuple[Artifact, ...] = ()

    @property
    def pair(self) -> tuple[Artifact, Artifact]:
        return self.baseline, self.quantized

    @property
    def timed(self) -> tuple[Artifact, ...]:
        """Every artifact bench times: the baseline, then each 8-bit one."""
        return (*self.pair, *self.others)


class Target(ABC):
    """One quantization target (a runtime and the 8-bit graph it runs)."""

    name: str  # its [quantize] targets entry, e.g. "tensorrt"
    artifact: str  # its graph's name: engines/NAME/onnx/model.<artifact>.onnx
    baseline: str  # the float artifact its speed and accuracy are judged against (FP16 or FP32)
    label: str  # for people: "TensorRT"
    precision: str = QUANTIZED  # what the report and deploy call its 8-bit artifact (w8a8, or FP8's fp8)
    builds_engine: bool = False  # build makes its graph a TensorRT engine (where TensorRT and a GPU are)
    min_compute_capability: tuple[int, int] | None = None  # the oldest GPU its engine builds for (FP8: 8.9)
    deploys_on_cpu: bool = False  # its artifact is what deploys on a CPU-only machine (else on a GPU)

    # --- quantize -------------------------------------------------------------------------------
    @abstractmethod
    def calibration_tensors(self, view: GraphView, settings: QuantizeSection) -> set[str]:
        """The activations this target's graph needs a range for."""

    @abstractmethod
    def simulated(self, view: GraphView, settings: QuantizeSection) -> Placement:
        """This target's placement as calibration's whole-graph check simulates it."""

    @abstractmethod
    def fake_quant(self, x: np.ndarray, amax: float, lo: float, hi: float) -> np.ndarray:
        """``x`` as this target's graph quantizes an activation with range ``[lo, hi]`` clipped to
        ``+-amax``: what ``auto`` sums over the configured targets to choose a range."""

    @abstractmethod
    def fake_quant_weight(self, w: np.ndarray, axis: int) -> np.ndarray:
        """``w`` as this target's graph stores a weight (channels along ``axis``), dequantized: what
        ``auto`` runs each layer with while it judges a range for the layer's input."""

    @abstractmethod
    def quantize(self, inputs: QuantizationInputs, float_nodes: tuple[str, ...] = ()) -> onnx.ModelProto:
        """The quantized graph, the weighted layers in ``float_nodes`` left in float."""

    @abstractmethod
    def sensitivity(self, inputs: QuantizationInputs) -> SensitivityTarget:
        """The layers this graph quantizes and how to make it with some of them left float."""

    @abstractmethod
    def violations(self, model: onnx.ModelProto) -> list[Violation]:
        """Every rule of this target's runtime that ``model`` breaks."""

    def placement_report(
        self, inputs: QuantizationInputs, float_nodes: tuple[str, ...] = ()
    ) -> tuple[list[list[object]], list[Skipped], int] | None:
        """Per op type what runs INT8, the layers kept float and why, and how many layers run INT8;
        None where the target's quantizer reports none of its own."""
        return None

    def speed_search(
        self,
        cfg: Config,
        inputs: QuantizationInputs,
        float_nodes: tuple[str, ...] = (),
        made: tuple[Path, float] | None = None,
    ) -> tuple[onnx.ModelProto, SpeedSearch] | None:
        """The graph (the weighted layers in ``float_nodes`` left float) with Q/DQ only where they
        measured a gain on this machine, and what was measured; None where the target does not
        search (its runtime does not run here as it deploys, or the search is off). ``made`` is the
        file of that graph with Q/DQ everywhere, made already (``onnxutil.save_weights_beside``), and
        the seconds making it took."""
        return None

    # --- runs -------------------------------------------------------------------------------------
    @abstractmethod
    def artifacts(self, cfg: Config, out: Layout, build: BuildResult) -> list[Artifact]:
        """This target's deployable artifacts, as the build record says they were made."""

    @abstractmethod
    def bench_pair(self, cfg: Config, out: Layout, found: dict[str, Artifact]) -> BenchPair | None:
        """What bench times for this target on this machine, or None where it does not run here as it deploys."""

    def producer(self, artifact: Artifact) -> str:
        """The stage that wrote ``artifact``'s file."""
        return "quantize" if artifact.name == self.artifact else "export"


TargetFactory = Callable[[], Target]
