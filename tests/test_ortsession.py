"""How ONNX Runtime may optimize each graph, and proof that TensorRT-target Q/DQ graphs run faithfully.

The faithful numbers come from ``tests.reference``: numpy, op by op, fake quantization in FP32.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline import onnxutil, ortsession
from pipeline.calibration.calibrator import RangesFromOnnx
from pipeline.config import QuantizeSection
from pipeline.evaluate.metrics import error_stats
from pipeline.targets.onnxruntime_cpu import quantize as ort_cpu
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


def as_written(sess: ort.InferenceSession) -> bool:
    opts = sess.get_session_options()
    return (
        opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        and opts.get_session_config_entry("session.disable_quant_qdq") == "1"
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


def test_our_session_runs_the_fp16_qdq_graph_as_written():
    model = graphs.fp16_qdq_conv_bias()
    feed = graphs.inputs_for(model, 2)
    sess = ortsession.session(model, cpu_only=True)
    assert as_written(sess)
    got = ortsession.run(sess, feed)[0]
    expected = reference.run(model, feed)[0]
    np.testing.assert_allclose(got, expected, **ONE_STEP)
    np.testing.assert_allclose(got[:, 0], 1.0, atol=2 / 127 + 1 / 64)  # relu(x/64 + 1), |x| <= 1


@pytest.mark.parametrize("dead_channel", [False, True])
def test_faithful_session_agrees_with_the_fake_quant_reference(dead_channel):
    """conv + gemm quantized by our quantizer; with a near-dead channel, the bias that breaks ONNX Runtime."""
    model = graphs.conv_gemm(dead_channel)
    _, w8a8 = quantize(model)
    assert bias_overflows(w8a8) == ({"conv1", "fc1"} if dead_channel else set())
    feed = graphs.inputs_for(model, 3, seed=11)
    expected = reference.run(w8a8, feed)[0]
    got = ortsession.run(ortsession.session(w8a8, cpu_only=True), feed)[0]
    stats = error_stats(got, expected)
    # FP16 arithmetic against FP32: a value near a rounding boundary may land one int8 step away.
    assert stats.cosine > 0.9995 and stats.max_abs < 0.03 * np.abs(expected).max(), stats


def modelopt_style(w8a8: onnx.ModelProto) -> onnx.ModelProto:
    """Our graph as ModelOpt writes one: no trtpipe metadata, FP16 weights behind a Q/DQ pair."""
    model = onnx.ModelProto()
    model.CopyFrom(w8a8)
    del model.metadata_props[:]
    inits = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        weight = inits.get(node.input[0])
        if node.op_type == "DequantizeLinear" and weight is not None and weight.data_type == TensorProto.INT8:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            q, scale = numpy_helper.to_array(weight), numpy_helper.to_array(inits[node.input[1]])
            shape = [-1 if d == axis else 1 for d in range(q.ndim)]
            w16 = (q.astype(np.float32) * scale.astype(np.float32).reshape(shape)).astype(np.float16)
            model.graph.initializer.append(numpy_helper.from_array(w16, f"{weight.name}_fp16"))
            nodes.append(
                helper.make_node("QuantizeLinear", [f"{weight.name}_fp16", *node.input[1:]], [weight.name], axis=axis)
            )
        nodes.append(node)
    int8_weights = {n.output[0] for n in nodes if n.op_type == "QuantizeLinear"}
    kept = [i for i in model.graph.initializer if i.name not in int8_weights]
    del model.graph.initializer[:], model.graph.node[:]
    model.graph.initializer.extend(kept)
    model.graph.node.extend(nodes)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def test_which_graphs_run_as_written(tmp_path):
    """Ours by their metadata, a peer's FP16 Q/DQ graph by its scales; the CPU and float graphs stay optimized."""
    model = graphs.conv_gemm(dead_channel=True)
    _, w8a8 = quantize(model)
    peer = modelopt_style(w8a8)
    assert not any(p.key.startswith("trtpipe") for p in peer.metadata_props)
    needed = ort_cpu.tensors_to_calibrate(model)
    ranges = RangesFromOnnx(needed, 2048, 99.99)(model, [graphs.inputs_for(model, 4, seed) for seed in range(4)])
    cpu = ort_cpu.OrtCpuQdqFromOnnx(ranges, "max", QuantizeSection())(model)
    fully_optimized = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    from pipeline.fp16 import fp16_graph

    fp16 = fp16_graph(model, keep_fp32=())
    onnx.helper.set_model_props(fp16, {"trtpipe.precision": "fp16"})  # as Fp16OnnxFromOnnx marks it
    onnx.helper.set_model_props(model, {"trtpipe.precision": "fp32"})  # as export marks it
    for i, (graph, expected) in enumerate([(w8a8, True), (peer, True), (fp16, True), (cpu, False), (model, False)]):
        assert ortsession.runs_as_written(graph) is expected
        path = tmp_path / f"graph{i}.onnx"
        onnx.save(graph, str(path))  # from a file: ours told by the metadata read without the graph
        assert onnxutil.metadata(path) == {p.key: p.value for p in graph.metadata_props}
        for sess in (ortsession.session(graph, cpu_only=True), ortsession.session(path, cpu_only=True)):
            assert as_written(sess) is expected
            if not expected:
                assert sess.get_session_options().graph_optimization_level == fully_optimized
    feed = graphs.inputs_for(model, 3, seed=11)
    got = ortsession.run(ortsession.session(peer, cpu_only=True), feed)[0]
    assert error_stats(got, reference.run(peer, feed)[0]).cosine > 0.9995


