"""Q/DQ placement on tiny graphs: the structure each rule promises, and numbers close to FP32."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from pipeline import ortsession
from pipeline.calibration.calibrator import RangesFromOnnx
from pipeline.config import QuantizeSection
from pipeline.fp16 import fp16_graph
from pipeline.graphview import GraphView
from pipeline.placement import scale_lines
from pipeline.targets import rules
from pipeline.targets.onnxruntime_cpu import quantize as ort_cpu
from pipeline.targets.tensorrt.placement import plan_tensorrt
from pipeline.targets.tensorrt.qdq import QdqOnnxFromOnnx
from tests import graphs


def quantize(model: onnx.ModelProto, settings: QuantizeSection | None = None, method: str = "max"):
    """Plan, calibrate on deterministic data, insert Q/DQ into the FP16 graph; check TensorRT's rules."""
    settings = settings or QuantizeSection()
    plan = plan_tensorrt(model, settings)
    batches = [graphs.inputs_for(model, 4, seed) for seed in range(4)]
    ranges = RangesFromOnnx(plan.tensors, 2048, 99.99)(model, batches)
    fp16 = fp16_graph(model, keep_fp32=())
    w8a8 = QdqOnnxFromOnnx(plan, ranges, method)(fp16, model)
    assert rules.violations(w8a8) == []
    return plan, w8a8


def run(model: onnx.ModelProto, feed) -> np.ndarray:
    """With the options the pipeline gives this graph (TensorRT-target Q/DQ graphs run as written)."""
    return ortsession.run(ortsession.session(model, cpu_only=True), feed)[0]


def assert_close_to_fp32(model, w8a8, min_cosine=0.99):
    feed = graphs.inputs_for(model, 3, seed=11)
    ref, out = run(model, feed).ravel(), run(w8a8, feed).ravel()
    cosine = float(ref @ out / (np.linalg.norm(ref) * np.linalg.norm(out)))
    assert cosine > min_cosine, f"cosine {cosine}"


def qdq_consumers(w8a8: onnx.ModelProto) -> dict[str, list[tuple[str, int]]]:
    """Activation DQ output -> the (node, input index) pairs that read it; weight DQs are left out."""
    inits = {i.name for i in w8a8.graph.initializer}
    dq_outputs = {n.output[0] for n in w8a8.graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in inits}
    found: dict[str, list[tuple[str, int]]] = {}
    for node in w8a8.graph.node:
        for idx, t in enumerate(node.input):
            if t in dq_outputs:
                found.setdefault(t, []).append((node.name, idx))
    return found


def quantized_edges(w8a8) -> set[tuple[str, int]]:
    return {edge for edges in qdq_consumers(w8a8).values() for edge in edges}


def weight_dq_axis(w8a8, node_name: str) -> tuple[int, np.ndarray]:
    node = next(n for n in w8a8.graph.node if n.name == node_name)
    inits = {i.name: numpy_helper.to_array(i) for i in w8a8.graph.initializer}
    for n in w8a8.graph.node:
        if n.op_type == "DequantizeLinear" and n.output[0] in node.input and n.input[0] in inits:
            axis = next(a.i for a in n.attribute if a.name == "axis")
            assert inits[n.input[0]].dtype == np.int8  # weights stored as int8, DQ only
            return axis, inits[n.input[1]]
    raise AssertionError(f"no weight DequantizeLinear feeds {node_name}")


def test_residual_add_quantizes_the_skip_not_the_epilogue():
    model = graphs.residual()
    plan, w8a8 = quantize(model)
    assert quantized_edges(w8a8) == {("conv1", 0), ("conv2", 0), ("add", 1)}
    # conv1 and the Add's skip input share one Q/DQ pair on x.
    assert sorted(plan.activations["x"]) == [("add", 1), ("conv1", 0)]
    assert [n.op_type for n in w8a8.graph.node].count("QuantizeLinear") == 2
    assert_close_to_fp32(model, w8a8)


