"""ONNX Runtime on the CPU: uint8 activations and int8 weights on the FP32 graph, placed by ONNX
Runtime's own quantizer so its QLinear kernels fuse (``quantize``); what deploys on any CPU."""

from __future__ import annotations

import numpy as np
import onnx

from pipeline.config import Config, QuantizeSection
from pipeline.graphview import GraphView
from pipeline.layout import Layout
from pipeline.placement import Placement
from pipeline.runners import Artifact
from pipeline.targets.base import FP32, ONNXRUNTIME, BenchPair, QuantizationInputs, Target

ARTIFACT = "w8a8-cpu"


class OnnxRuntimeCpu(Target):
    name = "onnxruntime-cpu"
    artifact = ARTIFACT
    baseline = FP32
    label = "ONNX Runtime CPU"
    deploys_on_cpu = True

    def calibration_tensors(self, view: GraphView, settings: QuantizeSection) -> set[str]:
        from pipeline.targets.onnxruntime_cpu.quantize import tensors_to_calibrate

        return tensors_to_calibrate(view)

    def simulated(self, view: GraphView, settings: QuantizeSection) -> Placement:
        from pipeline.targets.onnxruntime_cpu.quantize import placement

        return placement(view, settings)

    def fake_quant(self, x: np.ndarray, amax: float, lo: float, hi: float) -> np.ndarray:
        from pipeline.calibration.auto import fake_quant_uint8

        return fake_quant_uint8(x, max(lo, -amax), min(hi, amax))  # uint8 over the range clipped to +-amax

    def quantize(self, inputs: QuantizationInputs, float_nodes: tuple[str, ...] = ()) -> onnx.ModelProto:
        from pipeline.targets.onnxruntime_cpu.quantize import OrtCpuQdqFromOnnx

        if float_nodes:
            return self.sensitivity(inputs).with_fp16(frozenset(float_nodes))
        return OrtCpuQdqFromOnnx(inputs.ranges, inputs.method, inputs.settings)(inputs.fp32, inputs.view)

    def sensitivity(self, inputs: QuantizationInputs):
        from pipeline.evaluate.sensitivity import cpu_target

        return cpu_target(inputs.fp32, inputs.view, inputs.ranges, inputs.method, inputs.settings)

    def violations(self, model: onnx.ModelProto):
        from pipeline.targets.rules import violations

        return violations(model, symmetric=False)  # uint8 activations with a zero point are its scheme

    def artifacts(self, cfg: Config, out: Layout, build: dict) -> list[Artifact]:
        return [Artifact(ARTIFACT, ONNXRUNTIME, out.graph(ARTIFACT), cpu=True)]

    def bench_pair(self, cfg: Config, out: Layout, found: dict[str, Artifact]) -> BenchPair | None:
        return BenchPair(
            "onnxruntime-cpu",
            Artifact(FP32, ONNXRUNTIME, out.graph(FP32), cpu=True),
            found[ARTIFACT],
            cfg.bench.cpu_batches,
            cfg.bench.threads,
            f"ONNX Runtime CPU EP, {cfg.bench.threads} intra-op thread(s), host arrays in and out",
        )
