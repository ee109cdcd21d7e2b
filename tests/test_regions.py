"""The CPU graph's per-region speed search: its regions, its decision on given timings, a real search
on ONNX Runtime over a graph with a region INT8 slows down and one it speeds up, and quantize's
result and output."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from pipeline import onnxutil, ortsession, results, stages
from pipeline.calibration.calibrator import RangesFromOnnx
from pipeline.config import QuantizeSection
from pipeline.evaluate.metrics import error_stats
from pipeline.graphview import GraphView
from pipeline.results import QuantizeResult, RegionSpeed, SpeedSearch
from pipeline.schema import decode, encode
from pipeline.targets.onnxruntime_cpu import quantize as ort_cpu
from pipeline.targets.onnxruntime_cpu.regions import MIN_GAIN, WHOLE_GRAPH, Region, keeps_qdq, regions, search
from pipeline.targets.onnxruntime_cpu.target import sensitivity_target
from tests import graphs
from tests.test_config import _error


def _rounds(*medians: float, runs: int = 5) -> np.ndarray:
    """Timings of ``len(medians)`` rounds, each ``runs`` runs spread around its median."""
    spread = np.linspace(-0.05, 0.05, runs)
    return np.array([[m * (1 + s) for s in spread] for m in medians])


def test_the_whole_graph_counts_as_kept_when_it_beat_the_regions_choice():
    """Each region measured too small a gain and went float, but the graph quantized everywhere beat
    their choice at the end: every region then counts as keeping its Q/DQ, in the result and its file."""
    regions_ = tuple(RegionSpeed(f"fc{i}", (f"fc{i}",), False, 1.01, 1.0, 1.02) for i in range(3))
    whole = RegionSpeed(WHOLE_GRAPH, ("fc0", "fc1", "fc2"), True, 1.06, 1.05, 1.07)
    found = SpeedSearch(16, 30.0, 2.0, regions_, 1.2, 1.1, 1.3, whole)
    assert found.kept == regions_ and found.derived() == {"regions_kept": 3}
    assert decode(SpeedSearch, encode(found)) == found
    alone = SpeedSearch(16, 30.0, 2.0, regions_, 1.0, 0.9, 1.1)
    assert alone.kept == () and "whole" not in encode(alone) and decode(SpeedSearch, encode(alone)) == alone


def test_a_region_keeps_its_qdq_only_for_a_gain_beyond_noise():
    twice = keeps_qdq(_rounds(*[2.0] * 7), _rounds(*[1.0] * 7))
    assert twice[0] and twice[1] == pytest.approx(2.0)
    slower = keeps_qdq(_rounds(*[1.0] * 7), _rounds(*[1.5] * 7))
    assert not slower[0] and slower[1] == pytest.approx(1 / 1.5)
    # A gain under MIN_GAIN is noise on a shared machine: the region goes float.
    slight = keeps_qdq(_rounds(*[1.0] * 7), _rounds(*[1.0 / (MIN_GAIN - 0.01)] * 7))
    assert not slight[0] and 1.0 < slight[1] < MIN_GAIN
    # A median gain that three rounds in seven contradict (a quartile at or below 1x): not beyond noise.
    unsteady = keeps_qdq(_rounds(1.2, 0.9, 1.2, 0.9, 1.2, 0.9, 1.2), _rounds(*[1.0] * 7))
    assert not unsteady[0] and unsteady[1] == pytest.approx(1.2) and unsteady[2] <= 1.0
    # Each round is judged on its own: slow drift between rounds moves both graphs alike.
    drift = np.linspace(1.0, 3.0, 7)
    assert keeps_qdq(_rounds(*(1.5 * drift)), _rounds(*drift))[0]


def test_regions_are_spans_one_tensor_enters_and_one_leaves():
    model = graphs.slow_and_fast_regions()
    view = GraphView(model)
    layers = ("conv1", "conv2", "fc1", "fc2")
    assert regions(view, layers, 10) == tuple(Region((n,)) for n in layers)
    assert regions(view, layers, 2) == (Region(("conv1", "conv2")), Region(("fc1", "fc2")))
    assert regions(view, ("conv2", "fc2"), 10) == (Region(("conv2",)), Region(("fc2",)))
    # A residual block is one region: its skip keeps two tensors live until the Add.
    assert regions(GraphView(graphs.residual()), ("conv1", "conv2"), 10) == (Region(("conv1", "conv2")),)


def _weights_quantized(model: onnx.ModelProto) -> set[str]:
    """The nodes reading a DequantizeLinear of an initializer: weights stored int8."""
    inits = {i.name for i in model.graph.initializer}
    dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    return {n.name for n in model.graph.node if any(t in dq for t in n.input)}


def _searchable(batch: int, delay: float = 0.0):
    """graphs.slow_and_fast_regions calibrated, with what the search takes: ``make(floats)`` (those
    layers float) and ``runner(graph)`` (one inference at ``batch``, then ``delay`` seconds)."""
    import time

    model = graphs.slow_and_fast_regions()
    view = GraphView(model)
    needed = ort_cpu.tensors_to_calibrate(view)
    ranges = RangesFromOnnx(needed, 2048, 99.99)(model, [graphs.inputs_for(model, 8, s) for s in range(2)])
    target = sensitivity_target(model, view, ranges, "max", QuantizeSection())
    feed = graphs.inputs_for(model, batch, seed=5)

    def runner(graph):
        session = ortsession.session(graph, threads=1, cpu_only=True)
        return lambda: (session.run(None, feed), time.sleep(delay))

    def make(floats: tuple[str, ...]) -> onnx.ModelProto:
        return target.with_fp16(frozenset(floats))

    return model, view, make, runner, feed


def test_the_search_keeps_qdq_in_the_wide_gemms_and_drops_it_around_the_small_convs(tmp_path):
    """graphs.slow_and_fast_regions at batch 32, timed for real: the Convs of 4 channels lose to the
    Q/DQ around their PReLUs, the wide Gemms gain. The graph quantized everywhere, timed at the end
    beside the regions' choice, is the slower of the two, so the chosen graph keeps Q/DQ on the
    Gemms alone, runs faster than FP32, and its outputs are closer to FP32's than the fully
    quantized graph's."""
    model, view, make, runner, feed = _searchable(batch=32)
    asked = []  # the graphs the search made: the one quantized everywhere is given, and timed from its file twice

    def making(floats):
        asked.append(floats)
        return make(floats)

    layers = ("conv1", "conv2", "fc1", "fc2")
    made = onnxutil.save_weights_beside(make(()), tmp_path / "made.onnx")
    chosen, found = search(making, view, layers, runner, lambda: runner(model), 20.0, 32, "test", (made, 0.5))
    assert () not in asked and len(asked) == 4, asked
    assert [(r.region, r.kept) for r in found.regions] == [
        ("conv1", False),
        ("conv2", False),
        ("fc1", True),
        ("fc2", True),
    ], found
    assert all(r.speedup < 1.0 for r in found.regions[:2]) and all(r.speedup > MIN_GAIN for r in found.regions[2:])
    assert found.speedup > 1.0 and found.speedup_q25 <= found.speedup <= found.speedup_q75
    whole = found.whole
    assert whole is not None and whole.layers == ("conv1", "conv2", "fc1", "fc2")
    assert whole.kept is False and whole.speedup < 1.0 and found.kept == found.regions[2:]
    # Each graph waited on disk while timed: the one read back is the one made, byte for byte.
    assert chosen.SerializeToString() == make(("conv1", "conv2")).SerializeToString()
    # Structure: int8 weights on the Gemms only; no Q/DQ left around the PReLUs.
    assert _weights_quantized(chosen) == {"fc1", "fc2"}
    producers = {o: n for n in chosen.graph.node for o in n.output}
    prelus = [n for n in chosen.graph.node if n.op_type == "PRelu"]
    assert len(prelus) == 2 and all(producers[n.input[0]].op_type == "Conv" for n in prelus)
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] in ("c1", "c2", "p1") for n in chosen.graph.node)
    # Numbers: the chosen graph against FP32, and against the graph quantized everywhere.
    ref = ortsession.run(ortsession.session(model, cpu_only=True), feed)[0]
    mine = ortsession.run(ortsession.session(chosen, cpu_only=True), feed)[0]
    everywhere = ortsession.run(ortsession.session(make(()), cpu_only=True), feed)[0]
    assert error_stats(mine, ref).rel_error < error_stats(everywhere, ref).rel_error < 0.05


