"""``method = "auto"``: each tensor's range chosen by the output error of the layers reading it.

The errors are recomputed here independently (numpy and torch, float64) from the ranges the
histogram pass gave, with int8 weights per output channel as the Q/DQ graphs store them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from onnx import numpy_helper

from pipeline.calibration import methods
from pipeline.calibration.auto import AUTO_ROWS, AutoRanges
from pipeline.calibration.cache import load_ranges
from pipeline.calibration.calibrator import RangesFromOnnx
from pipeline.errors import PipelineError
from tests import graphs

ROWS, BATCH = 1024, 64


def _batches() -> list[dict[str, np.ndarray]]:
    """``outliers``: N(0, 1) with four values of +-30 in feature 3, all within the rows auto compares
    on; 6e-5 of the values, so the 99.99th percentile and entropy clip them. ``laplace``: Laplacian
    values, whose rare largest ones matter little beside the rounding of all the others."""
    rng = np.random.default_rng(7)
    outliers = rng.standard_normal((ROWS, 64)).astype(np.float32)
    outliers[[0, 2, 5, 7], 3] = [30, -30, 30, -30]
    laplace = rng.laplace(size=(ROWS, 8, 4, 4)).astype(np.float32)
    return [{"outliers": outliers[i : i + BATCH], "laplace": laplace[i : i + BATCH]} for i in range(0, ROWS, BATCH)]


def _int8(x: np.ndarray, amax: float) -> np.ndarray:
    scale = amax / 127
    return np.clip(np.round(x / scale), -128, 127) * scale


def _uint8(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """ONNX Runtime's asymmetric uint8 over [lo, hi] widened to hold 0."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255
    zero = np.round(-lo / scale)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def _int8_per_channel(w: np.ndarray, axis: int) -> np.ndarray:
    other = tuple(a for a in range(w.ndim) if a != axis)
    scale = np.abs(w).max(axis=other, keepdims=True) / 127
    return np.clip(np.round(w / scale), -127, 127) * scale


def _layer(tensor: str, x: np.ndarray, weights: dict[str, np.ndarray], quantized: bool) -> np.ndarray:
    """The layer ``graphs.two_distributions`` reads ``tensor`` with: the MatMul (a 2-D weight) or the Conv."""
    w = weights[f"w_{tensor}"].astype(np.float64)
    if w.ndim == 2:
        return x @ (_int8_per_channel(w, 1) if quantized else w)  # MatMul: output channels on axis 1
    w = _int8_per_channel(w, 0) if quantized else w
    b = torch.from_numpy(weights[f"b_{tensor}"].astype(np.float64))
    return torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), b, padding=1).numpy()


def _output_errors(tensor: str, found, weights: dict[str, np.ndarray], batches=None) -> dict[str, float]:
    """Per method: ||y_q - y||^2 / ||y||^2 with the input as the TensorRT graph quantizes it plus
    as the ONNX Runtime CPU graph does, on the rows auto compares on."""
    x = np.concatenate([b[tensor] for b in batches or _batches()])[:AUTO_ROWS].astype(np.float64)
    ref = _layer(tensor, x, weights, quantized=False)
    errors = {}
    for method in methods.names():
        amax = found.amax[method]
        inputs = (_int8(x, amax), _uint8(x, max(found.min, -amax), min(found.max, amax)))
        errors[method] = sum(np.sum((_layer(tensor, q, weights, True) - ref) ** 2) / np.sum(ref**2) for q in inputs)
    return errors


def test_auto_keeps_outliers_that_matter_and_clips_tails_that_do_not():
    model = graphs.two_distributions()
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    ranges = RangesFromOnnx(["outliers", "laplace"], 2048, 99.99)(model, _batches())
    outliers, laplace = ranges.tensors["outliers"], ranges.tensors["laplace"]
    # Entropy and the percentile clip the four outliers; the MatMul's output pays for it.
    assert outliers.amax["entropy"] < 5 and outliers.amax["percentile"] < 5
    assert outliers.auto.method == "max" and outliers.amax["auto"] == 30.0
    # The Laplacian's largest values are rarer than its rounding is costly: a clipping range wins.
    assert laplace.auto.method == "percentile" and laplace.amax["auto"] < laplace.amax["max"]
    for name, found in (("outliers", outliers), ("laplace", laplace)):
        expected = _output_errors(name, found, weights)
        assert found.auto.errors == pytest.approx(expected, rel=1e-3)
        assert all(expected[found.auto.method] <= e for e in expected.values())
        assert found.auto.reason.startswith(
            f"least output error of {'MatMul matmul' if name == 'outliers' else 'Conv conv'}"
        )
    assert expected["max"] > 1.3 * expected["percentile"]  # the laplace tensor: a clear margin, not a tie
    assert outliers.auto.errors["entropy"] > 100 * outliers.auto.errors["max"]