def test_downsample_residual_quantizes_the_shortcut_conv_output():
    plan, w8a8 = quantize(graphs.downsample_residual())
    assert ("add", 1) in quantized_edges(w8a8)  # the 1x1 shortcut conv's output
    assert ("add", 0) not in quantized_edges(w8a8)  # conv2 fuses the Add as its epilogue
    assert_close_to_fp32(graphs.downsample_residual(), w8a8)


def test_concat_inputs_share_one_scale():
    model = graphs.concat()
    plan, w8a8 = quantize(model)
    assert {("concat", 0), ("concat", 1), ("conv_c", 0)} <= quantized_edges(w8a8)
    inits = {i.name: numpy_helper.to_array(i) for i in w8a8.graph.initializer}
    q_scale = {n.input[0]: float(inits[n.input[1]]) for n in w8a8.graph.node if n.op_type == "QuantizeLinear"}
    assert q_scale["ra"] == q_scale["rb"] == q_scale["cat"]
    assert_close_to_fp32(model, w8a8)


def test_pooling_runs_int8_between_quantized_convs():
    model = graphs.pooling()
    _, w8a8 = quantize(model)
    assert {("pool", 0), ("conv2", 0), ("conv1", 0)} == quantized_edges(w8a8)
    assert_close_to_fp32(model, w8a8)


def test_attention_quantizes_both_batched_matmul_inputs_and_leaves_softmax_alone():
    model = graphs.attention()
    plan, w8a8 = quantize(model)
    edges = quantized_edges(w8a8)
    assert {("qk", 0), ("qk", 1), ("av", 0), ("av", 1)} <= edges
    assert {("proj_q", 0), ("proj_k", 0), ("proj_v", 0)} <= edges
    assert ("softmax", 0) not in edges
    for proj in ("proj_q", "proj_k", "proj_v"):
        axis, scale = weight_dq_axis(w8a8, proj)
        assert axis == 1 and scale.shape == (32,) and scale.dtype == np.float16
    assert_close_to_fp32(model, w8a8, min_cosine=0.98)


def test_depthwise_conv_per_channel_on_axis_0():
    model = graphs.depthwise()
    _, w8a8 = quantize(model)
    axis, scale = weight_dq_axis(w8a8, "dw")
    assert axis == 0 and scale.shape == (16,)
    assert_close_to_fp32(model, w8a8)


def test_conv_transpose_per_channel_on_axis_1():
    model = graphs.conv_transpose()
    _, w8a8 = quantize(model)
    axis, scale = weight_dq_axis(w8a8, "ct")
    assert axis == 1 and scale.shape == (16,)
    assert quantized_edges(w8a8) == {("ct", 0)}
    assert_close_to_fp32(model, w8a8)


@pytest.mark.parametrize(("trans_b", "axis"), [(1, 0), (0, 1)])
def test_gemm_weight_axis_follows_transb(trans_b, axis):
    model = graphs.gemm(trans_b)
    _, w8a8 = quantize(model)
    got_axis, scale = weight_dq_axis(w8a8, "fc")
    assert got_axis == axis and scale.shape == (32,)
    assert_close_to_fp32(model, w8a8)


