"""What quantize starts from, and the calibration cache behind it: the graphs (smoothed under
[quantize] smoothquant, from per-channel maxima cached in calib/NAME), their view, and their ranges
(a fresh cache reused, a stale one calibrated anew and recorded as calibrate's). What the calibrate
and quantize stages, sensitivity and the budget benchmark share.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import records, targets
from pipeline.config import Config
from pipeline.console import info
from pipeline.fileio import after_record, newest
from pipeline.layout import Layout
from pipeline.phases import timed, timed_each
from pipeline.targets.base import FP16, FP32, QuantizationInputs

if TYPE_CHECKING:
    from pipeline.stages.base import Stage

# Smoothing is exact algebra: in FP32 only rounding separates the smoothed graph's outputs from the
# exported graph's (1e-6 of their range on the hard example).
SMOOTH_PARITY = 1e-4
CALIBRATION_DATA = "calibration data"  # the phase reading the user's data source


def calibration_files(cfg: Config, out: Layout) -> list[Path]:
    """What calibrate writes: the ranges, and with [quantize] smoothquant the per-channel maxima."""
    smoothed = cfg.quantize.smoothquant is not None and newest(out.channels).is_file()  # held, if just measured
    channels = [out.channels] if smoothed else []
    return [out.ranges, *channels]


def _calibration_settings(cfg: Config) -> dict[str, object]:
    """What shapes the statistics besides the graph: a cache made under other settings is stale."""
    from pipeline.data import source_fingerprint

    section = cfg.calibration
    return {
        "source": section.source,
        "data": source_fingerprint(cfg),
        "args": dict(section.args),
        "samples": section.samples,
        "batch_size": section.batch_size,
    }


def smoothed(cfg: Config, out: Layout, fp32, force: bool = False, rebuild_invalid: bool = False) -> tuple:
    """``(graph, edits, smoothing)``: ``fp32`` itself with [quantize] smoothquant unset, else a copy with
    each LayerNorm -> MatMul/Gemm smoothed, from per-channel maxima measured on the exported FP32
    graph; the edits made (the FP16 graph takes them too) and what was smoothed, for quantize's result."""
    from pipeline.calibration import smooth
    from pipeline.calibration.channels import best_alpha
    from pipeline.graphview import GraphView
    from pipeline.results import Smoothing

    setting = cfg.quantize.smoothquant
    if setting is None:
        return fp32, [], None
    view = GraphView(fp32)
    found, skipped = smooth.targets(view)
    for norm, reason in skipped:
        info(f"  SmoothQuant skips LayerNorm {norm}: {reason}")
    if not found:
        info(f"{cfg.name}: [quantize] smoothquant is set but no LayerNorm output is read only by MatMul/Gemm")
        return fp32, [], Smoothing(setting, (), tuple(skipped), 0.0)
    with timed("SmoothQuant channel maxima"):
        maxima = _channel_maxima(cfg, out, view, found, force, rebuild_invalid)
    with timed("SmoothQuant"):
        alphas = {t.tensor: best_alpha(maxima[t.tensor].errors) if setting == "auto" else setting for t in found}
        graph, edits, done = smooth.smooth(fp32, view, alphas, {t: maxima[t].absmax for t in alphas})
        smoothing = Smoothing(setting, tuple(done), tuple(skipped), _same_function(cfg, fp32, graph))
    worst = max(done, key=lambda d: d.outlier_ratio_before)
    info(
        f"{cfg.name}: SmoothQuant (alpha={setting}) on {sum(d.alpha is not None for d in done)} of {len(done)} "
        f"LayerNorm outputs; widest channel over the median one, worst: {worst.outlier_ratio_before:.1f}x -> "
        f"{worst.outlier_ratio_after:.1f}x ({worst.tensor}); FP32 outputs moved "
        f"{smoothing.fp32_max_rel_diff:.1e} of their range"
    )
    return graph, edits, smoothing


