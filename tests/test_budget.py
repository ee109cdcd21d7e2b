"""Per-layer sensitivity and the accuracy budget on a graph made to have one sensitive layer
(``graphs.outlier_chain``: conv2's input range is set by one outlier channel)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pipeline import ortsession
from pipeline.calibration.calibrator import RangesFromOnnx
from pipeline.config import (
    BatchProfile,
    Budget,
    CalibrationSection,
    Config,
    ModelSection,
    QuantizeSection,
    TensorSpec,
    load_config,
)
from pipeline.errors import PipelineError
from pipeline.evaluate import budget, sensitivity
from pipeline.evaluate.variants import HeldOut, VariantRunner
from pipeline.fp16 import fp16_graph
from pipeline.graphview import GraphView
from pipeline.layout import Layout
from pipeline.targets.base import QuantizationInputs
from pipeline.targets.onnxruntime_cpu import quantize as ort_cpu
from pipeline.targets.tensorrt.placement import plan_tensorrt
from tests import graphs

LAYERS = ["conv1", "conv2", "conv3"]


def _config() -> Config:
    return Config(
        name="outlier_chain",
        model=ModelSection("unused:build"),
        inputs=(TensorSpec("x", ("batch", 16, 8, 8)),),
        outputs=(TensorSpec("y", ("batch", 16, 8, 8)),),
        batch=(BatchProfile(1, 8, 16),),
        calibration=CalibrationSection("unused:calibration"),
    )


@pytest.fixture(scope="module")
def setup():
    """Both targets of the outlier chain, calibrated with max ranges, and 32 held-out rows with FP32's outputs."""
    return _targets(graphs.outlier_chain())


def _targets(model):
    view = GraphView(model)
    tensors = plan_tensorrt(view, QuantizeSection()).tensors | ort_cpu.tensors_to_calibrate(view)
    ranges = RangesFromOnnx(tensors, 2048, 99.99)(model, [graphs.inputs_for(model, 8, s) for s in range(4)])
    inputs = QuantizationInputs(model, fp16_graph(model, keep_fp32=()), view, ranges, "max", QuantizeSection())
    targets = sensitivity.targets_for(("w8a8", "w8a8-cpu"), inputs)
    ref = ortsession.session(model, cpu_only=True)
    feeds = [graphs.inputs_for(model, 8, seed) for seed in range(10, 14)]
    heldout = HeldOut(_config(), tuple((f, None) for f in feeds), tuple(tuple(ortsession.run(ref, f)) for f in feeds))
    return targets, heldout


@pytest.mark.parametrize("graph", ["w8a8", "w8a8-cpu"])
def test_sensitivity_ranks_the_outlier_layer_first(setup, graph):
    targets, heldout = setup
    table = sensitivity.measure(targets[graph], heldout)
    assert [s.node for s in table.layers] == LAYERS
    by = {s.node: s for s in table.layers}
    assert table.ranked()[0].node == "conv2"
    assert table.quantized.centered_cosine < 0.99  # int8 wrecks the chain ...
    assert by["conv2"].fallback.centered_cosine > 0.999  # ... and conv2 in FP16 alone restores it
    assert by["conv2"].alone.centered_cosine < 0.99  # conv2 alone quantized loses it
    assert min(by[n].alone.centered_cosine for n in ("conv1", "conv3")) > 0.999
    assert sensitivity.Sensitivity.from_dict(table.as_dict()) == table  # the saved record reads back equal


def test_a_variant_runs_only_what_changed_and_scores_as_the_whole_graph(setup):
    targets, heldout = setup
    target = targets["w8a8"]
    full = target.with_fp16(frozenset())
    runner = VariantRunner(full, heldout)
    variant = target.with_fp16({"conv3"})
    region = runner._region(variant)
    # conv3 on r2 with its FP16 weight, and the Cast of y to the graph's float32 output
    assert [n.op_type for n in region.model.graph.node] == ["Conv", "Cast"]
    assert region.boundary == ("r2",)  # everything before conv3 comes from the base's run
    whole = VariantRunner(full, heldout, delta=False).scores([variant])[0]
    part = runner.scores([variant])[0]
    assert part.centered_cosine == pytest.approx(whole.centered_cosine, abs=1e-6)
    assert part.rel_error == pytest.approx(whole.rel_error, rel=1e-3)


