"""ONNX Runtime on the CPU: uint8 activations and int8 weights on the FP32 graph, placed by ONNX
Runtime's own quantizer so its QLinear kernels fuse (``quantize``); what deploys on any CPU."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx

from pipeline import onnxutil
from pipeline.calibration.cache import Ranges
from pipeline.config import Config, QuantizeSection
from pipeline.evaluate.sensitivity import Target as SensitivityTarget
from pipeline.graphview import GraphView
from pipeline.layout import Layout
from pipeline.placement import WEIGHTED, Placement
from pipeline.results import BuildResult
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
        from pipeline.calibration.auto import uint8_scheme

        return uint8_scheme(x, amax, lo, hi)

    def fake_quant_weight(self, w: np.ndarray, axis: int) -> np.ndarray:
        from pipeline.calibration.auto import dequantized_weight

        return dequantized_weight(w, axis)  # per-channel int8, as ONNX Runtime's quantizer stores it

    def quantize(self, inputs: QuantizationInputs, float_nodes: tuple[str, ...] = ()) -> onnx.ModelProto:
        from pipeline.targets.onnxruntime_cpu.quantize import OrtCpuQdqFromOnnx

        if float_nodes:
            return self.sensitivity(inputs).with_fp16(frozenset(float_nodes))
        return OrtCpuQdqFromOnnx(inputs.ranges, inputs.method, inputs.settings)(inputs.fp32, inputs.view)

    def sensitivity(self, inputs: QuantizationInputs):
        return sensitivity_target(inputs.fp32, inputs.view, inputs.ranges, inputs.method, inputs.settings)

    def speed_search(
        self,
        cfg: Config,
        inputs: QuantizationInputs,
        float_nodes: tuple[str, ...] = (),
        made: tuple[Path, float] | None = None,
    ):
        """Each region's Q/DQ kept only where ONNX Runtime times the graph faster with them, at the
        largest CPU batch bench times (the verdict's), within ``[quantize] speed_search_seconds``."""
        from pipeline import ortsession
        from pipeline.data import sample_inputs
        from pipeline.targets.onnxruntime_cpu.regions import search

        if inputs.settings.speed_search_seconds == 0:
            return None
        sensitivity = self.sensitivity(inputs)
        layers = tuple(node for node, _ in sensitivity.layers if node not in float_nodes)
        if not layers:
            return None
        batch = max(cfg.bench.cpu_batches)
        feed = sample_inputs(cfg, batch)

        def runner(graph: onnx.ModelProto | Path):
            session = ortsession.session(graph, threads=cfg.bench.threads, cpu_only=True, shared=True)
            ready = ortsession.feed_for(session, feed)
            return lambda: session.run(None, ready)

        def make(floats: tuple[str, ...]) -> onnx.ModelProto:
            return sensitivity.with_fp16(frozenset((*float_nodes, *floats)))

        seconds = inputs.settings.speed_search_seconds
        label = f"{cfg.name}: {ARTIFACT}"
        fp32 = inputs.fp32_file or inputs.fp32  # from its file where it is one: not serialized beside itself
        try:
            return search(make, inputs.view, layers, runner, lambda: runner(fp32), seconds, batch, label, made)
        finally:
            ortsession.release_shared_arena()

    def violations(self, model: onnx.ModelProto):
        from pipeline.targets.rules import violations

        return violations(model, symmetric=False)  # uint8 activations with a zero point are its scheme

    def artifacts(self, cfg: Config, out: Layout, build: BuildResult) -> list[Artifact]:
        return [Artifact(ARTIFACT, ONNXRUNTIME, out.graph(ARTIFACT), cpu=True)]

    def bench_pair(self, cfg: Config, out: Layout, found: dict[str, Artifact]) -> BenchPair | None:
        return cpu_pair(cfg, out, found[ARTIFACT], self.label)


def cpu_pair(cfg: Config, out: Layout, quantized: Artifact, label: str) -> BenchPair:
    """``quantized`` timed against the FP32 graph on ONNX Runtime's CPU EP, at [bench] cpu_batches and
    threads: the pair of any target whose artifact deploys on a CPU as an ONNX graph."""
    return BenchPair(
        "onnxruntime-cpu",
        label,
        Artifact(FP32, ONNXRUNTIME, out.graph(FP32), cpu=True),
        quantized,
        cfg.bench.cpu_batches,
        cfg.bench.threads,
        f"ONNX Runtime CPU EP, {cfg.bench.threads} intra-op thread(s), host arrays in and out",
    )


def sensitivity_target(
    fp32: onnx.ModelProto, view: GraphView, ranges: Ranges, method: str, settings: QuantizeSection
) -> SensitivityTarget:
    """A layer left float is excluded from ONNX Runtime's quantizer by name, with the Relu before it and
    the ops after it up to the next layers (``ort_cpu.with_epilogues``), and reads its inputs
    unquantized (``ort_cpu.float_inputs``); a layer alone quantized has every other node so treated,
    Add, Relu and pooling too (they are quantized on this graph)."""
    from pipeline.targets.onnxruntime_cpu.quantize import (
        OrtCpuQdqFromOnnx,
        excluded_nodes,
        float_inputs,
        float_layers,
        with_epilogues,
    )

    def make(excluded: tuple[str, ...]) -> onnx.ModelProto:
        floats = float_layers(view, with_epilogues(view, excluded))
        s = dataclasses.replace(settings, exclude_nodes=settings.exclude_nodes + floats)
        model = OrtCpuQdqFromOnnx(ranges, method, s)(fp32, view)
        return float_inputs(model, floats) if floats else model

    skip = set(excluded_nodes(view, settings))
    layers = tuple((n.name, n.op_type) for n in view.nodes if n.op_type in WEIGHTED and n.name not in skip)

    def alone(node: str) -> onnx.ModelProto:
        return make(tuple(n.name for n in view.nodes if n.name != node))

    def unquantized() -> onnx.ModelProto:  # with its weights: its file's where they were moved to one
        return fp32 if view.weights_folder is None else onnxutil.with_data(fp32, view.weights_folder)

    return SensitivityTarget(ARTIFACT, layers, make, alone, unquantized)
