"""SmoothQuant: the same function in FP32, less int8 error with outlier channels, and the stages'
use of it (ranges calibrated on the smoothed graph, what was smoothed recorded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from examples import vit
from pipeline import onnxutil, ortsession, results, stages
from pipeline.calibration import smooth
from pipeline.calibration.calibrator import RangesFromOnnx
from pipeline.calibration.channels import ChannelStats, best_alpha, measure_channels
from pipeline.config import QuantizeSection, load_config
from pipeline.errors import PipelineError
from pipeline.evaluate import report
from pipeline.fp16 import fp16_graph
from pipeline.graphview import GraphView
from pipeline.layout import Layout
from pipeline.targets.tensorrt.placement import plan_tensorrt
from pipeline.targets.tensorrt.qdq import QdqOnnxFromOnnx
from tests import graphs
from tests.conftest import write_config

EXAMPLES = Path(vit.__file__).parent


def _batches(model: onnx.ModelProto, n: int = 6) -> list[dict[str, np.ndarray]]:
    return [graphs.inputs_for(model, 4, seed) for seed in range(n)]


def _maxima(model: onnx.ModelProto, tmp_path, skips=None) -> tuple[GraphView, list[smooth.Target], dict]:
    """The graph's targets and their per-channel maxima, measured by the calibration pass itself."""
    view = GraphView(model)
    found, skipped = smooth.targets(view)
    assert dict(skipped) == (skips or {})
    path = onnxutil.save(model, tmp_path / "fp32.onnx")
    tensors = [t.tensor for t in found]
    records = measure_channels(path, view, found, lambda: iter(_batches(model)), [tensors])
    return view, found, {t: np.array(r.absmax) for t, r in records.items()}


def _run(model: onnx.ModelProto, feed) -> np.ndarray:
    return ortsession.run(ortsession.session(model, cpu_only=True), feed)[0]


@pytest.mark.parametrize(
    "build", [graphs.layernorm_matmul, graphs.layernorm_qkv, lambda: graphs.layernorm_matmul(constant_nodes=True)]
)
@pytest.mark.parametrize("alpha", [0.3, 0.5, 1.0])
def test_smoothing_leaves_fp32_outputs_unchanged(build, alpha, tmp_path):
    model = build()
    view, found, absmax = _maxima(model, tmp_path)
    smoothed, _, done = smooth.smooth(model, view, {t.tensor: alpha for t in found}, absmax)
    assert [d.readers for d in done] == [tuple(r.node for r in found[0].readers)]
    assert done[0].outlier_ratio_before > 20 and done[0].outlier_ratio_after < done[0].outlier_ratio_before / 3
    (norm,) = [n for n in smoothed.graph.node if n.op_type == "LayerNormalization"]
    gamma = {i.name: onnx.numpy_helper.to_array(i) for i in smoothed.graph.initializer}[norm.input[1]]
    assert not np.allclose(gamma, view.array("ln.gamma"))  # the graph did change
    read = {t for n in smoothed.graph.node for t in n.input}
    assert all(n.output[0] in read for n in smoothed.graph.node if n.op_type == "Constant")  # none left dead
    for seed in (21, 22):
        feed = graphs.inputs_for(model, 5, seed)
        ref, out = _run(model, feed), _run(smoothed, feed)
        assert np.max(np.abs(out - ref)) <= 1e-5 * np.max(np.abs(ref))


def test_one_scale_for_qkv_covers_each_weight_on_its_own_axis(tmp_path):
    model = graphs.layernorm_qkv()
    view, found, absmax = _maxima(model, tmp_path)
    (target,) = found
    assert {r.node: r.axis for r in target.readers} == {"q": 0, "k": 1, "v": 0}
    s = smooth.scales(absmax["n"], smooth.weight_absmax(view, target), 0.5)
    smoothed, _, _ = smooth.smooth(model, view, {"n": 0.5}, absmax)
    after = {i.name: onnx.numpy_helper.to_array(i) for i in smoothed.graph.initializer}
    np.testing.assert_allclose(after["k.w"], view.array("k.w") * s.astype(np.float32)[None, :], rtol=1e-6)
    np.testing.assert_allclose(after["q.w"], view.array("q.w") * s.astype(np.float32)[:, None], rtol=1e-6)
    np.testing.assert_allclose(after["ln.beta"], view.array("ln.beta") / s.astype(np.float32), rtol=1e-6)
    np.testing.assert_array_equal(after["v.b"], view.array("v.b"))  # a bias is on the output side


