"""The FP16 graph: every tensor typed by what computes it, the I/O type on every output."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.fp16 import Fp16OnnxFromOnnx


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