def test_auto_clips_a_heavy_tailed_tensor_and_keeps_the_whole_range_of_a_uniform_one():
    """The issue's case: Student-t values (3 degrees of freedom: the largest of 65536 is 60.4 where
    most lie within 2) into a MatMul, uniform ones in [-1, 1] into a Conv. Max spends the heavy-tailed
    tensor's 127 steps on a few values: its MatMul's output error is 0.0134 with max, 0.0077 with
    mse (45.2), 0.0037 with the percentile (28.1) and 0.0018 with entropy (19.8), which auto takes.
    The uniform tensor has no tail: max, the percentile and entropy all give its whole range (1.0),
    mse one histogram bin less (0.996, the least expected rounding plus clipping error), and the
    Conv's output error is 7.41e-5 with mse against 7.45e-5 with the others: auto keeps (nearly)
    the whole range there, where it cuts the heavy-tailed one to a third."""
    rng = np.random.default_rng(7)
    heavy = rng.standard_t(3, size=(ROWS, 64)).astype(np.float32)
    uniform = rng.uniform(-1.0, 1.0, size=(ROWS, 8, 4, 4)).astype(np.float32)
    batches = [{"heavy": heavy[i : i + BATCH], "uniform": uniform[i : i + BATCH]} for i in range(0, ROWS, BATCH)]
    model = graphs.two_distributions(names=("heavy", "uniform"))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    ranges = RangesFromOnnx(["heavy", "uniform"], 2048, 99.99)(model, batches)
    heavy_range, uniform_range = ranges.tensors["heavy"], ranges.tensors["uniform"]
    assert heavy_range.auto.method == "entropy" and uniform_range.auto.method == "mse"
    assert heavy_range.amax["max"] == pytest.approx(60.45, abs=0.01) and heavy_range.amax["auto"] < 20
    assert uniform_range.amax["max"] == pytest.approx(1.0, abs=1e-4)
    assert uniform_range.amax["auto"] > 0.995 * uniform_range.amax["max"]  # no tail to clip
    for name, found in (("heavy", heavy_range), ("uniform", uniform_range)):
        expected = _output_errors(name, found, weights, batches)
        assert found.auto.errors == pytest.approx(expected, rel=1e-3)  # the numbers, recomputed here
        assert all(expected[found.auto.method] <= e for e in expected.values())
    heavy_errors = heavy_range.auto.errors
    assert heavy_errors == pytest.approx(
        {"max": 0.0134, "percentile": 0.00367, "entropy": 0.00179, "mse": 0.00773}, rel=0.01
    )
    assert uniform_range.auto.errors == pytest.approx(
        dict.fromkeys(methods.names(), 7.45e-5) | {"mse": 7.41e-5}, rel=0.003
    )


def test_auto_keeps_layer_inputs_from_the_passes_across_groups_and_micro_batches():
    """Layers reading activations (here behind an Identity) are judged on the rows the calibration
    passes keep: captured in separate passes over the data, in runs of 3 rows (the kept 32 cut
    from the eleventh), they give the same errors as layers reading the graph inputs."""
    direct = RangesFromOnnx(["outliers", "laplace"], 2048, 99.99)(graphs.two_distributions(), _batches())
    model = graphs.two_distributions(behind_identity=True)
    small = [{k: v[i : i + 3] for k, v in b.items()} for b in _batches() for i in range(0, BATCH, 3)]
    kept = RangesFromOnnx(["o", "l"], 2048, 99.99)(model, small, groups=[["outliers", "o"], ["laplace", "l"]])
    for name, inner in (("outliers", "o"), ("laplace", "l")):
        assert kept.tensors[inner].auto.method == direct.tensors[name].auto.method
        assert kept.tensors[inner].auto.errors == pytest.approx(direct.tensors[name].auto.errors, rel=1e-6)


def test_a_tensor_no_weighted_layer_reads_takes_its_own_error():
    model = graphs.residual()  # c2 feeds only the residual Add
    batches = [graphs.inputs_for(model, 8, seed) for seed in range(4)]
    ranges = RangesFromOnnx(["x", "r1", "c2"], 2048, 99.99)(model, batches)
    assert ranges.tensors["c2"].auto.method == "mse" and ranges.tensors["c2"].auto.errors == {}
    assert "no Conv, ConvTranspose, Gemm, MatMul or GlobalAveragePool reads it" in ranges.tensors["c2"].auto.reason
    assert ranges.tensors["x"].auto.reason.startswith("least output error of Conv conv1")


def test_a_cache_whose_auto_range_is_not_its_methods_is_refused(tmp_path):
    ranges = RangesFromOnnx(["outliers", "laplace"], 2048, 99.99)(graphs.two_distributions(), _batches())
    path = tmp_path / "ranges.json"
    ranges.save(path)
    assert load_ranges(path) == ranges
    raw = json.loads(path.read_text())
    raw["tensors"]["outliers"]["amax"]["auto"] = raw["tensors"]["outliers"]["amax"]["entropy"]
    path.write_text(json.dumps(raw))
    with pytest.raises(PipelineError, match=r"ranges.json: tensor 'outliers': amax\['auto'\] is not the range"):
        load_ranges(path)


