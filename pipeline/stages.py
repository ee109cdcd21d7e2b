"""One function per stage: what each CLI command and Makefile target calls.

Each reads the config, makes its outputs under ``engines/NAME`` (or
``calib/NAME``) and returns a small summary. Heavy imports stay inside the
functions so ``trtpipe --help`` is fast and missing optional backends only
affect the stage that needs them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import records
from pipeline.config import Config
from pipeline.console import info
from pipeline.fileio import after_record
from pipeline.layout import Layout

if TYPE_CHECKING:
    from pipeline.targets.tensorrt.probe import Capability

# Smoothing is exact algebra: in FP32 only rounding separates the smoothed graph's outputs from the
# exported graph's (1e-6 of their range on the hard example).
SMOOTH_PARITY = 1e-4
# The graph quantize makes for each [quantize] target.
QUANTIZED = {"tensorrt": "w8a8", "onnxruntime-cpu": "w8a8-cpu"}


def export(cfg: Config, root: Path | None = None) -> list:
    """FP32 and FP16 ONNX graphs from the PyTorch model; written only once they pass parity with it."""
    from pipeline import onnxutil
    from pipeline.sources.parity import check_parity, format_parity
    from pipeline.sources.torch.binding import BoundModel
    from pipeline.sources.torch.onnx_from_torch import OnnxFromTorch, torch_outputs
    from pipeline.sources.torch.torch_model import model_from_config
    from pipeline.data import sample_inputs
    from pipeline.fp16 import Fp16OnnxFromOnnx

    out = Layout.of(cfg, root)
    records.begin(cfg, out, "export")
    model = BoundModel(model_from_config(cfg), cfg)
    example = sample_inputs(cfg, 2)  # batch 2: torch.export specializes axes of size 0 and 1
    torch_outputs(model, example, cfg)  # outputs must match [[outputs]] before exporting
    fp32 = OnnxFromTorch(cfg, example, out.log("export"))(model)
    fp16 = Fp16OnnxFromOnnx(cfg)(fp32)
    graphs = {"fp32": fp32, "fp16": fp16}
    with after_record():  # every stage: its outputs take their names after its record
        with onnxutil.staged({out.graph(p): g for p, g in graphs.items()}) as staged:
            rows = check_parity(cfg, model, dict(zip(graphs, staged.values(), strict=True)))
        records.finish(cfg, out, "export", [out.graph(p) for p in graphs])
    info(f"{cfg.name}: wrote {out.graph('fp32')} and {out.graph('fp16')} ({onnxutil.exporter(fp32)} exporter)")
    info(format_parity(rows))
    return rows


def calibrate(cfg: Config, root: Path | None = None, force: bool = False):
    """Activation ranges for every tensor either quantization target needs, cached in calib/NAME
    (with [quantize] smoothquant: of the smoothed graph, from per-channel maxima cached beside them)."""
    from pipeline import onnxutil
    from pipeline.graphview import GraphView

    out = Layout.of(cfg, root)
    records.begin(cfg, out, "calibrate")
    fp32 = onnxutil.load(out.graph("fp32"), "FP32 graph")
    with after_record():
        graph, _, _ = _smoothed(cfg, out, fp32, force, rebuild_invalid=True)
        graph_sha256 = onnxutil.graph_hash(graph)
        # The plans need the graph's structure and shapes only: its weights are freed before ONNX Runtime loads its
        # own (a smoothed graph exists only here, so it is kept for ONNX Runtime to load).
        view = GraphView(onnxutil.skeleton(graph))
        smoothed = graph if graph is not fp32 else None
        del fp32, graph
        return _ranges(cfg, out, view, graph_sha256, force, smoothed, rebuild_invalid=True)


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


def _smoothed(cfg: Config, out: Layout, fp32, force: bool = False, rebuild_invalid: bool = False) -> tuple:
    """``(graph, edits, record)``: ``fp32`` itself with [quantize] smoothquant unset, else a copy with
    each LayerNorm -> MatMul/Gemm smoothed, from per-channel maxima measured on the exported FP32
    graph; the edits made (the FP16 graph takes them too) and what was smoothed, for the quantize record."""
    from pipeline.calibration import smooth
    from pipeline.calibration.channels import best_alpha
    from pipeline.graphview import GraphView

    setting = cfg.quantize.smoothquant
    if setting is None:
        return fp32, [], None
    view = GraphView(fp32)
    found, skipped = smooth.targets(view)
    for norm, reason in skipped:
        info(f"  SmoothQuant skips LayerNorm {norm}: {reason}")
    record = {"alpha": setting, "layers": [], "skipped": [list(s) for s in skipped], "fp32_max_rel_diff": 0.0}
    if not found:
        info(f"{cfg.name}: [quantize] smoothquant is set but no LayerNorm output is read only by MatMul/Gemm")
        return fp32, [], record
    maxima = _channel_maxima(cfg, out, view, found, force, rebuild_invalid)
    alphas = {t.tensor: best_alpha(maxima[t.tensor].errors) if setting == "auto" else setting for t in found}
    graph, edits, done = smooth.smooth(fp32, view, alphas, {t: maxima[t].absmax for t in alphas})
    record.update(layers=[d.as_dict() for d in done], fp32_max_rel_diff=_same_function(cfg, fp32, graph))
    worst = max(done, key=lambda d: d.outlier_ratio_before)
    info(
        f"{cfg.name}: SmoothQuant (alpha={setting}) on {sum(d.alpha is not None for d in done)} of {len(done)} "
        f"LayerNorm outputs; widest channel over the median one, worst: {worst.outlier_ratio_before:.1f}x -> "
        f"{worst.outlier_ratio_after:.1f}x ({worst.tensor}); FP32 outputs moved "
        f"{record['fp32_max_rel_diff']:.1e} of their range"
    )
    return graph, edits, record


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
    cached, reason = _cached(lambda: load_channel_maxima(out.channels), force, rebuild_invalid)
    if cached is not None:
        reason = cached.stale_reason(graph_sha256, settings, tensors)
    if reason is None:
        return cached.tensors
    plan = capture_plan(view, tensors, cfg.calibration.batch_size)
    info(f"{cfg.name}: measuring per-channel maxima of {len(tensors)} LayerNorm outputs ({reason})")
    records = measure_channels(
        out.graph("fp32"),
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


def _ranges(
    cfg: Config, out: Layout, view, graph_sha256: str, force: bool = False, graph=None, rebuild_invalid: bool = False
):
    """The cached ranges if fresh, else a new calibration of the FP32 graph with hash ``graph_sha256``
    (``graph``, the smoothed graph, or the exported one's file by default); ``view`` is its GraphView,
    made once for the plans, the CPU tensor list and the capture plan (and, in quantize, the Q/DQ graphs).
    A cache that cannot be trusted is rebuilt by calibrate (``rebuild_invalid``) and refused elsewhere;
    ``force`` does not read it at all."""
    from pipeline.calibration.auto import AUTO_ROWS, AutoRanges, layer_activations
    from pipeline.calibration.cache import load_ranges
    from pipeline.calibration.calibrator import RangesFromOnnx, batches_needed, value_sources
    from pipeline.calibration.histogram import STATS_VERSION
    from pipeline.calibration.memory import capture_plan
    from pipeline.data import calibration_batches, rebatch
    from pipeline.targets.onnxruntime_cpu import quantize as ort_cpu
    from pipeline.targets.tensorrt.placement import plan_tensorrt

    section = cfg.calibration
    tensorrt = plan_tensorrt(view, cfg.quantize)
    tensors = tensorrt.tensors | ort_cpu.tensors_to_calibrate(view)
    auto_rows = min(AUTO_ROWS, section.batch_size)  # no more rows than a batch: memory stays the batch's
    settings = {
        **_calibration_settings(cfg),
        "bins": section.bins,
        "percentile": section.percentile,
        "auto_rows": auto_rows,
        "stats_version": STATS_VERSION,
    }
    names = view.inputs | set(view.producer) | set(view.initializers)
    cached, reason = _cached(lambda: load_ranges(out.ranges, names), force, rebuild_invalid)
    if cached is not None:
        reason = cached.stale_reason(graph_sha256, settings, tensors)
    if cached is not None and reason is None:
        info(f"{cfg.name}: calibration cache {out.ranges} is up to date ({len(cached.tensors)} tensors)")
        records.finish(cfg, out, "calibrate", records.calibration_files(cfg, out))
        return cached
    # Auto's layer inputs are captured in the same passes: they count in the plan as the rest do.
    captured = set(value_sources(view, tensors).values()) | layer_activations(view, tensors)
    placements = (tensorrt.simulated(), ort_cpu.placement(view, cfg.quantize))  # auto's whole-graph check
    plan = capture_plan(view, captured, section.batch_size)
    info(f"{cfg.name}: calibrating {len(tensors)} tensors on {section.samples} samples ({reason})")
    info(f"{cfg.name}: {plan.describe()}")
    ranges = RangesFromOnnx(tensors, section.bins, section.percentile)(
        out.graph("fp32") if graph is None else graph,
        rebatch(calibration_batches(cfg), cfg, plan.micro_batch),
        batches_needed(section.samples, plan.micro_batch),
        settings,
        view=view,
        graph_sha256=graph_sha256,
        groups=plan.groups,
        auto=AutoRanges(auto_rows, {spec.name: spec.batch_axis for spec in cfg.inputs}, placements),
    )
    ranges.save(out.ranges)
    records.finish(cfg, out, "calibrate", records.calibration_files(cfg, out))
    info(f"{cfg.name}: wrote {out.ranges}")
    return ranges


def _cached(load, force: bool, rebuild_invalid: bool) -> tuple:
    """(the cache ``load`` reads, None) or (None, why it is made anew): ``force`` reads none (so it
    replaces a corrupt one), and one that cannot be trusted raises unless ``rebuild_invalid``."""
    from pipeline.calibration.cache import InvalidCache

    if force:
        return None, "forced"
    try:
        cached = load()
    except InvalidCache as exc:
        if not rebuild_invalid:
            raise
        info(f"rebuilding: {exc}")
        return None, "the cache was invalid"
    return cached, "no cache yet" if cached is None else None


def quantization_inputs(cfg: Config, out: Layout) -> tuple:
    """``(fp32, fp16, view, ranges, smoothing)``: the graphs quantize quantizes (with [quantize]
    smoothquant the FP32 graph smoothed, and the FP16 graph given the same LayerNorm parameters and
    weights), the FP32 one's GraphView, its ranges (a stale cache rebuilt, a fresh one reused) and
    what was smoothed. What quantize, sensitivity and the budget benchmark start from."""
    from pipeline import onnxutil
    from pipeline.calibration import smooth
    from pipeline.graphview import GraphView

    exported = onnxutil.load(out.graph("fp32"), "FP32 graph")
    with after_record():  # a stale cache is calibrated anew, and recorded as calibrate's
        fp32, edits, smoothing = _smoothed(cfg, out, exported)  # the graph calibrated and quantized
        del exported  # only the smoothed graph stays while calibration runs
        fp16 = smooth.apply(onnxutil.load(out.graph("fp16"), "FP16 graph"), edits)
        view = GraphView(fp32)
        ranges = _ranges(cfg, out, view, onnxutil.graph_hash(fp32), graph=fp32 if smoothing is not None else None)
    return fp32, fp16, view, ranges, smoothing


def quantize(cfg: Config, root: Path | None = None, targets: tuple[str, ...] = (), force: bool = False) -> dict:
    """w8a8 graphs: TensorRT Q/DQ on the FP16 graph, ONNX Runtime CPU Q/DQ on the FP32 graph.

    ``targets`` narrows ``[quantize] targets`` (both by default). A graph that fails its accuracy
    gate is written aside as ``model.NAME.failed.onnx`` and quantize fails, unless ``force``.
    """
    from pipeline import onnxutil
    from pipeline.calibration.auto import summary as auto_summary
    from pipeline.console import table
    from pipeline.errors import PipelineError
    from pipeline.evaluate.attribution import explain_losses
    from pipeline.fileio import write_json
    from pipeline.placement import Skipped, summary_rows
    from pipeline.targets import rules
    from pipeline.targets.onnxruntime_cpu.quantize import OrtCpuQdqFromOnnx
    from pipeline.targets.tensorrt.placement import plan_tensorrt
    from pipeline.targets.tensorrt.qdq import QdqOnnxFromOnnx

    out = Layout.of(cfg, root)
    records.begin(cfg, out, "quantize")
    fp32, fp16, view, ranges, smoothing = quantization_inputs(cfg, out)
    method = cfg.calibration.method
    if method == "auto":
        headline, *cuts = auto_summary(ranges)
        info(f"{cfg.name}: {headline}")
        for line in cuts:
            info(line)
    plan = plan_tensorrt(view, cfg.quantize)
    targets = targets or cfg.quantize.targets
    graphs = {}
    if "tensorrt" in targets:
        graphs["w8a8"] = (QdqOnnxFromOnnx(plan, ranges, method)(fp16, view), "tensorrt")
    if "onnxruntime-cpu" in targets:
        graphs["w8a8-cpu"] = (OrtCpuQdqFromOnnx(ranges, method, cfg.quantize)(fp32, view), "onnxruntime-cpu")
    fits = _within_budget(cfg, out, view, fp32, fp16, ranges, graphs) if cfg.accuracy.budget is not None else {}
    if "w8a8" in fits:  # the table and the skipped list show the layers the budget keeps in FP16
        kept = tuple(k.node for k in fits["w8a8"].kept)
        plan = plan_tensorrt(view, dataclasses.replace(cfg.quantize, exclude_nodes=cfg.quantize.exclude_nodes + kept))
        plan.skipped = [s for s in plan.skipped if s.node not in kept] + [
            Skipped(k.node, k.op_type, f"kept by [accuracy.budget]: {k.reason()}") for k in fits["w8a8"].kept
        ]
    for name, (model, target) in graphs.items():
        broken = rules.violations(model, target)
        if broken:  # our placement or ONNX Runtime's quantizer made it: not the user's model
            raise PipelineError(
                f"{name} graph breaks a {target} quantization rule at {broken[0]} (+{len(broken) - 1} more); "
                f"the quantizer made this graph, not your model: please report it"
            )
    info(table(["op type", "INT8 layers", "kept FP16", "Q/DQ inputs"], summary_rows(plan, fp32)))
    for s in plan.skipped:
        info(f"  kept FP16: {s.op_type} {s.node}: {s.reason}")

    models = {n: g for n, (g, _) in graphs.items()}
    with after_record():
        with onnxutil.staged({out.graph(n): g for n, g in models.items()}) as staged:
            rows = _quantized_accuracy(cfg, out, {n: staged[out.graph(n)] for n in models})
            failed = {r.artifact for r in rows if r.failures}
            _set_aside(cfg, out, models, set() if force else failed, staged)
        worst = explain_losses(cfg, view, models, rows, ranges, method)
        summary = {
            "method": method,
            "passed": not failed,
            "accuracy": [r.as_dict() for r in rows],
            "skipped": [s.__dict__ for s in plan.skipped],
            "int8_layers": len(plan.quantized),
            "smoothquant": smoothing,
            "worst_layers": {n: [e.as_dict() for e in errors] for n, errors in worst.items()},
            "budget": {n: r.as_dict() for n, r in fits.items()},
        }
        write_json(out.result("quantize"), summary)
        # A failed gate is recorded too: the record vouches for what was written, graphs kept aside included.
        kept_aside = set() if force else failed
        written = [out.failed_graph(n) if n in kept_aside else out.graph(n) for n in models]
        records.finish(cfg, out, "quantize", [*written, out.result("quantize")], not failed)
    if failed:
        _gate_verdict(cfg, out, [r for r in rows if r.failures], force)
    return summary


def _set_aside(cfg: Config, out: Layout, models: dict, failed: set[str], staged: dict[Path, Path]) -> None:
    """Graphs in ``failed`` are saved as model.NAME.failed.onnx, not as their artifact (withdrawn from
    ``staged``); the other name of each graph goes now, before the record, so nothing stale passes
    for this run's result (the one output of a run before that does not wait for the record)."""
    from pipeline import onnxutil

    for name, model in models.items():
        (out.graph(name) if name in failed else out.failed_graph(name)).unlink(missing_ok=True)
        if name in failed:
            onnxutil.save(model, out.failed_graph(name))
            del staged[out.graph(name)]
        info(f"{cfg.name}: wrote {out.failed_graph(name) if name in failed else out.graph(name)}")


def _quantized_accuracy(cfg: Config, out: Layout, graphs: dict[str, Path]) -> list:
    """The w8a8 graphs at ``graphs`` against FP32 on ONNX Runtime (CPU), held-out data, with their gates."""
    from pipeline import ortsession
    from pipeline.console import table
    from pipeline.evaluate.accuracy import accuracy_table, evaluate

    # Three sessions alive at once: without arenas each holds only its weights between runs.
    ref = ortsession.session_for(out.graph("fp32"), "fp32", arena=False)
    sessions = {n: ortsession.session_for(p, n, cpu_only=True, arena=False) for n, p in graphs.items()}
    gates = {name: cfg.accuracy.gate(name) for name in graphs}
    batch = cfg.nearest_batch(cfg.calibration.batch_size)  # the batch calibration ran, inside the profiles
    rows = evaluate(
        cfg,
        lambda f: ortsession.run(ref, f),
        {n: (lambda f, s=s: ortsession.run(s, f)) for n, s in sessions.items()},
        gates,
        batch,
    )
    method = cfg.calibration.method
    info(f"{cfg.name}: w8a8 graphs on ONNX Runtime (CPU) against FP32, held-out data at batch {batch}, method={method}")
    info(table(*accuracy_table(rows)))
    return rows


def _gate_verdict(cfg: Config, out: Layout, failed: list, force: bool) -> None:
    """A failed gate stops quantize (its graphs kept aside), or with ``force`` is only announced."""
    from pipeline.errors import PipelineError

    first = failed[0]
    why = f"{first.artifact}, output {first.output!r}: {'; '.join(first.failures)}"
    if force:
        info(f"WARNING: {cfg.name}: accuracy gate failed for {why}; written as the artifact anyway (--force)")
        return
    raise PipelineError(
        f"{cfg.name}: accuracy gate failed for {why}; the graph is kept aside as {out.failed_graph(first.artifact)} "
        f"(gates in [accuracy] of {cfg.path}; --force writes it as the artifact)"
    )


def _within_budget(cfg: Config, out: Layout, view, fp32, fp16, ranges, graphs: dict) -> dict:
    """Replace each graph in ``graphs`` by the one with the fewest layers in FP16 that meets
    ``[accuracy.budget]``; the budget results by graph name. The sensitivity tables the loop needed
    are saved for the report."""
    from pipeline.evaluate import budget, sensitivity
    from pipeline.evaluate.variants import held_out

    heldout = held_out(cfg, out.graph("fp32"), cfg.accuracy.sensitivity_rows)
    method = cfg.calibration.method
    targets = sensitivity.targets_for(tuple(graphs), fp32, fp16, view, ranges, method, cfg.quantize)
    fits, tables = {}, {}
    for name, target in targets.items():
        info(f"{cfg.name}: {name}: fitting [accuracy.budget] on {heldout.rows} held-out rows")
        fit, model, table = budget.fit(
            target, cfg.accuracy.budget, heldout, sensitivity.weighted_layers(view), str(cfg.path)
        )
        graphs[name] = (model, graphs[name][1])
        fits[name] = fit
        if table is not None:
            tables[name] = table
        info(
            f"{cfg.name}: {name} within budget: {budget.describe(fit.after, fit.reference_metric)}; "
            f"{fit.coverage()}; {fit.evaluations} graph(s) scored in {fit.seconds:.1f} s"
        )
        for k in fit.kept:
            info(f"  kept FP16: {k.op_type} {k.node}: {k.reason()}")
    if tables:
        sensitivity.save(tables, out.sensitivity)
    return fits


def sensitivity(cfg: Config, root: Path | None = None, targets: tuple[str, ...] = ()) -> dict:
    """Per-layer sensitivity of each w8a8 graph into results/sensitivity.json (the report draws it)."""
    from pipeline.console import table
    from pipeline.evaluate import sensitivity as sens
    from pipeline.evaluate.variants import held_out

    out = Layout.of(cfg, root)
    records.verify(cfg, out, "quantize")  # the graphs and ranges quantize would read, as their stages wrote them
    fp32, fp16, view, ranges, _ = quantization_inputs(cfg, out)  # the graphs quantize makes
    names = tuple(QUANTIZED[t] for t in targets or cfg.quantize.targets)
    heldout = held_out(cfg, out.graph("fp32"), cfg.accuracy.sensitivity_rows)
    found = sens.targets_for(names, fp32, fp16, view, ranges, cfg.calibration.method, cfg.quantize)
    tables = {}
    for name, target in found.items():
        tables[name] = t = sens.measure(target, heldout)
        info(
            f"{cfg.name}: {name}: {len(t.layers)} layers on {t.rows} held-out rows in {t.seconds:.1f} s; all INT8: "
            f"centered cosine {t.quantized.centered_cosine:.5f}; most sensitive first:"
        )
        info(table(*sens.table_rows(t)))
    sens.save(tables, out.sensitivity)
    info(f"{cfg.name}: wrote {out.sensitivity}")
    return tables


def build(cfg: Config, root: Path | None = None, backend: str = "auto") -> dict:
    """TensorRT FP16 and INT8 engines with a manifest and layer report, or a record of why not."""
    from pipeline import onnxutil
    from pipeline.errors import PipelineError
    from pipeline.fileio import write_json
    from pipeline.targets.tensorrt.engines import build_engines, built_files
    from pipeline.targets.tensorrt.probe import probe
    from pipeline.targets.tensorrt.profiles import profiles_for

    out = Layout.of(cfg, root)
    records.begin(cfg, out, "build")
    graphs = {"fp16": out.graph("fp16")}
    if "tensorrt" in cfg.quantize.targets:
        graphs["w8a8"] = out.graph("w8a8")
    for precision, path in graphs.items():
        if not path.is_file():
            raise PipelineError(f"{path}: the {precision} graph is missing; run export and quantize first")
    cap = probe()
    profiles = profiles_for(cfg, onnxutil.load(graphs["fp16"]))  # checked on every machine, GPU or not
    if backend == "tensorrt" and not cap.available:
        raise PipelineError(f"--backend tensorrt: {cap.reason}")
    with after_record():
        if backend == "tensorrt" or (backend == "auto" and cap.available):
            record = build_engines(cfg, out, cap, profiles, graphs)
        else:
            record = _skipped_build(cfg, backend, cap)
        write_json(out.build_record, record)
        records.finish(cfg, out, "build", [out.build_record, *built_files(record)])
    return record


def _skipped_build(cfg: Config, backend: str, cap: Capability) -> dict:
    """The build record when TensorRT is not used: why, and what compare and bench run instead."""
    from pipeline import ortsession

    reason = "--backend onnxruntime" if backend == "onnxruntime" else cap.reason
    providers = ortsession.providers()
    info(
        f"{cfg.name}: TensorRT step skipped: {reason}. Compare and bench run the ONNX graphs on "
        f"ONNX Runtime ({', '.join(p.replace('ExecutionProvider', '') for p in providers)})."
    )
    return {"backend": "onnxruntime", "reason": reason, "providers": providers}


def compare(cfg: Config, root: Path | None = None) -> list:
    """Accuracy of every deployable artifact against FP32 on held-out data; gates from [accuracy]."""
    from pipeline.console import table
    from pipeline.errors import PipelineError
    from pipeline.evaluate.accuracy import accuracy_table
    from pipeline.evaluate.compare import compare as run_compare
    from pipeline.fileio import write_json

    out = Layout.of(cfg, root)
    records.begin(cfg, out, "compare")
    rows = run_compare(cfg, out)
    passed = not any(r.failures for r in rows)
    with after_record():
        write_json(out.result("compare"), {"rows": [r.as_dict() for r in rows], "passed": passed})
        records.finish(cfg, out, "compare", [out.result("compare")], passed)  # deploy gates the bytes it names
    info(f"{cfg.name}: every artifact against the FP32 graph (ONNX Runtime CPU), held-out data")
    info(table(*accuracy_table(rows)))
    failed = [r for r in rows if r.failures]
    if failed:
        first = failed[0]
        raise PipelineError(
            f"{cfg.name}: accuracy gate failed for {first.artifact}, output {first.output!r} at batch "
            f"{first.batch}: {'; '.join(first.failures)} (gates in [accuracy] of {cfg.path})"
        )
    return rows


def bench(cfg: Config, root: Path | None = None, repeat: int = 1) -> dict:
    """Latency across batch sizes for the deployable baseline and its w8a8 counterpart."""
    from pipeline.console import table
    from pipeline.evaluate import bench as bench_mod
    from pipeline.fileio import write_json, write_text

    out = Layout.of(cfg, root)
    records.begin(cfg, out, "bench")
    plan = bench_mod.plan_bench(cfg, out)
    if plan.backend == "tensorrt":
        from pipeline.targets.tensorrt.profiles import check_bench_batches

        check_bench_batches(cfg, plan.batches, "bench.gpu_batches")
    runs = bench_mod.bench(cfg, out, plan, repeat)
    rows = runs[0]
    speedup = bench_mod.speedups(rows, plan)
    result = {
        "backend": plan.backend,
        "includes": plan.includes,
        "baseline": plan.baseline.name,
        "quantized": plan.quantized.name,
        "batches": list(plan.batches),
        "threads": plan.threads,
        "warmup": cfg.bench.warmup,
        "min_iterations": cfg.bench.iterations,
        "min_seconds": cfg.bench.min_seconds,
        "runs": [[r.as_dict() for r in run] for run in runs],
        "speedup": {str(b): s for b, s in speedup.items()},
        "consistency": bench_mod.consistency(runs),
    }
    if plan.backend == "onnxruntime-cpu":
        from pipeline.data import sample_inputs
        from pipeline.evaluate.profile import op_time_share

        # Evidence for the report: INT8 only speeds up the Conv/MatMul/Gemm share of FP32 time.
        largest = max(plan.batches)
        result["fp32_op_time_share"] = op_time_share(plan.baseline.path, sample_inputs(cfg, largest), plan.threads)
        result["profiled_batch"] = largest
    with after_record():  # the two files come as a set
        write_json(out.result("bench"), result)
        write_text(out.bench_csv, bench_mod.to_csv([r for run in runs for r in run]))
        records.finish(cfg, out, "bench", [out.result("bench"), out.bench_csv])
    info(
        f"{cfg.name}: latency, {plan.includes}; after {cfg.bench.warmup} warm-up runs, at least "
        f"{cfg.bench.iterations} timed runs and {cfg.bench.min_seconds:g} s per artifact and batch"
    )
    info(
        table(
            ["artifact", "batch", "median ms", "p90 ms", "p99 ms", "IQR ms", "items/s", "w8a8 speedup"],
            [
                [
                    r.artifact,
                    r.batch,
                    r.latency.median_ms,
                    r.latency.p90_ms,
                    r.latency.p99_ms,
                    r.latency.iqr_ms,
                    f"{r.throughput:.0f}",
                    f"{speedup[r.batch]:.2f}x" if r.precision == plan.quantized.name else "",
                ]
                for r in rows
            ],
        )
    )
    for line in result["consistency"]:
        info(f"  repeat check: {line}")
    return result


def report(cfg: Config, root: Path | None = None) -> Path:
    """engines/NAME/reports/report.md and its charts, from saved results only."""
    from pipeline.evaluate.report import write_report

    out = Layout.of(cfg, root)
    records.begin(cfg, out, "report")
    with after_record():
        written = write_report(out, cfg.name)
        records.finish(cfg, out, "report", written)
    info(f"{cfg.name}: wrote {', '.join(map(str, written))}")
    return written[0]


def engines(cfg: Config, root: Path | None = None, until: str = "report") -> list[str]:
    """Every stage up to ``until`` whose record is missing or whose inputs changed since it ran (config
    sections, weights, model source, data, code, earlier stages' files); returns the stages run."""
    out = Layout.of(cfg, root)
    ran = []
    for stage in records.STAGES[: records.STAGES.index(until) + 1]:
        reason = records.rerun_reason(cfg, out, stage)
        if reason is None:
            info(f"{cfg.name}: {stage} is up to date")
            _recorded_gate(cfg, out, stage)
            continue
        info(f"{cfg.name}: {stage}: {reason}")
        _STAGES[stage](cfg, root)
        ran.append(stage)
    return ran


def _recorded_gate(cfg: Config, out: Layout, stage: str) -> None:
    """A compare whose gate failed, or a quantize that kept its graphs aside for it, stays a failure on
    every run, not only the one that measured it."""
    from pipeline.errors import PipelineError

    record = records.load_record(out, stage)
    if record is None or record.passed:
        return
    if stage == "compare":
        raise PipelineError(
            f"{cfg.name}: an accuracy gate failed when compare ran (rows in {out.result('compare')}); "
            f"fix the model or the gates in [accuracy] of {cfg.path}"
        )
    kept_aside = [n for n in QUANTIZED.values() if out.key(out.failed_graph(n)) in record.outputs]
    if stage == "quantize" and kept_aside:
        raise PipelineError(
            f"{cfg.name}: an accuracy gate failed when quantize ran ({out.failed_graph(kept_aside[0])} kept aside, "
            f"rows in {out.result('quantize')}); fix the gates in [accuracy] of {cfg.path} or quantize --force"
        )


def deploy(
    cfg: Config,
    to: Path,
    precision: str = "w8a8",
    fmt: str = "triton",
    force: bool = False,
    root: Path | None = None,
    replace: bool = False,
) -> Path:
    """Copy the chosen engine (or graph) with its manifest into a Triton repository or a plain folder."""
    from pipeline.deploy.checks import check_destination, select
    from pipeline.deploy.repository import write_plain, write_triton

    out = Layout.of(cfg, root)
    check_destination(out, to)  # every check before anything is written
    chosen = select(cfg, out, precision, force)
    if chosen.gate_failures:
        info(
            f"WARNING: deploying {chosen.artifact.label} despite its failed accuracy gate (--force); "
            f"the manifest records it"
        )
    path = write_triton(cfg, out, chosen, to, replace) if fmt == "triton" else write_plain(cfg, chosen, to, replace)
    info(f"{cfg.name}: deployed {chosen.artifact.label} ({chosen.device}) to {path}")
    return path


_STAGES = {
    "export": export,
    "calibrate": calibrate,
    "quantize": quantize,
    "build": build,
    "compare": compare,
    "bench": bench,
    "report": report,
}
