"""The CPU graph's float rules by pattern: every normalisation, however exported, runs float and its
residual stream stays float, as does a residual sum that is (or is selected into) a graph output.

Each graph is drawn in ``tests/graphs.py``; each test checks where the Q/DQ went and what it costs:
the rules' graph against FP32, and against the same graph with every op quantized (no exclusions),
so a rule that stops holding shows in the numbers too.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest

from pipeline import ortsession
from pipeline.calibration.calibrator import RangesFromOnnx
from pipeline.config import QuantizeSection
from pipeline.graphview import GraphView
from pipeline.targets.onnxruntime_cpu import norms
from pipeline.targets.onnxruntime_cpu import quantize as ort_cpu
from tests import graphs


def _ranges(model: onnx.ModelProto):
    batches = [graphs.stream_inputs(model, 8, seed) for seed in range(4)]
    return RangesFromOnnx(ort_cpu.tensors_to_calibrate(model), 2048, 99.99)(model, batches)


def _cpu_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    return ort_cpu.OrtCpuQdqFromOnnx(_ranges(model), "max", QuantizeSection())(model)


def _everything_quantized(model: onnx.ModelProto, ranges=None) -> onnx.ModelProto:
    """The same ranges through ONNX Runtime's quantizer with no node excluded: what the rules prevent."""
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    ranges = ranges or _ranges(model)
    data = {
        t: TensorData(lowest=np.float32(min(r.min, 0.0)), highest=np.float32(max(r.max, 0.0)))
        for t, r in ranges.tensors.items()
    }
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
        quantize_static(
            model,
            Path(tmp) / "q.onnx",
            calibration_data_reader=None,
            calibration_cache_path=cache,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(ort_cpu.OP_TYPES),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        return onnx.load(str(Path(tmp) / "q.onnx"))


def _relative_error(model: onnx.ModelProto, w8a8: onnx.ModelProto, rows: slice | int = slice(None)) -> float:
    """||w8a8 - fp32|| / ||fp32|| on held-out stream values, over ``rows`` of the sequence axis."""
    feed = graphs.stream_inputs(model, 4, seed=11)
    ref = ortsession.run(ortsession.session(model, cpu_only=True), feed)[0]
    out = ortsession.run(ortsession.session(w8a8, cpu_only=True), feed)[0]
    ref, out = (ref[:, rows], out[:, rows]) if ref.ndim >= 3 else (ref, out)
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def _quantized_inputs(w8a8: onnx.ModelProto) -> dict[str, set[str]]:
    """Node name -> the tensors it reads rounded, through a DequantizeLinear (named as in the FP32
    graph: a Q's input, or a weight's name before ONNX Runtime's ``_quantized`` suffix)."""
    producer = {o: n for n in w8a8.graph.node for o in n.output}

    def original(dq: onnx.NodeProto) -> str:
        q = producer.get(dq.input[0])
        return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else dq.input[0].removesuffix("_quantized")

    return {
        n.name: {original(producer[t]) for t in n.input if t in producer and producer[t].op_type == "DequantizeLinear"}
        for n in w8a8.graph.node
    }


def _quantized_outputs(w8a8: onnx.ModelProto) -> set[str]:
    return {n.input[0] for n in w8a8.graph.node if n.op_type == "QuantizeLinear"}


# kind: (the norm nodes of the stream's second norm, the bound on the class-token row's error)
NORMS_IN_OPS = {
    "rms_reciprocal": (("r.pow", "r.mean", "r.eps", "r.sqrt", "r.inv", "r.scale", "r.gamma"), 0.05),
    "rms_div": (("r.pow", "r.mean", "r.eps", "r.sqrt", "r.div", "r.gamma"), 0.05),
    "layer_norm_ops": (
        ("r.centre_mean", "r.centre", "r.c.pow", "r.c.mean", "r.c.eps", "r.c.sqrt", "r.c.div", "r.c.gamma", "r.beta"),
        0.05,
    ),
}


@pytest.mark.parametrize("kind", sorted(NORMS_IN_OPS))
def test_a_norm_spelled_in_ops_runs_float_and_so_does_the_stream_it_reads(kind):
    """Llama's RMSNorm (Pow, ReduceMean, Add, Sqrt, Reciprocal or Div, Mul) and a LayerNorm in ops (the
    same after ReduceMean and Sub): found by pattern, their nodes and the residual Add stay float."""
    model = graphs.norm_stream(kind)
    nodes, bound = NORMS_IN_OPS[kind]
    found = {n.normalised: n.nodes for n in norms.normalizations(GraphView(model))}
    assert found["r"] == nodes and set(found) == {"x", "r"}
    assert norms.residual_stream_adds(GraphView(model)) == ["residual"]

    w8a8 = _cpu_graph(model)
    read = _quantized_inputs(w8a8)
    assert read["fc1"] == {"n0", "w1"} and read["fc2"] == {"n", "w2"}  # the MatMuls still int8
    assert read["residual"] <= {"a"} and not any(read[n] for n in nodes)  # x and r are never rounded
    assert not {"x", "r"} & _quantized_outputs(w8a8)
    # The class-token row: a norm rescales it to the others' size, with its rounding error
    kept, lost = _relative_error(model, w8a8, 0), _relative_error(model, _everything_quantized(model), 0)
    assert kept < bound < lost, (kept, lost)


def test_mobilebert_no_norm_on_the_stream_stays_float():
    """NoNorm (x * weight + bias, elementwise) on a residual sum or on what is added to one."""
    model = graphs.norm_stream("no_norm")
    view = GraphView(model)
    assert {n.normalised: n.nodes for n in norms.normalizations(view)} == {
        "x": ("x.gamma", "x.beta"),
        "r": ("r.gamma", "r.beta"),
    }
    assert norms.residual_stream_adds(view) == ["residual"]
    w8a8 = _cpu_graph(model)
    read = _quantized_inputs(w8a8)
    assert read["residual"] <= {"a"} and not any(read[n] for n in ("x.gamma", "x.beta", "r.gamma", "r.beta"))
    assert read["fc1"] == {"n0", "w1"} and read["fc2"] == {"n", "w2"}
    kept, lost = _relative_error(model, w8a8), _relative_error(model, _everything_quantized(model))
    assert kept < 0.03 < lost, (kept, lost)


def test_a_scale_and_shift_off_the_stream_is_no_norm_and_stays_quantized():
    """A Mul and an Add of constants after a MatMul, no residual sum in sight: quantized as before,
    and a CNN's residual Add (into a Relu) stays QLinearAdd."""
    model = graphs.scale_shift_after_matmul()
    assert norms.normalizations(GraphView(model)) == []
    read = _quantized_inputs(_cpu_graph(model))
    assert "a" in read["scale"] and "s" in read["shift"]
    assert norms.normalizations(GraphView(graphs.residual())) == []
    assert norms.residual_stream_adds(GraphView(graphs.residual())) == []


def test_group_norm_as_reshape_instance_norm_reshape_mul_add_keeps_its_stream_float():
    """PoolFormerV2's GroupNorm as PyTorch exports it: the Add reaches the InstanceNormalization
    through a Reshape, and the per-channel scale and shift after it are the norm's own."""
    model = graphs.group_norm_stream()
    view = GraphView(model)
    (norm,) = norms.normalizations(view)
    assert norm.normalised == "g" and norm.nodes == ("instance_norm", "to_channels", "gamma", "beta")
    assert norms.residual_stream_adds(view) == ["residual"]
    w8a8 = _cpu_graph(model)
    read = _quantized_inputs(w8a8)
    # x is conv1's input too (no norm before it here), so the Add reads it rounded; its sum is not
    assert not any(read[n] for n in ("to_groups", "to_channels", "gamma", "beta"))
    assert {"x", "conv1.w"} <= read["conv1"] and {"n", "conv2.w"} <= read["conv2"]  # int8, biases int32
    assert "r" not in _quantized_outputs(w8a8)
    kept, lost = _relative_error(model, w8a8), _relative_error(model, _everything_quantized(model))
    assert kept < 0.9 * lost, (kept, lost)


@pytest.mark.parametrize("select_class_token", [False, True])
def test_a_residual_sum_that_is_a_graph_output_or_its_class_token_stays_float(select_class_token):
    """CLIP's last_hidden_state is its last residual sum, and pooler_output its Gather of row 0: quantized,
    that row (tiny beside the others) is one uint8 step of the others' range."""
    model = graphs.residual_to_output(select_class_token)
    assert norms.residual_stream_adds(GraphView(model)) == ["residual"]
    w8a8 = _cpu_graph(model)
    assert _quantized_inputs(w8a8)["residual"] <= {"a"}
    assert not {"r", "y"} & _quantized_outputs(w8a8)
    kept, lost = _relative_error(model, w8a8, 0), _relative_error(model, _everything_quantized(model), 0)
    assert kept < 0.05 < lost, (kept, lost)


def test_the_embedding_gather_that_starts_the_stream_stays_float():
    """The token embedding's Gather is the stream's first move: in uint8 it rounded the stream of
    the zoo's TransformerEncoder more than any single layer did."""
    model = graphs.embedded_stream()
    view = GraphView(model)
    stream = norms.residual_stream_adds(view)
    assert stream == ["residual"] and norms.stream_passes(view, stream, norms.normalizations(view)) == ["embedding"]
    rng = np.random.default_rng(5)
    batches = [{"ids": rng.integers(0, 100, (8, 16)).astype(np.int64)} for _ in range(4)]
    ranges = RangesFromOnnx(ort_cpu.tensors_to_calibrate(model), 2048, 99.99)(model, batches)
    w8a8 = ort_cpu.OrtCpuQdqFromOnnx(ranges, "max", QuantizeSection())(model)
    read = _quantized_inputs(w8a8)
    assert not read["embedding"] and read["residual"] <= {"a"}
    assert "e" not in _quantized_outputs(w8a8) and {"n", "w"} <= read["fc"]
    feed = {"ids": rng.integers(0, 100, (4, 16)).astype(np.int64)}
    kept, lost = _errors_against_fp32(model, feed, w8a8, _everything_quantized(model, ranges))
    assert kept < 0.8 * lost, (kept, lost)


def test_a_layer_read_by_float_ops_is_not_requantized_and_a_concat_rounds_once(tmp_path):
    """resemblyzer's head in small (``graphs.stacked_states_head``). The MatMuls' outputs go only to
    float Tanhs (one through a Flatten, which stays float too), so they keep no Q/DQ: ONNX Runtime
    runs them as MatMulIntegerToFloat. The Gemm's Relu keeps its output Q, into which it folds (with
    no Q after it, ONNX Runtime would fuse Gemm and Relu into a float FusedGemm). The Concat's inputs
    and output share one uint8 range, the union of theirs, so its kernel copies values rather than
    rounding each input a second time. Less error than ONNX Runtime's own placement."""
    model = graphs.stacked_states_head()
    view = GraphView(model)
    assert ort_cpu.float_tails(view, set()) == ["flatten_b"]
    assert ort_cpu.unrequantized(view, {"flatten_b"}) == ["proj_a", "proj_b"]
    batches = [graphs.inputs_for(model, 8, seed) for seed in range(4)]
    ranges = RangesFromOnnx(ort_cpu.tensors_to_calibrate(model), 2048, 99.99)(model, batches)
    w8a8 = ort_cpu.OrtCpuQdqFromOnnx(ranges, "max", QuantizeSection())(model)
    read = _quantized_inputs(w8a8)
    assert read["fc"] == {"cat", "fc.w", "fc.b"} and read["stack"] == {"a", "b"}
    assert read["proj_a"] == {"x", "wa"} and not any(read[n] for n in ("flatten_b", "tanh_a", "tanh_b"))
    assert _quantized_outputs(w8a8) == {"x", "a", "b", "cat", "e"}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in w8a8.graph.initializer}
    scales = {
        n.input[0]: (inits[n.input[1]], inits[n.input[2]]) for n in w8a8.graph.node if n.op_type == "QuantizeLinear"
    }
    assert scales["a"] == scales["b"] == scales["cat"]
    lo = min(ranges.tensors[t].min for t in ("a", "b", "cat"))
    hi = max(ranges.tensors[t].max for t in ("a", "b", "cat"))
    np.testing.assert_allclose(scales["cat"][0], (hi - lo) / 255, rtol=1e-6)
    # ONNX Runtime's CPU kernels as it optimizes the graph: every layer runs on 8-bit inputs
    options = ortsession.options(w8a8, threads=1)
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    onnxruntime.InferenceSession(w8a8.SerializeToString(), options, providers=["CPUExecutionProvider"])
    kernels = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert kernels.count("MatMulIntegerToFloat") == 2 and {"QLinearConcat", "QGemm"} <= set(kernels), kernels
    # The Relu's output read float by the norm and the division: a DQ for each
    assert kernels[-4:] == ["DequantizeLinear", "DequantizeLinear", "ReduceL2", "Div"], kernels
    ranges.tensors["h"] = ranges.tensors["e"]  # ONNX Runtime folds the Relu: its input takes its range
    feed = graphs.inputs_for(model, 8, seed=11)
    kept, lost = _errors_against_fp32(model, feed, w8a8, _everything_quantized(model, ranges))
    assert kept < 0.9 * lost, (kept, lost)


def _errors_against_fp32(model, feed, *graphs_: onnx.ModelProto) -> list[float]:
    """Each graph's relative error of its first output against ``model``'s on ``feed`` (ONNX Runtime CPU)."""
    ref = ortsession.run(ortsession.session(model, cpu_only=True), feed)[0]
    outs = [ortsession.run(ortsession.session(g, cpu_only=True), feed)[0] for g in graphs_]
    return [float(np.linalg.norm(out - ref) / np.linalg.norm(ref)) for out in outs]
