"""The FP16 graph: every tensor typed by what computes it, the I/O type on every output."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.fp16 import Fp16OnnxFromOnnx
from tests import graphs


def _model(nodes, inits, inputs, outputs):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model, feed):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def _value(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _layernorm_output():
    """
    x ─► LayerNormalization ─► ln ─► MatMul(w) ─► y
                                └──────────────► ln (a graph output too, like BERT's last_hidden_state)
    """
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.ones(16, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(16, np.float32), "beta"),
        numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w"),
    ]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], name="norm", axis=-1),
        helper.make_node("MatMul", ["ln", "w"], ["y"], name="proj"),
    ]
    f = TensorProto.FLOAT
    outputs = [_value("y", f, ["batch", 4, 8]), _value("ln", f, ["batch", 4, 16])]
    return _model(nodes, inits, [_value("x", f, ["batch", 4, 16])], outputs)


def _scalar(value: float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array([value], np.float32))


def _constant_of_shape():
    """
        x ─► Shape ─► ConstantOfShape(value=0.5 float32) ─► half ──────────┐
                 └──► ConstantOfShape(no value: float32 zeros) ─► zeros ─┐  │
        x ───────────────────────────────────────────────────────────► Add ─► Mul ─► Resize(scales float32) ─► y
    (Swin's masks are made this way; Resize's scales must stay float32 by its schema.)
    """
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("ConstantOfShape", ["shape"], ["half"], name="fill", value=_scalar(0.5)),
        helper.make_node("ConstantOfShape", ["shape"], ["zeros"], name="zeros"),  # no value: float32 zeros
        helper.make_node("Add", ["x", "zeros"], ["x0"], name="add_zeros"),
        helper.make_node("Mul", ["x0", "half"], ["m"], name="mul"),
        helper.make_node("Resize", ["m", "", "scales"], ["y"], name="resize", mode="nearest"),
    ]
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    f = TensorProto.FLOAT
    return _model(nodes, [scales], [_value("x", f, ["batch", 2, 4, 4])], [_value("y", f, ["batch", 2, 8, 8])])


@pytest.mark.parametrize("io_dtype", ["float32", "float16"])
def test_layernorm_output_takes_the_io_type(make_config, io_dtype):
    cfg = make_config(top=f'name = "tiny"\n[export]\nio_dtype = "{io_dtype}"')
    fp32 = _layernorm_output()
    fp16 = Fp16OnnxFromOnnx(cfg)(fp32)
    io = TensorProto.FLOAT if io_dtype == "float32" else TensorProto.FLOAT16
    assert [o.type.tensor_type.elem_type for o in fp16.graph.output] == [io, io]
    types = {v.name: v.type.tensor_type.elem_type for v in (*fp16.graph.value_info, *fp16.graph.output)}
    norm = next(n for n in fp16.graph.node if n.op_type == "LayerNormalization")
    proj = next(n for n in fp16.graph.node if n.op_type == "MatMul")
    assert types.get(norm.output[0]) == TensorProto.FLOAT  # kept FP32 ([export] keep_fp32)
    assert types.get(proj.input[0]) == TensorProto.FLOAT16 and types.get(proj.input[1], 0) in (0, TensorProto.FLOAT16)
    x = np.random.default_rng(1).standard_normal((3, 4, 16)).astype(np.float32)
    want = _run(fp32, {"x": x})
    got = _run(fp16, {"x": x.astype(np.float16 if io_dtype == "float16" else np.float32)})
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.astype(np.float32), w, atol=2e-2, rtol=2e-2)


def test_constant_of_shape_follows_its_node_and_resize_scales_stay_float32(make_config):
    fp32 = _constant_of_shape()
    fp16 = Fp16OnnxFromOnnx(make_config())(fp32)  # strict shape inference and the full checker inside
    fill = next(n for n in fp16.graph.node if n.op_type == "ConstantOfShape")
    assert fill.attribute[0].t.data_type == TensorProto.FLOAT16
    resize = next(n for n in fp16.graph.node if n.op_type == "Resize")
    assert resize.input[2] == "scales"
    assert next(i for i in fp16.graph.initializer if i.name == "scales").data_type == TensorProto.FLOAT
    x = np.random.default_rng(2).standard_normal((2, 2, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(fp16, {"x": x})[0], _run(fp32, {"x": x})[0], atol=1e-2)


def _batchnorm_with_a_large_variance():
    """
    x [1, 4, 4, 4] ─► Conv(w) ─► c ─► BatchNormalization(scale, bias, mean, var) ─► y

    Channel 0's running variance is 497,160 (as 64 of CREPE full's 128 are, trained): FP16 holds at
    most 65,504, and a clipped variance scales that channel's output by sqrt(497160/65504) = 2.75.
    """
    rng = np.random.default_rng(0)
    var = np.full(4, 2.0, np.float32)
    var[0] = 497_160.0
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32) * 100, "w"),
        numpy_helper.from_array(np.ones(4, np.float32), "scale"),
        numpy_helper.from_array(np.zeros(4, np.float32), "bias"),
        numpy_helper.from_array(np.zeros(4, np.float32), "mean"),
        numpy_helper.from_array(var, "var"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["y"], name="bn"),
    ]
    return _model(
        nodes, inits, [_value("x", TensorProto.FLOAT, [1, 4, 4, 4])], [_value("y", TensorProto.FLOAT, [1, 4, 4, 4])]
    )


def test_a_node_with_a_constant_beyond_fp16_stays_fp32():
    """Issue 22: the FP16 conversion clamped silently to 65,504, and the export gate refused the graph
    without naming the cause; ModelOpt's AutoCast clamps the same way."""
    from pipeline.fp16 import fp16_graph, overflowing_nodes

    model = _batchnorm_with_a_large_variance()
    assert overflowing_nodes(model) == {"bn": ("BatchNormalization", 497160.0)}
    fp16 = fp16_graph(model, keep_fp32=(), keep_nodes=tuple(overflowing_nodes(model)))
    types = {i.name: i.data_type for i in fp16.graph.initializer}
    assert types["var"] == TensorProto.FLOAT and types["w"] == TensorProto.FLOAT16  # only the BatchNorm stays
    x = np.random.default_rng(1).standard_normal((1, 4, 4, 4)).astype(np.float32)
    ref, out = _run(model, {"x": x})[0], _run(fp16, {"x": x})[0]
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-2
    clamped = _run(fp16_graph(model, keep_fp32=()), {"x": x})[0]  # what the conversion did before
    assert np.abs(clamped[:, 0] - ref[:, 0]).max() / np.abs(ref[:, 0]).max() > 0.5


