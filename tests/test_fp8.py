"""The tensorrt-fp8 target: its FP8 (E4M3) Q/DQ graph, checked for structure and against a numpy
reference of E4M3 rounding; its rule check; auto's FP8 error; and build, compare, bench, report and
deploy of the FP8 artifact on the TensorRT stand-in (which refuses it below compute capability 8.9).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from pipeline import ortsession, stages
from pipeline.calibration import methods
from pipeline.calibration.auto import AUTO_ROWS, AutoRanges, TargetQuant, dequantized_weight, summary
from pipeline.calibration.calibrator import RangesFromOnnx
from pipeline.calibration.wholegraph import Range, scales, simulation
from pipeline.config import QuantizeSection, load_config
from pipeline.evaluate.accuracy import AccuracyRow
from pipeline.evaluate.metrics import ErrorAccumulator, ErrorStats
from pipeline.evaluate.verdict import decide
from pipeline.fileio import sha256_file
from pipeline.fp16 import fp16_graph
from pipeline.graphview import GraphView
from pipeline.layout import Layout
from pipeline.placement import weight_axis
from pipeline.results import BenchResult, BenchRow, BuildResult, CompareResult, Engines, Latency, LayerSummary
from pipeline.targets.base import QuantizationInputs
from pipeline.targets.tensorrt.target import TensorRT
from pipeline.targets.tensorrt_fp8.e4m3 import e4m3
from pipeline.targets.tensorrt_fp8.target import TensorRtFp8
from tests import graphs
from tests.conftest import write_config
from tests.test_auto import _batches as auto_batches
from tests.test_auto import _int8_per_channel as int8_per_channel
from tests.test_tensorrt_path import FAST, _cli, _one_line_error
from tests.test_trt_standin import POLYGRAPHY_PROBES
from tests.trt_standin import standin
from tests.trt_standin.cuda import Gpu

FP8 = TensorRtFp8()
GEMMS = ("MatMul", "Gemm")


# --- a numpy reference of E4M3, built from the format's bits (not from pipeline's arithmetic) -------


def _e4m3_grid() -> np.ndarray:
    """The non-negative FLOAT8E4M3FN values in the order of their bit patterns 0x00..0x7E (0x7F is NaN):
    exponent bits 0 are subnormals, man/8 * 2^-6; else (1 + man/8) * 2^(exp - 7)."""
    bits = np.arange(0x7F)
    exponent, mantissa = bits >> 3, bits & 7
    return np.where(exponent == 0, mantissa / 8 * 2.0**-6, (1 + mantissa / 8) * 2.0 ** (exponent - 7))


GRID = _e4m3_grid()


def reference_e4m3(x: np.ndarray) -> np.ndarray:
    """The nearest E4M3 value to each of ``x``, ties to the even bit pattern (the even mantissa), and
    beyond 448 saturated to 448 (QuantizeLinear's ``saturate=1``)."""
    x = np.asarray(x, np.float64)
    a = np.minimum(np.abs(x), GRID[-1])
    hi = np.clip(np.searchsorted(GRID, a), 1, len(GRID) - 1)
    lo = hi - 1
    up = (GRID[hi] - a < a - GRID[lo]) | ((GRID[hi] - a == a - GRID[lo]) & (hi % 2 == 0))
    return np.sign(x) * np.where(up, GRID[hi], GRID[lo])


def test_the_reference_is_e4m3():
    assert GRID[-1] == 448 and GRID[1] == 2.0**-9 and GRID[8] == 2.0**-6  # largest, smallest subnormal, normal
    assert list(reference_e4m3([1.0625, 1.1875, 464.0, 465.0, 1e6, 2.0**-10, 3 * 2.0**-10])) == [
        1.0,  # halfway between 1 and 1.125: to the even mantissa
        1.25,
        448.0,  # halfway to 480, which E4M3FN does not have: saturates
        448.0,
        448.0,
        0.0,  # half the smallest subnormal: to even, 0
        2.0**-8,  # 1.5 subnormal steps: to even, 2 steps
    ]


def test_pipelines_e4m3_rounding_is_the_references():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(20000) * 10.0 ** rng.uniform(-4, 3, 20000)).astype(np.float32)
    ties = np.concatenate([(GRID[:-1] + GRID[1:]) / 2, -(GRID[:-1] + GRID[1:]) / 2]).astype(np.float32)
    x = np.concatenate([x, ties, GRID.astype(np.float32), [449.0, 500.0, -1e9]])
    np.testing.assert_array_equal(e4m3(x), reference_e4m3(x).astype(np.float32))


