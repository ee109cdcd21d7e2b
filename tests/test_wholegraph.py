"""auto's per-tensor ranges checked on the whole graph's output (``pipeline.calibration.wholegraph``).

The graphs the check simulates are held to the real quantizers' graphs, and its verdicts to the
real graphs' output error over every calibration sample, not to its own estimate.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest

from pipeline import ortsession
from pipeline.calibration.auto import AutoRanges, summary
from pipeline.calibration.cache import AutoChoice, Ranges, TensorRange, load_ranges
from pipeline.calibration.calibrator import RangesFromOnnx
from pipeline.calibration.wholegraph import CheckRows, ExtremeRows, Range, best_method, scales, simulation, verdict
from pipeline.config import QuantizeSection
from pipeline.evaluate.metrics import ErrorAccumulator
from pipeline.graphview import GraphView
from pipeline.targets.onnxruntime_cpu import quantize as ort_cpu
from pipeline.targets.tensorrt.placement import plan_tensorrt
from pipeline.targets.tensorrt.qdq import QdqOnnxFromOnnx
from tests import graphs

SETTINGS = QuantizeSection()


def _calibrate(model: onnx.ModelProto, x: np.ndarray, batch: int = 16, check_step: int | None = None) -> Ranges:
    view = GraphView(model)
    placements = (plan_tensorrt(view, SETTINGS).simulated(), ort_cpu.placement(view, SETTINGS))
    tensors = plan_tensorrt(view, SETTINGS).tensors | ort_cpu.tensors_to_calibrate(view)
    batches = [{"x": x[i : i + batch]} for i in range(0, len(x), batch)]
    auto = AutoRanges(8, {"x": 0}, placements, check_step=check_step)
    return RangesFromOnnx(tensors, 2048, 99.99)(model, batches, auto=auto)


def _per_tensor(ranges: Ranges) -> Ranges:
    """``ranges`` with each tensor at its own choice, as before the whole-graph check."""
    local = {}
    for name, r in ranges.tensors.items():
        method = r.auto.local or r.auto.method
        local[name] = dataclasses.replace(
            r, amax={**r.amax, "auto": r.amax[method]}, auto=dataclasses.replace(r.auto, method=method, local=None)
        )
    return Ranges(ranges.graph_sha256, ranges.settings, local)


def _errors(model: onnx.ModelProto, ranges: Ranges, x: np.ndarray) -> tuple[float, float]:
    """Relative output error (of the spread) of both real w8a8 graphs over every sample."""
    view = GraphView(model)
    ref = ortsession.run(ortsession.session(model), {"x": x})[0]
    graphs_ = (
        QdqOnnxFromOnnx(plan_tensorrt(view, SETTINGS), ranges, "auto")(model, view),
        ort_cpu.OrtCpuQdqFromOnnx(ranges, "auto", SETTINGS)(model, view),
    )
    outs = [ortsession.run(ortsession.session(g), {"x": x})[0] for g in graphs_]
    return tuple(ErrorAccumulator().update(o, ref).result().rel_error for o in outs)


def test_a_rare_sample_the_per_tensor_ranges_clip_turns_the_check_to_one_method(tmp_path):
    """256 images of N(0, 1) values, one (sample 100) 8x larger: it holds every tensor's largest
    value, and the first 8 rows, on which each tensor's readers judge its range, hold none of it.
    So they pick the tightest ranges (entropy for the Relu outputs) and clip that image hard. The
    check sees it: mse on every tensor estimates 0.022 against 0.031, and the real graphs agree over
    all 256 samples: relative error 0.102 against 0.118 (TensorRT) and 0.096 against 0.117 (CPU)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 16, 8, 8)).astype(np.float32)
    x[100] *= 8
    model = graphs.outlier_chain(scale=1.0)  # conv1 -> relu1 -> conv2 -> relu2 -> conv3
    ranges = _calibrate(model, x)
    whole = ranges.whole_graph
    assert whole is not None and whole.chosen == "mse" and (whole.rows, whole.extremes, whole.samples) == (8, 1, 256)
    assert whole.estimates["mse"] == pytest.approx(0.0220, rel=0.01)
    assert whole.estimates["auto"] == pytest.approx(0.0310, rel=0.01)
    assert best_method(whole) == ("mse", pytest.approx(18.7, abs=0.1))
    assert {r.auto.method for r in ranges.tensors.values()} == {"mse"}
    assert (
        ranges.tensors["r1"].auto.local == "entropy"
        and ranges.tensors["r1"].amax["auto"] == ranges.tensors["r1"].amax["mse"]
    )
    checked, per_tensor = _errors(model, ranges, x), _errors(model, _per_tensor(ranges), x)
    assert checked == pytest.approx((0.1019, 0.0963), abs=5e-4) and per_tensor == pytest.approx(
        (0.1182, 0.1172), abs=5e-4
    )
    lines = summary(ranges)
    assert lines[0].startswith("auto ranges: mse on all 4 tensors, by the whole graph's output error")
    assert "mse on every tensor, output error 0.022 against the per-tensor ranges' 0.031, lower by 18.7" in lines[1]
    ranges.save(tmp_path / "ranges.json")
    assert load_ranges(tmp_path / "ranges.json") == ranges