def _channel_maxima(
    cfg: Config, out: Layout, view, found: list, force: bool = False, rebuild_invalid: bool = False
) -> dict:
    """Per-channel maxima of the ``found`` targets' tensors in the exported FP32 graph (``view``):
    calib/NAME/channels.json if fresh, else measured on the calibration data and cached."""
    from pipeline import onnxutil
    from pipeline.calibration.calibrator import batches_needed
    from pipeline.calibration.channels import ChannelMaxima, load_channel_maxima, measure_channels
    from pipeline.calibration.memory import capture_plan
    from pipeline.data import calibration_batches, rebatch

    graph_sha256, settings = onnxutil.graph_hash(view.model), _calibration_settings(cfg)
    tensors = [t.tensor for t in found]
    cached, reason = cache_or_reason(lambda: load_channel_maxima(out.channels), force, rebuild_invalid)
    if cached is not None:
        reason = cached.stale_reason(graph_sha256, settings, tensors)
    if reason is None:
        return cached.tensors
    plan = capture_plan(view, tensors, cfg.calibration.batch_size, axes={a.name: a.max for a in cfg.axes})
    info(f"{cfg.name}: measuring per-channel maxima of {len(tensors)} LayerNorm outputs ({reason})")
    records = measure_channels(
        out.graph(FP32),
        view,
        found,
        lambda: rebatch(calibration_batches(cfg), cfg, plan.micro_batch),
        plan.groups,
        batches_needed(cfg.calibration.samples, plan.micro_batch),
    )
    ChannelMaxima(graph_sha256, settings, records).save(out.channels)
    return records


def _same_function(cfg: Config, fp32, smoothed) -> float:
    """max |smoothed - fp32| / max |fp32| over the outputs on 8 held-out rows; smoothing is exact
    algebra, so a difference beyond FP32 rounding is a bug in it (raised with its traceback)."""
    import numpy as np

    from pipeline import ortsession
    from pipeline.data import sample_inputs

    feed = sample_inputs(cfg, cfg.nearest_batch(8))
    refs, outs = (ortsession.run(ortsession.session(g, cpu_only=True, arena=False), feed) for g in (fp32, smoothed))
    diff = max(
        float(np.max(np.abs(o - r)) / max(float(np.max(np.abs(r))), 1e-30)) for r, o in zip(refs, outs, strict=True)
    )
    if diff > SMOOTH_PARITY:
        raise RuntimeError(f"SmoothQuant changed the FP32 graph's outputs by {diff:.2e} of their range: a bug")
    return diff


def ranges(
    cfg: Config,
    out: Layout,
    view,
    graph_sha256: str,
    record_as: Stage,
    force: bool = False,
    graph=None,
    rebuild_invalid: bool = False,
    read: dict[str, str] | None = None,
):
    """The cached ranges if fresh, else a new calibration of the FP32 graph with hash ``graph_sha256``
    (``graph``, the smoothed graph, or the exported one's file by default); ``view`` is its GraphView,
    made once for the plans, the CPU tensor list and the capture plan (and, in quantize, the Q/DQ graphs).
    A cache that cannot be trusted is rebuilt by calibrate (``rebuild_invalid``) and refused elsewhere;
    ``force`` does not read it at all. The cache is recorded as ``record_as``'s (calibrate's) output,
    ``read`` what calibrate read as it started (``records.finish``)."""
    from pipeline.calibration.auto import AUTO_ROWS, AutoRanges, TargetQuant, layer_activations
    from pipeline.calibration.cache import CODE_SETTING, load_ranges
    from pipeline.calibration.calibrator import RangesFromOnnx, batches_needed, value_sources
    from pipeline.calibration.histogram import STATS_VERSION
    from pipeline.calibration.memory import capture_plan
    from pipeline.codehash import stage_code_version
    from pipeline.data import calibration_batches, rebatch

    section = cfg.calibration
    chosen = targets.configured(cfg)
    with timed("plan"):
        tensors = set().union(*(t.calibration_tensors(view, cfg.quantize) for t in chosen))
    auto_rows = min(AUTO_ROWS, section.batch_size)  # no more rows than a batch: memory stays the batch's
    settings = {
        **_calibration_settings(cfg),
        "bins": section.bins,
        "percentile": section.percentile,
        "auto_rows": auto_rows,
        "stats_version": STATS_VERSION,
        "targets": [t.name for t in chosen],  # auto judges a range by these targets' errors
        # The statistics and the methods are code: ranges made by other code are another result.
        CODE_SETTING: stage_code_version(record_as.module),
    }
    names = view.inputs | set(view.producer) | set(view.initializers)
    with timed("cache read"):
        cached, reason = cache_or_reason(lambda: load_ranges(out.ranges, names), force, rebuild_invalid)
        if cached is not None:
            reason = cached.stale_reason(graph_sha256, settings, tensors)
    if cached is not None and reason is None:
        info(f"{cfg.name}: calibration cache {out.ranges} is up to date ({len(cached.tensors)} tensors)")
        records.finish(cfg, out, record_as, calibration_files(cfg, out), read=read)
        return cached
    with timed("plan"):
        # Auto's layer inputs are captured in the same passes: they count in the plan as the rest do.
        captured = set(value_sources(view, tensors).values()) | layer_activations(view, tensors)
        placements = tuple(t.simulated(view, cfg.quantize) for t in chosen)  # auto's whole-graph check
        plan = capture_plan(view, captured, section.batch_size, axes={a.name: a.max for a in cfg.axes})
    info(f"{cfg.name}: calibrating {len(tensors)} tensors on {section.samples} samples ({reason})")
    info(f"{cfg.name}: {plan.describe()}")
    found = RangesFromOnnx(tensors, section.bins, section.percentile)(
        out.graph(FP32) if graph is None else graph,
        timed_each(CALIBRATION_DATA, rebatch(calibration_batches(cfg), cfg, plan.micro_batch)),
        batches_needed(section.samples, plan.micro_batch),
        settings,
        view=view,
        graph_sha256=graph_sha256,
        groups=plan.groups,
        auto=AutoRanges(
            auto_rows,
            {spec.name: spec.batch_axis for spec in cfg.inputs},
            placements,
            tuple(TargetQuant(t.fake_quant, t.fake_quant_weight) for t in chosen),
            chunk_bytes=plan.budget,  # judged within a run's budget, as the rows were captured
            check_step=section.batch_size,  # the whole-graph check runs as inference at that batch would
        ),
    )
    with timed("cache write"):
        found.save(out.ranges)
        records.finish(cfg, out, record_as, calibration_files(cfg, out), read=read)
    info(f"{cfg.name}: wrote {out.ranges}")
    return found


