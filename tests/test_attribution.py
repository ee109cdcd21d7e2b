"""Naming the layers a w8a8 graph's error comes from, on a graph made to have one culprit."""

from __future__ import annotations

import pytest

from pipeline.calibration.calibrator import RangesFromOnnx
from pipeline.config import QuantizeSection
from pipeline.evaluate.attribution import worst_layers
from pipeline.graphview import GraphView
from pipeline.targets.onnxruntime_cpu import quantize as ort_cpu
from tests import graphs
from tests.test_quantize import quantize


def _outlier_inputs(model, batch, seed):
    """Smooth inputs with one channel 200x larger: the outlier channel of a trained transformer."""
    x = graphs.inputs_for(model, batch, seed)["x"].copy()
    x[..., 3] *= 200.0
    return {"x": x}


def test_the_layer_fed_by_an_outlier_channel_is_named_with_the_reason():
    """
        x (channel 3 x200) ─► fc1 ─► GELU ─► fc2 ─► y        (graphs.mlp_gelu)
    fc1's input range is set by one channel, so its int8 levels miss every other: fc1 adds the
    error, fc2 (fed by GELU's well-spread output) adds little.
    """
    model = graphs.mlp_gelu()
    view = GraphView(model)
    batches = [_outlier_inputs(model, 4, seed) for seed in range(4)]
    tensors = ort_cpu.tensors_to_calibrate(view) | {"x", "g"}
    ranges = RangesFromOnnx(tensors, 2048, 99.99)(model, batches)
    feed = _outlier_inputs(model, 3, seed=9)
    for quantized in (quantize(model)[1], ort_cpu.OrtCpuQdqFromOnnx(ranges, "max", QuantizeSection())(model)):
        worst = worst_layers(view, quantized, feed, ranges, "max", top=3)
        assert worst[0].node == "fc1" and "fc2" in {w.node for w in worst}  # GELU's ops may rank too
        assert worst[0].added > 0.01 and worst[0].added > 3 * max(abs(w.added) for w in worst[1:])
        assert "input x: channel 3 spans" in worst[0].reason and "outlier channels" in worst[0].reason
        assert worst[0].input_error < worst[0].output_error


def test_tensors_are_fetched_within_the_run_bytes_and_measure_the_same(monkeypatch):
    """graphs.attention's layers' tensors fetched in runs of at most 4 KiB (one tensor a run, as none
    is smaller): more runs, each within its bytes or a lone tensor, and the same figures as in one run."""
    from pipeline.calibration.memory import sample_bytes
    from pipeline.evaluate import attribution

    model = graphs.attention()
    view = GraphView(model)
    plan, w8a8 = quantize(model)
    ranges = RangesFromOnnx(plan.tensors, 2048, 99.99)(model, [graphs.inputs_for(model, 4, s) for s in range(4)])
    feed = graphs.inputs_for(model, 2, 5)
    fetched: list[list[str]] = []
    values = attribution._values
    monkeypatch.setattr(attribution, "_values", lambda m, v, t, f: fetched.append(list(t)) or values(m, v, t, f))
    whole = worst_layers(view, w8a8, feed, ranges, "max", top=9)
    runs_whole = len(fetched)
    fetched.clear()
    small = attribution.RunBytes(4096, {})
    split = worst_layers(view, w8a8, feed, ranges, "max", top=9, within=small)
    assert split == whole
    assert runs_whole == 2 and len(fetched) > 2 * 3  # the FP32 and the w8a8 graph, once per group
    assert all(len(t) == 1 or sum(2 * sample_bytes(view, n) for n in t) <= small.bytes for t in fetched)


def test_error_is_measured_against_the_fp32_values():
    model = graphs.attention()
    view = GraphView(model)
    plan, w8a8 = quantize(model)
    batches = [graphs.inputs_for(model, 4, seed) for seed in range(4)]
    ranges = RangesFromOnnx(plan.tensors, 2048, 99.99)(model, batches)
    worst = worst_layers(view, model, graphs.inputs_for(model, 2, 5), ranges, "max")
    assert all(w.output_error == 0 and w.added == 0 for w in worst)  # the FP32 graph against itself
    assert {w.node for w in worst_layers(view, w8a8, graphs.inputs_for(model, 2, 5), ranges, "max", top=9)} == {
        "proj_q",
        "proj_k",
        "proj_v",
        "qk",
        "av",
        "k_t",  # not weighted, but the graph rounds between them: K's transpose and the Softmax's output
        "softmax",
    }


def test_quantize_names_the_layers_when_a_graph_misses_its_cosine(make_config, tmp_path):
    """A gate set above what int8 reaches: quantize names the worst layers, in order, and saves them."""
    import json

    from pipeline import stages
    from pipeline.errors import PipelineError
    from pipeline.layout import Layout

    cfg = make_config(top='name = "tiny"\n[accuracy.w8a8]\nmin_cosine = 0.999999')
    stages.run("export", cfg, root=tmp_path)
    with pytest.raises(PipelineError, match="accuracy gate failed for w8a8"):
        stages.run("quantize", cfg, root=tmp_path)
    summary = json.loads(Layout.of(cfg, tmp_path).result("quantize").read_text())
    worst = summary["worst_layers"]
    assert set(worst) == {"w8a8"}  # w8a8-cpu keeps its default gate, which it meets
    added = [e["added"] for e in worst["w8a8"]]
    assert added == sorted(added, reverse=True) and {"Conv", "Gemm"} & {e["op_type"] for e in worst["w8a8"]}
    assert {e["output"] for e in worst["w8a8"]} == {"logits"}


