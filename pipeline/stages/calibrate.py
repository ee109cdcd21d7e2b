"""``trtpipe calibrate``: activation ranges for every tensor the configured targets quantize, cached
in calib/NAME (with [quantize] smoothquant: of the smoothed graph, from per-channel maxima cached
beside them)."""

from __future__ import annotations

from pipeline.calibration import inputs
from pipeline.console import info
from pipeline.results import CalibrateResult
from pipeline.stages import export
from pipeline.stages.base import Stage, StageRun
from pipeline.targets.base import FP32


def run(r: StageRun, force: bool = False) -> CalibrateResult:
    from pipeline import onnxutil, phases
    from pipeline.calibration.calibrator import STATISTICS  # imports onnxruntime: not before the scratch folder
    from pipeline.fileio import after_record
    from pipeline.graphview import GraphView

    cfg, out = r.cfg, r.out
    with phases.collecting() as collected:
        with phases.timed("graph load"):
            fp32, exported_sha256 = onnxutil.load_hashed(out.graph(FP32), "FP32 graph")
        with after_record():  # the cache and its record: written by inputs.ranges, as quantize writes them
            graph, _, _ = inputs.smoothed(cfg, out, fp32, force, rebuild_invalid=True)
            with phases.timed("graph load"):
                graph_sha256 = exported_sha256 if graph is fp32 else onnxutil.graph_hash(graph)
                # The plans need the graph's structure and shapes only: its weights are freed before ONNX Runtime
                # loads its own (a smoothed graph exists only here, so it is kept for ONNX Runtime to load).
                view = GraphView(onnxutil.skeleton(graph))
            smoothed = graph if graph is not fp32 else None
            del fp32, graph
            found = inputs.ranges(
                cfg, out, view, graph_sha256, STAGE, force, smoothed, rebuild_invalid=True, read=r.read
            )
    reused = STATISTICS not in collected.seconds  # a fresh cache: nothing streamed
    result = CalibrateResult(found, reused, collected.phases())
    info(f"{cfg.name}: calibrate phases, {phases.describe(result.phases)}")
    return result


def _reads(cfg, out):
    return [(export.STAGE, out.graph(FP32))]


def _data(cfg):
    return [("calibration data", cfg.calibration.source)]


STAGE = Stage("calibrate", ("inputs", "axes", "calibration", "quantize"), run, reads=_reads, data=_data)