def cache_or_reason(load, force: bool, rebuild_invalid: bool) -> tuple:
    """(the cache ``load`` reads, None) or (None, why it is made anew): ``force`` reads none (so it
    replaces a corrupt one), one of other range methods is stale, and one that cannot be trusted
    raises unless ``rebuild_invalid``."""
    from pipeline.calibration.cache import InvalidCache, OtherMethods

    if force:
        return None, "forced"
    try:
        cached = load()
    except OtherMethods as exc:  # stale, not untrustworthy
        return None, str(exc)
    except InvalidCache as exc:
        if not rebuild_invalid:
            raise
        info(f"rebuilding: {exc}")
        return None, "the cache was invalid"
    return cached, "no cache yet" if cached is None else None


def quantization_inputs(
    cfg: Config, out: Layout, record_as: Stage, weights_folder: Path | None = None
) -> QuantizationInputs:
    """The graphs quantize quantizes (with [quantize] smoothquant the FP32 graph smoothed, and the
    FP16 graph given the same LayerNorm parameters and weights), the FP32 one's GraphView, its
    ranges (a stale cache rebuilt and recorded as ``record_as``'s, a fresh one reused) and what was
    smoothed. What quantize, sensitivity and the budget benchmark start from. With ``weights_folder``
    the FP32 graph's weights go to a file there once its ranges are known: the graph and its view
    read each weight from it when asked (a copy of the graph then names them, not holds them)."""
    from pipeline import onnxutil
    from pipeline.calibration import smooth
    from pipeline.graphview import GraphView

    exported, exported_sha256 = onnxutil.load_hashed(out.graph(FP32), "FP32 graph")
    with after_record():  # a stale cache is calibrated anew, and recorded as calibrate's
        fp32, edits, smoothing = smoothed(cfg, out, exported)  # the graph calibrated and quantized
        del exported  # only the smoothed graph stays while calibration runs
        sha256 = exported_sha256 if smoothing is None else onnxutil.graph_hash(fp32)  # calibrate's, alike
        fp16 = smooth.apply(onnxutil.load(out.graph(FP16), "FP16 graph"), edits)
        view = GraphView(fp32)
        graph = fp32 if smoothing is not None else None
        found = ranges(cfg, out, view, sha256, record_as, graph=graph)
    fp32_file = out.graph(FP32) if smoothing is None else None
    if weights_folder is not None:  # the graphs read until now go when this returns, their weights with them
        fp32 = view.move_weights(weights_folder / "fp32.onnx")
        fp32_file = fp32_file or weights_folder / "fp32.onnx"
        fp16 = onnxutil.weights_to_file(fp16, weights_folder / "fp16.onnx")  # where graphs made from it read them
    return QuantizationInputs(fp32, fp16, view, found, cfg.calibration.method, cfg.quantize, smoothing, fp32_file)