def test_a_constant_node_beyond_fp16_stays_fp32_with_the_node_reading_it():
    """The same where the weights are Constant nodes (Paddle2ONNX writes them so: RapidOCR's detector,
    a BatchNorm variance near 1e8): keeping the BatchNorm FP32 is not enough when the Constant making
    its variance is converted, clipped to 65,504, before the BatchNorm reads it."""
    from pipeline.fp16 import fp16_graph, overflowing_nodes

    model = graphs.batchnorm_from_constants()  # channel 0's running variance 1e8
    assert overflowing_nodes(model) == {"bn": ("BatchNormalization", 1e8)}
    fp16 = fp16_graph(model, keep_fp32=(), keep_nodes=tuple(overflowing_nodes(model)))
    made = {n.output[0]: n.attribute[0].t.data_type for n in fp16.graph.node if n.op_type == "Constant"}
    assert made["bn.var"] == TensorProto.FLOAT  # beyond FP16: kept
    assert made["conv.w"] == made["bn.scale"] == made["bn.bias"] == TensorProto.FLOAT16  # the rest converted
    x = graphs.inputs_for(model, 2)
    ref, out = _run(model, x)[0], _run(fp16, x)[0]
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-2


def test_a_batchnorm_with_a_large_variance_folds_into_its_conv_and_fp16_passes():
    """Issue 22: folded in FP32 first (TensorRT folds it anyway), the BatchNorm of the graph above
    leaves no constant beyond FP16's range: nothing stays FP32, and the FP16 graph computes the
    BatchNorm'd conv to FP16's precision. The folded weights are w x scale / sqrt(var + eps)."""
    from pipeline.batchnorm import fold_batchnorm
    from pipeline.fp16 import fp16_graph, overflowing_nodes

    model = _batchnorm_with_a_large_variance()
    folded, names = fold_batchnorm(model)
    assert names == ["bn"] and [n.op_type for n in folded.graph.node] == ["Conv"]
    conv = folded.graph.node[0]
    assert conv.output[0] == "y" and len(conv.input) == 3  # the BatchNorm's output; a bias added
    inits = {i.name: numpy_helper.to_array(i) for i in folded.graph.initializer}
    var = np.array([497_160.0, 2, 2, 2])
    w = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    np.testing.assert_allclose(inits["w"], w / np.sqrt(var + 1e-5)[:, None, None, None], rtol=1e-6)
    assert overflowing_nodes(folded) == {}
    fp16 = fp16_graph(folded, keep_fp32=())
    assert all(i.data_type == TensorProto.FLOAT16 for i in fp16.graph.initializer)
    x = np.random.default_rng(1).standard_normal((1, 4, 4, 4)).astype(np.float32)
    ref = _run(model, {"x": x})[0]
    np.testing.assert_allclose(_run(folded, {"x": x})[0], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    out = _run(fp16, {"x": x})[0]
    assert np.abs(out - ref).max() / np.abs(ref).max() < 2e-3


def test_a_batchnorm_whose_weights_are_constant_nodes_is_left_unfolded():
    """Paddle2ONNX writes weights as Constant nodes (RapidOCR's detector, ``graphs.batchnorm_from_constants``):
    the fold reads initializers, so such a BatchNorm stays as it is (export crashed on it), and the
    FP16 graph keeps it FP32 with the Constant beyond FP16's range."""
    from pipeline.batchnorm import fold_batchnorm

    model = graphs.batchnorm_from_constants()
    folded, names = fold_batchnorm(model)
    assert names == [] and [n.op_type for n in folded.graph.node] == [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("layer", ["gemm", "matmul_add"])
def test_a_batchnorm_folds_into_a_gemm_or_a_matmul_with_its_bias(layer):
    """
    x [batch, 8] ─► Gemm(w [16, 8], transB) ─► h ─► BatchNormalization ─► y
    x [batch, 8] ─► MatMul(w [8, 16]) ─► Add(b) ─► h ─► BatchNormalization ─► y
    """
    from pipeline.batchnorm import fold_batchnorm

    rng = np.random.default_rng(3)
    stats = [rng.uniform(0.5, 2, 16), rng.standard_normal(16), rng.standard_normal(16), rng.uniform(1, 9e5, 16)]
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for a, n in zip(stats, ("s", "t", "m", "v"), strict=True)]
    inits.append(numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b"))
    # Weights large enough that every folded channel keeps an FP16 8-bit scale (see the next test).
    weights = (100 * rng.standard_normal((8, 16))).astype(np.float32)
    if layer == "gemm":
        inits.append(numpy_helper.from_array(weights.T.copy(), "w"))
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc", transB=1)]
    else:
        inits.append(numpy_helper.from_array(weights, "w"))
        nodes = [
            helper.make_node("MatMul", ["x", "w"], ["mm"], name="fc"),
            helper.make_node("Add", ["mm", "b"], ["h"], name="bias"),
        ]
    nodes.append(helper.make_node("BatchNormalization", ["h", "s", "t", "m", "v"], ["y"], name="bn"))
    f = TensorProto.FLOAT
    model = _model(nodes, inits, [_value("x", f, ["batch", 8])], [_value("y", f, ["batch", 16])])
    folded, names = fold_batchnorm(model)
    assert names == ["bn"] and "BatchNormalization" not in [n.op_type for n in folded.graph.node]
    x = rng.standard_normal((5, 8)).astype(np.float32)
    s, t, m, v = stats
    w = numpy_helper.to_array(next(i for i in inits if i.name == "w")).astype(np.float64)
    bias = numpy_helper.to_array(next(i for i in inits if i.name == "b")).astype(np.float64)
    h = x.astype(np.float64) @ (w.T if layer == "gemm" else w) + bias
    want = (h - m) * s / np.sqrt(v + 1e-5) + t
    np.testing.assert_allclose(_run(folded, {"x": x})[0], want, rtol=1e-5, atol=1e-5)


def _large_activation():
    """
    x [batch, 3, 8, 8] ─► Mul(60000) ─► h ─► Mul(1e-4) ─► s ─► Flatten ─► MatMul(w [192, 4]) ─► logits
    No constant is beyond FP16's range, but h is wherever |x| > 1.09 (the tiny model's held-out
    images reach 1.8): in FP16 it would be inf.
    """
    rng = np.random.default_rng(4)
    inits = [
        numpy_helper.from_array(np.array(60000.0, np.float32), "up_by"),
        numpy_helper.from_array(np.array(1e-4, np.float32), "down_by"),
        numpy_helper.from_array((rng.standard_normal((192, 4)) / 14).astype(np.float32), "w"),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "up_by"], ["h"], name="up"),
        helper.make_node("Mul", ["h", "down_by"], ["s"], name="down"),
        helper.make_node("Flatten", ["s"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "w"], ["logits"], name="head"),
    ]
    f = TensorProto.FLOAT
    return _model(nodes, inits, [_value("x", f, ["batch", 3, 8, 8])], [_value("logits", f, ["batch", 4])])