def test_a_wide_range_over_tiny_values_is_named():
    """
        x (mostly ~1e-3, one token of 10s) ─► fc1 ─► GELU ─► fc2 ─► y   (graphs.mlp_gelu)
    With the max range, one int8 step is 10/127: nearly every value of x rounds to 0.
    """
    model = graphs.mlp_gelu()
    view = GraphView(model)

    def spiky(seed):
        x = 1e-3 * graphs.inputs_for(model, 4, seed)["x"]
        x[:, seed % 16, :] = 10.0  # one token spikes in every channel: no channel stands out
        return {"x": x}

    ranges = RangesFromOnnx(ort_cpu.tensors_to_calibrate(view) | {"x", "g"}, 2048, 99.99)(
        model, [spiky(s) for s in range(4)]
    )
    (worst,) = worst_layers(view, quantize(model)[1], spiky(7), ranges, "max", top=1)
    assert worst.node == "fc1" and "of its non-zero values are under half an int8 step" in worst.reason


def test_a_failed_gate_names_every_failing_graph_with_its_figures(make_config, tmp_path):
    """Both graphs miss a gate set above what int8 reaches: the one error line names each, not the first."""
    import re

    from pipeline import stages
    from pipeline.errors import PipelineError

    gates = "[accuracy.w8a8]\nmin_cosine = 0.999999\n[accuracy.w8a8-cpu]\nmin_cosine = 0.999999"
    cfg = make_config(top=f'name = "tiny"\n{gates}')
    stages.run("export", cfg, root=tmp_path)
    with pytest.raises(PipelineError) as failed:
        stages.run("quantize", cfg, root=tmp_path)
    line = str(failed.value)
    assert "\n" not in line
    figures = r"output 'logits': centered cosine 0\.\d+ < 0\.999999"
    assert re.search(rf"accuracy gate failed for w8a8, {figures}; and for w8a8-cpu, {figures}", line), line
    assert "model.w8a8.failed.onnx" in line and "model.w8a8-cpu.failed.onnx" in line


def test_without_held_out_data_the_gates_say_once_that_they_score_calibration_rows(make_config, tmp_path, capsys):
    from pipeline import stages

    told = "no [evaluation] in"
    cfg = make_config(evaluation="")
    stages.run("export", cfg, root=tmp_path)
    stages.run("quantize", cfg, root=tmp_path)
    err = capsys.readouterr().err
    assert err.count(told) == 1 and "score the calibration rows themselves" in err
    with_heldout = make_config()  # the same model and data, [evaluation] set
    stages.run("quantize", with_heldout, root=tmp_path)
    assert told not in capsys.readouterr().err


def test_a_one_row_output_is_attributed_on_that_row_to_the_op_that_rounded_it():
    """
        x ─► LN ─► MatMul ─► a ─► Add (x + a) ─► r ─► Gather row 0 ─► y        (graphs.residual_to_output)
    Everything quantized, x included: row 0 of x (a class token, 100x smaller than the rest) rounds
    to nothing where the LayerNorm reads it. Over every row of the sequence that is a small error, and
    the loss seems to appear at the Gather that selects the row; on the row y selects, the LayerNorm
    (no weights) adds it all.
    """
    from pipeline.evaluate.attribution import selected_row
    from tests.test_cpu_float_rules import _everything_quantized

    model = graphs.residual_to_output(select_class_token=True)
    view = GraphView(model)
    assert selected_row(view, "y") == (1, 0, 16)
    assert selected_row(GraphView(graphs.residual_to_output(select_class_token=False)), "y") is None
    w8a8 = _everything_quantized(model)
    batches = [graphs.stream_inputs(model, 8, seed) for seed in range(4)]
    ranges = RangesFromOnnx(ort_cpu.tensors_to_calibrate(view), 2048, 99.99)(model, batches)
    feed = graphs.stream_inputs(model, 4, seed=11)
    on_row = {e.node: e for e in worst_layers(view, w8a8, feed, ranges, "max", top=9, output="y")}
    assert max(on_row.values(), key=lambda e: e.added).node == "ln"
    assert on_row["ln"].op_type == "LayerNormalization" and on_row["ln"].output == "y"
    assert on_row["ln"].added > 0.3 > 0.1 > on_row["class_token"].added
    diluted = {e.node: e for e in worst_layers(view, w8a8, feed, ranges, "max", top=9)}  # over every row
    assert diluted["ln"].added < on_row["ln"].added / 3
    assert max(diluted.values(), key=lambda e: e.added).node == "class_token"  # the wrong culprit


def test_nameless_nodes_are_told_apart_by_their_outputs():
    """The outlier MLP of the first test with every node's name cleared, as Paddle2ONNX writes
    most nodes: fc1 is still found upstream of y and named by its output; nothing else nameless
    is merged into it or listed for being nameless."""
    model = graphs.mlp_gelu()
    output = {n.name: n.output[0] for n in model.graph.node}
    for node in model.graph.node:
        node.name = ""
    view = GraphView(model)
    batches = [_outlier_inputs(model, 4, seed) for seed in range(4)]
    tensors = ort_cpu.tensors_to_calibrate(view) | {"x", "g"}
    ranges = RangesFromOnnx(tensors, 2048, 99.99)(model, batches)
    quantized = ort_cpu.OrtCpuQdqFromOnnx(ranges, "max", QuantizeSection())(model)
    worst = worst_layers(view, quantized, _outlier_inputs(model, 3, seed=9), ranges, "max", top=3, output="y")
    assert worst[0].node == f"-> {output['fc1']}" and worst[0].added > 0.01
    assert f"-> {output['fc2']}" in {w.node for w in worst} and len({w.node for w in worst}) == len(worst)
