"""``trtpipe quantize``: each configured target's 8-bit graph from the exported graphs and their
ranges (a stale calibration cache calibrated anew), checked against its runtime's rules and, on
held-out data, against its accuracy gate."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from pipeline import targets
from pipeline.calibration import inputs
from pipeline.config import Config
from pipeline.console import info
from pipeline.layout import Layout
from pipeline.results import QuantizeResult
from pipeline.stages import calibrate, export
from pipeline.stages.base import Stage, StageRun, user_metric
from pipeline.targets.base import FP16, FP32, QuantizationInputs, Target


def run(r: StageRun, targets: tuple[str, ...] = (), force: bool = False) -> QuantizeResult:
    """``targets`` narrows ``[quantize] targets`` (all of them by default). A graph that fails its
    accuracy gate is written aside as ``model.NAME.failed.onnx`` and quantize fails, unless ``force``."""
    import tempfile

    # The FP32 and FP16 graphs' weights wait in files while quantize runs (inputs.quantization_inputs):
    # each graph made from them reads the weights it needs, and no parsed copy of them is held.
    with tempfile.TemporaryDirectory(prefix="trtpipe.weights.") as folder:
        return _quantize(r, targets, force, Path(folder))


def _quantize(r: StageRun, targets: tuple[str, ...], force: bool, weights_folder: Path) -> QuantizeResult:
    import dataclasses

    import onnx

    from pipeline import fileio, onnxutil, phases, results
    from pipeline.calibration.auto import summary as auto_summary
    from pipeline.evaluate.accuracy import note_calibration_rows
    from pipeline.evaluate.attribution import explain_losses

    cfg, out = r.cfg, r.out
    note_calibration_rows(cfg)
    with phases.collecting() as collected:
        with phases.timed("inputs"):  # the graphs read (and smoothed); a stale cache's calibration is timed inside
            inp = inputs.quantization_inputs(cfg, out, calibrate.STAGE, weights_folder)
        if inp.method == "auto":
            headline, *cuts = auto_summary(inp.ranges)
            info(f"{cfg.name}: {headline}")
            for line in cuts:
                info(line)
        chosen = _chosen(cfg, targets)
        models, building = {}, {}
        # The graphs put on the FP16 graph (their baseline) first: without a budget to fit, the FP16
        # graph goes before the others are built, and in any case before the speed search's sessions.
        for t in sorted(chosen, key=lambda t: t.baseline != FP16):
            if t.baseline != FP16 and cfg.accuracy.budget is None:
                inp = dataclasses.replace(inp, fp16=onnx.ModelProto())
            started = time.perf_counter()
            with phases.timed(f"graph building: {t.artifact}"):
                # A graph naming the FP32 graph's weights in their file (a target that returns it) gets them.
                models[t.artifact] = onnxutil.with_data(t.quantize(inp), weights_folder)
            building[t.artifact] = time.perf_counter() - started
        models = {t.artifact: models[t.artifact] for t in chosen}  # the configured order, for every table
        fits = _within_budget(cfg, out, inp, chosen, models, force) if cfg.accuracy.budget is not None else {}
        inp = dataclasses.replace(inp, fp16=onnx.ModelProto())
        with phases.timed("CPU speed search"):
            searches = _speed_searches(cfg, inp, chosen, models, fits, building, weights_folder)
        with phases.timed("rule checks"):
            for t in chosen:
                _check_rules(t, models[t.artifact])
            skipped, int8_layers = _placement_report(cfg, inp, chosen, fits)
        # Loss attribution reads the FP32 graph through its view: the weights stay in their file.
        ranges, method, smoothing, fp32_view = inp.ranges, inp.method, inp.smoothing, inp.view
        del inp

        with r.writing() as written:
            names = tuple(models)
            # staged takes each graph as it writes it: one graph in memory at a time, then none; from here
            # on the graphs are read from their files.
            writes = {out.graph(n): models.pop(n) for n in names}
            with phases.timed("file writes"), onnxutil.staged(writes) as staged:
                with phases.timed("accuracy pass"):
                    rows = _quantized_accuracy(cfg, out, {n: staged[out.graph(n)] for n in names})
                with phases.timed("CPU speed check"):
                    speeds = _cpu_speed(cfg, out, chosen, {n: staged[out.graph(n)] for n in names}, searches)
                failed = {row.artifact for row in rows if row.failures} | {n for n, f in fits.items() if f.missed}
                kept_aside = set() if force else failed
                _set_aside(cfg, out, names, kept_aside, staged)
            with phases.timed("loss attribution"):
                written_graphs = {n: out.failed_graph(n) if n in kept_aside else out.graph(n) for n in names}
                # Where each graph is now: a graph's move to its name waits for the record (fileio.settle).
                now = {n: fileio.newest(path) for n, path in written_graphs.items()}
                worst = explain_losses(cfg, fp32_view, now, rows, ranges, method)
            summary = QuantizeResult(
                method,
                not failed,
                tuple(rows),
                tuple(skipped),
                int8_layers,
                smoothing,
                {n: tuple(errors) for n, errors in worst.items()},
                fits,
                next(iter(searches.values()), None),
                next((ratio >= cfg.verdict.min_speedup for ratio in speeds.values()), None),
                collected.phases(),
            )
            results.save(summary, out)
            # A failed gate is recorded too: the record vouches for what was written, graphs kept aside included.
            graphs = list(written_graphs.values())
            written.paths, written.passed = [*graphs, QuantizeResult.path(out)], not failed
    info(f"{cfg.name}: quantize phases, {phases.describe(summary.phases)}")
    if any(row.failures for row in rows):  # a budget missed under --force was announced by its search
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


def _set_aside(cfg: Config, out: Layout, names: Iterable[str], failed: set[str], staged: dict[Path, Path]) -> None:
    """Graphs in ``failed`` are moved from where they were staged to model.NAME.failed.onnx, not to
    their artifact (withdrawn from ``staged``); the other name of each graph goes now, before the
    record, so nothing stale passes for this run's result (the one output of a run before that does
    not wait for the record)."""
    from pipeline import onnxutil

    for name in names:
        (out.graph(name) if name in failed else out.failed_graph(name)).unlink(missing_ok=True)
        if name in failed:
            onnxutil.place(staged.pop(out.graph(name)), out.failed_graph(name))
        info(f"{cfg.name}: wrote {out.failed_graph(name) if name in failed else out.graph(name)}")


def _quantized_accuracy(cfg: Config, out: Layout, graphs: dict[str, Path]) -> list:
    """The quantized graphs at ``graphs`` against FP32 on ONNX Runtime (CPU), held-out data, with their gates."""
    import tempfile

    from pipeline import ortsession
    from pipeline.console import table
    from pipeline.evaluate.accuracy import accuracy_table, evaluate_in_turn

    def infer(path: Path):
        session = ortsession.session_for(path, True, arena=False)  # no arena to keep a run's activations after it
        return lambda feed: ortsession.run(session, feed)

    gates = {name: cfg.accuracy.gate(name) for name in graphs}
    batch = cfg.nearest_batch(cfg.calibration.batch_size)  # the batch calibration ran, inside the profiles
    # One graph's session at a time, FP32's outputs kept in files for the others (as plain inference).
    with tempfile.TemporaryDirectory(prefix="trtpipe.accuracy.") as tmp:
        rows = evaluate_in_turn(
            cfg,
            lambda: infer(out.graph(FP32)),
            {n: (lambda p=p: infer(p)) for n, p in graphs.items()},
            gates,
            batch,
            Path(tmp),
        )
    method = cfg.calibration.method
    info(f"{cfg.name}: w8a8 graphs on ONNX Runtime (CPU) against FP32, held-out data at batch {batch}, method={method}")
    info(table(*accuracy_table(rows)))
    return rows


def _speed_searches(
    cfg: Config, inp: QuantizationInputs, chosen: list[Target], models: dict, fits: dict, building: dict, folder: Path
) -> dict:
    """Each target's speed search (the CPU graph's Q/DQ kept only in the regions they speed up), from
    its graph in ``models`` (made in ``building`` seconds, or by the budget) and its chosen graph put
    there; the searches by graph name. While a search runs its graph waits in a file in ``folder``,
    not in memory."""
    from pipeline import onnxutil

    found = {}
    for t in chosen:
        fit = fits.get(t.artifact)
        kept = tuple(k.node for k in fit.kept) if fit is not None else ()
        seconds = building[t.artifact] if fit is None else fit.seconds / max(fit.evaluations, 1)
        made = onnxutil.save_weights_beside(models[t.artifact], folder / f"{t.artifact}.onnx")
        models[t.artifact] = None  # the graph in memory goes: its file is the search's
        searched = t.speed_search(cfg, inp, kept, (made, seconds))
        if searched is None:
            models[t.artifact] = onnxutil.read_back(made)
        else:
            models[t.artifact], found[t.artifact] = searched
    return found


# A quick look, not bench: enough to tell a slower graph from a faster one, in about this long
# (a large model at the largest batch gets fewer runs per round, never fewer rounds).
SPEED_CHECK_ROUNDS, SPEED_CHECK_PER_ROUND, SPEED_CHECK_SECONDS = 6, 5, 10.0


def _runs_per_round(runs: dict) -> int:
    """Warms each graph up (two runs) and returns how many runs per round keep the check within
    SPEED_CHECK_SECONDS, from the second run's time."""
    one_round = 0.0
    for run in runs.values():
        run()
        start = time.perf_counter()
        run()
        one_round += time.perf_counter() - start
    fits = SPEED_CHECK_SECONDS / (SPEED_CHECK_ROUNDS * max(one_round, 1e-6))
    return int(min(max(fits, 1), SPEED_CHECK_PER_ROUND))


