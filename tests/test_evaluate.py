"""compare, bench and report on the tiny user model, on ONNX Runtime (CPU)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from pipeline import stages
from pipeline.cli import main
from pipeline.data import heldout_batches
from pipeline.errors import PipelineError
from pipeline.evaluate.accuracy import AccuracyRow
from pipeline.evaluate.metrics import ErrorStats, error_stats
from pipeline.evaluate.report import BASELINE_COLOUR, W8A8_COLOUR
from pipeline.evaluate.verdict import decide
from pipeline.layout import Layout
from pipeline.results import (
    BenchResult,
    BenchRow,
    BuildResult,
    CompareResult,
    Engines,
    Latency,
    LayerSummary,
    load,
)
from pipeline.runners import artifacts, runner_for
from tests import reference
from tests.conftest import rerecord
from tests.test_ortsession import bias_overflows


def test_compare_passes_and_saves_only_the_statistics(pipeline_run, capsys):
    cfg, _, out = pipeline_run
    capsys.readouterr()
    rows = stages.run("compare", cfg)
    err = capsys.readouterr().err
    assert "compare at batch 1" in err and "compare at batch 32" in err  # a progress bar per batch size
    assert {r.artifact for r in rows} == {"fp16 (ONNX Runtime)", "w8a8 (ONNX Runtime)", "w8a8-cpu (ONNX Runtime)"}
    assert {r.batch for r in rows} == {1, 32}  # the default 1 and 64, moved into the profile [1, 32]
    assert all(r.stats.cosine > 0.99 for r in rows)
    assert all(r.metric is not None and r.agreement is not None for r in rows)
    saved = json.loads((out.results_dir / "compare.json").read_text())
    assert saved["passed"] is True and len(saved["rows"]) == 6
    assert sorted(p.name for p in out.results_dir.iterdir()) == ["compare.json", "quantize.json"]


def test_w8a8_verdicts_agree_with_the_reference_on_a_near_dead_channel(make_config, user_model, tmp_path):
    """conv1's near-dead channel has b / (s_x * s_w) past FP16's range: at ONNX Runtime's basic
    level its bias turned to garbage and quantize and compare printed FAIL (top-1 agreement 0%)
    for a correct graph. Both now report what the fake-quant reference computes."""
    cfg = make_config(model=f'[model]\nsource = "{user_model}:build_dead_channel"')
    stages.run("export", cfg, tmp_path)
    quantized = next(r for r in stages.run("quantize", cfg, tmp_path).accuracy if r.artifact == "w8a8")
    stages.run("build", cfg, tmp_path, backend="onnxruntime")
    compared = [r for r in stages.run("compare", cfg, tmp_path) if r.artifact == "w8a8 (ONNX Runtime)"]
    out = Layout.of(cfg, tmp_path)
    w8a8, fp32 = onnx.load(out.graph("w8a8")), onnx.load(out.graph("fp32"))
    assert len(bias_overflows(w8a8)) == 1  # conv1: the case that broke ONNX Runtime
    got, ref = [], []
    for feed, _ in heldout_batches(cfg, 64):
        got.append(reference.run(w8a8, feed)[0])
        ref.append(reference.run(fp32, feed)[0])
    expected = error_stats(np.concatenate(got), np.concatenate(ref))
    assert quantized.failures == () and quantized.agreement == 1.0
    assert len(compared) == 2 and not any(r.failures for r in compared)
    for stats in [quantized.stats] + [r.stats for r in compared]:
        assert stats.mean_abs == pytest.approx(expected.mean_abs, rel=0.2)
        assert stats.cosine == pytest.approx(expected.cosine, abs=1e-4)


def test_runners_run_the_tensorrt_graphs_as_written_and_the_cpu_graphs_optimized(pipeline_run):
    cfg, _, out = pipeline_run
    levels = {}
    for artifact in artifacts(cfg, out):
        runner = runner_for(artifact)
        with runner:
            levels[artifact.name] = runner.sess.get_session_options().graph_optimization_level
    assert levels == {  # the FP16 graph is TensorRT's too: ORT's fusions crashed on ViT-B/16's
        "fp16": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "w8a8": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "w8a8-cpu": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }


def test_broken_w8a8_graph_fails_compare_naming_the_output(pipeline_run):
    cfg, path, out = pipeline_run
    model = onnx.load(out.graph("w8a8"))
    q_scales = {n.input[1] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    for init in model.graph.initializer:
        if init.name in q_scales:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float16(100), init.name))
    onnx.save(model, out.graph("w8a8"))
    rerecord(cfg, out, "quantize")
    stages.run("build", cfg, backend="onnxruntime")  # the build record names the graph it was given
    with pytest.raises(PipelineError, match=r"accuracy gate failed for w8a8 \(ONNX Runtime\), output 'logits'"):
        stages.run("compare", cfg)
    result = CliRunner().invoke(main, ["compare", "-c", str(path)])
    assert result.exit_code == 1
    assert "Error: tiny: accuracy gate failed for w8a8 (ONNX Runtime), output 'logits'" in result.output
    assert "cosine" in result.output.splitlines()[-1]


def test_bench_and_report(pipeline_run):
    cfg, _, out = pipeline_run
    stages.run("compare", cfg)
    result = stages.run("bench", cfg, repeat=2)
    assert (result.backend, result.runtime) == ("onnxruntime-cpu", "ONNX Runtime CPU")
    assert (result.baseline, result.quantized) == ("fp32", "w8a8-cpu")
    assert len(result.runs) == 2 and len(result.consistency) == 4
    rows = result.runs[0]
    assert {(r.precision, r.batch) for r in rows} == {("fp32", 1), ("fp32", 8), ("w8a8-cpu", 1), ("w8a8-cpu", 8)}
    for r in rows:
        assert r.latency.p90_ms >= r.latency.median_ms > 0 and r.throughput > 0 and r.latency.runs >= 5
    assert sum(result.fp32_op_time_share.values()) == pytest.approx(1.0)
    assert load(BenchResult, out) == result
    assert (out.results_dir / "bench.csv").read_text().splitlines()[0].startswith("artifact,precision,batch")

    report = stages.run("report", cfg)
    text = report.read_text()
    assert "![latency](latency.png)" in text and "## Verdict" in text and "batch 8: deploy" in text
    assert "No TensorRT engines on this machine" in text
    # The chart: light grey and dark red bars are really drawn.
    import matplotlib.image

    pixels = (matplotlib.image.imread(out.reports_dir / "latency.png")[..., :3] * 255).round().astype(int)
    for colour in (BASELINE_COLOUR, W8A8_COLOUR):
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(pixels - rgb).sum(axis=-1) <= 3).sum() > 500, colour


def test_report_needs_saved_results(make_config, tmp_path):
    cfg = make_config()
    with pytest.raises(PipelineError, match=r"no saved bench; run trtpipe bench first"):
        stages.run("report", cfg, root=tmp_path)


@pytest.mark.parametrize("pipeline_run", ['[export]\nio_dtype = "float16"'], indirect=True)
def test_compare_feeds_an_fp16_io_graph_in_float16(pipeline_run):
    cfg, _, out = pipeline_run
    assert onnx.load(out.graph("fp16")).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    rows = stages.run("compare", cfg)
    fp16 = [r for r in rows if r.artifact.startswith("fp16")]
    assert fp16 and all(r.stats.cosine > 0.999 for r in fp16)


def _bench(baseline: str, quantized: str, ms: dict[int, tuple[float, float]], **extra) -> BenchResult:
    rows = tuple(
        BenchRow(p, p, b, Latency(pair[i], pair[i], pair[i], pair[i], 0.0, 5))
        for b, pair in ms.items()
        for i, p in enumerate((baseline, quantized))
    )
    batches = tuple(sorted(ms))
    speedup = {b: ms[b][0] / ms[b][1] for b in batches}
    return BenchResult(
        "onnxruntime-cpu",
        "ONNX Runtime CPU",
        "-",
        baseline,
        quantized,
        batches,
        1,
        1,
        5,
        0.0,
        (rows,),
        speedup,
        (),
        **extra,
    )


_ON_ONNXRUNTIME = BuildResult("onnxruntime", ("CPUExecutionProvider",), reason="TensorRT is not installed")


def test_verdict_explains_no_gain_on_a_cpu_with_the_op_profile():
    bench = _bench(
        "fp32",
        "w8a8-cpu",
        {1: (0.80, 1.05), 64: (40.0, 20.0)},
        fp32_op_time_share={"MatMul": 0.25, "Softmax": 0.30, "Add": 0.25, "Transpose": 0.20},
        profiled_batch=1,
    )
    one, sixty_four = decide(bench, None, _ON_ONNXRUNTIME).lines()
    assert one.startswith("batch 1: deploy FP32: w8a8 is no faster (0.76x, below 1.05x)")
    assert "Conv/MatMul/Gemm are only 25% of FP32 time at batch 1" in one and "Softmax 30%" in one
    assert sixty_four.startswith("batch 64: deploy w8a8: 2.00x faster")


def test_verdict_explains_no_gain_on_tensorrt_with_the_engine_layers():
    layers = LayerSummary(40, 20, 3, 12, 7, True)
    bench = _bench("fp16", "w8a8", {256: (10.0, 10.1)})
    build = BuildResult("tensorrt", (), Engines("trt/x", "trt/x/manifest.json", {"w8a8": layers}))
    (line,) = decide(bench, None, build).lines()
    assert line.startswith("batch 256: deploy FP16: w8a8 is no faster (0.99x, below 1.05x)")
    assert "7 unfused Q/DQ layers in the engine; 12 reformat layers in the engine" in line
    assert "3 of 20 Conv/GEMM/MatMul layers in INT8" in line


def test_one_rule_for_the_report_gpu_check_and_deploy():
    """1.02x was "faster" to gpu-check, "no faster" to the report (1.05x); deploy chose w8a8 regardless."""
    from pipeline.evaluate.verdict import deploy_precision

    layers = LayerSummary(40, 20, 20, 0, 0, True, quantized_layers=20, int8_quantized_layers=20)
    build = BuildResult("tensorrt", (), Engines("trt/x", "trt/x/manifest.json", {"w8a8": layers}))
    slow = decide(_bench("fp16", "w8a8", {128: (1.30, 1.0), 1024: (10.2, 10.0)}), None, build)
    assert [v.deploy for v in slow.batches] == ["w8a8", "fp16"]  # the largest batch decides for the model
    assert not slow.fast_enough and slow.deploy == "fp16" and deploy_precision(slow) == "fp16"
    assert slow.speed().startswith("w8a8 is 1.02x FP16 at batch 1024 (below 1.05x, [verdict] min_speedup); ")
    assert "likeliest causes: 20 of 20 Conv/GEMM/MatMul layers in INT8, no reformat" in slow.speed()
    fast = decide(_bench("fp16", "w8a8", {1024: (10.2, 10.0)}), None, build, min_speedup=1.01)
    assert fast.fast_enough and deploy_precision(fast) == "w8a8" and "likeliest" not in fast.speed()
    # On a CPU the baseline is the FP32 graph: deploy ships it where w8a8-cpu is slower, never the slower one.
    cpu = decide(_bench("fp32", "w8a8-cpu", {64: (1.0, 2.0)}), None, _ON_ONNXRUNTIME)
    assert cpu.deploy == "fp32" and deploy_precision(cpu) == "fp32"


def test_verdict_keeps_the_baseline_when_w8a8_fails_its_gate():
    bench = _bench("fp32", "w8a8-cpu", {8: (4.0, 1.0)})
    stats = ErrorStats(0.1, 0.1, 0.1, 0.1, 0.5, 0.5, 0.1, 0.1)
    failed = AccuracyRow("w8a8-cpu (ONNX Runtime)", "logits", stats, None, None, None, ("cosine 0.5 < 0.99",), 8)
    compare = CompareResult((failed,), False)
    lines = decide(bench, compare, _ON_ONNXRUNTIME).lines()
    assert lines == ["batch 8: deploy FP32: w8a8 fails its accuracy gate (see the table)"]


def test_streamed_agreement_and_top1_equal_the_one_shot_ones():
    from pipeline.evaluate.metrics import Agreement, Share, top1, top1_agreement

    rng = np.random.default_rng(3)
    ref = rng.standard_normal((300, 10)).astype(np.float32)
    out = ref + rng.normal(0, 0.05, ref.shape).astype(np.float32)
    labels = rng.integers(0, 10, 300)
    agree, hits = Agreement(), Share()
    for start in range(0, 300, 64):  # ragged last batch
        o, r = out[start : start + 64], ref[start : start + 64]
        agree.update(o, r)
        hits.add(np.argmax(o, axis=-1) == labels[start : start + 64])
    assert agree.result() == top1_agreement(out, ref) and 100 * hits.value == pytest.approx(top1(out, labels))


def test_cosine_of_all_zero_outputs_streams_like_the_one_shot():
    from pipeline.evaluate.metrics import ErrorAccumulator, error_stats

    zeros = np.zeros((4, 3), np.float32)
    for other in (zeros, np.eye(4, 3, dtype=np.float32)):
        acc = ErrorAccumulator().update(zeros[:2], other[:2]).update(zeros[2:], other[2:])
        assert acc.result().cosine == error_stats(zeros, other).cosine


def test_quantize_accuracy_pass_runs_inside_the_profile(make_config, user_model, tmp_path, capsys):
    # [calibration] batch_size 48 is past the profile's max 32: the accuracy pass runs at 32.
    cfg = make_config(calibration=f'[calibration]\nsource = "{user_model}:calibration"\nsamples = 64\nbatch_size = 48')
    stages.run("export", cfg, root=tmp_path)
    summary = stages.run("quantize", cfg, root=tmp_path, targets=("onnxruntime-cpu",))
    err = capsys.readouterr().err
    assert "held-out data at batch 32" in err and "accuracy at batch 32" in err  # its progress bar
    (row,) = summary.accuracy
    assert row.agreement is not None and row.metric is not None and row.stats.cosine > 0.99


def test_graphs_scored_in_turn_give_the_rows_of_graphs_scored_together(pipeline_run, tmp_path):
    """quantize's accuracy pass keeps one graph in memory at a time (FP32's outputs and the inputs kept
    in files for the others): its rows are those of every graph scored side by side, and each graph
    is dropped before the next is loaded."""
    import weakref

    from pipeline import ortsession
    from pipeline.evaluate.accuracy import evaluate, evaluate_in_turn

    cfg, _, out = pipeline_run
    names = ("w8a8", "w8a8-cpu")
    gates = {n: cfg.accuracy.gate(n) for n in names}

    class Graph:  # one graph's session, as quantize loads it
        def __init__(self, name: str) -> None:
            self.session = ortsession.session_for(out.graph(name), True)

        def __call__(self, feed):
            return ortsession.run(self.session, feed)

    together = evaluate(cfg, Graph("fp32"), {n: Graph(n) for n in names}, gates, 8)
    alive: list[weakref.ref] = []

    def load(name: str) -> Graph:
        assert all(ref() is None for ref in alive), f"a graph was still loaded when {name} was"
        graph = Graph(name)
        alive.append(weakref.ref(graph))
        return graph

    in_turn = evaluate_in_turn(cfg, lambda: load("fp32"), {n: (lambda n=n: load(n)) for n in names}, gates, 8, tmp_path)
    assert in_turn == together and len(in_turn) == len(names) * len(cfg.outputs)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".npz")  # the batches FP32 ran on, kept