# --- the FP8 artifact of tiny graphs ---------------------------------------------------------------


def fp8_artifact(model: onnx.ModelProto, settings: QuantizeSection | None = None, target=FP8):
    """The target's graph of ``model`` (FP16 graph, max ranges on deterministic data), and its ranges."""
    settings = settings or QuantizeSection(targets=(target.name,))
    view = GraphView(model)
    batches = [graphs.inputs_for(model, 4, seed) for seed in range(4)]
    ranges = RangesFromOnnx(target.calibration_tensors(view, settings), 2048, 99.99)(model, batches)
    inputs = QuantizationInputs(model, fp16_graph(model, keep_fp32=()), view, ranges, "max", settings)
    return target.quantize(inputs), ranges


def _by_output(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def _array(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


def _outputs(model: onnx.ModelProto, tensors: list[str], feed) -> list[np.ndarray]:
    """``tensors`` of ``model`` on ``feed``, as the pipeline runs its graph (as written)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors)
    session = ortsession.session(probe, cpu_only=True)
    return session.run(tensors, ortsession.feed_for(session, feed))


TINY = {
    "attention": graphs.attention(),  # Q/K/V projections and both batched MatMuls
    "mlp": graphs.mlp_gelu(),  # an MLP's two GEMMs around GELU
    "gemm-transB1": graphs.gemm(1),  # a Gemm with its weight [N, K]: axis 0
    "gemm-transB0": graphs.gemm(0),  # [K, N]: axis 1
}


@pytest.mark.parametrize("name", list(TINY))
def test_fp8_artifact_puts_e4m3_qdq_around_each_gemm_with_fp8_weights(name):
    model = TINY[name]
    fp8, ranges = fp8_artifact(model)
    made_by, inits = _by_output(fp8), {i.name: i for i in fp8.graph.initializer}
    gemms = [n for n in fp8.graph.node if n.op_type in GEMMS]
    assert gemms and len(gemms) == sum(n.op_type in GEMMS for n in model.graph.node)
    props = {p.key: p.value for p in fp8.metadata_props}
    assert props == {"trtpipe.precision": "fp8", "trtpipe.target": "tensorrt"}
    assert not [i.name for i in fp8.graph.initializer if i.data_type in (TensorProto.INT8, TensorProto.UINT8)]
    feed = graphs.inputs_for(model, 3, seed=11)
    for node in gemms:
        for index in (0, 1):
            dq = made_by[node.input[index]]
            assert dq.op_type == "DequantizeLinear", (name, node.name, index)
            stored, scale_name, zero_name = dq.input
            assert inits[zero_name].data_type == TensorProto.FLOAT8E4M3FN and not _array(fp8, zero_name).any()
            scale = _array(fp8, scale_name)
            assert scale.dtype == np.float16 and (scale > 0).all()
            if stored in inits:  # a weight: FP8 behind the DequantizeLinear, per output channel
                w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == _source(node, index)))
                axis = weight_axis(node.op_type, node, w.ndim, index)
                assert inits[stored].data_type == TensorProto.FLOAT8E4M3FN
                assert helper.get_attribute_value(next(a for a in dq.attribute if a.name == "axis")) == axis
                assert scale.shape == (w.shape[axis],)
                others = tuple(a for a in range(w.ndim) if a != axis)
                want = (np.abs(w).max(axis=others) / 448).astype(np.float16)
                np.testing.assert_array_equal(scale, want)
                shape = [1] * w.ndim
                shape[axis] = -1
                expected = reference_e4m3(w / scale.astype(np.float32).reshape(shape))
                np.testing.assert_array_equal(_array(fp8, stored).astype(np.float64), expected)
            else:  # an activation: Q -> DQ with one FP16 scale, amax / 448
                q = made_by[stored]
                assert q.op_type == "QuantizeLinear" and list(q.input[1:]) == [scale_name, zero_name]
                assert scale.shape == () and scale == np.float16(ranges.amax(_fp32_name(q.input[0]), "max") / 448)
                # The numbers: x / scale rounded to E4M3 as the reference rounds it, times the scale.
                x, got = _outputs(fp8, [q.input[0], dq.output[0]], feed)
                s = np.float32(scale)
                want = (reference_e4m3(x.astype(np.float32) / s) * s).astype(np.float16)
                np.testing.assert_array_equal(got, want)
    assert FP8.violations(fp8) == []
    ref, out = graphs_run(model, feed), graphs_run(fp8, feed)
    rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert rel < 0.08, rel  # FP8's 3 mantissa bits: a few percent at most on these


def graphs_run(model, feed) -> np.ndarray:
    return ortsession.run(ortsession.session(model, cpu_only=True), feed)[0]


def _source(node: onnx.NodeProto, index: int) -> str:
    """The FP32 weight a quantized weight input was made from (``<node>_<weight>_dequantized``)."""
    return node.input[index].removeprefix(f"{node.name}_").removesuffix("_dequantized")


def _fp32_name(fp16_tensor: str) -> str:
    return fp16_tensor.removesuffix(".fp16")  # the FP16 graph's Cast of a graph input


def test_fp8_weights_halve_the_w8a8_graphs_neither_and_match_its_placement():
    """On the same graph the FP8 artifact quantizes exactly the GEMM edges w8a8 does, and its weights
    are as small (one byte each)."""
    model = graphs.attention()
    fp8, _ = fp8_artifact(model)
    w8a8, _ = fp8_artifact(model, QuantizeSection(targets=("tensorrt",)), TensorRT())

    def inputs_through_dq(m):
        made_by = _by_output(m)
        return sorted(
            (n.name, i)
            for n in m.graph.node
            if n.op_type in GEMMS
            for i in (0, 1)
            if made_by[n.input[i]].op_type == "DequantizeLinear"
        )

    assert inputs_through_dq(fp8) == inputs_through_dq(w8a8)
    assert len(fp8.SerializeToString()) == pytest.approx(len(w8a8.SerializeToString()), rel=0.02)


def _convs() -> onnx.ModelProto:
    """
        x [batch, 16, 8, 8] ─► widen (16 -> 32, 3x3) ─► relu ─► body (32 -> 32, 3x3) ─► relu ─► wide (7x7) ─► y
    FP8 convolution wants more than 16 channels in and out and at most 32 taps: only ``body``.
    """
    n1, i1 = graphs.conv("widen", "x", "a", cin=16, cout=32)
    n2, i2 = graphs.conv("body", "r1", "b", cin=32, cout=32)
    n3, i3 = graphs.conv("wide", "r2", "y", cin=32, cout=32, k=7)
    relu = [helper.make_node("Relu", [a], [b], name=f"relu_{a}") for a, b in (("a", "r1"), ("b", "r2"))]
    return graphs._model([n1, relu[0], n2, relu[1], n3], i1 + i2 + i3)


def test_conv_stays_fp16_unless_fp8_conv_is_on_and_tensorrt_has_an_fp8_kernel_for_it():
    model = _convs()
    off = FP8.plan(model, QuantizeSection())
    assert off.quantized == [] and {s.node: s.reason for s in off.skipped} == {
        c: "FP8 convolution is off ([quantize] fp8_conv = false): FP16" for c in ("widen", "body", "wide")
    }
    on = FP8.plan(model, QuantizeSection(fp8_conv=True))
    assert on.quantized == [("body", "Conv")]
    reasons = {s.node: s.reason for s in on.skipped}
    assert "16 input channel(s) per group, 32 output" in reasons["widen"] and "49 kernel taps > 32" in reasons["wide"]
    fp8, _ = fp8_artifact(model, QuantizeSection(targets=(FP8.name,), fp8_conv=True))
    inits = {i.name: i for i in fp8.graph.initializer}
    body = next(n for n in fp8.graph.node if n.name == "body")
    (dq,) = [n for n in fp8.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == body.input[1]]
    stored = inits[dq.input[0]]
    assert stored.data_type == TensorProto.FLOAT8E4M3FN and dq.attribute[0].i == 0  # per output channel
    # The user's own exclusions keep their reason.
    mine = FP8.plan(model, QuantizeSection(fp8_conv=True, exclude_nodes=("body",)))
    assert {s.node: s.reason for s in mine.skipped}["body"] == "excluded by name (quantize.exclude_nodes)"


# --- the rule check --------------------------------------------------------------------------------


def test_rule_check_knows_fp8_zero_points_scale_dtypes_and_saturation():
    fp8, _ = fp8_artifact(graphs.gemm(1))
    assert FP8.violations(fp8) == []
    # The INT8 target's rules refuse FP8 zero points, and the FP8 target's refuse int8 ones.
    assert {v.rule for v in TensorRT().violations(fp8)} == {"symmetric-int8"}
    broken = onnx.ModelProto()
    broken.CopyFrom(fp8)
    q = next(n for n in broken.graph.node if n.op_type == "QuantizeLinear")
    activation_scale = q.input[1]
    q.attribute.append(helper.make_attribute("saturate", 0))
    broken.graph.initializer.append(numpy_helper.from_array(np.array(0, np.int8), "int8_zero"))
    broken.graph.initializer.append(numpy_helper.from_array(np.array(0.5, np.float32), "float_scale"))
    dq = next(n for n in broken.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0])
    weight_dq = next(n for n in broken.graph.node if n.op_type == "DequantizeLinear" and n is not dq)
    weight_dq.input[2] = "int8_zero"
    q.input[1] = "float_scale"  # an FP32 scale on the FP16 activation
    rules = {(v.node, v.rule) for v in FP8.violations(broken)}
    assert rules == {
        (f"QuantizeLinear {q.name!r}", "fp8-saturate"),
        (f"QuantizeLinear {q.name!r}", "scale-dtype"),
        (f"DequantizeLinear {weight_dq.name!r}", "symmetric-float8e4m3fn"),
    }
    # Per-channel scales on an activation: TensorRT quantizes activations per tensor only.
    per_channel = onnx.ModelProto()
    per_channel.CopyFrom(fp8)
    scale = next(i for i in per_channel.graph.initializer if i.name == activation_scale)
    scale.CopyFrom(numpy_helper.from_array(np.full(4, 0.5, np.float16), scale.name))
    assert "per-channel-on-constants" in {v.rule for v in FP8.violations(per_channel)}


# --- calibration: auto judges ranges by FP8's error where the FP8 target is configured ---------------


def test_fp8_fake_quant_is_the_graphs_qdq_and_its_error_is_relative():
    x = np.geomspace(1e-3, 10.0, 4001).astype(np.float32)
    fp8 = FP8.fake_quant(x, 10.0, 0.0, 10.0)
    int8 = TensorRT().fake_quant(x, 10.0, 0.0, 10.0)
    fp8_rel, int8_rel = np.abs(fp8 - x) / x, np.abs(int8 - x) / x
    normal = x >= 10.0 / 448 * 2.0**-6  # above E4M3's subnormals after scaling
    assert fp8_rel[normal].max() <= 1 / 16 + 1e-6  # half a step of 3 mantissa bits, at every magnitude
    assert int8_rel[x < 0.1].mean() > 10 * fp8_rel[x < 0.1].mean()  # int8's step is absolute: small values lose
    # What auto computes is what the FP8 graph's Q/DQ pair computes (in FP32 here).
    s = np.float32(10.0 / 448)
    np.testing.assert_array_equal(fp8, (reference_e4m3(x / s) * s).astype(np.float32))


def _fp8_per_channel(w: np.ndarray, axis: int) -> np.ndarray:
    """``w`` stored as E4M3 with one scale per channel along ``axis`` (its abs-max / 448), dequantized."""
    other = tuple(a for a in range(w.ndim) if a != axis)
    scale = (np.abs(w).max(axis=other, keepdims=True) / 448).astype(np.float32)
    return reference_e4m3(w / scale) * scale


def _fp8_layer_errors(tensor: str, found, weights: dict[str, np.ndarray], weight_quant) -> dict[str, float]:
    """Per method: ||y_q - y||^2 / ||y||^2 of the layer reading ``tensor`` (float64, torch), its input
    E4M3 over +-amax and its weights as ``weight_quant`` stores them, on the rows auto compares on."""
    x = np.concatenate([b[tensor] for b in auto_batches()])[:AUTO_ROWS].astype(np.float64)
    w, b = weights[f"w_{tensor}"].astype(np.float64), weights.get(f"b_{tensor}")

    def layer(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        if w.ndim == 2:
            return x @ w
        bias = torch.from_numpy(b.astype(np.float64))
        return torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), bias, padding=1).numpy()

    ref = layer(x, w)
    stored = weight_quant(w, 1 if w.ndim == 2 else 0)  # MatMul's output channels on axis 1, Conv's on 0
    errors = {}
    for method in methods.names():
        scale = np.float32(found.amax[method] / 448)
        y = layer(reference_e4m3(x.astype(np.float32) / scale) * scale, stored)
        errors[method] = float(np.sum((y - ref) ** 2) / np.sum(ref**2))
    return errors


def test_auto_judges_fp8_ranges_with_the_fp8_graphs_weights():
    """Configured for FP8 alone, auto runs each layer as the FP8 graph does: E4M3 activations and
    E4M3 weights per channel, not the int8 weights of the w8a8 graphs (the known gap it had). The
    errors it records are recomputed here from the E4M3 grid, and differ clearly from the errors
    with int8 weights (whose 127 uniform steps round a Gaussian weight about 3x finer)."""
    model = graphs.two_distributions()
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    fp8_only = AutoRanges(fake_quants=(TargetQuant(FP8.fake_quant, FP8.fake_quant_weight),))
    ranges = RangesFromOnnx(["outliers", "laplace"], 2048, 99.99)(model, auto_batches(), auto=fp8_only)
    for name in ("outliers", "laplace"):
        found = ranges.tensors[name]
        expected = _fp8_layer_errors(name, found, weights, _fp8_per_channel)
        with_int8_weights = _fp8_layer_errors(name, found, weights, int8_per_channel)
        assert found.auto.errors == pytest.approx(expected, rel=1e-3)
        assert found.auto.errors != pytest.approx(with_int8_weights, rel=0.2)
        assert found.auto.method == min(expected, key=lambda m: (expected[m], methods.names().index(m)))
    # A w8a8 target keeps int8 weights: the default of a target that stores no other type.
    w = weights["w_outliers"]
    np.testing.assert_array_equal(TensorRT().fake_quant_weight(w, 1), dequantized_weight(w, 1))
    np.testing.assert_allclose(FP8.fake_quant_weight(w, 1), _fp8_per_channel(w, 1), rtol=1e-6)


def test_whole_graph_check_simulates_fp8_where_the_fp8_target_is_configured():
    model = graphs.mlp_gelu()
    view = GraphView(model)
    settings = QuantizeSection(targets=(FP8.name,))
    placement = FP8.simulated(view, settings)
    assert placement.scheme is FP8.scheme
    fp8, ranges = fp8_artifact(model)
    w8a8, _ = fp8_artifact(model, QuantizeSection(targets=("tensorrt",)), TensorRT())
    found = {t: Range(r.min, r.max, ranges.amax(t, "max")) for t, r in ranges.tensors.items()}
    sim = simulation(view.with_weights(model), placement)
    feed = graphs.inputs_for(model, 3, seed=11)
    got = ortsession.session(sim, cpu_only=True).run(None, {**feed, **scales(placement, found)})[0]
    to_fp8, to_int8 = (np.linalg.norm(got - graphs_run(m, feed)) for m in (fp8, w8a8))
    assert to_fp8 < to_int8 / 3, (to_fp8, to_int8)  # it simulates the FP8 graph (FP32 around it), not int8


def _relu_rows(rows: int, seed: int) -> np.ndarray:
    """+-1 at random: after the ReLU, each channel of ``repeated_values_head``'s h is one of two
    constants, and every method's range is the largest (half the rows hold it)."""
    return np.random.default_rng(seed).choice([-1.0, 1.0], (rows, 16)).astype(np.float32)


def _fp8_head(shift: np.ndarray) -> tuple[onnx.ModelProto, onnx.ModelProto, object]:
    """``repeated_values_head``'s FP8 artifact under auto ranges calibrated for FP8 alone on 256 rows
    (the whole-graph check on its first 32), and those ranges."""
    model = graphs.repeated_values_head(shift)
    view, settings = GraphView(model), QuantizeSection(targets=(FP8.name,))
    x = _relu_rows(256, seed=0)
    auto = AutoRanges(
        32, {"x": 0}, (FP8.simulated(view, settings),), (TargetQuant(FP8.fake_quant, FP8.fake_quant_weight),)
    )
    batches = [{"x": x[i : i + 32]} for i in range(0, len(x), 32)]
    ranges = RangesFromOnnx(FP8.calibration_tensors(view, settings), 2048, 99.99)(model, batches, auto=auto)
    inputs = QuantizationInputs(model, fp16_graph(model, keep_fp32=()), view, ranges, "auto", settings)
    return model, FP8.quantize(inputs), ranges


def test_whole_graph_check_places_fp8_scales_in_their_octave_by_the_output_error():
    """E4M3 rounds x / s and x / 2s alike, so where a scale sits between amax / 448 and twice that
    decides how each value rounds, and never what is clipped. Where many values repeat (CREPE's
    BatchNorm after a ReLU: every zero of a channel becomes one constant) that rounding is the same
    in every sample and does not average out. Each shift here lies midway between two E4M3 values at
    amax / 448 (the worst place), so the check moves the scale within the octave (its estimate drops
    by about a fifth); the artifact takes that factor, and its output error on rows never calibrated
    on drops against the same graph's at x 1 (0.032 against 0.042)."""
    peaks = np.linspace(0.5, 1.5, 16) * np.maximum(_relu_rows(256, seed=0), 0).max(axis=0)  # gain * ReLU's max
    scale = float(np.float16(peaks.max() / 448))  # h's amax is the largest peak: its channel is not shifted
    shift = -scale * 1.0625 * 2.0 ** np.arange(4, 8).repeat(4)  # 17/16 of an E4M3 value: midway at x 1
    shift[np.argmax(peaks)] = 0.0
    model, fp8, ranges = _fp8_head(shift)
    assert ranges.amax("h", "auto") == pytest.approx(peaks.max(), rel=1e-6)
    whole = ranges.whole_graph
    assert whole is not None and sorted(whole.fp8_estimates) == pytest.approx([2 ** (k / 8) for k in range(8)])
    assert whole.fp8_scale == min(whole.fp8_estimates, key=whole.fp8_estimates.__getitem__) != 1.0
    assert whole.fp8_estimates[whole.fp8_scale] < 0.85 * whole.fp8_estimates[1.0]
    assert "FP8 scales amax / 448 x" in summary(ranges)[1]
    # Structure: one E4M3 Q/DQ pair on fc's input, its FP16 scale auto's amax / 448 times the factor.
    made_by = _by_output(fp8)
    dq = made_by[next(n for n in fp8.graph.node if n.op_type == "MatMul").input[0]]
    q = made_by[dq.input[0]]
    assert (q.op_type, dq.op_type, _array(fp8, q.input[2]).dtype.name) == (
        "QuantizeLinear",
        "DequantizeLinear",
        "float8_e4m3fn",
    )
    scale = _array(fp8, q.input[1])
    assert scale == np.float16(ranges.amax("h", "auto") * whole.fp8_scale / 448)
    # Numbers: h rounded to E4M3 as the reference rounds it; the output closer to FP32 than at x 1.
    fresh = {"x": _relu_rows(256, seed=1)}
    h, got = _outputs(fp8, [q.input[0], dq.output[0]], fresh)
    s = np.float32(scale)
    np.testing.assert_array_equal(got, (reference_e4m3(h.astype(np.float32) / s) * s).astype(np.float16))
    at_one = dataclasses.replace(ranges, whole_graph=dataclasses.replace(whole, fp8_scale=1.0, fp8_estimates={}))
    view, settings = GraphView(model), QuantizeSection(targets=(FP8.name,))
    plain = FP8.quantize(QuantizationInputs(model, fp16_graph(model, keep_fp32=()), view, at_one, "auto", settings))
    ref = graphs_run(model, fresh)
    error = {
        name: ErrorAccumulator().update(graphs_run(g, fresh), ref).result().rel_error
        for name, g in (("placed", fp8), ("x 1", plain))
    }
    assert error["placed"] < 0.85 * error["x 1"], error


# --- the report's verdict among FP16, INT8 and FP8 -----------------------------------------------


def _bench(ms: dict[str, float]) -> BenchResult:
    rows = tuple(BenchRow(a, a, 256, Latency(v, v, v, v, 0.0, 5)) for a, v in ms.items())
    return BenchResult(
        "tensorrt", "TensorRT", "-", "fp16", "w8a8", (256,), None, 1, 5, 0.0, (rows,), {256: 1.0}, (), others=("fp8",)
    )


def _failed(artifact: str) -> CompareResult:
    stats = ErrorStats(0.1, 0.1, 0.1, 0.1, 0.5, 0.5, 0.1, 0.1)
    return CompareResult((AccuracyRow(f"{artifact} (TensorRT)", "y", stats, None, None, None, ("cos",), 8),), False)


def test_verdict_picks_the_fastest_of_fp16_int8_and_fp8_within_its_gate():
    layers = {"w8a8": LayerSummary(40, 20, 3, 12, 7, True), "fp8": LayerSummary(40, 20, 20, 0, 0, True)}
    build = BuildResult("tensorrt", (), Engines("trt/x", "trt/x/manifest.json", layers))
    (line,) = decide(_bench({"fp16": 10.0, "w8a8": 8.0, "fp8": 5.0}), None, build).lines()
    assert line == "batch 256: deploy fp8: 2.00x faster (5.00 vs 10.0 ms) and within its accuracy gate; w8a8 1.25x"
    (line,) = decide(_bench({"fp16": 10.0, "w8a8": 8.0, "fp8": 5.0}), _failed("fp8"), build).lines()
    assert line.startswith("batch 256: deploy w8a8: 1.25x faster") and line.endswith("; fp8 fails its accuracy gate")
    (line,) = decide(_bench({"fp16": 10.0, "w8a8": 10.1, "fp8": 10.2}), None, build).lines()
    assert line.startswith("batch 256: deploy FP16: w8a8 is no faster (0.99x, below 1.05x)") and "in INT8" in line


# --- on the TensorRT stand-in ------------------------------------------------------------------


@pytest.fixture
def three_targets(tmp_path, user_model, monkeypatch):
    """The user model with a 32 x 32 head (a GEMM FP8 quantizes; its convs stay FP16 in FP8), exported
    and quantized for TensorRT int8, TensorRT FP8 and the ONNX Runtime CPU."""
    monkeypatch.chdir(tmp_path)
    path = write_config(
        tmp_path,
        user_model,
        top=f'name = "tiny"\n{FAST}\n[quantize]\ntargets = ["tensorrt", "tensorrt-fp8", "onnxruntime-cpu"]',
        model=f'[model]\nsource = "{user_model}:build"\n[model.args]\nchannels = 32\nclasses = 32',
        outputs='[[outputs]]\nname = "logits"\nshape = ["batch", 32]\ndtype = "float32"',
    )
    cfg = load_config(path)
    stages.run("export", cfg)
    stages.run("quantize", cfg)
    return cfg, path, Layout.of(cfg)


def test_build_compare_bench_report_and_deploy_handle_the_fp8_artifact(three_targets, tmp_path):
    cfg, path, out = three_targets
    fp8 = onnx.load(str(out.graph("fp8")))
    made_by = _by_output(fp8)
    assert [n.name for n in fp8.graph.node if n.op_type in GEMMS and made_by[n.input[0]].op_type == "DequantizeLinear"]
    with standin(tmp_path / "gpu-machine") as machine:  # compute capability 8.9: Ada
        for command in (
            ["build"],
            ["compare"],
            ["bench"],
            ["report"],
            ["deploy", "--to", str(tmp_path / "repo"), "--precision", "fp8"],
        ):
            result = _cli(command[0], "-c", str(path), *command[1:])
            assert result.exit_code == 0, (command, result.output, result.exception)
    record = json.loads(out.build_record.read_text())
    assert set(record["layers"]) == {"fp16", "w8a8", "fp8"}
    engines = Path(record["dir"])
    assert {"fp8.plan", "layers-fp8.json"} <= {p.name for p in engines.iterdir()}
    assert record["layers"]["fp8"]["quantized_coverage"] == 1.0 and "warning" not in record["layers"]["fp8"]
    layers = json.loads((engines / "layers-fp8.json").read_text())["Layers"]
    assert "FP8" in {t["Datatype"] for layer in layers for t in layer.get("Inputs", [])}
    compare = json.loads(out.result("compare").read_text())
    assert compare["passed"] and "fp8 (TensorRT)" in {r["artifact"] for r in compare["rows"]}
    bench = json.loads(out.result("bench").read_text())
    assert (bench["baseline"], bench["quantized"], bench["others"]) == ("fp16", "w8a8", ["fp8"])
    assert {r["precision"] for r in bench["runs"][0]} == {"fp16", "w8a8", "fp8"}
    report = out.report.read_text()
    assert report.startswith("# tiny: FP16 vs w8a8 vs fp8 on TensorRT")
    header = "| batch | FP16 ms | FP16 items/s | w8a8 ms | w8a8 items/s | w8a8 speedup | " + (
        "fp8 ms | fp8 items/s | fp8 speedup |"
    )
    assert header in report
    assert out.chart("latency").is_file()
    deployed = tmp_path / "repo" / "tiny"
    assert 'platform: "tensorrt_plan"' in (deployed / "config.pbtxt").read_text()
    assert sha256_file(deployed / "1" / "model.plan") == sha256_file(engines / "fp8.plan")
    assert set(machine.refused) <= POLYGRAPHY_PROBES, machine.refused


def test_build_refuses_fp8_on_a_gpu_older_than_ada_in_one_line(three_targets, tmp_path):
    cfg, path, out = three_targets
    with standin(tmp_path / "gpu-machine", gpu=Gpu(name="NVIDIA A10", compute_capability=(8, 6))):
        line = _one_line_error(_cli("build", "-c", str(path)))
    assert line == (
        "Error: tensorrt-fp8: its fp8 engine needs a GPU of compute capability 8.9 or newer, and this NVIDIA A10 "
        f"is 8.6; drop 'tensorrt-fp8' from [quantize] targets in {path.resolve()}, or build --backend onnxruntime "
        "to run its graph on ONNX Runtime"
    )
    assert not out.build_record.exists()


def _fp8_kernel_ms(w8a8_speedup: float, fp8_speedup: float):
    """The stand-in GPU's time per inference: FP16 0.125 ms per item, the Q/DQ engines faster, FP8 (an
    engine with FP8 layer inputs) by ``fp8_speedup``."""

    def kernel(header: dict, batch: int) -> float:
        types = {t.get("Datatype") for layer in header["layers"] if isinstance(layer, dict) for t in layer["Inputs"]}
        speedup = fp8_speedup if "FP8" in types else w8a8_speedup if header["qdq"] else 1.0
        return batch * 0.125 / speedup

    return kernel


def test_gpu_check_shows_fp16_int8_and_fp8_side_by_side_and_its_verdict_picks_among_them(three_targets, tmp_path):
    """With tensorrt and tensorrt-fp8 configured, gpu-check checks both 8-bit engines' coverage, keeps
    each batch's FP16, w8a8 and fp8 latency side by side, and its speed check is the verdict's among
    the three (it read the w8a8 engine alone, and a config without tensorrt failed on a KeyError)."""
    from pipeline.targets.tensorrt.gpu_check import gpu_check

    cfg, path, out = three_targets
    with standin(tmp_path / "gpu-machine", gpu=Gpu(kernel_ms=_fp8_kernel_ms(1.25, 2.0))):
        result = gpu_check([path], root=tmp_path)
    (model,) = result["models"]
    assert model["passed"] and set(model["coverage"]["by_precision"]) == {"w8a8", "fp8"}
    assert all(c["share"] == 1.0 for c in model["coverage"]["by_precision"].values())
    speed = model["speed"]
    assert speed["check"] == (f"fp8 is 2.00x FP16 at batch {speed['batch']} (at least 1.05x, [verdict] min_speedup)")
    for batch, found in speed["by_batch"].items():
        fp16 = int(batch) * 0.125
        assert found["ms"] == pytest.approx({"FP16": fp16, "w8a8": fp16 / 1.25, "fp8": fp16 / 2.0})
        assert (
            found["verdict"].startswith(f"batch {batch}: deploy fp8: 2.00x faster")
            and "; w8a8 1.25x" in found["verdict"]
        )
    assert model["deploy"] == "fp8"
    report = out.report.read_text()
    assert "deploy fp8: 2.00x faster" in report and "| fp8 ms |" in report