def _cpu_speed(cfg: Config, out: Layout, chosen: list[Target], graphs: dict[str, Path], searches: dict) -> dict:
    """Each graph that deploys on a CPU against the FP32 graph here at the largest CPU batch bench
    times (what the verdict decides by): its speed search's last timing, else timed now, interleaved.
    An 8-bit graph below ``[verdict] min_speedup`` is said now, not found in production (the report's
    verdict, from bench, then does not recommend it either). The speedups by graph name."""
    from pipeline import ortsession
    from pipeline.data import sample_inputs
    from pipeline.evaluate.timing import measure_interleaved

    cpu = [t for t in chosen if t.deploys_on_cpu]
    batch = max(cfg.bench.cpu_batches)
    speedups = {t.artifact: searches[t.artifact].speedup for t in cpu if t.artifact in searches}
    unsearched = [t for t in cpu if t.artifact not in searches]
    if unsearched:
        feed = sample_inputs(cfg, batch)
        runs = {}
        for name, path in ((FP32, out.graph(FP32)), *((t.artifact, graphs[t.artifact]) for t in unsearched)):
            session = ortsession.session_for(path, True, threads=cfg.bench.threads, shared=True)
            inputs = ortsession.feed_for(session, feed)
            runs[name] = lambda s=session, i=inputs: s.run(None, i)
        times = measure_interleaved(runs, 0, SPEED_CHECK_ROUNDS, _runs_per_round(runs))
        del runs, session, inputs  # every timed session gone before the shared arena is released
        ortsession.release_shared_arena()
        speedups.update({t.artifact: times[FP32].median_ms / times[t.artifact].median_ms for t in unsearched})
    for t in cpu:
        ratio, least = speedups[t.artifact], cfg.verdict.min_speedup
        how = "its speed search's timing" if t.artifact in searches else "a quick check"
        speed = f"{t.artifact} runs {ratio:.2f}x FP32's speed at batch {batch} ({t.label}, {how})"
        if ratio >= least:
            info(f"{cfg.name}: {speed}")
        else:
            info(
                f"{cfg.name}: {speed}: NOT RECOMMENDED, below {least:.2f}x ([verdict] min_speedup in {cfg.path}); "
                f"on this CPU deploy FP32 (bench measures it again)"
            )
    return speedups


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


