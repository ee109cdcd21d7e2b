"""``trtpipe quantize``: each configured target's 8-bit graph from the exported graphs and their
ranges (a stale calibration cache calibrated anew), checked against its runtime's rules and, on
held-out data, against its accuracy gate."""

from __future__ import annotations

from pathlib import Path

from pipeline import targets
from pipeline.calibration import inputs
from pipeline.config import Config
from pipeline.console import info
from pipeline.layout import Layout
from pipeline.results import QuantizeResult
from pipeline.stages import calibrate, export
from pipeline.stages.base import Stage, StageRun
from pipeline.targets.base import FP16, FP32, QuantizationInputs, Target


def run(r: StageRun, targets: tuple[str, ...] = (), force: bool = False) -> QuantizeResult:
    """``targets`` narrows ``[quantize] targets`` (all of them by default). A graph that fails its
    accuracy gate is written aside as ``model.NAME.failed.onnx`` and quantize fails, unless ``force``."""
    from pipeline import onnxutil, results
    from pipeline.calibration.auto import summary as auto_summary
    from pipeline.evaluate.accuracy import note_calibration_rows
    from pipeline.evaluate.attribution import explain_losses

    cfg, out = r.cfg, r.out
    note_calibration_rows(cfg)
    inp = inputs.quantization_inputs(cfg, out, calibrate.STAGE)
    if inp.method == "auto":
        headline, *cuts = auto_summary(inp.ranges)
        info(f"{cfg.name}: {headline}")
        for line in cuts:
            info(line)
    chosen = _chosen(cfg, targets)
    models = {t.artifact: t.quantize(inp) for t in chosen}
    fits = _within_budget(cfg, out, inp, chosen, models) if cfg.accuracy.budget is not None else {}
    for t in chosen:
        _check_rules(t, models[t.artifact])
    skipped, int8_layers = _placement_report(cfg, inp, chosen, fits)

    with r.writing() as written:
        with onnxutil.staged({out.graph(n): g for n, g in models.items()}) as staged:
            rows = _quantized_accuracy(cfg, out, {n: staged[out.graph(n)] for n in models})
            _cpu_speed(cfg, out, chosen, {n: staged[out.graph(n)] for n in models})
            failed = {row.artifact for row in rows if row.failures}
            _set_aside(cfg, out, models, set() if force else failed, staged)
        worst = explain_losses(cfg, inp.view, models, rows, inp.ranges, inp.method)
        summary = QuantizeResult(
            inp.method,
            not failed,
            tuple(rows),
            tuple(skipped),
            int8_layers,
            inp.smoothing,
            {n: tuple(errors) for n, errors in worst.items()},
            fits,
        )
        results.save(summary, out)
        # A failed gate is recorded too: the record vouches for what was written, graphs kept aside included.
        kept_aside = set() if force else failed
        graphs = [out.failed_graph(n) if n in kept_aside else out.graph(n) for n in models]
        written.paths, written.passed = [*graphs, QuantizeResult.path(out)], not failed
    if failed:
        _gate_verdict(cfg, out, [row for row in rows if row.failures], force)
    return summary


def _chosen(cfg: Config, names: tuple[str, ...]) -> list[Target]:
    return [t for t in targets.configured(cfg) if not names or t.name in names]


def _check_rules(target: Target, model) -> None:
    from pipeline.errors import PipelineError

    broken = target.violations(model)
    if broken:  # our placement or ONNX Runtime's quantizer made it: not the user's model
        raise PipelineError(
            f"{target.artifact} graph breaks a {target.name} quantization rule at {broken[0]} "
            f"(+{len(broken) - 1} more); the quantizer made this graph, not your model: please report it"
        )


def _placement_report(cfg: Config, inp: QuantizationInputs, chosen: list[Target], fits: dict) -> tuple[list, int]:
    """Each target's own report of where it quantized (the layers the budget keeps float shown as
    kept, with the budget's reason); the first such report's kept layers and INT8 count are recorded."""
    from dataclasses import replace

    from pipeline.console import table

    recorded: tuple[list, int] | None = None
    for t in chosen:
        fit = fits.get(t.artifact)
        kept = {k.node: k for k in fit.kept} if fit is not None else {}
        report = t.placement_report(inp, tuple(kept))
        if report is None:
            continue
        rows, skipped, int8_layers = report
        skipped = [s for s in skipped if s.node not in kept] + [
            replace(s, reason=f"kept by [accuracy.budget]: {kept[s.node].reason()}") for s in skipped if s.node in kept
        ]
        info(table(["op type", "INT8 layers", "kept FP16", "Q/DQ inputs"], rows))
        for s in skipped:
            info(f"  kept FP16: {s.op_type} {s.node}: {s.reason}")
        recorded = recorded or (skipped, int8_layers)
    return recorded or ([], 0)


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
    """The quantized graphs at ``graphs`` against FP32 on ONNX Runtime (CPU), held-out data, with their gates."""
    from pipeline import ortsession
    from pipeline.console import table
    from pipeline.evaluate.accuracy import accuracy_table, evaluate

    # Three sessions alive at once: without arenas each holds only its weights between runs.
    ref = ortsession.session_for(out.graph(FP32), True, arena=False)
    sessions = {n: ortsession.session_for(p, True, arena=False) for n, p in graphs.items()}
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