def test_small_layer_stays_fp16_with_reason():
    model = graphs.small_conv()
    plan, w8a8 = quantize(model)
    assert [(s.node, s.reason) for s in plan.skipped] == [
        ("conv_small", "8 output channel(s) < 16: too small to gain from INT8")
    ]
    assert not [n for n in w8a8.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def test_exclusions_by_name_pattern_and_op_type():
    model = graphs.residual()
    for settings, node in [
        (QuantizeSection(exclude_nodes=("conv2",)), "conv2"),
        (QuantizeSection(exclude_patterns=(r"^conv1$",)), "conv1"),
    ]:
        plan = plan_tensorrt(model, settings)
        assert node in {s.node for s in plan.skipped}
        assert node not in {n for n, _ in plan.quantized}
    plan = plan_tensorrt(model, QuantizeSection(exclude_op_types=("Conv",)))
    assert not plan.quantized and not plan.activations


def test_rule_check_catches_broken_graphs():
    model = graphs.residual()
    _, w8a8 = quantize(model)
    q = next(n for n in w8a8.graph.node if n.op_type == "QuantizeLinear")
    scale_name, zp_name = q.input[1], q.input[2]

    def broken(**replacements: np.ndarray) -> list[str]:  # the rule names in the violations
        bad = onnx.ModelProto()
        bad.CopyFrom(w8a8)
        for init in bad.graph.initializer:
            if init.name in replacements:
                init.CopyFrom(numpy_helper.from_array(replacements[init.name], init.name))
        return [v.rule for v in rules.violations(bad)]

    assert "symmetric-int8" in broken(**{zp_name: np.array(3, np.int8)})
    assert "positive-scale" in broken(**{scale_name: np.array(-0.1, np.float16)})
    assert "scale-dtype" in broken(**{scale_name: np.array(0.1, np.float32)})
    assert "per-channel-on-constants" in broken(**{scale_name: np.full(16, 0.1, np.float16)})


def test_cpu_graph_folds_relu_into_the_conv_before_it():
    """The residual graph on ONNX Runtime's CPU scheme: conv1's output (read only by relu1) and the
    Add's output (read only by relu2) need no calibration; their Q takes the Relu's range, so the
    Relus vanish into QLinearConv/QLinearAdd, and the numbers stay close to FP32."""
    model = graphs.residual()
    needed = ort_cpu.tensors_to_calibrate(model)
    assert ort_cpu.relu_folded(model) == {"c1": "r1", "s": "y"}
    assert needed == {"x", "r1", "c2", "y"}
    batches = [graphs.inputs_for(model, 4, seed) for seed in range(4)]
    ranges = RangesFromOnnx(needed, 2048, 99.99)(model, batches)
    w8a8 = ort_cpu.OrtCpuQdqFromOnnx(ranges, "max", QuantizeSection())(model)
    assert rules.violations(w8a8, symmetric=False) == []
    assert not any(n.op_type == "Relu" for n in w8a8.graph.node)
    inits = {i.name: numpy_helper.to_array(i) for i in w8a8.graph.initializer}
    q_conv1 = next(n for n in w8a8.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in ("c1", "r1"))
    assert inits[q_conv1.input[2]] == 0  # uint8 zero point 0: the range starts at 0, as relu1's does
    assert inits[q_conv1.input[1]] == pytest.approx(ranges.tensors["r1"].max / 255, rel=1e-6)
    assert_close_to_fp32(model, w8a8)


def test_cpu_graph_runs_gelu_fused_in_float():
    model = graphs.mlp_gelu()
    fused = ort_cpu.fuse_gelu(model)
    assert [(n.op_type, n.domain) for n in fused.graph.node] == [
        ("MatMul", ""),
        ("Gelu", "com.microsoft"),
        ("MatMul", ""),
    ]
    assert [n.op_type for n in model.graph.node].count("Erf") == 1  # the caller's graph is left alone
    needed = ort_cpu.tensors_to_calibrate(model)
    assert needed == {"x", "h", "g", "y"}  # nothing inside the GELU
    batches = [graphs.inputs_for(model, 4, seed) for seed in range(4)]
    ranges = RangesFromOnnx(needed, 2048, 99.99)(model, batches)
    before = model.SerializeToString()
    w8a8 = ort_cpu.OrtCpuQdqFromOnnx(ranges, "max", QuantizeSection())(model)
    # Its fused copy went to ONNX Runtime's quantizer as a file, weights moved out: the caller's stay.
    assert model.SerializeToString() == before
    assert rules.violations(w8a8, symmetric=False) == []
    producer = {o: n for n in w8a8.graph.node for o in n.output}
    consumers = {i: n for n in w8a8.graph.node for i in n.input}
    gelu = next(n for n in w8a8.graph.node if n.op_type == "Gelu")
    assert producer[gelu.input[0]].op_type == "DequantizeLinear"  # float in, from uint8 h
    assert consumers[gelu.output[0]].op_type == "QuantizeLinear"  # float out, to uint8 for fc2
    assert_close_to_fp32(model, w8a8)


def test_conv_size_is_judged_by_its_gemm_dimensions():
    plan = plan_tensorrt(graphs.patch_embedding(), QuantizeSection())
    assert [n for n, _ in plan.quantized] == ["patch"]
    (skipped,) = plan.skipped
    assert skipped.node == "stem" and skipped.reason.startswith("K=3 (3 input channel(s) x 1 kernel taps) < 16")
    depthwise = plan_tensorrt(graphs.depthwise(), QuantizeSection())
    assert {n for n, _ in depthwise.quantized} == {"dw", "pw"}  # a depthwise conv counts its channels


def test_a_tied_weight_behind_a_transpose_is_quantized_as_a_weight():
    model = graphs.tied_lm_head()
    plan, w8a8 = quantize(model)
    (weight,) = plan.weights
    assert (weight.node, weight.tensor, weight.axis) == ("lm_head", "embedding_t", 1)
    assert set(plan.activations) == {"x"}
    inits = {i.name: numpy_helper.to_array(i) for i in w8a8.graph.initializer}
    matmul = next(n for n in w8a8.graph.node if n.op_type == "MatMul")
    producer = {o: n for n in w8a8.graph.node for o in n.output}
    dq = producer[matmul.input[1]]
    assert dq.op_type == "DequantizeLinear" and inits[dq.input[0]].dtype == np.int8
    assert inits[dq.input[0]].shape == (32, 64) and inits[dq.input[1]].shape == (64,)
    assert not any(n.op_type == "Transpose" for n in w8a8.graph.node)  # folded into the int8 weight
    assert_close_to_fp32(model, w8a8, min_cosine=0.999)


def test_bias_of_a_conv_transpose_is_checked_as_a_bias():
    """The CPU graph's int32 bias DQ is per-channel along axis 0 (its only axis): within the rules; the
    same DQ claiming axis 1 of a weight would not be."""
    model = graphs.conv_transpose_bias()
    batches = [graphs.inputs_for(model, 4, seed) for seed in range(4)]
    needed = ort_cpu.tensors_to_calibrate(model)
    ranges = RangesFromOnnx(needed, 2048, 99.99)(model, batches)
    w8a8 = ort_cpu.OrtCpuQdqFromOnnx(ranges, "max", QuantizeSection())(model)
    consumers = {i: n for n in w8a8.graph.node for i in n.input}
    bias_dq = next(
        n
        for n in w8a8.graph.node
        if n.op_type == "DequantizeLinear" and consumers[n.output[0]].input[2:] == n.output[:1]
    )
    assert rules.violations(w8a8, symmetric=False) == []
    plan, trt = quantize(model)  # the TensorRT graph keeps the bias in FP16 and is within its rules too
    assert rules.violations(trt) == []
    weight_dq = next(
        n for n in w8a8.graph.node if n.op_type == "DequantizeLinear" and consumers[n.output[0]].input[1] == n.output[0]
    )
    for attr in weight_dq.attribute:
        if attr.name == "axis":
            attr.i = 0  # a weight per-channel along ConvTranspose's input channels: wrong
    (bad,) = rules.violations(w8a8, symmetric=False)
    assert (
        bad.rule == "per-channel-axis" and "weight of ConvTranspose 'ct'" in bad.detail and "expected 1" in bad.detail
    )
    assert bias_dq.name not in bad.node


def _cpu_graph(model):
    needed = ort_cpu.tensors_to_calibrate(model)
    batches = [graphs.inputs_for(model, 4, seed) for seed in range(4)]
    ranges = RangesFromOnnx(needed, 2048, 99.99)(model, batches)
    return ort_cpu.OrtCpuQdqFromOnnx(ranges, "max", QuantizeSection())(model)


def test_cpu_graph_keeps_the_residual_stream_float_but_not_a_cnns_residual_add():
    from pipeline.graphview import GraphView

    model = graphs.pre_norm_blocks()
    assert ort_cpu.residual_stream_adds(GraphView(model)) == ["add1", "add2"]
    assert ort_cpu.residual_stream_adds(GraphView(graphs.residual())) == []
    w8a8 = _cpu_graph(model)
    producer = {o: n for n in w8a8.graph.node for o in n.output}
    adds = [n for n in w8a8.graph.node if n.op_type == "Add"]
    readers = {i: n.op_type for n in w8a8.graph.node for i in n.input}
    assert len(adds) == 2 and not any(readers.get(a.output[0]) == "QuantizeLinear" for a in adds)  # no QLinearAdd
    matmuls = [n for n in w8a8.graph.node if n.op_type == "MatMul"]
    assert all(producer[i].op_type == "DequantizeLinear" for m in matmuls for i in m.input)  # still int8
    assert_close_to_fp32(model, w8a8, min_cosine=0.999)


def test_cpu_graph_keeps_an_embedding_add_into_a_layernorm_float():
    """ViT-B/16's CPU graph lost its class-token row (centered cosine 0.49) to a uint8 Add of a
    constant position embedding: one step of the patch rows' range is larger than the whole row."""
    from pipeline.graphview import GraphView

    model = graphs.position_embedding()
    assert ort_cpu.residual_stream_adds(GraphView(model)) == ["embed"]
    rng = np.random.default_rng(3)
    batches = []
    for _ in range(4):
        x = (3 * rng.standard_normal((8, 16, 32))).astype(np.float32)
        x[:, 0] = 0.0  # the class token
        batches.append({"x": x})
    ranges = RangesFromOnnx(ort_cpu.tensors_to_calibrate(model), 2048, 99.99)(model, batches)
    w8a8 = ort_cpu.OrtCpuQdqFromOnnx(ranges, "max", QuantizeSection())(model)
    readers = {i: n.op_type for n in w8a8.graph.node for i in n.input}
    assert readers["e"] == "LayerNormalization"  # no Q/DQ between the Add and the LayerNorm
    ref, out = run(model, batches[0])[:, 0], run(w8a8, batches[0])[:, 0]
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 0.05  # the class-token row survives


def test_cpu_graph_keeps_the_add_of_a_padding_mask_into_softmax_float():
    """A T5 encoder's CPU graph fell to cosine 0.965 with its score + mask Adds in uint8: the mask's
    float32-lowest values and the scores share one range, and every score rounds to the same step."""
    from pipeline.graphview import GraphView

    model = graphs.masked_attention_scores()
    assert ort_cpu.softmax_input_adds(GraphView(model)) == ["masked"]
    rng = np.random.default_rng(4)
    batches = []
    for _ in range(4):
        mask = np.zeros((8, 1, 8), np.float32)
        mask[:, :, 6:] = np.finfo(np.float32).min  # the last two positions are padding
        batches.append({"x": rng.standard_normal((8, 8, 16)).astype(np.float32), "mask": mask})
    ranges = RangesFromOnnx(ort_cpu.tensors_to_calibrate(model), 2048, 99.99)(model, batches)
    w8a8 = ort_cpu.OrtCpuQdqFromOnnx(ranges, "max", QuantizeSection())(model)
    readers = {i: n.op_type for n in w8a8.graph.node for i in n.input}
    assert readers["a"] == "Softmax"  # no Q/DQ between the Add and the Softmax
    ref, out = run(model, batches[0]).ravel(), run(w8a8, batches[0]).ravel()
    assert ref @ out / (np.linalg.norm(ref) * np.linalg.norm(out)) > 0.999


def test_cpu_graph_quantizes_a_tied_weight_as_a_weight():
    model = graphs.tied_lm_head()
    w8a8 = _cpu_graph(model)
    inits = {i.name: numpy_helper.to_array(i) for i in w8a8.graph.initializer}
    producer = {o: n for n in w8a8.graph.node for o in n.output}
    matmul = next(n for n in w8a8.graph.node if n.op_type == "MatMul")
    dq = producer[matmul.input[1]]
    assert (
        dq.op_type == "DequantizeLinear" and inits[dq.input[0]].dtype == np.int8 and inits[dq.input[1]].shape == (64,)
    )
    assert rules.violations(w8a8, symmetric=False) == []
    assert_close_to_fp32(model, w8a8, min_cosine=0.999)


def test_what_depends_on_shapes_only_is_neither_calibrated_nor_quantized():
    from pipeline.graphview import GraphView

    model = graphs.constant_branch()
    view = GraphView(model)
    assert view.input_dependent() >= {"x", "h", "y"} and not view.input_dependent() & {"log", "scaled", "bias"}
    assert ort_cpu.tensors_to_calibrate(view) == {"x", "h", "y"}  # no -inf to calibrate
    w8a8 = _cpu_graph(model)  # calibration would have stopped on the -inf
    quantized = {n.input[0] for n in w8a8.graph.node if n.op_type == "QuantizeLinear"}
    assert not quantized & {"log", "scaled", "bias"}
    assert rules.violations(w8a8, symmetric=False) == []
    assert_close_to_fp32(model, w8a8, min_cosine=0.999)


def test_cpu_graph_takes_constant_nodes_as_initializers():
    """
        x [batch, 16, 32] ─► MatMul w ─► h ─► Mul ─► y        (the scale is a Constant node, as the
                                              ▲                TorchScript exporter writes constants)
                               Constant 0.5 ──┘
    ONNX Runtime's quantizer wants a range for a Constant node's output; as an initializer it needs none.
    """
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
        helper.make_node(
            "Constant", [], ["half"], name="half", value=numpy_helper.from_array(np.array(0.5, np.float32))
        ),
        helper.make_node("Mul", ["h", "half"], ["y"], name="scale"),
    ]
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((32, 32)).astype(np.float32), "w")
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16, 32])],
        [w],
    )
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]))
    w8a8 = _cpu_graph(model)
    assert not any(n.op_type == "Constant" for n in w8a8.graph.node)
    assert rules.violations(w8a8, symmetric=False) == []
    assert_close_to_fp32(model, w8a8, min_cosine=0.999)


