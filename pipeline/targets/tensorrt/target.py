"""TensorRT: int8 Q/DQ on the FP16 graph where TensorRT fuses it (``placement``), built into engines
on a GPU (``engines``); without one, its graphs run on ONNX Runtime's CUDA EP or not at all here."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx

from pipeline import onnxutil
from pipeline.calibration.cache import Ranges
from pipeline.config import Config, QuantizeSection
from pipeline.evaluate.sensitivity import Target as SensitivityTarget
from pipeline.graphview import GraphView
from pipeline.layout import Layout
from pipeline.placement import WEIGHTED, Placement, Plan
from pipeline.results import BuildResult
from pipeline.runners import Artifact
from pipeline.targets.base import ENGINE, FP16, ONNXRUNTIME, BenchPair, QuantizationInputs, Target
from pipeline.targets.tensorrt.placement import plan_tensorrt
from pipeline.targets.tensorrt.qdq import INT8, Scheme

ARTIFACT = "w8a8"


class TensorRT(Target):
    name = "tensorrt"
    artifact = ARTIFACT
    baseline = FP16
    label = "TensorRT"
    builds_engine = True
    scheme: Scheme = INT8  # the 8-bit type of its Q/DQ (a subclass may store another: FP8)

    def plan(self, view: GraphView, settings: QuantizeSection) -> Plan:
        """Where its graph puts Q/DQ."""
        return plan_tensorrt(view, settings)

    def calibration_tensors(self, view: GraphView, settings: QuantizeSection) -> set[str]:
        return self.plan(view, settings).tensors

    def simulated(self, view: GraphView, settings: QuantizeSection) -> Placement:
        return dataclasses.replace(self.plan(view, settings).simulated(), scheme=self.scheme)

    def fake_quant(self, x: np.ndarray, amax: float, lo: float, hi: float) -> np.ndarray:
        from pipeline.calibration.auto import int8_scheme

        return int8_scheme(x, amax, lo, hi)

    def fake_quant_weight(self, w: np.ndarray, axis: int) -> np.ndarray:
        from pipeline.calibration.auto import dequantized_weight

        return dequantized_weight(w, axis, self.scheme)  # per channel in its 8-bit type: int8, or FP8 E4M3

    def quantize(self, inputs: QuantizationInputs, float_nodes: tuple[str, ...] = ()) -> onnx.ModelProto:
        from pipeline.targets.tensorrt.qdq import QdqOnnxFromOnnx

        plan = self.plan(inputs.view, _excluding(inputs.settings, float_nodes))
        return QdqOnnxFromOnnx(plan, inputs.ranges, inputs.method, self.scheme)(inputs.fp16, inputs.view)

    def sensitivity(self, inputs: QuantizationInputs):
        return sensitivity_target(self, inputs.fp16, inputs.view, inputs.ranges, inputs.method, inputs.settings)

    def violations(self, model: onnx.ModelProto):
        from pipeline.targets.rules import violations

        return violations(model, symmetric=True, stored=onnx.helper.np_dtype_to_tensor_dtype(self.scheme.dtype))

    def placement_report(self, inputs: QuantizationInputs, float_nodes: tuple[str, ...] = ()):
        from pipeline.console import info
        from pipeline.placement import scale_lines, summary_rows

        plan = self.plan(inputs.view, _excluding(inputs.settings, float_nodes))
        for line in scale_lines(plan, inputs.view):
            info(f"  {self.artifact}: {line}")
        return summary_rows(plan, inputs.fp32), plan.skipped, len(plan.quantized)

    def artifacts(self, cfg: Config, out: Layout, build: BuildResult) -> list[Artifact]:
        name = self.artifact
        if build.engines is not None:
            manifest = out.root / build.engines.manifest
            return [Artifact(name, ENGINE, manifest.parent / out.engine_file(name).name, manifest)]
        return [Artifact(name, ONNXRUNTIME, out.graph(name))]

    def bench_pair(self, cfg: Config, out: Layout, found: dict[str, Artifact]) -> BenchPair | None:
        from pipeline import ortsession

        if self.artifact not in found:
            return None
        if found[FP16].backend == ENGINE:
            from pipeline.targets.tensorrt.profiles import check_bench_batches

            check_bench_batches(cfg, cfg.bench.gpu_batches, "bench.gpu_batches")
            return BenchPair(
                "tensorrt",
                self.label,
                found[FP16],
                found[self.artifact],
                cfg.bench.gpu_batches,
                None,
                "TensorRT execute_async_v3"
                + (" captured in a CUDA graph" if cfg.bench.cuda_graph else "")
                + " enqueued back to back on device-resident inputs and outputs (profile, shapes and addresses "
                "set once), timed with CUDA events: latency is each inference's GPU time between its two events, "
                "throughput the items over the first to the last event; no host copies, no Polygraphy "
                "per-call checks",
            )
        if "CUDAExecutionProvider" in ortsession.providers():
            return BenchPair(
                "onnxruntime-cuda",
                "ONNX Runtime CUDA",
                found[FP16],
                found[self.artifact],
                cfg.bench.gpu_batches,
                None,
                "ONNX Runtime CUDA EP, host arrays in and out: host<->device copies included; the CUDA EP "
                "simulates the Q/DQ graph's quantization in float (INT8 needs the TensorRT EP or an engine)",
            )
        return None  # its graphs only simulate TensorRT's numbers on a CPU: their CPU latency would mislead

    def producer(self, artifact: Artifact) -> str:
        return "build" if artifact.backend == ENGINE else super().producer(artifact)


def _excluding(settings: QuantizeSection, nodes: tuple[str, ...]) -> QuantizeSection:
    return dataclasses.replace(settings, exclude_nodes=settings.exclude_nodes + nodes) if nodes else settings


def sensitivity_target(
    target: TensorRT,
    fp16: onnx.ModelProto,
    view: GraphView,
    ranges: Ranges,
    method: str,
    settings: QuantizeSection,
) -> SensitivityTarget:
    from pipeline.targets.tensorrt.qdq import QdqOnnxFromOnnx

    def make(excluded: tuple[str, ...]) -> onnx.ModelProto:
        s = dataclasses.replace(settings, exclude_nodes=settings.exclude_nodes + excluded)
        return QdqOnnxFromOnnx(target.plan(view, s), ranges, method, target.scheme)(fp16, view)

    layers = tuple((n, op) for n, op in target.plan(view, settings).quantized if op in WEIGHTED)

    def alone(node: str) -> onnx.ModelProto:
        return make(tuple(n for n, _ in layers if n != node))

    def unquantized() -> onnx.ModelProto:  # with its weights: their file's where they were moved to one
        return fp16 if view.weights_folder is None else onnxutil.with_data(fp16, view.weights_folder)

    return SensitivityTarget(target.artifact, layers, make, alone, unquantized)