def _w8a8_error(model: onnx.ModelProto) -> float:
    """||w8a8 - fp32|| / ||fp32|| of the TensorRT-target Q/DQ graph (``max`` ranges, FP32 scales)."""
    plan = plan_tensorrt(model, QuantizeSection())
    ranges = RangesFromOnnx(plan.tensors, 2048, 99.99)(model, _batches(model))
    w8a8 = QdqOnnxFromOnnx(plan, ranges, "max")(model, model)
    feed = graphs.inputs_for(model, 8, seed=31)
    ref = _run(model, feed)
    return float(np.linalg.norm(_run(w8a8, feed) - ref) / np.linalg.norm(ref))


def test_smoothing_cuts_the_int8_error_of_outlier_channels(tmp_path):
    model = graphs.layernorm_matmul(factor=60.0)
    view, found, absmax = _maxima(model, tmp_path)
    smoothed, _, _ = smooth.smooth(model, view, {"n": 0.5}, absmax)
    plain, smooth_error = _w8a8_error(model), _w8a8_error(smoothed)
    # Per-tensor int8 over +-60x the typical channel leaves the others ~2 steps: a large error.
    assert plain > 0.05
    assert smooth_error < plain / 5
    # Without outliers there is little to gain and nothing to lose.
    tame = graphs.layernorm_matmul(factor=1.0)
    view, _, absmax = _maxima(tame, tmp_path)
    assert _w8a8_error(smooth.smooth(tame, view, {"n": 0.5}, absmax)[0]) < 1.5 * _w8a8_error(tame)


def test_layernorms_sharing_gamma_and_beta_each_get_their_own(tmp_path):
    model = graphs.pre_norm_blocks()  # three LayerNorms share gamma and beta; ln2's output is the graph's
    view, found, absmax = _maxima(model, tmp_path, skips={"ln2": "its output is a graph output"})
    assert [t.norm for t in found] == ["ln0", "ln1"]
    smoothed, edits, _ = smooth.smooth(model, view, {"n0": 0.5, "n1": 0.5}, absmax)
    inputs = {n.name: list(n.input[1:]) for n in smoothed.graph.node if n.op_type == "LayerNormalization"}
    assert inputs["ln2"] == ["gamma", "beta"]  # untouched, still reading the shared ones
    assert len({t for names in inputs.values() for t in names}) == 6
    feed = graphs.inputs_for(model, 3, 41)
    ref = _run(model, feed)
    assert np.max(np.abs(_run(smoothed, feed) - ref)) <= 1e-5 * np.max(np.abs(ref))
    # The FP16 graph made from the FP32 one takes the same edits, in its own dtypes.
    fp16 = smooth.apply(fp16_graph(model, keep_fp32=("LayerNormalization",)), edits)
    ln_params = {i.name: i.data_type for i in fp16.graph.initializer if i.name.startswith(("gamma", "beta"))}
    assert set(ln_params.values()) == {onnx.TensorProto.FLOAT} and len(ln_params) == 6
    assert {i.name: i.data_type for i in fp16.graph.initializer}["w1"] == onnx.TensorProto.FLOAT16


def test_channel_stats_stream_the_maximum_and_keep_the_first_rows():
    stats = ChannelStats(rows=3)
    rng = np.random.default_rng(0)
    runs = [rng.standard_normal((2, 5, 4)).astype(np.float32) for _ in range(4)]
    runs[2][1, 3, 2] = -40.0
    for x in runs:
        stats.update(x)
    np.testing.assert_array_equal(stats.absmax, np.abs(np.concatenate(runs)).max(axis=(0, 1)))
    np.testing.assert_array_equal(np.concatenate(stats.kept), np.concatenate(runs)[:3])
    with pytest.raises(ValueError):
        stats.update(np.array([[np.nan, 1.0, 1.0, 1.0]], np.float32))


def test_auto_alpha_takes_the_least_error_and_may_leave_a_tensor_alone():
    assert best_alpha({"off": 0.5, "0.3": 0.2, "0.5": 0.1, "0.7": 0.3}) == 0.5
    assert best_alpha({"off": 0.1, "0.3": 0.2, "0.5": 0.1}) is None  # a tie keeps the graph as it is


def test_outlier_vit_computes_what_the_vit_computes():
    torch.manual_seed(0)
    plain = vit.build(dim=32, depth=2, heads=2, mlp=64)
    wide = vit.build(dim=32, depth=2, heads=2, mlp=64, outliers=3, factor=100.0)
    wide.load_state_dict(plain.state_dict())  # the outliers are added as weights load
    norm = wide.blocks[0].norm1.weight
    channels = vit.outlier_channels(32, 3)
    assert torch.allclose(norm[channels], plain.blocks[0].norm1.weight[channels] * 100.0)
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        ref, out = plain.eval()(x), wide.eval()(x)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


