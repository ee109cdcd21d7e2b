"""``Toy``: the FP32 graph copied as it is, deployed on a CPU, benched against the FP32 graph."""

from __future__ import annotations

import numpy as np
import onnx

from pipeline.config import Config, QuantizeSection
from pipeline.evaluate.sensitivity import Target as SensitivityTarget
from pipeline.graphview import GraphView
from pipeline.layout import Layout
from pipeline.placement import Placement
from pipeline.runners import Artifact
from pipeline.targets.base import FP32, ONNXRUNTIME, BenchPair, QuantizationInputs, Target
from pipeline.targets.onnxruntime_cpu.target import cpu_pair

ARTIFACT = "copy"  # engines/NAME/onnx/model.copy.onnx, gated by [accuracy.copy]


class Toy(Target):
    name = "toy"
    artifact = ARTIFACT
    baseline = FP32
    label = "Toy copy"
    deploys_on_cpu = True

    def calibration_tensors(self, view: GraphView, settings: QuantizeSection) -> set[str]:
        return set()  # quantizes nothing, so needs no range

    def simulated(self, view: GraphView, settings: QuantizeSection) -> Placement:
        return Placement(symmetric=False, activations={}, weights=())

    def fake_quant(self, x: np.ndarray, amax: float, lo: float, hi: float) -> np.ndarray:
        return x

    def fake_quant_weight(self, w: np.ndarray, axis: int) -> np.ndarray:
        return w

    def quantize(self, inputs: QuantizationInputs, float_nodes: tuple[str, ...] = ()) -> onnx.ModelProto:
        return inputs.fp32

    def sensitivity(self, inputs: QuantizationInputs) -> SensitivityTarget:
        same = lambda *_: inputs.fp32  # noqa: E731  every variant is the FP32 graph
        return SensitivityTarget(ARTIFACT, (), same, same, same)

    def violations(self, model: onnx.ModelProto) -> list:
        return []

    def artifacts(self, cfg: Config, out: Layout, build: dict) -> list[Artifact]:
        return [Artifact(ARTIFACT, ONNXRUNTIME, out.graph(ARTIFACT), cpu=True)]

    def bench_pair(self, cfg: Config, out: Layout, found: dict[str, Artifact]) -> BenchPair:
        return cpu_pair(cfg, out, found[ARTIFACT], "ONNX Runtime CPU")  # against the FP32 graph, as its graph is