# A quick look, not bench: enough to tell a slower graph from a faster one.
SPEED_CHECK_ROUNDS, SPEED_CHECK_PER_ROUND = 6, 5


def _cpu_speed(cfg: Config, out: Layout, chosen: list[Target], graphs: dict[str, Path]) -> None:
    """Each graph that deploys on a CPU, timed against the FP32 graph here, interleaved, at the
    calibration batch: an 8-bit graph slower than FP32 is said now, not found in production
    (the report's verdict, from bench, then does not recommend it)."""
    from pipeline import ortsession
    from pipeline.data import sample_inputs
    from pipeline.evaluate.timing import measure_interleaved

    cpu = [t for t in chosen if t.deploys_on_cpu]
    if not cpu:
        return
    batch = cfg.nearest_batch(cfg.calibration.batch_size)
    feed = sample_inputs(cfg, batch)
    runs = {}
    for name, path in ((FP32, out.graph(FP32)), *((t.artifact, graphs[t.artifact]) for t in cpu)):
        session = ortsession.session_for(path, True, threads=cfg.bench.threads)
        inputs = ortsession.feed_for(session, feed)
        runs[name] = lambda s=session, i=inputs: s.run(None, i)
    times = measure_interleaved(runs, 2, SPEED_CHECK_ROUNDS, SPEED_CHECK_PER_ROUND)
    for t in cpu:
        ratio = times[FP32].median_ms / times[t.artifact].median_ms
        verdict = "" if ratio >= 1.0 else ": slower than FP32 here, INT8 does not pay on this CPU (bench measures it)"
        speed = f"{t.artifact} runs {ratio:.2f}x FP32's speed at batch {batch} ({t.label}, a quick check)"
        info(f"{cfg.name}: {speed}{verdict}")


def _gate_verdict(cfg: Config, out: Layout, failed: list, force: bool) -> None:
    """A failed gate stops quantize (its graphs kept aside), or with ``force`` is only announced; either
    way every failing graph and output is named with its figures."""
    from pipeline.errors import PipelineError
    from pipeline.evaluate.accuracy import failures_line

    why = failures_line(failed)
    if force:
        info(f"WARNING: {cfg.name}: accuracy gate failed for {why}; written as the artifact anyway (--force)")
        return
    aside = ", ".join(str(out.failed_graph(a)) for a in dict.fromkeys(row.artifact for row in failed))
    raise PipelineError(
        f"{cfg.name}: accuracy gate failed for {why}; kept aside as {aside} "
        f"(gates in [accuracy] of {cfg.path}; --force writes them as the artifacts)"
    )


def _within_budget(cfg: Config, out: Layout, inp: QuantizationInputs, chosen: list[Target], models: dict) -> dict:
    """Replace each graph in ``models`` by the one with the fewest layers in float that meets
    ``[accuracy.budget]``; the budget results by graph name. The sensitivity tables the loop needed
    are saved for the report."""
    from pipeline.evaluate import budget, sensitivity
    from pipeline.evaluate.variants import held_out

    heldout = held_out(cfg, out.graph(FP32), cfg.accuracy.sensitivity_rows)
    fits, tables = {}, {}
    for t in chosen:
        name, target = t.artifact, t.sensitivity(inp)
        info(f"{cfg.name}: {name}: fitting [accuracy.budget] on {heldout.rows} held-out rows")
        fit, model, table = budget.fit(
            target, cfg.accuracy.budget, heldout, sensitivity.weighted_layers(inp.view), str(cfg.path)
        )
        models[name] = model
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


def _reads(cfg, out):
    made = [(calibrate.STAGE, path) for path in inputs.calibration_files(cfg, out)]
    return [(export.STAGE, out.graph(FP32)), (export.STAGE, out.graph(FP16)), *made]


def _data(cfg):
    calibration = ("calibration data", cfg.calibration.source)
    evaluation = ("held-out data", cfg.evaluation.source) if cfg.evaluation is not None else calibration
    return [calibration, evaluation]


STAGE = Stage(
    "quantize",
    ("batch", "calibration", "quantize", "accuracy", "evaluation"),
    run,
    reads=_reads,
    data=_data,
    remakes=frozenset({"calibrate"}),
    result=QuantizeResult,
)