def test_cpu_graph_folds_a_weight_shared_through_identity():
    """
    x [batch, 16, 32] ─► MatMul w ─► h ─► Mul ─► y        (T5's RMSNorm scale: the TorchScript
                                          ▲                 exporter shares equal weights this way)
              scale [32] ─► Identity ─────┘
    """
    from onnx import TensorProto, helper

    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "w"),
        numpy_helper.from_array((1 + 0.1 * rng.standard_normal(32)).astype(np.float32), "scale"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
        helper.make_node("Identity", ["scale"], ["shared_scale"], name="share"),
        helper.make_node("Mul", ["shared_scale", "h"], ["y"], name="rms_scale"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16, 32])],
        inits,
    )
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]))
    w8a8 = _cpu_graph(model)  # ONNX Runtime's quantizer asked for a range of "shared_scale" and stopped
    assert rules.violations(w8a8, symmetric=False) == []
    assert_close_to_fp32(model, w8a8, min_cosine=0.999)


def test_a_pooling_ops_output_takes_its_inputs_scale():
    """Issue 22: the output's range chosen apart was up to 1.41x wider than anything the pool can emit
    (CREPE's first pool: amax 18.8 in, 26.5 out); TensorRT, and ModelOpt, carry one scale through."""
    model = graphs.pooling()
    plan, w8a8 = quantize(model, method="percentile")
    assert plan.range_of == {"p": "r"}
    scale = {
        n.input[0]: float(numpy_helper.to_array(next(i for i in w8a8.graph.initializer if i.name == n.input[1])))
        for n in w8a8.graph.node
        if n.op_type == "QuantizeLinear"
    }
    assert scale["p"] == scale["r"]
    assert_close_to_fp32(model, w8a8)