def test_the_check_run_a_few_rows_at_a_time_gives_the_estimates_of_one_run():
    """The check's 9 rows (the 8 first, then the rare sample) run 2 at a time, as a calibration batch
    of 2 would run them (memory stays inference's at that batch), and all at once: the same estimates
    and verdict, each row's error being its own."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 16, 8, 8)).astype(np.float32)
    x[100] *= 8
    model = graphs.outlier_chain(scale=1.0)
    whole, pieces = (_calibrate(model, x, check_step=step).whole_graph for step in (None, 2))
    assert (pieces.rows, pieces.extremes, pieces.chosen) == (whole.rows, whole.extremes, whole.chosen) == (8, 1, "mse")
    assert pieces.estimates == pytest.approx(whole.estimates, rel=1e-6)
    assert pieces.standard_errors == pytest.approx(whole.standard_errors, rel=1e-5)


def test_check_rows_join_per_row_outputs_and_keep_the_rest_whole():
    """Pieces of 2 of 5 rows: an input without a batch axis goes whole into each; a per-row output
    is joined in order, one that is not (a total) is the first piece's."""
    import onnx.helper as h

    # x [N, 3] --ReduceSum(keepdims=0, no axes: a scalar)--> total
    #   \------Add(bias [3], no batch axis)-------------> y [N, 3]
    graph = h.make_graph(
        [h.make_node("Add", ["x", "bias"], ["y"]), h.make_node("ReduceSum", ["x"], ["total"], keepdims=0)],
        "pieces",
        [
            h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3]),
            h.make_tensor_value_info("bias", onnx.TensorProto.FLOAT, [3]),
        ],
        [
            h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3]),
            h.make_tensor_value_info("total", onnx.TensorProto.FLOAT, []),
        ],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    x = np.arange(15, dtype=np.float32).reshape(5, 3)
    bias = np.array([100, 200, 300], np.float32)
    rows = CheckRows({"x": x, "bias": bias}, 5, 2, {"x": 0, "bias": None})
    assert [r for r, _ in rows.pieces()] == [slice(0, 2), slice(2, 4), slice(4, 5)]
    y, total = rows.outputs(ortsession.session(model))
    np.testing.assert_array_equal(y, x + bias)
    assert float(total) == float(x[:2].sum())