def test_nodes_whose_activations_go_beyond_fp16_stay_fp32_and_are_named(make_config, capsys):
    """Issue 22: the node making h and the node reading it compute in FP32, found on the parity rows
    run through the FP32 graph, said in the output and in the FP16 graph's metadata; the FP16 graph
    then agrees with FP32, where converted whole it puts inf in the logits."""
    from pipeline.data import sample_inputs
    from pipeline.fp16 import KEPT_FP32, fp16_graph, overflowing_activations

    cfg = make_config()
    model = _large_activation()
    feed = sample_inputs(cfg, 7)
    found = overflowing_activations(model, cfg, feed)
    assert sorted(found) == ["down", "up"] and {t for _, t, _ in found.values()} == {"h"}
    peak = float(np.abs(feed["x"]).max() * 60000)
    assert found["up"][2] == pytest.approx(peak, rel=1e-6) and peak > 65504
    fp16 = Fp16OnnxFromOnnx(cfg)(model, feed)
    said = capsys.readouterr().err
    assert "kept in FP32 in the FP16 graph: Mul up (activation 'h' reaches" in said
    assert "Mul down (activation 'h' reaches" in said
    meta = {p.key: p.value for p in fp16.metadata_props}
    assert meta[KEPT_FP32].startswith("down: activation 'h' reaches") and "; up: activation 'h'" in meta[KEPT_FP32]
    types = {v.name: v.type.tensor_type.elem_type for v in fp16.graph.value_info}
    assert types["h"] == types["s"] == TensorProto.FLOAT and types["f"] == TensorProto.FLOAT16
    ref, out = _run(model, feed)[0], _run(fp16, feed)[0]
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-2
    whole = onnx.shape_inference.infer_shapes(fp16_graph(model, keep_fp32=()))  # ORT computes FP16 Muls in FP32
    assert {v.name: v.type.tensor_type.elem_type for v in whole.graph.value_info}["h"] == TensorProto.FLOAT16