def test_one_scale_reaches_across_pooling_and_reshape_into_a_concat():
    """Issue 22: TensorRT moves Q/DQ across a MaxPool and a Reshape and fuses a Concat only under one
    scale; each tied pair has the same scale and zero point, the widest of the group's ranges, and
    the graph computes what numpy computes with those scales."""
    model = graphs.pool_reshape_concat()
    plan, w8a8 = quantize(model)
    assert plan.scale_groups() == (("a", "b", "cat", "p", "r"),)
    concat_line, tied_line = scale_lines(plan, GraphView(model))
    assert concat_line.endswith("5 tensors joined by 1 Concat(s) (a fused Concat copies 8-bit values): a, b, cat, p, r")
    assert tied_line.startswith("2 tensor(s) take their input's scale across MaxPool, Reshape")
    assert {("pool", 0), ("reshape", 0), ("concat", 0), ("concat", 1), ("conv_c", 0)} <= quantized_edges(w8a8)
    inits = {i.name: numpy_helper.to_array(i) for i in w8a8.graph.initializer}
    params = {
        n.input[0]: (float(inits[n.input[1]]), int(inits[n.input[2]]))
        for n in w8a8.graph.node
        if n.op_type == "QuantizeLinear"
    }
    assert params["a"] == params["p"] == params["r"] == params["b"] == params["cat"]

    weights = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    calibration = np.concatenate([graphs.inputs_for(model, 4, seed)["x"] for seed in range(4)])
    x_amax = np.abs(calibration).max()
    a, b = _conv(calibration, weights, "conv_a"), _conv(calibration, weights, "conv_b", (4, 2))
    shared = np.float16(max(np.abs(a).max(), np.abs(b).max()) / 127)  # the Concat's widest range
    assert params["cat"] == (float(shared), 0)

    feed = graphs.inputs_for(model, 3, seed=11)
    x = _fake_quant(feed["x"], np.float16(x_amax / 127))
    a = _fake_quant(_conv(x, weights, "conv_a", quantized=True), shared)
    n, c, h, w = a.shape
    pooled = a.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
    b = _fake_quant(_conv(x, weights, "conv_b", (4, 2), quantized=True), shared)
    cat = np.concatenate([pooled.reshape(n, 32, 2, 4), b], axis=1)  # already on the shared grid
    want = _conv(cat, weights, "conv_c", quantized=True)
    got = run(w8a8, feed).astype(np.float64)
    # FP16 activations: within a few FP16 roundings of the output's magnitude, but for the rare value
    # FP16 puts on the other side of a rounding boundary (one int8 step of one input).
    error = np.abs(got - want) / np.abs(want).max()
    assert np.mean(error < 4e-3) > 0.98 and error.max() < 0.03, (np.mean(error < 4e-3), error.max())