def test_the_estimates_order_the_candidates_as_the_real_graphs_errors_do():
    """On the rare-sample data of the test above, each candidate's estimate against the real graphs'
    error over all 256 samples (the squared relative errors of the TensorRT and the CPU graph, summed,
    as the estimate sums them): the same order, best first, mse then percentile, entropy, the
    per-tensor ranges and max; each estimate within 15% of its real error."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 16, 8, 8)).astype(np.float32)
    x[100] *= 8
    model = graphs.outlier_chain(scale=1.0)
    ranges = _calibrate(model, x)
    estimates = ranges.whole_graph.estimates
    real = {}
    for candidate in estimates:
        chosen = _per_tensor(ranges) if candidate == "auto" else _every_tensor(ranges, candidate)
        real[candidate] = sum(e**2 for e in _errors(model, chosen, x))
    order = sorted(real, key=real.__getitem__)
    assert order == ["mse", "percentile", "entropy", "auto", "max"]
    assert sorted(estimates, key=estimates.__getitem__) == order
    assert all(estimates[c] == pytest.approx(real[c], rel=0.15) for c in real), (estimates, real)


def _every_tensor(ranges: Ranges, method: str) -> Ranges:
    """``ranges`` with ``method`` on every tensor."""
    tensors = {
        name: dataclasses.replace(
            r, amax={**r.amax, "auto": r.amax[method]}, auto=dataclasses.replace(r.auto, method=method)
        )
        for name, r in ranges.tensors.items()
    }
    return Ranges(ranges.graph_sha256, ranges.settings, tensors)


def test_ordinary_samples_keep_the_per_tensor_ranges_and_say_why():
    """The same graph and data without the large image: mse on every tensor estimates 0.00155 against
    the per-tensor ranges' 0.00159, a lead within the first rows' sampling error: the per-tensor
    ranges stay, and the output says mse was estimated lower and why it was not taken."""
    x = np.random.default_rng(0).standard_normal((256, 16, 8, 8)).astype(np.float32)
    ranges = _calibrate(graphs.outlier_chain(scale=1.0), x)
    whole = ranges.whole_graph
    assert whole.chosen == "auto" and whole.estimates["auto"] == pytest.approx(0.00159, rel=0.01)
    best, lead = best_method(whole)
    assert best == "mse" and whole.estimates["mse"] == pytest.approx(0.00155, rel=0.01) and 0 < lead < 2
    assert all(r.auto.local is None for r in ranges.tensors.values())
    assert f"mse estimated lower, but by {lead:.2g} standard error(s) of the first rows" in summary(ranges)[1]


def _measured_ranges(view: GraphView, x: np.ndarray, tensors) -> dict[str, Range]:
    """Each tensor's observed [min, max] on ``x``, amax a power of two times 127 (exact in FP16, so
    the TensorRT scale is the same in FP16 and FP32)."""
    model = onnx.ModelProto()
    model.CopyFrom(view.model)
    model.graph.output.extend(view.value_infos[t] for t in tensors if t not in view.outputs)
    outs = dict(
        zip([o.name for o in model.graph.output], ortsession.run(ortsession.session(model), {"x": x}), strict=True)
    )
    out = {}
    for t in tensors:
        v = outs[t] if t in outs else x
        out[t] = Range(float(v.min()), float(v.max()), 127.0 * 2.0 ** np.ceil(np.log2(np.abs(v).max() / 127)))
    return out


def test_the_simulations_compute_what_the_real_graphs_compute():
    """On the residual graph (x -> conv1 -> relu -> conv2 -> Add(x) -> relu): the TensorRT simulation
    has a Q/DQ pair on exactly the plan's edges (x into conv1 and the Add's skip input, relu1's output
    into conv2) and int8 weights per output channel; the CPU one on every tensor quantize_static
    quantizes. Fed the same ranges, each gives the real quantizer's graph's output (run as written)."""
    plan, cpu = _simulations_match_the_real_graphs(graphs.residual(), ["conv1:1:weight", "conv2:1:weight"])
    assert sorted(plan.simulated().activations) == ["r1", "x"]
    assert sorted(cpu.activations) == ["c1", "c2", "r1", "s", "x", "y"] and cpu.range_of == {"c1": "r1", "s": "y"}


def test_the_simulations_tie_scales_as_the_real_graphs_do():
    """Across MaxPool and Reshape into a Concat: the TensorRT simulation gives a, p, r, b and cat one
    scale (the Concat's group reaching back across the data movement); the CPU one gives p and r their
    input a's scale and zero point (ONNX Runtime's quantizer does: its kernels move uint8 values
    through them) and the same group one range, the union of theirs, so that QLinearConcat copies
    8-bit values rather than rounding them again."""
    model = graphs.pool_reshape_concat()
    weights = ["conv_a:1:weight", "conv_b:1:weight", "conv_c:1:weight"]
    plan, cpu = _simulations_match_the_real_graphs(model, weights)
    simulated = plan.simulated()
    assert simulated.shared == (("a", "b", "cat", "p", "r"),)
    assert simulated.range_of == {"p": "a", "r": "a"}
    assert cpu.range_of == {"p": "a", "r": "a"} and cpu.shared == (("a", "b", "cat", "p", "r"),)


def _simulations_match_the_real_graphs(model: onnx.ModelProto, weights: list[str]):
    view = GraphView(model)
    x = graphs.inputs_for(model, 4)["x"]
    plan = plan_tensorrt(view, SETTINGS)
    cpu = ort_cpu.placement(view, SETTINGS)
    ranges = _measured_ranges(view, x, sorted({*plan.tensors, *ort_cpu.tensors_to_calibrate(view)}))
    cache = Ranges("0" * 64, {}, {})
    for t, r in ranges.items():  # as the calibration cache would hold them: every method the same range
        amax = dict.fromkeys(("auto", "max", "percentile", "entropy", "mse"), r.amax)
        cache.tensors[t] = TensorRange(r.min, r.max, amax, AutoChoice("max", "test", {}))
    for placement, real in (
        (plan.simulated(), QdqOnnxFromOnnx(plan, cache, "auto")(model, view)),
        (cpu, ort_cpu.OrtCpuQdqFromOnnx(cache, "auto", SETTINGS)(model, view)),
    ):
        sim = simulation(view.with_weights(model), placement)
        quantize = [n for n in sim.graph.node if n.op_type == "QuantizeLinear"]
        assert sorted(n.input[0] for n in quantize) == sorted(placement.activations)
        dequantize = [n for n in sim.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith(":int8")]
        assert sorted(n.output[0] for n in dequantize) == weights
        got = ortsession.session(sim).run(None, {"x": x, **scales(placement, ranges)})[0]
        want = ortsession.run(_as_written(real), {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    return plan, cpu


def _as_written(model: onnx.ModelProto):
    """A session on ``model`` with no graph optimizations, as the simulations run (the CPU graph
    deploys optimized: its fused QLinear kernels round the same values in integers)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.helper.set_model_props(copy, {"trtpipe.target": "simulation"})
    return ortsession.session(copy)