SMALL_VIT = f"""[model]
source = "{EXAMPLES}/vit.py:build"
[model.args]
dim = 32
depth = 1
heads = 2
mlp = 64"""
VIT_IO = """[[inputs]]
name = "image"
shape = ["batch", 1, 16, 16]
dtype = "float32\""""
DIGITS = f"""[calibration]
source = "{EXAMPLES}/digits.py:calibration"
samples = 64
batch_size = 16"""
HELDOUT = f'[evaluation]\nsource = "{EXAMPLES}/digits.py:heldout"'


def _vit_config(tmp_path, user_model, quantize: str):
    """A one-block ViT (random weights) on digits, with ``quantize`` in its [quantize] section."""
    outputs = '[[outputs]]\nname = "logits"\nshape = ["batch", 10]\ndtype = "float32"'
    top = f'name = "vit"\n[quantize]\n{quantize}'
    sections = {"model": SMALL_VIT, "inputs": VIT_IO, "outputs": outputs, "calibration": DIGITS, "evaluation": HELDOUT}
    return load_config(write_config(tmp_path, user_model, top=top, **sections))


def test_stages_calibrate_the_smoothed_graph_and_record_it(tmp_path, user_model, capsys):
    cfg = _vit_config(tmp_path, user_model, "smoothquant = 0.5")
    stages.run("export", cfg, root=tmp_path)
    ranges = stages.run("calibrate", cfg, root=tmp_path).ranges
    out = Layout.of(cfg, tmp_path)
    channels = json.loads(out.channels.read_text())
    assert sorted(channels["tensors"]) == ["layer_norm", "layer_norm_1"]
    # The calibrated max of a smoothed tensor is the smoothed channels' max: max_j max|x_j| / s_j.
    fp32 = onnxutil.load(out.graph("fp32"))
    view = GraphView(fp32)
    (target,) = [t for t in smooth.targets(view)[0] if t.tensor == "layer_norm"]
    x_absmax = np.array(channels["tensors"]["layer_norm"]["absmax"])
    s = smooth.scales(x_absmax, smooth.weight_absmax(view, target), 0.5)
    assert ranges.tensors["layer_norm"].amax["max"] == pytest.approx(float(np.max(x_absmax / s)), rel=1e-5)
    assert ranges.tensors["layer_norm"].amax["max"] < 0.5 * float(x_absmax.max())
    summary = stages.run("quantize", cfg, root=tmp_path, force=True)  # the record is tested here, not the gate
    assert [(d.tensor, d.alpha) for d in summary.smoothquant.layers] == [
        ("layer_norm", 0.5),
        ("layer_norm_1", 0.5),
    ]
    assert "measuring per-channel maxima" not in capsys.readouterr().out.split("wrote")[-1]  # reused
    written = json.loads((out.results_dir / "quantize.json").read_text())
    assert written["smoothquant"]["alpha"] == 0.5
    assert written["smoothquant"]["fp32_max_rel_diff"] < 1e-5
    saved = results.load(results.QuantizeResult, out)
    assert saved == summary
    lines = report._smoothing_lines(saved.smoothquant)  # the report's section, from the saved result
    assert sum("alpha 0.5, widest channel" in line for line in lines) == 2
    # The FP16 graph took the smoothed LayerNorm parameters: the w8a8 graph's gamma is the smoothed one.
    w8a8 = onnxutil.load(out.graph("w8a8"))
    (norm,) = [n for n in w8a8.graph.node if n.name == target.norm]
    gamma = onnx.numpy_helper.to_array(next(i for i in w8a8.graph.initializer if i.name == norm.input[1]))
    np.testing.assert_allclose(gamma, view.array(target.gamma) / s.astype(np.float32), rtol=1e-6)


def test_auto_picks_an_alpha_per_layernorm(tmp_path, user_model):
    cfg = _vit_config(tmp_path, user_model, 'smoothquant = "auto"')
    stages.run("export", cfg, root=tmp_path)
    summary = stages.run("quantize", cfg, root=tmp_path, force=True)  # alpha choice, not the gate
    channels = json.loads(Layout.of(cfg, tmp_path).channels.read_text())["tensors"]
    for layer in summary.smoothquant.layers:
        assert layer.alpha == best_alpha(channels[layer.tensor]["errors"])


@pytest.mark.parametrize("value", ["0", "1.5", "-0.5", '"yes"', "true"])
def test_bad_smoothquant_is_refused_in_one_line(tmp_path, user_model, value):
    path = write_config(tmp_path, user_model, top=f'name = "tiny"\n[quantize]\nsmoothquant = {value}')
    with pytest.raises(PipelineError) as info:
        load_config(path)
    assert "smoothquant" in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("value", "expected"), [("0.5", 0.5), ("1", 1.0), ('"auto"', "auto")])
def test_good_smoothquant_loads(tmp_path, user_model, value, expected):
    path = write_config(tmp_path, user_model, top=f'name = "tiny"\n[quantize]\nsmoothquant = {value}')
    assert load_config(path).quantize.smoothquant == expected
