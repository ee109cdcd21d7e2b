"""docs/extending.md's recipes, proved: a range method and a target, each one file or folder under
tests/extensions/ plus one registry entry (patched in here as a user's line in the registry would
be), are used by the stages without a change to any other module."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from pipeline import stages, targets
from pipeline.calibration import methods
from pipeline.calibration.calibrator import RangesFromOnnx
from pipeline.calibration.methods.base import RangeMethod
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.errors import PipelineError
from pipeline.layout import Layout
from pipeline.targets.tensorrt.qdq import activation_scale
from tests import graphs
from tests.conftest import FAST_BENCH, write_config

TOY_METHOD = "tests.extensions.toy_method:METHOD"
MEAN_ABS = "tests.extensions.mean_abs:METHOD"
TOY_TARGET = "tests.extensions.toy_target.target:Toy"


def _calibration(model, method: str) -> str:
    return f'[calibration]\nsource = "{model}:calibration"\nsamples = 64\nbatch_size = 16\nmethod = "{method}"'


def test_a_registered_range_method_is_selectable_and_calibrate_and_quantize_use_it(
    tmp_path, user_model, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match=r"method 'toy' is not one of auto, max, percentile, entropy, mse"):
        load_config(write_config(tmp_path, user_model, calibration=_calibration(user_model, "toy")))
    cfg = load_config(write_config(tmp_path, user_model, calibration=_calibration(user_model, "max")))
    out = Layout.of(cfg)
    stages.run("export", cfg)
    stages.run("calibrate", cfg)  # a cache of the built-in methods

    monkeypatch.setitem(methods.REGISTRY, "toy", TOY_METHOD)  # the recipe's one registry line
    cfg = load_config(write_config(tmp_path, user_model, calibration=_calibration(user_model, "toy")))
    capsys.readouterr()
    stages.run("calibrate", cfg)
    assert "range methods changed (toy added)" in capsys.readouterr().err  # the old cache is stale, not refused

    raw = json.loads(out.ranges.read_text())
    assert raw["tensors"]
    for tensor in raw["tensors"].values():
        assert tensor["amax"]["toy"] == max(-tensor["min"], tensor["max"]) / 2
        if tensor["auto"]["errors"]:  # auto scored it beside the built-in methods
            assert set(tensor["auto"]["errors"]) == {"max", "percentile", "entropy", "mse", "toy"}
    assert set(raw["whole_graph"]["estimates"]) == {"auto", "max", "percentile", "entropy", "mse", "toy"}

    summary = stages.run("quantize", cfg, force=True)
    assert summary.method == "toy"
    model = onnx.load(str(out.graph("w8a8")))  # TensorRT's graph: symmetric int8 over +-amax of the toy
    scales = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    relu = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "relu")
    assert scales[relu.input[1]] == activation_scale(raw["tensors"]["relu"]["amax"]["toy"], np.dtype(np.float16))


def test_a_range_method_may_read_a_statistic_of_its_own(monkeypatch):
    model = graphs.residual()
    batches = [graphs.inputs_for(model, 8, seed) for seed in range(3)]
    before = RangesFromOnnx(["x", "r1"], 2048, 99.99)(model, batches)
    monkeypatch.setitem(methods.REGISTRY, "mean-abs", MEAN_ABS)
    after = RangesFromOnnx(["x", "r1"], 2048, 99.99)(model, batches)

    x = np.abs(np.concatenate([b["x"] for b in batches]).astype(np.float64))
    assert after.amax("x", "mean-abs") == pytest.approx(min(4 * x.mean(), x.max()), rel=1e-12)
    assert set(after.tensors["x"].auto.errors) == {"max", "percentile", "entropy", "mse", "mean-abs"}
    for name, found in before.tensors.items():  # the histogram's methods are untouched by the new statistic
        assert {m: after.amax(name, m) for m in found.amax if m != "auto"} == {
            m: a for m, a in found.amax.items() if m != "auto"
        }


def test_the_histogram_is_the_default_statistic():
    assert RangeMethod(lambda stats, settings: 1.0).statistic.__name__ == "TensorStats"
    assert all(methods.get(name).statistic.__name__ == "TensorStats" for name in methods.names())


def test_a_registered_target_goes_through_quantize_compare_bench_report_and_deploy(tmp_path, user_model, monkeypatch):
    monkeypatch.setitem(targets.REGISTRY, "toy", TOY_TARGET)  # the recipe's one registry line
    monkeypatch.chdir(tmp_path)
    top = f'name = "tiny"\n{FAST_BENCH}\n[quantize]\ntargets = ["toy"]\n[accuracy.copy]\nmin_cosine = 0.999999'
    path = write_config(tmp_path, user_model, top=top)
    commands = [
        ["export"],
        ["quantize"],
        ["build", "--backend", "onnxruntime"],
        ["compare"],
        ["bench"],
        ["report"],
        # The copy is FP32 itself, no faster: by the verdict alone deploy would ship the FP32 graph.
        ["deploy", "--to", str(tmp_path / "repo"), "--precision", "w8a8"],
    ]
    for command in commands:
        result = CliRunner().invoke(main, [*command, "-c", str(path)])
        assert result.exit_code == 0, f"trtpipe {command[0]}: {result.output}"

    cfg = load_config(path)
    out = Layout.of(cfg)
    assert cfg.accuracy.gate("copy").min_cosine == 0.999999  # [accuracy.copy]: the new artifact's gate
    copy = out.graph("copy")
    assert onnx.load(str(copy)) == onnx.load(str(out.graph("fp32")))
    assert not out.graph("w8a8").exists() and not out.graph("w8a8-cpu").exists()  # no other target ran

    compared = json.loads(out.result("compare").read_text())
    assert {r["artifact"] for r in compared["rows"]} == {"fp16 (ONNX Runtime)", "copy (ONNX Runtime)"}
    assert compared["passed"]
    bench = json.loads(out.result("bench").read_text())
    assert (bench["backend"], bench["baseline"], bench["quantized"]) == ("onnxruntime-cpu", "fp32", "copy")

    assert "copy" in out.report.read_text()  # the report names the new artifact, from the registry

    deployed = tmp_path / "repo" / "tiny"
    manifest = json.loads((deployed / "manifest.json").read_text())
    assert (manifest["precision"], manifest["device"], manifest["backend"]) == ("copy", "CPU", "onnxruntime")
    assert (deployed / "1" / "model.onnx").read_bytes() == copy.read_bytes()