def _fake_quant(x: np.ndarray, scale: np.float16) -> np.ndarray:
    s = float(scale)
    return np.clip(np.round(x / s), -127, 127) * s


def _conv(x: np.ndarray, weights: dict, name: str, strides=(1, 1), quantized: bool = False) -> np.ndarray:
    """A 3x3 convolution with padding 1 in numpy; ``quantized``: int8 weights per output channel, FP16 scales."""
    w, bias = weights[f"{name}.w"], weights[f"{name}.b"]
    if quantized:
        scale = (np.abs(w).max(axis=(1, 2, 3)) / 127).astype(np.float16).astype(np.float64)[:, None, None, None]
        w = np.clip(np.round(w / scale), -127, 127) * scale
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))[:, :, :: strides[0], :: strides[1]]
    return np.einsum("nchwij,ocij->nohw", windows, w) + bias[None, :, None, None]


def test_a_gathered_row_keeps_a_range_of_its_own():
    """A Gather (or Slice) selects some of its input's values: the class token's range is its own,
    not all tokens' (vit_outliers_digits' TensorRT graph lost 10% with the row tied to its input)."""
    model = graphs.class_token()
    plan, w8a8 = quantize(model)
    assert "g" not in plan.range_of
    inits = {i.name: numpy_helper.to_array(i) for i in w8a8.graph.initializer}
    scale = {n.input[0]: float(inits[n.input[1]]) for n in w8a8.graph.node if n.op_type == "QuantizeLinear"}
    weights = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    calibration = np.concatenate([graphs.inputs_for(model, 4, seed)["x"] for seed in range(4)])
    s = (calibration @ weights["fc1.w"]) * weights["rows"]
    assert scale["g"] == float(np.float16(np.abs(s[:, 0]).max() / 127))  # the row's own amax
    assert scale["g"] < np.abs(s).max() / 127 / 50  # far finer than all rows' scale
    assert_close_to_fp32(model, w8a8)