def test_variants_given_as_makers_are_made_a_chunk_at_a_time_and_score_as_given(setup, monkeypatch):
    """A runner whose variants run whole scores each alone: the next is made only once the last one's
    session has run, so one whole graph and its session are alive at a time. Variants of a graph run
    as written share a base run, a chunk of them made together. Made or given, the scores are the same."""
    targets, heldout = setup
    cpu = targets["w8a8-cpu"]
    runner = VariantRunner(cpu.with_fp16(frozenset()), heldout)
    assert not runner.delta and runner.chunk == 1
    sessions, made = [], []
    real = ortsession.session
    monkeypatch.setattr(ortsession, "session", lambda *a, **k: sessions.append(1) or real(*a, **k))

    def maker(node: str):
        def make():
            assert len(sessions) == len(made)  # each variant made before this one has had its session
            made.append(node)
            return cpu.with_fp16({node})

        return make

    scored = runner.scores([maker(n) for n in LAYERS])
    assert made == LAYERS and len(sessions) == len(LAYERS)
    monkeypatch.setattr(ortsession, "session", real)
    assert scored == runner.scores([cpu.with_fp16({n}) for n in LAYERS])
    trt = VariantRunner(targets["w8a8"].with_fp16(frozenset()), heldout)
    assert trt.delta and trt.chunk > len(LAYERS)


@pytest.mark.parametrize("graph", ["w8a8", "w8a8-cpu"])
def test_budget_keeps_exactly_the_sensitive_layer_and_stops_when_met(setup, graph):
    targets, heldout = setup
    result, model, table = budget.fit(targets[graph], Budget(min_cosine=0.999), heldout, 3, "cfg.toml")
    assert [k.node for k in result.kept] == ["conv2"]
    assert result.before.centered_cosine < 0.99 <= 0.999 <= result.after.centered_cosine
    # the full graph, then conv2 in FP16: met, no third graph (without conv2 is the full graph, known)
    assert result.evaluations == 2
    assert table is not None and table.ranked()[0].node == "conv2"
    assert (result.quantized, result.weighted) == (3, 3)
    assert result.coverage() == "INT8 3/3 (100%) -> 2/3 (67%)"
    assert "recovers" in result.kept[0].reason()
    score = VariantRunner(model, heldout, delta=False).scores([model])[0]
    assert score == result.after  # the graph returned is the one scored


def test_pruning_drops_what_a_later_step_made_unnecessary():
    """Kept in the order a, b, c where b alone meets the budget: c, then a, are dropped."""
    scored = []

    def ok(kept):
        scored.append(tuple(kept))
        return "b" in kept

    assert budget._pruned(["a", "b", "c"], ok) == ["b"]
    # least sensitive (last kept) first: without c holds; without b fails, so b stays; without a holds
    assert scored == [("a", "b"), ("a",), ("b",)]


def test_the_shortest_prefix_is_found_by_doubling_then_halving():
    """12 layers ranked, the budget met once the first 5 are in FP16: lengths 1, 2, 4, 8 (met), then
    6 and 5 (met), not one graph per layer."""
    ranked = [f"l{i}" for i in range(12)]
    tried = []

    def ok(kept):
        tried.append(len(kept))
        return len(kept) >= 5

    assert budget._shortest_prefix(ranked, ok, cap=12) == ranked[:5]
    assert tried == [1, 2, 4, 8, 8, 6, 5]  # the loop's second look at 8 is a cached score in fit
    assert budget._shortest_prefix(ranked, ok, cap=3) == ranked[:3]  # out of reach: the longest tried
    assert budget._shortest_prefix(ranked, ok, cap=0) == []