def _within_budget(
    cfg: Config, out: Layout, inp: QuantizationInputs, chosen: list[Target], models: dict, force: bool
) -> dict:
    """Replace each graph in ``models`` by the one with the fewest layers in float that meets
    ``[accuracy.budget]`` (with ``force``, where none within the cap does, by the closest one scored:
    its gate then fails and it is written anyway); the budget results by graph name. The sensitivity
    tables the loop needed are saved for the report."""
    from pipeline.evaluate import budget, sensitivity
    from pipeline.evaluate.variants import held_out
    from pipeline.phases import timed

    with timed("accuracy budget: held-out rows"):
        heldout = held_out(cfg, out.graph(FP32), cfg.accuracy.sensitivity_rows)
    fits, tables = {}, {}
    for t in chosen:
        name, target = t.artifact, t.sensitivity(inp)
        info(f"{cfg.name}: {name}: fitting [accuracy.budget] on {heldout.rows} held-out rows")
        with timed(f"accuracy budget: {name}"):
            fit, model, table = budget.fit(
                target,
                cfg.accuracy.budget,
                heldout,
                sensitivity.weighted_layers(inp.view),
                str(cfg.path),
                settle_for_closest=force,
            )
        models[name] = model
        fits[name] = fit
        if table is not None:
            tables[name] = table
        info(
            f"{cfg.name}: {name} {'closest to the budget' if fit.missed else 'within budget'}: "
            f"{budget.describe(fit.after, fit.reference_metric, heldout.task)}; "
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
    return [calibration, evaluation, *user_metric(cfg)]


STAGE = Stage(
    "quantize",
    # The CPU graph's speed search and check run at bench's largest CPU batch on its threads.
    (
        "batch",
        "axes",
        "calibration",
        "quantize",
        "accuracy",
        "evaluation",
        "bench.cpu_batches",
        "bench.threads",
        "verdict",
    ),
    run,
    reads=_reads,
    data=_data,
    remakes=frozenset({"calibrate"}),
    result=QuantizeResult,
)