def test_an_fp16_parity_failure_names_the_nodes_that_overflow(make_config, tmp_path):
    """
    x [batch, 3, 8, 8] ─► Mul(60000) ─► logits, FP16 I/O: the output overflows where |x| > 1.09, which
    no node kept FP32 can mend, and the parity failure names the Mul making it.
    """
    from pipeline import ortsession
    from pipeline.errors import PipelineError
    from pipeline.sources.parity import check_parity

    cfg = make_config(top='name = "tiny"\n[export]\nio_dtype = "float16"')
    f = TensorProto.FLOAT
    up = helper.make_node("Mul", ["x", "up_by"], ["logits"], name="up")
    inputs, outputs = [_value("x", f, ["batch", 3, 8, 8])], [_value("logits", f, ["batch", 3, 8, 8])]
    model = _model([up], [numpy_helper.from_array(np.array(60000.0, np.float32), "up_by")], inputs, outputs)
    path = tmp_path / "model.fp16.onnx"
    onnx.save(Fp16OnnxFromOnnx(cfg)(model, None), path)
    reference = ortsession.session(model)
    with pytest.raises(PipelineError, match=r"FP16's range \(inf or NaN from finite inputs\) at Mul up: "):
        check_parity(cfg, lambda feed: ortsession.run(reference, feed), {"fp16": path}, "ONNX file")


