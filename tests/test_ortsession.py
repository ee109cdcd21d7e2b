"""What ONNX Runtime's graph optimizations do to TensorRT-target FP16 Q/DQ graphs.

The faithful numbers come from ``tests.reference``: numpy, op by op, fake quantization in FP32.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from pipeline.evaluate.metrics import error_stats
from tests import graphs, reference
from tests.test_quantize import quantize

FP16_MAX = float(np.finfo(np.float16).max)
# fp16_qdq_conv_bias against the FP32 reference: FP16 rounding before a Q may move a value one
# step of y's scale (2/127), and y itself is an FP16 number.
ONE_STEP = {"atol": 2 / 127, "rtol": 2.0**-10}


def basic_level(model: onnx.ModelProto, disabled: list[str] | None = None) -> ort.InferenceSession:
    """ONNX Runtime's basic level, which the w8a8 graph ran at before: what not to do."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
    )


def bias_overflows(w8a8: onnx.ModelProto) -> set[str]:
    """Conv/Gemm nodes where b / (s_x * s_w), in the FP16 that WeightBiasQuantization uses, is inf."""
    inits = {i.name: numpy_helper.to_array(i).astype(np.float32) for i in w8a8.graph.initializer}
    dq = {n.output[0]: n for n in w8a8.graph.node if n.op_type == "DequantizeLinear"}
    found = set()
    for node in w8a8.graph.node:
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and {node.input[0], node.input[1]} <= dq.keys():
            s_x, s_w = inits[dq[node.input[0]].input[1]], inits[dq[node.input[1]].input[1]]
            if np.any(np.abs(inits[node.input[2]]) / (s_x * s_w) > FP16_MAX):
                found.add(node.name)
    return found


def test_onnxruntime_weight_bias_quantization_corrupts_fp16_qdq_graphs():
    """Documents ONNX Runtime's behaviour (1.32), not ours: if this fails, ONNX Runtime changed.

    At the basic level its WeightBiasQuantization pass rewrites the conv bias as
    DQ(Cast<int32>(Round(b / (s_x * s_w)))) with the quotient typed FP16: channel 0's
    520192 becomes inf, its int32 cast -2^31, and relu(-huge) = 0 instead of about 1.
    Turning off that one pass, and nothing else, gives the right numbers.
    """
    model = graphs.fp16_qdq_conv_bias()
    assert bias_overflows(model) == {"conv"}
    feed = graphs.inputs_for(model, 2)
    expected = reference.run(model, feed)[0]
    without_the_pass = basic_level(model, disabled=["WeightBiasQuantization"]).run(None, feed)[0]
    np.testing.assert_allclose(without_the_pass, expected, **ONE_STEP)
    basic = basic_level(model).run(None, feed)[0]
    wrong = np.abs(basic - expected) > 0.5
    assert wrong[:, 0].all() and not wrong[:, 1:].any(), (
        f"ONNX Runtime {ort.__version__} no longer corrupts the FP16 bias at the basic level: "
        "WeightBiasQuantization changed; ortsession's as-written rule may be relaxed"
    )
    assert np.abs(basic[:, 0]).max() == 0  # the garbage bias, clipped by the Relu

    # The same on a graph from our quantizer with near-dead channels: cosine 0.73 against the reference.
    model = graphs.conv_gemm(dead_channel=True)
    _, w8a8 = quantize(model)
    feed = graphs.inputs_for(model, 3, seed=11)
    assert error_stats(basic_level(w8a8).run(None, feed)[0], reference.run(w8a8, feed)[0]).cosine < 0.9