@pytest.mark.parametrize(
    "value, expected",
    [("-1", "speed_search_seconds -1.0 must be 0 (off) to 600"), ("601", "speed_search_seconds 601.0 must be")],
)
def test_the_search_budget_is_bounded(tmp_path, user_model, value, expected):
    assert expected in _error(tmp_path, user_model, top=f'name = "tiny"\n[quantize]\nspeed_search_seconds = {value}')


@pytest.mark.parametrize("pipeline_run", ["[quantize]\nspeed_search_seconds = 4"], indirect=True)
def test_quantize_writes_the_graph_its_search_chose_and_records_each_region(pipeline_run, capfd):
    """The tiny CNN through quantize with the search on: every quantized Conv is in one region, the
    graph on disk keeps int8 weights exactly in the regions that kept Q/DQ, and the result says whether
    the graph is recommended by the search's own last timing against FP32."""
    cfg, _, out = pipeline_run
    capfd.readouterr()
    stages.run("quantize", cfg, force=True)  # the same inputs, searched again as the fixture's run was
    said = capfd.readouterr().err
    result = results.load(QuantizeResult, out)
    found = result.speed_search
    assert found is not None and found.batch == max(cfg.bench.cpu_batches) and found.seconds > 0
    graph = onnx.load(str(out.graph("w8a8-cpu")))
    convs = [n.name for n in graph.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert sorted(n for r in found.regions for n in r.layers) == sorted(convs)
    kept = {n for r in found.kept for n in r.layers}
    assert _weights_quantized(graph) & set(convs) == kept
    assert result.cpu_recommended == (found.speedup >= cfg.verdict.min_speedup)
    assert f"region(s) for the ones INT8 speeds up at batch {found.batch}" in said
    assert f"w8a8-cpu runs {found.speedup:.2f}x FP32's speed at batch {found.batch}" in said
    stages.run("compare", cfg)
    stages.run("bench", cfg)
    report = stages.run("report", cfg).read_text()
    assert f"{len(found.kept)} of {len(found.regions)} regions keep their Q/DQ, timed at batch {found.batch}" in report
    assert all(f"| `{r.region}` | {len(r.layers)} " in report for r in found.regions), report
    if found.whole is not None:  # some region went float: the whole graph was timed against their choice
        decision = "Q/DQ everywhere: chosen" if found.whole.kept else "the regions' choice stays"
        row = next(line for line in report.splitlines() if line.startswith(f"| {found.whole.region} "))
        assert [c.strip() for c in row.split("|")[2:5:2]] == [str(len(found.whole.layers)), decision], row


def test_an_op_with_no_weighted_layer_beside_it_stays_float_on_the_cpu():
    """graphs.float_island: the layer-scale Mul between a BatchNorm and a Sub (both float on ONNX
    Runtime) was quantized, a Q and a DQ around a cheap elementwise op. Now only the conv's input has
    Q/DQ, and the graph stays close to FP32."""
    model = graphs.float_island()
    view = GraphView(model)
    assert ort_cpu.float_islands(view, set()) == ["scale"]
    needed = ort_cpu.tensors_to_calibrate(view)
    batches = [graphs.inputs_for(model, 8, s) for s in range(3)]
    ranges = RangesFromOnnx(needed, 2048, 99.99)(model, batches)
    cpu = ort_cpu.OrtCpuQdqFromOnnx(ranges, "max", QuantizeSection())(model)
    quantized = [n.input[0] for n in cpu.graph.node if n.op_type == "QuantizeLinear"]
    assert quantized == ["s", "y_QuantizeLinear_Input"]  # the conv's input, and its output (QLinearConv's)
    producers = {o: n.op_type for n in cpu.graph.node for o in n.output}
    scale = next(n for n in cpu.graph.node if n.name == "scale")
    assert producers[scale.input[0]] == "BatchNormalization"
    # Numbers: the conv's int8 error alone.
    feed = graphs.inputs_for(model, 8, seed=9)
    ref = ortsession.run(ortsession.session(model, cpu_only=True), feed)[0]
    now = ortsession.run(ortsession.session(cpu, cpu_only=True), feed)[0]
    assert error_stats(now, ref).rel_error < 0.02


def test_quantizes_quick_speed_check_takes_fewer_runs_of_a_slow_graph():
    """quantize's quick check of a CPU graph against FP32 (no speed search) stays near its time
    whatever one run costs: a graph pair taking 2 s a round gets one run per round, a fast one
    the full count (each graph warmed up with two runs first)."""
    import time

    from pipeline.stages.quantize import SPEED_CHECK_PER_ROUND, _runs_per_round

    calls = []
    slow = {name: (lambda n=name: (calls.append(n), time.sleep(1.0))) for name in ("fp32", "w8a8-cpu")}
    assert _runs_per_round(slow) == 1 and calls == ["fp32", "fp32", "w8a8-cpu", "w8a8-cpu"]
    assert _runs_per_round({"fp32": lambda: None, "w8a8-cpu": lambda: None}) == SPEED_CHECK_PER_ROUND


def test_a_region_whose_comparison_would_overrun_the_budget_is_not_started():
    """The same graph with every run slowed to 0.1 s (a large model at the bench batch): one
    region's comparison (7 rounds of both graphs) and the last timing would pass a 3 s budget, so
    no region is measured, each keeps its Q/DQ, and the search ends near its budget instead of
    running a comparison per region."""
    model, view, make, runner, _ = _searchable(batch=2, delay=0.1)

    chosen, found = search(make, view, ("conv1", "conv2", "fc1", "fc2"), runner, lambda: runner(model), 3.0, 2, "test")
    assert [r.kept for r in found.regions] == [None] * len(found.regions) and found.regions
    assert _weights_quantized(chosen) == {"conv1", "conv2", "fc1", "fc2"}
    assert found.seconds < 3.0 + 2.5  # the last timing (FP32 and the graph, 7 rounds each) beyond it
