"""Tiny ONNX graphs built in code, one per placement rule, each drawn beside its builder.

Every graph takes ``x`` of shape [batch, 16, 8, 8] (or [batch, 16, 32] for the
attention graph) and is valid at opset 19 with a dynamic batch axis.
"""

from __future__ import annotations

import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 19


def _w(name: str, *shape: int, seed: int = 0) -> onnx.TensorProto:
    rng = np.random.default_rng(zlib.crc32(name.encode()) + seed)  # str hash() varies per process
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)


def _model(nodes, inits, in_shape=("batch", 16, 8, 8), out_shape=None) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape) if out_shape else None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=9)
    return onnx.shape_inference.infer_shapes(model)


def conv(name: str, x: str, y: str, cin: int = 16, cout: int = 16, k: int = 3, group: int = 1):
    return (
        helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [y], name=name, pads=[k // 2] * 4, group=group),
        [_w(f"{name}.w", cout, cin // group, k, k), numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}.b")],
    )


def linear_conv() -> onnx.ModelProto:
    """
        x ──► conv (3x3, 16 -> 16, zero bias) ──► y
    Linear: noise n on x moves y by conv(n) exactly, so the error scales with the noise.
    """
    node, inits = conv("conv", "x", "y")
    return _model([node], inits)


def residual() -> onnx.ModelProto:
    """
        x ──► conv1 ─► relu ─► conv2 ──► Add ─► relu ─► y
        └──────────────────────────────►─┘ (skip)
    Expected: Q/DQ on x (shared by conv1 and the Add's skip input) and on
    conv2's input; none on conv2's output (the Add is conv2's epilogue).
    """
    n1, i1 = conv("conv1", "x", "c1")
    n2, i2 = conv("conv2", "r1", "c2")
    nodes = [
        n1,
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        n2,
        helper.make_node("Add", ["c2", "x"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["y"], name="relu2"),
    ]
    return _model(nodes, i1 + i2)


def downsample_residual() -> onnx.ModelProto:
    """
        x ─► conv1 ─► relu ─► conv2 ──► Add ─► y
        └──► down (1x1 conv) ──────────►─┘
    Both Add inputs are conv outputs: the deeper branch (conv2) fuses, the
    shortcut conv's output gets Q/DQ.
    """
    n1, i1 = conv("conv1", "x", "c1")
    n2, i2 = conv("conv2", "r1", "c2")
    nd, idn = conv("down", "x", "d", k=1)
    nodes = [
        n1,
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        n2,
        nd,
        helper.make_node("Add", ["c2", "d"], ["y"], name="add"),
    ]
    return _model(nodes, i1 + i2 + idn)


def concat() -> onnx.ModelProto:
    """
        x ─► conv_a ─► relu_a ─┐
        x ─► conv_b ─► relu_b ─┴─► Concat ─► conv_c (32 -> 16) ─► y
    Concat feeds a quantized conv: both its inputs get Q/DQ with one shared scale.
    """
    na, ia = conv("conv_a", "x", "a")
    nb, ib = conv("conv_b", "x", "b")
    nc, ic = conv("conv_c", "cat", "y", cin=32)
    nodes = [
        na,
        nb,
        helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
        helper.make_node("Relu", ["b"], ["rb"], name="relu_b"),
        helper.make_node("Concat", ["ra", "rb"], ["cat"], name="concat", axis=1),
        nc,
    ]
    return _model(nodes, ia + ib + ic)


def pooling() -> onnx.ModelProto:
    """
        x ─► conv1 ─► relu ─► MaxPool ─► conv2 ─► y
    MaxPool's output is quantized for conv2, so its input is too: it runs INT8.
    """
    n1, i1 = conv("conv1", "x", "c1")
    n2, i2 = conv("conv2", "p", "y")
    nodes = [
        n1,
        helper.make_node("Relu", ["c1"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        n2,
    ]
    return _model(nodes, i1 + i2)


def pool_reshape_concat() -> onnx.ModelProto:
    """
        x ─► conv_a ─► a ─► MaxPool ─► p ─► Reshape [0, 32, 2, 4] ─► r ─┐
        x ─► conv_b (strides 4, 2) ─► b [batch, 16, 2, 4] ────────────────┴─► Concat ─► conv_c (48 -> 16) ─► y
    conv_c quantizes the Concat's output; the Concat shares one scale with its inputs, and that scale
    reaches back across the Reshape and the MaxPool to conv_a's output: a, p, r, b and cat, one scale.
    """
    na, ia = conv("conv_a", "x", "a")
    nb, ib = conv("conv_b", "x", "b")
    nb.attribute.append(helper.make_attribute("strides", [4, 2]))
    nc, ic = conv("conv_c", "cat", "y", cin=48)
    shape = numpy_helper.from_array(np.array([0, 32, 2, 4], np.int64), "shape")
    nodes = [
        na,
        helper.make_node("MaxPool", ["a"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p", "shape"], ["r"], name="reshape"),
        nb,
        helper.make_node("Concat", ["r", "b"], ["cat"], name="concat", axis=1),
        nc,
    ]
    return _model(nodes, ia + ib + ic + [shape])


def depthwise() -> onnx.ModelProto:
    """
        x ─► depthwise conv (16 groups) ─► relu ─► pointwise conv ─► y
    Depthwise weights [16, 1, 3, 3] quantize per output channel (axis 0).
    """
    nd, idw = conv("dw", "x", "d", group=16)
    npw, ipw = conv("pw", "r", "y", k=1)
    return _model([nd, helper.make_node("Relu", ["d"], ["r"], name="relu"), npw], idw + ipw)


def conv_transpose() -> onnx.ModelProto:
    """
        x ─► ConvTranspose (16 -> 16, stride 2) ─► y
    Weights are [Cin, Cout, k, k]: per-channel along axis 1.
    """
    node = helper.make_node("ConvTranspose", ["x", "ct.w"], ["y"], name="ct", strides=[2, 2], kernel_shape=[2, 2])
    return _model([node], [_w("ct.w", 16, 16, 2, 2)])


def gemm(trans_b: int) -> onnx.ModelProto:
    """
        x [batch, 16, 8, 8] ─► Flatten ─► Gemm (1024 -> 32, transB) ─► y
    transB=1: weight [N, K], axis 0; transB=0: weight [K, N], axis 1.
    """
    w = _w("fc.w", 32, 1024) if trans_b else _w("fc.w", 1024, 32)
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], name="fc", transB=trans_b),
    ]
    return _model(nodes, [w, numpy_helper.from_array(np.zeros(32, np.float32), "fc.b")], out_shape=("batch", 32))


def small_conv() -> onnx.ModelProto:
    """
        x ─► conv_small (16 -> 8) ─► relu ─► y
    8 output channels < min_channels (16): stays FP16, with the reason recorded.
    """
    n, i = conv("conv_small", "x", "c", cout=8)
    return _model([n, helper.make_node("Relu", ["c"], ["y"], name="relu")], i)


def attention() -> onnx.ModelProto:
    """
        x [batch, 16, 32] ─► MatMul Wq ─► q ──────────────┐
                         ─► MatMul Wk ─► k ─► Transpose ─┴► MatMul ─► Softmax ─► MatMul ─► y
                         ─► MatMul Wv ─► v ─────────────────────────────────────┘
    Expected: both inputs of both batched MatMuls quantized (the Softmax output
    included), the projection MatMuls' weights per-channel on axis 1, and no
    Q/DQ on the Softmax's input.
    """
    inits = [_w("wq", 32, 32), _w("wk", 32, 32), _w("wv", 32, 32)]
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="proj_q"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="proj_k"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="proj_v"),
        helper.make_node("Transpose", ["k"], ["kt"], name="k_t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
        helper.make_node("Softmax", ["scores"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["y"], name="av"),
    ]
    return _model(nodes, inits, in_shape=("batch", 16, 32), out_shape=("batch", 16, 32))


def mlp_gelu() -> onnx.ModelProto:
    """
        x [batch, 16, 32] ─► MatMul W1 ─► h ─► Div √2 ─► Erf ─► Add 1 ─► Mul 0.5 ─► Mul ─► g ─► MatMul W2 ─► y
                                         └────────────────────────────────────────►─┘
    GELU exactly as PyTorch exports it at opset 19. ONNX Runtime's CPU graph
    fuses it into one float Gelu; only h and g (and x) need ranges.
    """
    consts = [
        numpy_helper.from_array(np.array(np.sqrt(2.0), np.float32), "sqrt2"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Div", ["h", "sqrt2"], ["h_s"], name="gelu_div"),
        helper.make_node("Erf", ["h_s"], ["h_erf"], name="gelu_erf"),
        helper.make_node("Add", ["h_erf", "one"], ["h_1p"], name="gelu_add"),
        helper.make_node("Mul", ["half", "h_1p"], ["h_half"], name="gelu_half"),
        helper.make_node("Mul", ["h", "h_half"], ["g"], name="gelu"),
        helper.make_node("MatMul", ["g", "w2"], ["y"], name="fc2"),
    ]
    return _model(nodes, [_w("w1", 32, 64), _w("w2", 64, 32), *consts], ("batch", 16, 32), ("batch", 16, 32))


def reshape_transpose() -> onnx.ModelProto:
    """
        x ─► conv ─► c ─► Reshape [b, 16, 64] ─► flat ─► Transpose ─► y
    Calibration: flat and y hold exactly c's values, so they share c's statistics.
    """
    n, inits = conv("conv", "x", "c")
    inits.append(numpy_helper.from_array(np.array([0, 16, 64], np.int64), "shape"))
    nodes = [
        n,
        helper.make_node("Reshape", ["c", "shape"], ["flat"], name="reshape"),
        helper.make_node("Transpose", ["flat"], ["y"], name="transpose", perm=[0, 2, 1]),
    ]
    return _model(nodes, inits)


def inputs_for(model: onnx.ModelProto, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic smooth inputs (sinusoids), not noise."""
    dims = [d.dim_value or batch for d in model.graph.input[0].type.tensor_type.shape.dim]
    n = int(np.prod(dims))
    return {"x": np.sin(np.arange(n, dtype=np.float32) * 0.37 + seed).reshape(dims).astype(np.float32)}


def patch_embedding() -> onnx.ModelProto:
    """
        x [batch, 3, 16, 16] ─► patch (Conv 3 -> 32, 8x8 kernel, stride 8) ─► stem (Conv 3 -> 16, 1x1) ...
        x ─► stem (Conv 3 -> 16, 1x1) ─► y2
    ViT's patch embedding: 3 input channels but K = 3 x 64 = 192, a real GEMM: INT8.
    The 1x1 stem from 3 channels has K = 3: too small, stays FP16.
    """
    patch = helper.make_node("Conv", ["x", "patch.w"], ["y"], name="patch", kernel_shape=[8, 8], strides=[8, 8])
    stem = helper.make_node("Conv", ["x", "stem.w"], ["y2"], name="stem", kernel_shape=[1, 1])
    graph = helper.make_graph(
        [patch, stem],
        "patch",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32, 2, 2]),
            helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["batch", 16, 16, 16]),
        ],
        [_w("patch.w", 32, 3, 8, 8), _w("stem.w", 16, 3, 1, 1)],
    )
    return onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=9)
    )


def tied_lm_head() -> onnx.ModelProto:
    """
        x [batch, 16, 32] ─► MatMul ─► y [batch, 16, 64]
                               ▲
        embedding [64, 32] ─► Transpose ─► [32, 64]   (GPT-2's LM head reuses the token embedding)
    The Transpose output is made of constants only: a weight, per-channel int8 on axis 1.
    """
    nodes = [
        helper.make_node("Transpose", ["embedding"], ["embedding_t"], name="tie", perm=[1, 0]),
        helper.make_node("MatMul", ["x", "embedding_t"], ["y"], name="lm_head"),
    ]
    return _model(nodes, [_w("embedding", 64, 32)], in_shape=("batch", 16, 32), out_shape=("batch", 16, 64))


def conv_transpose_bias() -> onnx.ModelProto:
    """
        x ─► ConvTranspose (16 -> 16, stride 2, bias) ─► y      (a UNet's up-sampling)
    Weight per-channel on axis 1; ONNX Runtime's quantizer stores the bias as int32 with
    per-channel scales along its one axis, 0.
    """
    node = helper.make_node(
        "ConvTranspose", ["x", "ct.w", "ct.b"], ["y"], name="ct", strides=[2, 2], kernel_shape=[2, 2]
    )
    bias = numpy_helper.from_array(np.linspace(-0.5, 0.5, 16).astype(np.float32), "ct.b")
    return _model([node], [_w("ct.w", 16, 16, 2, 2), bias])


def pre_norm_blocks() -> onnx.ModelProto:
    """
        x ─► LN ─► MatMul w1 ─► a ─► Add ─► r1 ─► LN ─► MatMul w2 ─► b ─► Add ─► r2 ─► LN ─► y
        └──────────────────────────►─┘      └─────────────────────────────►─┘
    Two pre-norm transformer blocks: add1 and add2 are the residual stream (each feeds a LN).
    """
    ones, zeros = np.ones(32, np.float32), np.zeros(32, np.float32)
    inits = [
        _w("w1", 32, 32),
        _w("w2", 32, 32),
        numpy_helper.from_array(ones, "gamma"),
        numpy_helper.from_array(zeros, "beta"),
    ]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n0"], name="ln0", axis=-1),
        helper.make_node("MatMul", ["n0", "w1"], ["a"], name="fc1"),
        helper.make_node("Add", ["x", "a"], ["r1"], name="add1"),
        helper.make_node("LayerNormalization", ["r1", "gamma", "beta"], ["n1"], name="ln1", axis=-1),
        helper.make_node("MatMul", ["n1", "w2"], ["b"], name="fc2"),
        helper.make_node("Add", ["r1", "b"], ["r2"], name="add2"),
        helper.make_node("LayerNormalization", ["r2", "gamma", "beta"], ["y"], name="ln2", axis=-1),
    ]
    return _model(nodes, inits, in_shape=("batch", 16, 32), out_shape=("batch", 16, 32))


def position_embedding() -> onnx.ModelProto:
    """
        x [batch, 16, 32] ─► Add (pos [16, 32]) ─► e ─► LN ─► MatMul w ─► y
    A ViT's embedding: row 0 of x is the class token (zero at initialisation), so row 0 of e is
    the small position embedding alone, beside patch rows many times larger; the LayerNorm then
    normalizes each row on its own scale.
    """
    rng = np.random.default_rng(5)
    inits = [
        numpy_helper.from_array((0.02 * rng.standard_normal((16, 32))).astype(np.float32), "pos"),
        numpy_helper.from_array(np.ones(32, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(32, np.float32), "beta"),
        _w("w", 32, 32),
    ]
    nodes = [
        helper.make_node("Add", ["x", "pos"], ["e"], name="embed"),
        helper.make_node("LayerNormalization", ["e", "gamma", "beta"], ["n"], name="ln", axis=-1),
        helper.make_node("MatMul", ["n", "w"], ["y"], name="fc"),
    ]
    return _model(nodes, inits, in_shape=("batch", 16, 32), out_shape=("batch", 16, 32))


def masked_attention_scores() -> onnx.ModelProto:
    """
        x [batch, 8, 16] ─► MatMul w [16, 8] ─► s ─► Add ◄─ mask [batch, 1, 8] ─► a ─► Softmax ─► MatMul v [8, 16] ─► y
    Attention scores plus a padding mask (0 where a position is kept, float32's lowest where it
    is padding, as transformers builds it), into a Softmax.
    """
    inits = [_w("w", 16, 8), _w("v", 8, 16)]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["s"], name="scores"),
        helper.make_node("Add", ["s", "mask"], ["a"], name="masked"),
        helper.make_node("Softmax", ["a"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["y"], name="mix"),
    ]
    graph = helper.make_graph(
        nodes,
        "masked_attention_scores",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 16]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1, 8]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 16])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=9)
    return onnx.shape_inference.infer_shapes(model)


def fp16_qdq_conv_bias() -> onnx.ModelProto:
    """A TensorRT-target Q/DQ graph as our quantizer writes one, cut to one 1x1 conv:

        x ─► Cast fp16 ─► Q/DQ (s_x = 1/127) ─► Conv 1x1 ─► Relu ─► Q/DQ (s_y = 2/127) ─► Cast fp32 ─► y
                                                  ▲    ▲
                    W = 64·I int8 ─► DQ (s_w per channel)    b = 1.0 (FP16)

    Channel 0 has s_w = 2^-12 (its weight is 1/64), the others 2^-6 (weight 1). ONNX Runtime's
    WeightBiasQuantization rewrites b as DQ(int32(round(b / (s_x·s_w)))) computed in the scales'
    dtype: for channel 0, 1.0 / (2^-12 / 127) = 520192 overflows FP16 to inf, whose int32 cast is
    garbage. Read as written, y[:, 0] = relu(x/64 + 1) ≈ 1 and y[:, c] = relu(x + 1).
    """
    s_w = np.full(16, 2.0**-6, np.float16)
    s_w[0] = 2.0**-12
    consts = [
        numpy_helper.from_array(np.array(1 / 127, np.float16), "s_x"),
        numpy_helper.from_array(np.array(2 / 127, np.float16), "s_y"),
        numpy_helper.from_array(np.array(0, np.int8), "zp"),
        numpy_helper.from_array((64 * np.eye(16)).astype(np.int8).reshape(16, 16, 1, 1), "w_int8"),
        numpy_helper.from_array(s_w, "s_w"),
        numpy_helper.from_array(np.zeros(16, np.int8), "zp_w"),
        numpy_helper.from_array(np.ones(16, np.float16), "b"),
    ]
    nodes = [
        helper.make_node("Cast", ["x"], ["x16"], name="cast_in", to=TensorProto.FLOAT16),
        helper.make_node("QuantizeLinear", ["x16", "s_x", "zp"], ["xq"], name="q_x"),
        helper.make_node("DequantizeLinear", ["xq", "s_x", "zp"], ["xd"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w_int8", "s_w", "zp_w"], ["w"], name="dq_w", axis=0),
        helper.make_node("Conv", ["xd", "w", "b"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("QuantizeLinear", ["r", "s_y", "zp"], ["rq"], name="q_y"),
        helper.make_node("DequantizeLinear", ["rq", "s_y", "zp"], ["y16"], name="dq_y"),
        helper.make_node("Cast", ["y16"], ["y"], name="cast_out", to=TensorProto.FLOAT),
    ]
    return _model(nodes, consts, out_shape=("batch", 16, 8, 8))


def conv_gemm(dead_channel: bool = False) -> onnx.ModelProto:
    """
        x ─► conv1 ─► relu1 ─► conv2 ─► relu2 ─► Flatten ─► fc1 (1024 -> 32) ─► relu3 ─► fc2 (32 -> 16) ─► y
    conv1 and fc1 each end at the Q of a quantized consumer (through a Relu): the pattern ONNX
    Runtime's WeightBiasQuantization rewrites. ``dead_channel``: output channel 0 of conv1 and
    of fc1 has weights 1000x smaller and bias 1.0, as BatchNorm folding leaves a near-dead
    channel; its weight scale hits the FP16 floor and b / (s_x·s_w) overflows FP16.
    """
    n1, i1 = conv("conv1", "x", "c1")
    n2, i2 = conv("conv2", "r1", "c2")
    fc1_w, fc2_w = _w("fc1.w", 32, 1024), _w("fc2.w", 16, 32)
    biases = {
        "conv1.b": _w("conv1.b", 16, seed=1),
        "conv2.b": _w("conv2.b", 16, seed=1),
        "fc1.b": _w("fc1.b", 32, seed=1),
        "fc2.b": _w("fc2.b", 16, seed=1),
    }
    inits = {i.name: numpy_helper.to_array(i).copy() for i in [*i1, *i2, fc1_w, fc2_w]}
    inits.update({k: 0.1 * numpy_helper.to_array(v) for k, v in biases.items()})
    if dead_channel:
        for layer in ("conv1", "fc1"):
            inits[f"{layer}.w"][0] *= 1e-3
            inits[f"{layer}.b"][0] = 1.0
    nodes = [
        n1,
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        n2,
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc1.w", "fc1.b"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r3"], name="relu3"),
        helper.make_node("Gemm", ["r3", "fc2.w", "fc2.b"], ["y"], name="fc2", transB=1),
    ]
    tensors = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()]
    return _model(nodes, tensors, out_shape=("batch", 16))


def constant_branch() -> onnx.ModelProto:
    """
        x [batch, 16, 32] ─► MatMul w ─► h ──────────────────────────────► Add ─► y
        x ─► Shape ─► ConstantOfShape(0) ─► Log (-inf) ─► Mul 0.5 ─► Max -1 ─┘
    The lower branch depends on x's shape only (T5's relative-position buckets take a log(0) so):
    the same for every input, with -inf inside; nothing there to calibrate or quantize.
    """
    consts = [
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array(-1.0, np.float32), "floor"),
    ]
    zero = numpy_helper.from_array(np.zeros(1, np.float32))
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("ConstantOfShape", ["shape"], ["zeros"], name="zeros", value=zero),
        helper.make_node("Log", ["zeros"], ["log"], name="log"),
        helper.make_node("Mul", ["log", "half"], ["scaled"], name="scale"),
        helper.make_node("Max", ["scaled", "floor"], ["bias"], name="clamp"),
        helper.make_node("Add", ["h", "bias"], ["y"], name="add"),
    ]
    return _model(nodes, [_w("w", 32, 32), *consts], in_shape=("batch", 16, 32), out_shape=("batch", 16, 32))


def two_distributions(
    behind_identity: bool = False, names: tuple[str, str] = ("outliers", "laplace")
) -> onnx.ModelProto:
    """
        outliers [batch, 64]     ─► MatMul (W [64, 32])              ─► y_outliers
        laplace  [batch, 8, 4, 4] ─► Conv 3x3 (8 -> 16, pads 1, bias) ─► y_laplace
    Two activations for ``method = "auto"`` to choose a range for, each read by one
    weighted layer; the test feeds them data with different distributions (``names`` renames
    the two inputs, their weights and outputs follow). With ``behind_identity`` each input
    passes an Identity first (``outliers ─► Identity ─► o``), so the layers read activations
    the calibration passes must keep, not graph inputs.
    """
    mm, cv = names
    inits = [_w(f"w_{mm}", 64, 32), _w(f"w_{cv}", 16, 8, 3, 3), _w(f"b_{cv}", 16)]
    read = {mm: "o", cv: "l"} if behind_identity else {mm: mm, cv: cv}
    nodes = [helper.make_node("Identity", [src], [dst]) for src, dst in read.items() if src != dst]
    nodes += [
        helper.make_node("MatMul", [read[mm], f"w_{mm}"], [f"y_{mm}"], name="matmul"),
        helper.make_node("Conv", [read[cv], f"w_{cv}", f"b_{cv}"], [f"y_{cv}"], name="conv", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "two_distributions",
        [
            helper.make_tensor_value_info(mm, TensorProto.FLOAT, ["batch", 64]),
            helper.make_tensor_value_info(cv, TensorProto.FLOAT, ["batch", 8, 4, 4]),
        ],
        [
            helper.make_tensor_value_info(f"y_{mm}", TensorProto.FLOAT, ["batch", 32]),
            helper.make_tensor_value_info(f"y_{cv}", TensorProto.FLOAT, ["batch", 16, 4, 4]),
        ],
        inits,
    )
    return onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=9)
    )


def _layernorm_with_outliers(channels: int, outliers: tuple[int, ...], factor: float) -> list[onnx.TensorProto]:
    """LayerNorm parameters whose ``outliers`` channels come out ``factor`` times wider, as in a
    trained transformer (gamma and beta both scaled; the readers' rows for them ``_damped``)."""
    rng = np.random.default_rng(7)
    gamma = (1.0 + 0.2 * rng.standard_normal(channels)).astype(np.float32)
    beta = (0.1 * rng.standard_normal(channels)).astype(np.float32)
    gamma[list(outliers)] *= factor
    beta[list(outliers)] *= factor
    return [numpy_helper.from_array(gamma, "ln.gamma"), numpy_helper.from_array(beta, "ln.beta")]


def layernorm_matmul(factor: float = 60.0, constant_nodes: bool = False) -> onnx.ModelProto:
    """
        x [batch, 8, 32] ─► LN (channels 3 and 17 x factor) ─► n ─► MatMul fc [32, 48] ─► y
    An MLP's first Linear after a pre-norm: SmoothQuant folds 1/s into gamma and beta, s into fc's rows.
    ``constant_nodes``: gamma, beta and fc's weight are Constant nodes, as the TorchScript exporter writes.
    """
    nodes = [
        helper.make_node("LayerNormalization", ["x", "ln.gamma", "ln.beta"], ["n"], name="ln", axis=-1),
        helper.make_node("MatMul", ["n", "fc.w"], ["y"], name="fc"),
    ]
    inits = [*_layernorm_with_outliers(32, (3, 17), factor), _damped(_w("fc.w", 32, 48), (3, 17), 0, factor)]
    if constant_nodes:
        nodes[:0] = [helper.make_node("Constant", [], [i.name], name=f"{i.name}.const", value=i) for i in inits]
        inits = []
    return _model(nodes, inits, in_shape=("batch", 8, 32), out_shape=("batch", 8, 48))


def layernorm_qkv(factor: float = 60.0) -> onnx.ModelProto:
    """
                                  ┌─► MatMul q [32, 24] ──────────────┐
        x [batch, 32] ─► LN ─► n ─┼─► Gemm k (transB, [24, 32]) ──────┼─► Concat ─► y [batch, 72]
                                  └─► Gemm v ([32, 24], bias) ────────┘
    Q, K and V read one LayerNorm output: one s for all three (max|W_j| over their rows j),
    whichever axis each weight keeps its input channels on.
    """
    nodes = [
        helper.make_node("LayerNormalization", ["x", "ln.gamma", "ln.beta"], ["n"], name="ln", axis=-1),
        helper.make_node("MatMul", ["n", "q.w"], ["q"], name="q"),
        helper.make_node("Gemm", ["n", "k.w"], ["k"], name="k", transB=1),
        helper.make_node("Gemm", ["n", "v.w", "v.b"], ["v"], name="v"),
        helper.make_node("Concat", ["q", "k", "v"], ["y"], name="qkv", axis=-1),
    ]
    bias = numpy_helper.from_array(np.linspace(-1, 1, 24).astype(np.float32), "v.b")
    rows = (5, 20, 31)
    weights = [_damped(_w("q.w", 32, 24), rows, 0, factor), _damped(_w("k.w", 24, 32), rows, 1, factor)]
    weights.append(_damped(_w("v.w", 32, 24), rows, 0, factor))
    inits = [*_layernorm_with_outliers(32, rows, factor), *weights, bias]
    return _model(nodes, inits, in_shape=("batch", 32), out_shape=("batch", 72))


def _damped(weight: onnx.TensorProto, channels: tuple[int, ...], axis: int, factor: float) -> onnx.TensorProto:
    """``weight`` with its input ``channels`` (along ``axis``) divided by ``factor``: a trained layer
    reading outlier channels gives them small weights, so they do not swamp its output."""
    w = numpy_helper.to_array(weight).copy()
    index = [slice(None)] * w.ndim
    index[axis] = list(channels)
    w[tuple(index)] /= factor
    return numpy_helper.from_array(w, weight.name)


def outlier_chain(scale: float = 1000.0) -> onnx.ModelProto:
    """
        x ─► conv1 ─► relu1 ─► conv2 ─► relu2 ─► conv3 ─► y
    conv1's output channel 3 is ``scale`` times larger (its weights and bias) and conv2's weights
    reading channel 3 are ``scale`` times smaller: the same function as without, but conv2's input
    range is set by channel 3 alone, so per-tensor int8 leaves its other 15 channels at a level or
    two. conv2 is the one layer int8 wrecks; conv1 and conv3 read well-spread tensors.
    """
    n1, i1 = conv("conv1", "x", "c1")
    n2, i2 = conv("conv2", "r1", "c2")
    n3, i3 = conv("conv3", "r2", "y")
    w1, b1, w2 = (numpy_helper.to_array(t).copy() for t in (i1[0], i1[1], i2[0]))
    b1 += 0.1  # a positive bias keeps channel 3 alive through relu1
    w1[3] *= scale
    b1[3] *= scale
    w2[:, 3] /= scale
    i1 = [numpy_helper.from_array(w1, "conv1.w"), numpy_helper.from_array(b1, "conv1.b")]
    i2 = [numpy_helper.from_array(w2, "conv2.w"), i2[1]]
    nodes = [
        n1,
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        n2,
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        n3,
    ]
    return _model(nodes, i1 + i2 + i3)


def slow_and_fast_regions(channels: int = 4, size: int = 32, features: int = 1024) -> onnx.ModelProto:
    """
        x [b, 4, 32, 32] ─► conv1 (1x1, 4->4) ─► PReLU ─► conv2 (1x1, 4->4) ─► PReLU ─►
        ─► Flatten [b, 4096] ─► fc1 (4096x1024) ─► Relu ─► fc2 (1024x1024) ─► y [b, 1024]
    Two kinds of region: tiny Convs whose int8 kernels gain nothing while the Q/DQ around each
    PReLU (ONNX Runtime runs it in float) cost a pass over a large activation each; and wide
    Gemms whose int8 kernels read a quarter of the float weights' bytes.
    """
    flat = channels * size * size
    slope = numpy_helper.from_array(np.full((channels, 1, 1), 0.25, np.float32), "slope")
    n1, i1 = conv("conv1", "x", "c1", channels, channels, k=1)
    n2, i2 = conv("conv2", "p1", "c2", channels, channels, k=1)
    nodes = [
        n1,
        helper.make_node("PRelu", ["c1", "slope"], ["p1"], name="prelu1"),
        n2,
        helper.make_node("PRelu", ["c2", "slope"], ["p2"], name="prelu2"),
        helper.make_node("Flatten", ["p2"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc1.w", "fc1.b"], ["g1"], name="fc1", transB=1),
        helper.make_node("Relu", ["g1"], ["r1"], name="relu"),
        helper.make_node("Gemm", ["r1", "fc2.w", "fc2.b"], ["y"], name="fc2", transB=1),
    ]
    inits = [
        slope,
        *i1,
        *i2,
        _w("fc1.w", features, flat),
        numpy_helper.from_array(np.zeros(features, np.float32), "fc1.b"),
        _w("fc2.w", features, features),
        numpy_helper.from_array(np.zeros(features, np.float32), "fc2.b"),
    ]
    return _model(nodes, inits, ("batch", channels, size, size), ("batch", features))


def float_island() -> onnx.ModelProto:
    """
        x ─► BatchNormalization ─► Mul (x gamma) ─► Sub (- beta) ─► conv ─► y
    The Mul is an op ONNX Runtime's CPU graph can run in uint8, but nothing beside it can: quantized,
    it would sit between a Q after the float BatchNorm and a DQ before the float Sub. The conv reads
    Q/DQ as ever.
    """
    channels = 16
    ones, zeros = np.ones(channels, np.float32), np.zeros(channels, np.float32)
    rng = np.random.default_rng(3)
    nconv, iconv = conv("conv", "s", "y")
    nodes = [
        helper.make_node("BatchNormalization", ["x", "bn.s", "bn.b", "bn.m", "bn.v"], ["bn"], name="bn"),
        helper.make_node("Mul", ["bn", "gamma"], ["scaled"], name="scale"),
        helper.make_node("Sub", ["scaled", "beta"], ["s"], name="shift"),
        nconv,
    ]
    inits = [
        numpy_helper.from_array(ones * 1.5, "bn.s"),
        numpy_helper.from_array(zeros + 0.1, "bn.b"),
        numpy_helper.from_array(zeros, "bn.m"),
        numpy_helper.from_array(ones, "bn.v"),
        numpy_helper.from_array(rng.uniform(0.5, 2.0, (1, channels, 1, 1)).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.uniform(-0.5, 0.5, (1, channels, 1, 1)).astype(np.float32), "beta"),
        *iconv,
    ]
    return _model(nodes, inits)


# The normalisations exporters write, each spelled in ops (norm input r, norm output n): the CPU
# graph must find every one by its pattern and keep its residual sum float.
def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _rms_norm(r: str, n: str, divide: bool) -> tuple[list, list]:
    """r ─► Pow 2 ─► ReduceMean ─► Add eps ─► Sqrt ─► Reciprocal ─► Mul r ─► Mul gamma ─► n
    (``divide``: Sqrt ─► Div(r, ·) in place of Reciprocal and Mul), as Llama, Qwen2 and T5 export."""
    nodes = [
        helper.make_node("Pow", [r, "two"], [f"{r}.sq"], name=f"{r}.pow"),
        helper.make_node("ReduceMean", [f"{r}.sq", "last"], [f"{r}.ms"], name=f"{r}.mean", keepdims=1),
        helper.make_node("Add", [f"{r}.ms", "eps"], [f"{r}.mse"], name=f"{r}.eps"),
        helper.make_node("Sqrt", [f"{r}.mse"], [f"{r}.rt"], name=f"{r}.sqrt"),
    ]
    if divide:
        nodes.append(helper.make_node("Div", [r, f"{r}.rt"], [f"{r}.nr"], name=f"{r}.div"))
    else:
        nodes.append(helper.make_node("Reciprocal", [f"{r}.rt"], [f"{r}.inv"], name=f"{r}.inv"))
        nodes.append(helper.make_node("Mul", [r, f"{r}.inv"], [f"{r}.nr"], name=f"{r}.scale"))
    nodes.append(helper.make_node("Mul", [f"{r}.nr", "gamma"], [n], name=f"{r}.gamma"))
    inits = [_const("two", np.float32(2.0)), _const("last", np.array([-1], np.int64)), _const("eps", np.float32(1e-6))]
    return nodes, inits


def _layer_norm_ops(r: str, n: str) -> tuple[list, list]:
    """r ─► ReduceMean ─► Sub(r, ·) ─► c ─► (RMS of c, Div) ─► Mul gamma ─► Add beta ─► n"""
    rms, inits = _rms_norm(f"{r}.c", f"{r}.scaled", divide=True)
    nodes = [
        helper.make_node("ReduceMean", [r, "last"], [f"{r}.mean"], name=f"{r}.centre_mean", keepdims=1),
        helper.make_node("Sub", [r, f"{r}.mean"], [f"{r}.c"], name=f"{r}.centre"),
        *rms,
        helper.make_node("Add", [f"{r}.scaled", "beta"], [n], name=f"{r}.beta"),
    ]
    return nodes, inits


def _no_norm(r: str, n: str) -> tuple[list, list]:
    """r ─► Mul gamma ─► Add beta ─► n (MobileBERT's NoNorm: elementwise, no statistics)"""
    nodes = [
        helper.make_node("Mul", [r, "gamma"], [f"{r}.scaled"], name=f"{r}.gamma"),
        helper.make_node("Add", [f"{r}.scaled", "beta"], [n], name=f"{r}.beta"),
    ]
    return nodes, []


STREAM_NORMS = {"rms_reciprocal": lambda r, n: _rms_norm(r, n, False), "rms_div": lambda r, n: _rms_norm(r, n, True)}
STREAM_NORMS |= {"layer_norm_ops": _layer_norm_ops, "no_norm": _no_norm}


def norm_stream(kind: str) -> onnx.ModelProto:
    """
        x [batch, 16, 32] ─► NORM ─► n0 ─► MatMul w1 ─► a ─► Add ─► r ─► NORM ─► n ─► MatMul w2 ─► y
        └─────────────────────────────────────────────────►─┘ (the residual)
    A pre-norm block; NORM is one of ``STREAM_NORMS``, spelled in elementwise ops. Row 0 of x is tiny
    beside the others (a class token) and a few channels are outliers: quantized per tensor, the
    stream x and r would round that row away.
    """
    rng = np.random.default_rng(7)
    first, first_inits = STREAM_NORMS[kind]("x", "n0")
    second, second_inits = STREAM_NORMS[kind]("r", "n")
    shared = {i.name: i for i in (*first_inits, *second_inits)}
    inits = [
        _w("w1", 32, 32),
        _w("w2", 32, 32),
        _const("gamma", (1.0 + 0.1 * rng.standard_normal(32)).astype(np.float32)),
        _const("beta", (0.1 * rng.standard_normal(32)).astype(np.float32)),
        *shared.values(),
    ]
    nodes = [
        *first,
        helper.make_node("MatMul", ["n0", "w1"], ["a"], name="fc1"),
        helper.make_node("Add", ["x", "a"], ["r"], name="residual"),
        *second,
        helper.make_node("MatMul", ["n", "w2"], ["y"], name="fc2"),
    ]
    return _model(nodes, inits, in_shape=("batch", 16, 32), out_shape=("batch", 16, 32))


def stream_inputs(model: onnx.ModelProto, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A residual stream's values: rows of scale 3 with four outlier channels 20x larger, and a
    first row (the class token; the first channel of an image) 100x smaller than the rest."""
    rng = np.random.default_rng(seed)
    dims = [d.dim_value or batch for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = 3 * rng.standard_normal(dims)
    channel_axis = 1 if len(dims) == 4 else -1
    outliers = [slice(None)] * len(dims)
    outliers[channel_axis] = slice(0, 4)
    x[tuple(outliers)] *= 20.0
    x[:, 0] *= 0.01
    return {"x": x.astype(np.float32)}


def group_norm_stream() -> onnx.ModelProto:
    """
        x [batch, 16, 8, 8] ─► Conv ─► a ─► Add ─► r ─► Reshape [0, 4, -1] ─► InstanceNormalization
        └─────────────────────────────►─┘          ─► Reshape [0, 16, 8, 8] ─► Mul gamma ─► Add beta ─► n
                                                   n ─► Conv ─► y
    GroupNorm with four groups as PyTorch exports it (PoolFormerV2's norms, with one group).
    """
    rng = np.random.default_rng(8)
    n1, i1 = conv("conv1", "x", "a")
    n2, i2 = conv("conv2", "n", "y")
    inits = [
        *i1,
        *i2,
        _const("groups", np.array([0, 4, -1], np.int64)),
        _const("channels", np.array([0, 16, 8, 8], np.int64)),
        _const("in_scale", np.ones(4, np.float32)),
        _const("in_bias", np.zeros(4, np.float32)),
        _const("gamma", (1.0 + 0.1 * rng.standard_normal((16, 1, 1))).astype(np.float32)),
        _const("beta", (0.1 * rng.standard_normal((16, 1, 1))).astype(np.float32)),
    ]
    nodes = [
        n1,
        helper.make_node("Add", ["x", "a"], ["r"], name="residual"),
        helper.make_node("Reshape", ["r", "groups"], ["g"], name="to_groups"),
        helper.make_node("InstanceNormalization", ["g", "in_scale", "in_bias"], ["gn"], name="instance_norm"),
        helper.make_node("Reshape", ["gn", "channels"], ["gc"], name="to_channels"),
        helper.make_node("Mul", ["gc", "gamma"], ["gs"], name="gamma"),
        helper.make_node("Add", ["gs", "beta"], ["n"], name="beta"),
        n2,
    ]
    return _model(nodes, inits)


def residual_to_output(select_class_token: bool) -> onnx.ModelProto:
    """
        x [batch, 16, 32] ─► LN ─► MatMul w ─► a ─► Add ─► r ─► y                  (a graph output)
        └───────────────────────────────────────►─┘            or ─► Gather 0 on axis 1 ─► y
    The last residual sum of an encoder with no final norm (CLIP's last_hidden_state), or the class
    token's row selected from it (its pooler_output, before the post-LayerNorm).
    """
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], name="ln", axis=-1),
        helper.make_node("MatMul", ["n", "w"], ["a"], name="fc"),
        helper.make_node("Add", ["x", "a"], ["r" if select_class_token else "y"], name="residual"),
    ]
    inits = [_w("w", 32, 32), _const("gamma", np.ones(32, np.float32)), _const("beta", np.zeros(32, np.float32))]
    if select_class_token:
        nodes.append(helper.make_node("Gather", ["r", "first"], ["y"], name="class_token", axis=1))
        inits.append(_const("first", np.array(0, np.int64)))
    shape = ("batch", 32) if select_class_token else ("batch", 16, 32)
    return _model(nodes, inits, in_shape=("batch", 16, 32), out_shape=shape)


def scale_shift_after_matmul() -> onnx.ModelProto:
    """
        x [batch, 16, 32] ─► MatMul w ─► a ─► Mul gamma ─► Add beta ─► y
    A scale and shift of constants on a layer's output, not on a residual sum: no NoNorm.
    """
    inits = [_w("w", 32, 32), _const("gamma", np.full(32, 0.5, np.float32)), _const("beta", np.ones(32, np.float32))]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"], name="fc"),
        helper.make_node("Mul", ["a", "gamma"], ["s"], name="scale"),
        helper.make_node("Add", ["s", "beta"], ["y"], name="shift"),
    ]
    return _model(nodes, inits, in_shape=("batch", 16, 32), out_shape=("batch", 16, 32))


def embedded_stream() -> onnx.ModelProto:
    """
        ids [batch, 16] ─► Gather(table [100, 32]) ─► e ─► LN ─► MatMul w ─► a ─► Add ─► r ─► LN ─► y
                                                     └──────────────────────────►─┘
    A token embedding straight into the residual stream (PyTorch's TransformerEncoder behind an
    nn.Embedding): the Gather moves the stream into its first Add and norm.
    """
    rng = np.random.default_rng(9)
    table = 3 * rng.standard_normal((100, 32))
    table[:, :4] *= 20.0  # outlier channels, as a trained embedding has
    inits = [
        _const("table", table.astype(np.float32)),
        _w("w", 32, 32),
        _const("gamma", np.ones(32, np.float32)),
        _const("beta", np.zeros(32, np.float32)),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"], name="embedding"),
        helper.make_node("LayerNormalization", ["e", "gamma", "beta"], ["n"], name="ln0", axis=-1),
        helper.make_node("MatMul", ["n", "w"], ["a"], name="fc"),
        helper.make_node("Add", ["e", "a"], ["r"], name="residual"),
        helper.make_node("LayerNormalization", ["r", "gamma", "beta"], ["y"], name="ln1", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16, 32])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=9)
    return onnx.shape_inference.infer_shapes(model)


def batchnorm_from_constants(variance: float = 1e8) -> onnx.ModelProto:
    """
        x ─► conv ─► BatchNormalization ─► y
                       ▲ ▲ ▲ ▲
        Constant nodes: scale, bias, mean, var (channel 0's var = ``variance``)
    No initializers, every weight a nameless Constant node, as Paddle2ONNX writes them (RapidOCR's
    detector). Channel 0's running variance is beyond FP16's range and its scale as large, so
    the BatchNorm is ordinary in FP32 and clipped to nonsense by an FP16 constant.
    """
    n_conv, (w, b) = conv("conv", "x", "c")
    scale = np.ones(16, np.float32)
    scale[0] = np.sqrt(variance)  # keeps channel 0's output near unit scale
    var = np.ones(16, np.float32)
    var[0] = variance
    values = {
        "conv.w": w,
        "conv.b": b,
        "bn.scale": numpy_helper.from_array(scale),
        "bn.bias": numpy_helper.from_array(np.zeros(16, np.float32)),
    }
    values["bn.mean"] = numpy_helper.from_array(np.zeros(16, np.float32))
    values["bn.var"] = numpy_helper.from_array(var)
    constants = [helper.make_node("Constant", [], [name], value=tensor) for name, tensor in values.items()]
    bn = helper.make_node("BatchNormalization", ["c", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["y"], name="bn")
    return _model([*constants, n_conv, bn], [])


def class_token() -> onnx.ModelProto:
    """
        x [batch, 4, 16] ─► fc1 (MatMul 16x16) ─► Mul by rows [0.1, 10, 10, 10] ─► s ─► Gather row 0 (axis 1) ─► g
        g [batch, 16] ─► fc2 (MatMul 16x16) ─► y [batch, 16]
    A ViT's class token: the row the head reads is a hundred times smaller than the rest, so a
    scale carried from all rows onto it would leave it a few int8 steps.
    """
    rows = numpy_helper.from_array(np.array([[0.1], [10.0], [10.0], [10.0]], np.float32), "rows")
    index = numpy_helper.from_array(np.array(0, np.int64), "index")
    nodes = [
        helper.make_node("MatMul", ["x", "fc1.w"], ["h"], name="fc1"),
        helper.make_node("Mul", ["h", "rows"], ["s"], name="scale_rows"),
        helper.make_node("Gather", ["s", "index"], ["g"], name="class_token", axis=1),
        helper.make_node("MatMul", ["g", "fc2.w"], ["y"], name="fc2"),
    ]
    return _model(nodes, [_w("fc1.w", 16, 16), _w("fc2.w", 16, 16), rows, index], ("batch", 4, 16), ("batch", 16))


def stacked_states_head() -> onnx.ModelProto:
    """
        x [batch, 16] ─► MatMul wa ─► Tanh ─► a (about +-0.2) ──────────────┐
        x ─────────────► MatMul wb ─► Flatten ─► Tanh ─► b (about +-1) ───┴► Concat ─► cat [batch, 32]
        cat ─► fc (Gemm 32 -> 32) ─► Relu ─► e ─► ReduceL2 ─► n
                                             e ──────────────► Div (e / n) ─► y [batch, 32]
    resemblyzer's speaker encoder in small: states of different ranges stacked by a Concat, a Linear
    layer, then a Relu and an L2 normalisation that run float; and MatMuls read by float Tanhs,
    one through a Flatten.
    """
    nodes = [
        helper.make_node("MatMul", ["x", "wa"], ["pa"], name="proj_a"),
        helper.make_node("Tanh", ["pa"], ["a"], name="tanh_a"),
        helper.make_node("MatMul", ["x", "wb"], ["pb"], name="proj_b"),
        helper.make_node("Flatten", ["pb"], ["fb"], name="flatten_b"),
        helper.make_node("Tanh", ["fb"], ["b"], name="tanh_b"),
        helper.make_node("Concat", ["a", "b"], ["cat"], name="stack", axis=1),
        helper.make_node("Gemm", ["cat", "fc.w", "fc.b"], ["h"], name="fc", transB=1),
        helper.make_node("Relu", ["h"], ["e"], name="relu"),
        helper.make_node("ReduceL2", ["e", "axes"], ["n"], name="norm", keepdims=1),
        helper.make_node("Div", ["e", "n"], ["y"], name="normalize"),
    ]
    wa = numpy_helper.from_array(0.2 * numpy_helper.to_array(_w("wa", 16, 16)), "wa")
    wb = numpy_helper.from_array(1.5 * numpy_helper.to_array(_w("wb", 16, 16)), "wb")
    bias = numpy_helper.from_array(np.full(32, 0.3, np.float32), "fc.b")
    inits = [wa, wb, _w("fc.w", 32, 32), bias, _const("axes", np.array([1], np.int64))]
    return _model(nodes, inits, ("batch", 16), ("batch", 32))


def repeated_values_head(shift: np.ndarray) -> onnx.ModelProto:
    """
        x [batch, 16] ─► Relu ─► Mul gain ─► Add shift ─► h ─► fc (MatMul 16x16) ─► Sigmoid ─► y [batch, 16]
    CREPE's head: a BatchNorm after a ReLU maps every zero of channel c to the same ``shift[c]``, so
    about half of ``h`` is a few constants, rounded alike in every sample.
    """
    gain = numpy_helper.from_array(np.linspace(0.5, 1.5, 16).astype(np.float32), "gain")
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", "gain"], ["g"], name="gain"),
        helper.make_node("Add", ["g", "shift"], ["h"], name="shift"),
        helper.make_node("MatMul", ["h", "fc.w"], ["z"], name="fc"),
        helper.make_node("Sigmoid", ["z"], ["y"], name="sigmoid"),
    ]
    inits = [gain, numpy_helper.from_array(shift.astype(np.float32), "shift"), _w("fc.w", 16, 16)]
    return _model(nodes, inits, ("batch", 16), ("batch", 16))


def wide_intermediate(rows: int) -> onnx.ModelProto:
    """One run's activations of ``rows`` x 4 KiB, the whole graph's arena need (a memory test)::

    x [1, 1024] -> Expand(to [rows, 1024]) -> wide -> ReduceSum(all) -> y [1, 1]
    """
    shape = numpy_helper.from_array(np.array([rows, 1024], np.int64), "shape")
    nodes = [
        helper.make_node("Expand", ["x", "shape"], ["wide"]),
        helper.make_node("ReduceSum", ["wide"], ["y"], keepdims=1),
    ]
    return _model(nodes, [shape], in_shape=(1, 1024), out_shape=(1, 1))


def wide_relu(rows: int, beside: bool = False) -> onnx.ModelProto:
    """Two activations of ``rows`` x 4 KiB alive at once (a memory test); ``beside``: and a small one
    alive with them, so the graph plans a larger block per run for the same wide tensors::

    x [1, 1024] -> Expand(to [rows, 1024]) -> wide -> Relu -> r -> ReduceSum(all) -> y [1, 1]
    beside:        x -> Neg -> nx [1, 1024] ---------------- Add(sum, nx) -> ReduceSum -> y
    """
    shape = numpy_helper.from_array(np.array([rows, 1024], np.int64), "shape")
    nodes = [helper.make_node("Expand", ["x", "shape"], ["wide"]), helper.make_node("Relu", ["wide"], ["r"])]
    if beside:
        nodes += [
            helper.make_node("Neg", ["x"], ["nx"]),
            helper.make_node("ReduceSum", ["r"], ["total"], keepdims=1),
            helper.make_node("Add", ["total", "nx"], ["shifted"]),
            helper.make_node("ReduceSum", ["shifted"], ["y"], keepdims=1),
        ]
    else:
        nodes.append(helper.make_node("ReduceSum", ["r"], ["y"], keepdims=1))
    return _model(nodes, [shape], in_shape=(1, 1024), out_shape=(1, 1))


def flattened_width() -> onnx.ModelProto:
    """A length symbolic inference cannot name (the shape comes from the data)::

    x [batch, 4, w] -> Shape -> Slice[0:1] -> Concat(with [-1]) -> shape
    x, shape -> Reshape -> flat [batch, 4*w] (typed [batch, ?]) -> Relu -> y
    """
    consts = [
        numpy_helper.from_array(np.array([0], np.int64), "starts"),
        numpy_helper.from_array(np.array([1], np.int64), "ends"),
        numpy_helper.from_array(np.array([-1], np.int64), "rest"),
    ]
    nodes = [
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("Slice", ["x_shape", "starts", "ends"], ["batch_dim"]),
        helper.make_node("Concat", ["batch_dim", "rest"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("Relu", ["flat"], ["y"]),
    ]
    return _model(nodes, consts, in_shape=("batch", 4, "w"))