def _conv_into_a_batchnorm_of_huge_variance():
    """
    x [batch, 8, 6, 6] (values in the thousands) ─► Conv(w [16, 8, 3, 3]) ─► c ─► BatchNormalization ─► y

    As RapidOCR's detector's last Conv before its head (issue 22): weights of order 1 on inputs in the
    thousands, so the BatchNorm's running variances are about 3e6 (beyond FP16) and its multiplier
    1 / sqrt(var) about 6e-4. Folded, each channel's largest weight would be about 4e-4.
    """
    rng = np.random.default_rng(5)
    w = (0.2 * rng.standard_normal((16, 8, 3, 3))).astype(np.float32)
    mean = 300 * rng.standard_normal(16)
    var = (1000 * np.sqrt((w.astype(np.float64) ** 2).sum(axis=(1, 2, 3)))) ** 2  # c's variance for x ~ 1000 N(0, 1)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(rng.uniform(0.8, 1.2, 16).astype(np.float32), "scale"),
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "bias"),
        numpy_helper.from_array(mean.astype(np.float32), "mean"),
        numpy_helper.from_array(var.astype(np.float32), "var"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["y"], name="bn"),
    ]
    f = TensorProto.FLOAT
    return _model(nodes, inits, [_value("x", f, ["batch", 8, 6, 6])], [_value("y", f, ["batch", 16, 6, 6])])


def test_a_batchnorm_that_would_shrink_weights_below_fp16_int8_scales_stays_and_the_w8a8_conv_keeps_127_levels():
    """Issue 22's regression on RapidOCR's detector (TensorRT graph's error 0.13 -> 0.29 when folding came
    in): folded, the conv's per-channel int8 weight scales (largest weight / 127, about 3e-6) fall under
    FP16's smallest normal (6.1e-5), where the TensorRT graph floors them, and every weight rounded to
    at most +-4 levels. Left unfolded, the BatchNorm stays FP32 in the FP16 graph and the conv's int8
    weights span +-127 in every channel."""
    from pipeline import ortsession
    from pipeline.batchnorm import FP16_SCALABLE_WEIGHT, fold_batchnorm
    from pipeline.calibration.calibrator import RangesFromOnnx
    from pipeline.config import QuantizeSection
    from pipeline.fp16 import fp16_graph, overflowing_nodes
    from pipeline.targets.tensorrt.placement import plan_tensorrt
    from pipeline.targets.tensorrt.qdq import QdqOnnxFromOnnx

    model = _conv_into_a_batchnorm_of_huge_variance()
    w = numpy_helper.to_array(model.graph.initializer[0])
    factor = numpy_helper.to_array(model.graph.initializer[1]) / np.sqrt(
        numpy_helper.to_array(model.graph.initializer[4])
    )
    assert np.abs(w).max(axis=(1, 2, 3)).min() > FP16_SCALABLE_WEIGHT  # scalable as they are ...
    assert (np.abs(w).max(axis=(1, 2, 3)) * factor).max() < FP16_SCALABLE_WEIGHT  # ... not once folded

    kept, names = fold_batchnorm(model)
    assert names == [] and [n.op_type for n in kept.graph.node] == ["Conv", "BatchNormalization"]
    assert set(overflowing_nodes(kept)) == {"bn"}
    fp16 = fp16_graph(kept, keep_fp32=(), keep_nodes=("bn",))
    types = {i.name: i.data_type for i in fp16.graph.initializer}
    assert types["var"] == TensorProto.FLOAT and types["w"] == TensorProto.FLOAT16

    rng = np.random.default_rng(6)
    batches = [{"x": (1000 * rng.standard_normal((4, 8, 6, 6))).astype(np.float32)} for _ in range(4)]
    plan = plan_tensorrt(kept, QuantizeSection())
    w8a8 = QdqOnnxFromOnnx(plan, RangesFromOnnx(plan.tensors, 2048, 99.99)(kept, batches), "max")(fp16, kept)
    inits = {i.name: numpy_helper.to_array(i) for i in w8a8.graph.initializer}
    weight_dq = next(n for n in w8a8.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits)
    stored = inits[weight_dq.input[0]]
    assert stored.dtype == np.int8 and (np.abs(stored.astype(int)).max(axis=(1, 2, 3)) == 127).all()

    x = {"x": (1000 * rng.standard_normal((3, 8, 6, 6))).astype(np.float32)}
    ref, out = _run(model, x)[0], ortsession.run(ortsession.session(w8a8, cpu_only=True), x)[0]  # run as written
    spread = ref - ref.mean(axis=(0, 2, 3), keepdims=True)
    assert np.linalg.norm(out - ref) / np.linalg.norm(spread) < 0.03  # folded: 0.15, its weights within +-7


