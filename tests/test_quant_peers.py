"""The peer benchmark: its count of quantized layers with int8 weights, on a tiny graph, and our
tools run on its copy of a project's graphs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from benchmarks.quant_peers import fp8_rows, quantized_layers, run_tool, verdicts
from pipeline import stages
from pipeline.config import load_config
from pipeline.evaluate.accuracy import AccuracyRow
from pipeline.evaluate.metrics import ErrorStats
from pipeline.layout import Layout
from tests.conftest import write_config


def _scalar(name: str, value, dtype) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=dtype), name)


def _mixed_weights() -> onnx.ModelProto:
    """
        x ─► Q ─► DQ ─► conv_a ─► Q ─► DQ ─► conv_b ─► Q ─► DQ ──► MatMul(a, a) ─► y
                          ▲                    ▲                 (both inputs the same activation)
               DQ ◄─ w_a (int8)     DQ ◄─ Q ◄─ w_b (float: ModelOpt's fake-quantized weight)
    Expected: 2 quantized layers with a constant weight (the MatMul of two activations has
    none), 1 of them stored as int8.
    """
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.integers(-127, 128, (4, 4, 1, 1)).astype(np.int8), "w_a"),
        numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w_b"),
        _scalar("s", 0.05, np.float32),
        _scalar("z", 0, np.int8),
    ]

    def qdq(src: str) -> list[onnx.NodeProto]:
        return [
            helper.make_node("QuantizeLinear", [src, "s", "z"], [f"{src}.q"], name=f"{src}.Q"),
            helper.make_node("DequantizeLinear", [f"{src}.q", "s", "z"], [f"{src}.dq"], name=f"{src}.DQ"),
        ]

    nodes = [
        helper.make_node("DequantizeLinear", ["w_a", "s", "z"], ["w_a.dq"], name="w_a.DQ"),
        *qdq("w_b"),
        *qdq("x"),
        helper.make_node("Conv", ["x.dq", "w_a.dq"], ["a"], name="conv_a"),
        *qdq("a"),
        helper.make_node("Conv", ["a.dq", "w_b.dq"], ["b"], name="conv_b"),
        *qdq("b"),
        helper.make_node("MatMul", ["b.dq", "b.dq"], ["y"], name="matmul"),
    ]
    graph = helper.make_graph(
        nodes,
        "mixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


def test_only_int8_initializers_count_as_int8_weights(tmp_path):
    path = tmp_path / "mixed.onnx"
    model = _mixed_weights()
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    assert quantized_layers(path) == (2, 1)


@pytest.mark.parametrize("tool", ["ours-w8a8", "ours-fp8"])
def test_our_tool_quantizes_the_benchmarks_copy_of_the_graphs(tool, tmp_path, user_model, monkeypatch):
    """Each tool starts from a copy of the exported graphs in a folder of its own, outside the
    project that holds the model's source file; our calibrate refused that copy ("model source ...
    changed since trtpipe export ran") when export's record was copied as it was."""
    monkeypatch.chdir(tmp_path)
    cfg = load_config(write_config(tmp_path, user_model))
    stages.run("export", cfg)
    (tmp_path / "peers").mkdir()
    result = run_tool(tool, str(cfg.path), Layout.of(cfg), tmp_path / "peers", (Path(), ""), sys.executable)
    model = onnx.load(result["graph"])
    assert model.graph.node and result["calib_s"] > 0
    assert {p.key: p.value for p in model.metadata_props}["trtpipe.precision"] == tool.removeprefix("ours-")


def _scored(rel_error: float, violations: str = "0", layers: tuple[int, int] = (4, 4)) -> dict:
    stats = ErrorStats(0.0, 0.0, 0.0, 0.0, 1.0, 1.0, rel_error, rel_error)
    return {"accuracy": AccuracyRow("x", "y", stats, None, None, None), "violations": violations, "layers": layers}


def test_verdicts_compare_only_the_tools_that_ran():
    """``--tools ours-fp8,modelopt-fp8``: the FP8 line and its done-when, nothing about tools not run."""
    results = {"ours-fp8": {}, "modelopt-fp8": {}}
    scores = {"ours-fp8": _scored(0.02), "modelopt-fp8": _scored(0.03, "16 per-channel-on-constants", (16, 0))}
    lines = verdicts("m", results, scores)
    assert lines == [
        "m: TensorRT FP8 graph: trtpipe wins on error (trtpipe 0.0200, best peer ModelOpt fp8 0.0300, ratio 0.67)",
        "m: done-when: fp8 rel error <= better ModelOpt fp8: yes; 0 violations: yes; "
        "8-bit weights on every quantized layer: yes",
    ]
    scores["ours-fp8"] = _scored(0.04, "1 fp8-saturate", (4, 3))
    assert verdicts("m", results, scores)[1] == (
        "m: done-when: fp8 rel error <= better ModelOpt fp8: NO; 0 violations: NO; "
        "8-bit weights on every quantized layer: NO"
    )
    failed = verdicts("m", {"ours-fp8": {}, "modelopt-fp8": {"failed": "out of memory"}}, scores)
    assert failed[0].endswith("trtpipe 0.0400, no peer ran (ModelOpt fp8 failed)")


def test_fp8_rows_give_each_fp8_graph_and_its_error_against_modelopts():
    results = {"ours-fp8": {}, "modelopt-fp8": {}}
    scores = {"ours-fp8": _scored(0.02), "modelopt-fp8": _scored(0.025, "16 per-channel-on-constants", (16, 0))}
    for s in scores.values():
        s["coverage"], s["int8_share"] = 0.9, float(s["layers"][1] == s["layers"][0])
    assert fp8_rows("m", results, scores) == [
        ["m", "trtpipe fp8", "0", "90%", "100% (4/4)", "0.0200", "1.00000", "0.80"],
        ["m", "ModelOpt fp8", "16 per-channel-on-constants", "90%", "0% (0/16)", "0.0250", "1.00000", "-"],
    ]
    # ModelOpt's default (entropy) failing, its max calibration running: ours against the one that ran.
    results = {"ours-fp8": {}, "modelopt-fp8": {"failed": "ValueError: Too many bins"}, "modelopt-fp8-max": {}}
    scores["modelopt-fp8-max"] = scores.pop("modelopt-fp8")
    rows = fp8_rows("m", results, scores)
    assert [r[1] for r in rows] == ["trtpipe fp8", "ModelOpt fp8", "ModelOpt fp8 max"]
    assert rows[0][-1] == "0.80" and rows[1][2] == "failed: ValueError: Too many bins"