def test_budget_drops_a_layer_a_later_step_made_unnecessary(setup):
    """A ranking that puts conv1 first (a saved table from other data, say): the loop keeps conv1,
    fails, keeps conv2, meets the budget, then finds conv1 was not needed and drops it."""
    targets, heldout = setup
    table = sensitivity.measure(targets["w8a8"], heldout)
    by = {s.node: s for s in table.layers}
    misleading = dataclasses.replace(
        table,
        layers=(dataclasses.replace(by["conv1"], fallback=by["conv2"].fallback, alone=by["conv2"].alone),)
        + tuple(
            dataclasses.replace(by[n], fallback=table.quantized, alone=table.unquantized) for n in ("conv2", "conv3")
        ),
    )
    assert misleading.ranked()[0].node == "conv1"
    two = Budget(min_cosine=0.999, max_fp16_share=1.0)
    result, _, _ = budget.fit(targets["w8a8"], two, heldout, 3, "cfg.toml", table=misleading)
    assert [k.node for k in result.kept] == ["conv2"]
    assert result.after.centered_cosine >= 0.999


@pytest.mark.parametrize("graph", ["w8a8", "w8a8-cpu"])
def test_the_budget_searches_for_what_the_gate_checks_too(setup, graph):
    """A budget the fully quantized graph meets (a top-1 drop, on rows without labels: nothing to judge)
    while it misses its gate (centered cosine 0.99, the default): the budget keeps layers in FP16 until
    the gate holds too, as quantize then checks it."""
    targets, heldout = setup
    result, _, _ = budget.fit(targets[graph], Budget(max_metric_drop=1.0), heldout, 3, "cfg.toml")
    assert result.before.centered_cosine < 0.99 and result.before.gate_failures
    assert "centered cosine" in result.before.gate_failures[0]
    assert [k.node for k in result.kept] == ["conv2"]
    assert result.after.centered_cosine >= 0.99 and result.after.gate_failures is None


def test_a_budget_the_full_graph_meets_keeps_nothing_and_measures_nothing():
    targets, heldout = _targets(graphs.outlier_chain(scale=1.0))  # no outlier channel
    result, _, table = budget.fit(targets["w8a8"], Budget(min_cosine=0.999), heldout, 3, "cfg.toml")
    assert result.kept == () and table is None and result.evaluations == 1


def test_a_budget_out_of_reach_fails_in_one_line_saying_how_close(setup):
    targets, heldout = setup
    with pytest.raises(PipelineError) as info:
        budget.fit(targets["w8a8"], Budget(min_cosine=0.99999999, max_fp16_layers=1), heldout, 3, "cfg.toml")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("cfg.toml: w8a8 cannot meet [accuracy.budget] (min_cosine = 0.99999999)")
    assert "at most 1 of 3 layers in FP16" in msg and "closest: centered cosine 0.99" in msg and "with 1 in FP16" in msg


def test_a_budget_out_of_reach_settles_for_the_closest_graph_scored_when_forced(setup):
    """quantize --force: the graph written is the closest the search scored (conv2 in FP16, the one layer
    the cap allows), with its figures, not a refusal; that graph misses the budget and the gate knows."""
    targets, heldout = setup
    out_of_reach = Budget(min_cosine=0.99999999, max_fp16_layers=1)
    result, model, _ = budget.fit(targets["w8a8"], out_of_reach, heldout, 3, "cfg.toml", settle_for_closest=True)
    assert [k.node for k in result.kept] == ["conv2"] and result.int8_after == result.quantized - 1
    assert 0.999 < result.after.centered_cosine < 0.99999999 < 1.0
    assert result.after.centered_cosine > result.before.centered_cosine
    assert not budget.meets(result.after, out_of_reach, None, None)
    written = VariantRunner(model, heldout, delta=False).scores([model])[0]
    assert written.centered_cosine == pytest.approx(result.after.centered_cosine, abs=1e-9)
    kept = targets["w8a8"].with_fp16(frozenset({"conv2"}))
    assert model.SerializeToString() == kept.SerializeToString()