def _conv_with_a_learned_scale_and_shift():
    """
    x [batch, 8, 6, 6] ─► Conv(w, b) ─► c ─► Mul(0.05) ─► m ─► Add(1.5) ─► a ─► Relu ─► r ─► Conv(w2) ─► y

    PP-LCNetV3's learnable affine after each conv (RapidOCR's detector): a scalar scale and shift.
    """
    rng = np.random.default_rng(7)
    inits = [
        numpy_helper.from_array((0.3 * rng.standard_normal((16, 8, 3, 3))).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b"),
        numpy_helper.from_array(np.array([0.05], np.float32), "scale"),
        numpy_helper.from_array(np.array(1.5, np.float32), "shift"),
        numpy_helper.from_array((0.3 * rng.standard_normal((16, 16, 1, 1))).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c", "scale"], ["m"], name="mul"),
        helper.make_node("Add", ["shift", "m"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2"),
    ]
    f = TensorProto.FLOAT
    return _model(nodes, inits, [_value("x", f, ["batch", 8, 6, 6])], [_value("y", f, ["batch", 16, 6, 6])])


def test_a_scalar_scale_and_shift_after_a_conv_fold_into_it_and_the_cpu_graph_requantizes_less():
    """Folded in FP32 as a BatchNorm is: the conv's weights x 0.05, its bias x 0.05 + 1.5, its output the
    Add's. ONNX Runtime's CPU graph then runs QLinearConv -> Relu -> QLinearConv with no QLinearMul and
    QLinearAdd requantizing between them; on RapidOCR's detector that took its CPU graph's error from
    0.28 to 0.19 (32 held-out rows)."""
    from pipeline.batchnorm import fold_scalar_affines
    from pipeline.calibration.calibrator import RangesFromOnnx
    from pipeline.config import QuantizeSection
    from pipeline.targets.onnxruntime_cpu import quantize as ort_cpu

    model = _conv_with_a_learned_scale_and_shift()
    folded, names = fold_scalar_affines(model)
    assert names == ["add", "mul"] and [n.op_type for n in folded.graph.node] == ["Conv", "Relu", "Conv"]
    conv = folded.graph.node[0]
    assert list(conv.output) == ["a"] and {i.name for i in folded.graph.initializer} == {"w", "b", "w2"}
    inits = {i.name: numpy_helper.to_array(i) for i in folded.graph.initializer}
    original = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    np.testing.assert_allclose(inits["w"], original["w"] * 0.05, rtol=1e-6)
    np.testing.assert_allclose(inits["b"], original["b"] * 0.05 + 1.5, rtol=1e-6)
    rng = np.random.default_rng(8)
    x = {"x": rng.standard_normal((4, 8, 6, 6)).astype(np.float32)}
    ref = _run(model, x)[0]
    np.testing.assert_allclose(_run(folded, x)[0], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())

    def cpu_graph(graph):
        batches = [{"x": rng.standard_normal((8, 8, 6, 6)).astype(np.float32)} for _ in range(4)]
        ranges = RangesFromOnnx(ort_cpu.tensors_to_calibrate(graph), 2048, 99.99)(graph, batches)
        return ort_cpu.OrtCpuQdqFromOnnx(ranges, "max", QuantizeSection())(graph)

    def error(graph):
        out = _run(graph, x)[0]
        return np.linalg.norm(out - ref) / np.linalg.norm(ref - ref.mean())

    before, after = cpu_graph(model), cpu_graph(folded)  # the same ranges method on either graph
    quantized = [sum(n.op_type == "QuantizeLinear" for n in g.graph.node) for g in (before, after)]
    assert quantized[1] < quantized[0]  # no Q after the Mul, nor after the Add
    assert error(after) < 0.02  # close to FP32 with two requantizations fewer