@pytest.mark.parametrize("make", [graphs.residual, graphs.tied_lm_head, graphs.mlp_gelu, graphs.position_embedding])
def test_graphs_made_from_weights_moved_to_a_file_are_the_same(make, tmp_path):
    """quantize moves the FP32 and FP16 graphs' weights to a file while it runs (``move_weights``):
    the TensorRT and CPU graphs made then are byte for byte those made from the graphs in memory (a
    tied head's weights folded, GELU fused), the view reads each weight back while the moved graph
    keeps none, the quantizer's files beside the weights are gone, and a session on the moved graph
    in memory finds its weights."""
    from pipeline import onnxutil

    model, settings = make(), QuantizeSection()
    plan = plan_tensorrt(model, settings)
    batches = [graphs.inputs_for(model, 4, seed) for seed in range(4)]
    ranges = RangesFromOnnx(set(plan.tensors) | ort_cpu.tensors_to_calibrate(model), 2048, 99.99)(model, batches)
    fp16 = fp16_graph(model, keep_fp32=())
    in_memory = [
        QdqOnnxFromOnnx(plan, ranges, "max")(fp16, model),
        ort_cpu.OrtCpuQdqFromOnnx(ranges, "max", settings)(model),
    ]

    moved, moved_fp16 = onnx.ModelProto(), onnx.ModelProto()
    moved.CopyFrom(model)
    moved_fp16.CopyFrom(fp16)
    view = GraphView(moved)
    view.move_weights(tmp_path / "fp32.onnx")
    onnxutil.save_weights_beside(moved_fp16, tmp_path / "fp16.onnx")
    weights = [i for i in model.graph.initializer if i.ByteSize() > 1024]
    assert weights and all(not i.raw_data for i in moved.graph.initializer if i.name in {w.name for w in weights})
    made = [
        QdqOnnxFromOnnx(plan, ranges, "max")(moved_fp16, view),
        ort_cpu.OrtCpuQdqFromOnnx(ranges, "max", settings)(moved, view),
    ]

    assert [m.SerializeToString() for m in made] == [m.SerializeToString() for m in in_memory]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp16.onnx", "fp16.onnx.data", "fp32.onnx", "fp32.onnx.data"]
    for w in weights:
        np.testing.assert_array_equal(view.array(w.name), numpy_helper.to_array(w))
    assert not any(i.raw_data for i in moved.graph.initializer if i.name in {w.name for w in weights})
    feed = graphs.inputs_for(model, 2, seed=5)
    session = ortsession.session(moved, cpu_only=True, weights_folder=tmp_path)
    np.testing.assert_array_equal(ortsession.run(session, feed)[0], run(model, feed))
    assert onnxutil.with_data(moved, tmp_path).SerializeToString() == model.SerializeToString()