@pytest.mark.parametrize("pipeline_run", ["[accuracy.budget]\nmin_cosine = 0.9"], indirect=True)
def test_quantize_under_a_budget_then_sensitivity_and_the_report(pipeline_run, tmp_path, user_model):
    from click.testing import CliRunner

    from pipeline import stages
    from pipeline.cli import main
    from tests.conftest import FAST_BENCH, write_config

    cfg, path, out = pipeline_run
    quant = json.loads((out.results_dir / "quantize.json").read_text())
    assert set(quant["budget"]) == {"w8a8", "w8a8-cpu"}
    for fit in quant["budget"].values():
        assert fit["after"]["centered_cosine"] >= 0.9 and fit["int8_after"] <= fit["int8_before"]
    result = CliRunner().invoke(main, ["sensitivity", "-c", str(path), "--target", "tensorrt"])
    assert result.exit_code == 0, result.output
    tables = sensitivity.load(out.sensitivity)
    assert list(tables) == ["w8a8"] and tables["w8a8"].layers
    stages.run("bench", cfg)
    report = stages.run("report", cfg).read_text()
    assert "## Per-layer sensitivity" in report and (out.reports_dir / "sensitivity.png").is_file()

    strict = "[accuracy.budget]\nmin_cosine = 0.99999999\nmax_fp16_layers = 0"
    path = write_config(tmp_path, user_model, top=f'name = "tiny"\n{FAST_BENCH}\n{strict}')
    result = CliRunner().invoke(main, ["quantize", "-c", str(path)])
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert line.startswith(f"Error: {path}: w8a8 cannot meet [accuracy.budget] (min_cosine = 0.99999999)")
    assert "closest: centered cosine" in line and "Traceback" not in result.output
    # --force writes the closest graphs (all INT8 here: the cap is 0) as a missed gate, recorded as failed
    out = Layout.of(load_config(path))
    result = CliRunner().invoke(main, ["quantize", "-c", str(path), "--force"])
    assert result.exit_code == 0 and "--force: that graph is the one written" in result.output, result.output
    quant = json.loads((out.results_dir / "quantize.json").read_text())
    assert quant["passed"] is False and out.graph("w8a8").is_file() and out.graph("w8a8-cpu").is_file()
    assert all(fit["kept_fp16"] == [] for fit in quant["budget"].values())
    assert json.loads(out.record("quantize").read_text())["passed"] is False


def test_a_sensitivity_file_of_another_shape_is_refused_in_one_line(tmp_path):
    path = tmp_path / "sensitivity.json"
    path.write_text('{"version": 1, "graphs": {"w8a8": {"graph": "w8a8"}}}')
    with pytest.raises(PipelineError, match="not a sensitivity table .*'rows'.*run trtpipe sensitivity again"):
        sensitivity.load(path)
    assert sensitivity.load(tmp_path / "missing.json") is None


def test_a_cpu_layer_kept_float_takes_the_ops_after_it_up_to_the_next_layer():
    """``graphs.residual``: conv2's epilogue is the residual Add and the Relu after it (the CPU graph
    quantizes both); conv1's is its Relu, up to conv2."""
    view = GraphView(graphs.residual())
    assert ort_cpu.with_epilogues(view, ("conv2",)) == ("conv2", "add", "relu2")
    assert ort_cpu.with_epilogues(view, ("conv1",)) == ("conv1", "relu1")


def test_the_cpu_graph_with_every_layer_float_is_the_fp32_graph():
    """Every weighted layer of ``graphs.residual`` kept float: nothing is quantized any more (the
    residual Add and the Relu after it stayed uint8 before), and the outputs are FP32's."""
    model = graphs.residual()
    targets, heldout = _targets(model)
    cpu = targets["w8a8-cpu"]
    every = cpu.with_fp16({n for n, _ in cpu.layers})
    assert not [n.name for n in every.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    feed = graphs.inputs_for(model, 4, seed=3)
    ours = ortsession.run(ortsession.session(every, cpu_only=True), feed)
    ref = ortsession.run(ortsession.session(model, cpu_only=True), feed)
    assert max(float(abs(a - b).max()) for a, b in zip(ours, ref, strict=True)) < 1e-5