def test_extreme_rows_follow_every_pass_and_batch_merged_tensors():
    """Runs of 4 samples, two passes (the second replays the first): tensors ``a`` and ``c``
    ([batch, 3]) have their largest |x| in sample 9, ``h`` ([batch x heads, 2], heads = 2, seen in
    the second pass) in sample 2; the inputs held are those samples' rows, and the samples rank by
    how many tensors they hold the largest value of. Held to one sample, the one holding more stays.
    A tensor that is all zeros holds nothing."""
    x = np.arange(12 * 5, dtype=np.float32).reshape(12, 5)
    runs = [{"x": x[i : i + 4]} for i in range(0, 12, 4)]
    a, c, zeros = (np.zeros((12, 3), np.float32) for _ in range(3))
    a[9, 1], c[9] = -7.0, 1.0
    a[3, 0] = 6.0  # the largest until sample 9 comes
    h = np.zeros((24, 2), np.float32)
    h[2 * 2 + 1, 0] = 5.0  # sample 2, head 1
    per_run = lambda t, run: t[len(t) // 3 * run : len(t) // 3 * (run + 1)]  # noqa: E731  a run's rows
    for held, expected in ((32, [9, 2]), (1, [9])):
        rows = ExtremeRows({"x": 0}, held=held)
        for tensors in ({"a": a, "c": c, "zeros": zeros}, {"h": h}):  # one pass each, over the same runs
            for run, _ in enumerate(rows.hold(runs)):
                rows.update(run, list(tensors), [per_run(t, run) for t in tensors.values()])
        assert rows.samples == 12 and rows.top(8) == expected and rows.holds[9] == 2
        assert sorted(rows.inputs) == sorted(expected)  # sample 3 held a's largest until sample 9
        for sample in expected:
            np.testing.assert_array_equal(rows.inputs[sample]["x"], x[sample : sample + 1])


def test_extreme_samples_are_numbered_among_the_runs_of_the_first_shape():
    """Runs of length 4, 6, 4, 6 (a sequence axis; 2 samples each): only the length-4 runs are
    followed, so the extreme in the second length-4 run is sample 3 of the 4 followed samples, as
    the kept rows number it, not sample 5 of all 8. (Numbered over every run, it could not be
    among the first rows kept, and the check counted it twice: more rows than samples.)"""
    runs = [{"x": np.zeros((2, n), np.float32)} for n in (4, 6, 4, 6)]
    rows = ExtremeRows({"x": 0})
    for run, _ in enumerate(rows.hold(runs)):
        value = np.zeros((2, 3), np.float32)
        value[1, 0] = 1.0 + run  # each run's second row is larger than any before it
        rows.update(run, ["a"], [value])
    assert rows.followed == 4 and rows.top(8) == [3]
    np.testing.assert_array_equal(rows.inputs[3]["x"], runs[2]["x"][1:])


def test_the_verdict_weighs_first_rows_for_the_samples_they_stand_for():
    """4 first rows standing for 98 samples each (400 less 8 extremes, over 4), 8 extremes for
    themselves. max is worse on the first rows by 0.1 (+-0.01) and better on the extremes by 10
    each: its estimate is lower by (80 - 0.1 x 392) / 400 = 0.102, far beyond 3 standard errors.
    entropy's first rows are better by 0.05 on average, and its estimate by 0.049: the lowest once
    max is no better than auto, but by 0.49 standard errors (one is 0.1), within the sampling error: not taken."""
    first, extremes = 4, 8
    auto = np.concatenate([np.full(first, 1.0), np.full(extremes, 20.0)])
    max_ = auto + np.concatenate([[0.09, 0.11, 0.1, 0.1], np.full(extremes, -10.0)])
    entropy = auto + np.concatenate([[-0.35, 0.1, 0.05, 0.0], np.zeros(extremes)])
    errors = {"auto": auto, "max": max_, "percentile": auto, "entropy": entropy, "mse": auto + 0.5}
    found = verdict(errors, first, 400)
    assert found.chosen == "max"
    assert found.estimates["auto"] == pytest.approx((98 * 4 + 160) / 400)
    assert found.estimates["auto"] - found.estimates["max"] == pytest.approx((80 - 0.1 * 392) / 400)
    assert found.standard_errors["max"] == pytest.approx(98 * np.std([0.09, 0.11, 0.1, 0.1], ddof=1) * 2 / 400)
    errors["max"] = auto
    close = verdict(errors, first, 400)
    assert close.chosen == "auto" and best_method(close) == ("entropy", pytest.approx(0.49, abs=0.005))
    with pytest.raises(ValueError, match="at least 2 first rows"):
        verdict(errors, 1, 400)