def test_summary_survives_a_range_that_reproduces_fp32_exactly():
    """A zero error for the chosen range (MobileViT-XS had one) is no division by zero."""
    from pipeline.calibration.auto import summary
    from pipeline.calibration.cache import AutoChoice, Ranges, TensorRange

    exact = AutoChoice("max", "least output error of conv", {"max": 0.0, "percentile": 0.1, "entropy": 0.2, "mse": 0.3})
    amax = {"max": 1.0, "percentile": 0.9, "entropy": 0.8, "mse": 0.7, "auto": 1.0}
    lines = summary(Ranges("0" * 64, {}, {"t": TensorRange(-1.0, 1.0, amax, exact)}))
    assert lines[0].startswith("auto ranges: max 1 tensor(s)") and "inf" in lines[1]


def test_a_tensor_an_average_reads_is_judged_by_the_average():
    """
        x [batch, 8, 16, 16] ─► GlobalAveragePool ─► y [batch, 8, 1, 1]       (an SE block's squeeze)
    x is post-activation-like: |N(0, 1)| with a sparse heavy tail (0.1% of values x100). No
    weighted layer reads it, so it used to take its own error's choice (mse); the average reading
    it now judges it, by the averages' relative squared error under each target's rounding (int8
    over +-amax and uint8 over [min, amax], recomputed here in numpy), and those errors pick
    another range: the averages come out closer to FP32 than under mse."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["y"], name="squeeze")],
        "squeeze",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 1, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    rng = np.random.default_rng(3)
    x = np.abs(rng.standard_normal((256, 8, 16, 16))).astype(np.float32)
    x *= np.where(rng.random(x.shape) < 0.001, 100.0, 1.0).astype(np.float32)
    batches = [{"x": x[i : i + 32]} for i in range(0, 256, 32)]
    found = RangesFromOnnx(["x"], 2048, 99.99)(model, batches).tensors["x"]
    assert found.auto.reason.startswith("least output error of GlobalAveragePool squeeze")
    rows = x[:AUTO_ROWS].astype(np.float64)
    ref = rows.mean(axis=(2, 3))

    def error(amax: float) -> float:
        lo, hi = max(found.min, -amax), min(found.max, amax)
        quantized = (_int8(rows, amax), _uint8(rows, lo, hi))
        return sum(float(np.square(q.mean(axis=(2, 3)) - ref).sum() / np.square(ref).sum()) for q in quantized)

    expected = {m: error(found.amax[m]) for m in methods.names()}
    assert found.auto.errors == pytest.approx(expected, rel=0.02)
    assert found.auto.method == min(expected, key=expected.get) != "mse"
    assert expected[found.auto.method] < 0.8 * expected["mse"]


class _Recording(AutoRanges):
    """Auto as calibration runs it, noting the rows of every piece its layers are judged on."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pieces: list[dict[str, int]] = []

    def chunks(self, view, uses):
        for piece in super().chunks(view, uses):
            self.pieces.append({t: len(v) for t, v in piece.items()})
            yield piece


def test_auto_judges_layers_in_pieces_within_its_byte_budget_with_the_same_errors():
    """Behind Identity nodes (kept rows captured, not graph inputs), with ``chunk_bytes`` of 6000:
    a row of the Conv's input (8x4x4 floats), its two quantized copies and four of its output
    (16x4x4) come to 5632 bytes, so it is judged one row at a time; the MatMul's (64 in, 32 out)
    1280, four rows at a time. The errors are the same sums as on all 32 kept rows at once."""
    model = graphs.two_distributions(behind_identity=True)
    unbounded = _Recording()
    whole = RangesFromOnnx(["o", "l"], 2048, 99.99)(model, _batches(), auto=unbounded)
    pieces = _Recording(chunk_bytes=6000)
    cut = RangesFromOnnx(["o", "l"], 2048, 99.99)(model, _batches(), auto=pieces)
    assert whole.tensors["o"].auto.method == "max"  # the outliers: the same choice as read from the inputs
    for tensor, rows in (("l", 1), ("o", 4)):
        assert [p[tensor] for p in pieces.pieces if tensor in p] == [rows] * (AUTO_ROWS // rows)
        assert cut.tensors[tensor].auto.method == whole.tensors[tensor].auto.method
        assert cut.tensors[tensor].auto.errors == pytest.approx(whole.tensors[tensor].auto.errors, rel=1e-9)
    assert [max(p.values()) for p in unbounded.pieces] == [AUTO_ROWS] * 2  # no budget: all kept rows at once