def _resident_mib() -> float:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1]) / 1024


WIDE_MIB = 128  # one run's activations in graphs.wide_intermediate(32768)


def _grown_by_second_session(shared: bool) -> float:
    """MiB the process grew by when a second session of the wide graph ran after a first one."""
    model = graphs.wide_intermediate(WIDE_MIB * 256)
    feed = {"x": np.ones((1, 1024), np.float32)}
    first, second = (ortsession.session(model, cpu_only=True, shared=shared) for _ in range(2))
    first.run(None, feed)
    before = _resident_mib()
    assert second.run(None, feed)[0][0, 0] == WIDE_MIB * 256 * 1024
    grown = _resident_mib() - before
    del first, second
    ortsession.release_shared_arena()
    return grown


def test_sessions_timed_side_by_side_share_one_arena_and_give_it_back():
    """Two sessions with arenas of their own hold both runs' activations; in the shared arena the
    second run reuses the first one's. Released after, the shared arena's regions leave the process."""
    assert _grown_by_second_session(shared=False) > WIDE_MIB * 0.75
    assert _grown_by_second_session(shared=True) < WIDE_MIB * 0.25
    session = ortsession.session(graphs.wide_intermediate(WIDE_MIB * 256), cpu_only=True, shared=True)
    session.run(None, {"x": np.ones((1, 1024), np.float32)})
    del session
    held = _resident_mib()
    ortsession.release_shared_arena()
    assert held - _resident_mib() > WIDE_MIB * 0.75


def _grown_by_interleaving(pattern: bool) -> float:
    """MiB the process grew by when two graphs with the same wide tensors (one also holding a small
    one: a larger planned block) ran interleaved in the shared arena, the first one having run."""
    rows = WIDE_MIB * 128  # each wide tensor half of WIDE_MIB
    feed = {"x": np.ones((1, 1024), np.float32)}
    sessions = []
    for model in (graphs.wide_relu(rows), graphs.wide_relu(rows, beside=True)):
        opts = ortsession.options(model, shared=True)
        if pattern:
            opts.enable_mem_pattern = True
        sessions.append(ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]))
    first, second = sessions
    first.run(None, feed), first.run(None, feed)  # its memory pattern is made on the first run, used after
    before = _resident_mib()
    for session in (second, second, first, second):
        session.run(None, feed)
    grown = _resident_mib() - before
    del first, second, sessions
    ortsession.release_shared_arena()
    return grown


def test_graphs_timed_in_the_shared_arena_reuse_each_others_tensors():
    """With a memory pattern each graph's run asks the shared arena for one block of its own size, and
    a larger one does not fit the block the other left: the process grows by a wide tensor. Timed
    sessions plan no pattern: each tensor reuses a chunk of the same size the other graph freed."""
    assert _grown_by_interleaving(pattern=True) > WIDE_MIB * 0.4
    assert _grown_by_interleaving(pattern=False) < WIDE_MIB * 0.1
