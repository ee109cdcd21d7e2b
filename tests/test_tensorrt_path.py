"""trtpipe's TensorRT code path, executed on the TensorRT 11.4 stand-in (tests/trt_standin).

Build, compare, bench, report and deploy run through Polygraphy's real loaders and runner and
our TensorRT layer; each defect the stand-in found has a test here. The GPU tests in
tests/gpu stay the final word on what real TensorRT does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from pipeline import stages
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.errors import PipelineError
from pipeline.fileio import sha256_file
from pipeline.layout import Layout
from pipeline.targets.tensorrt import layers as layer_report
from pipeline.targets.tensorrt.manifest import Manifest
from tests import graphs
from tests.conftest import rerecord, write_config
from tests.test_trt_standin import POLYGRAPHY_PROBES
from tests.trt_standin import plan as standin_plan
from tests.trt_standin import standin
from tests.trt_standin.cuda import Gpu

FAST = "[bench]\ngpu_batches = [1, 8]\ncpu_batches = [1, 8]\nwarmup = 1\niterations = 3\nmin_seconds = 0.0"


@pytest.fixture
def tiny(tmp_path, user_model, monkeypatch):
    """The tiny user model exported and quantized (on the CPU), run from tmp_path."""
    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path, user_model, top=f'name = "tiny"\n{FAST}')
    cfg = load_config(path)
    stages.run("export", cfg)
    stages.run("quantize", cfg)
    return cfg, path, Layout.of(cfg)


@pytest.fixture
def gpu_machine(tmp_path):
    with standin(tmp_path / "gpu-machine") as machine:
        yield machine


def _cli(*args: str):
    return CliRunner().invoke(main, list(args))


def _one_line_error(result) -> str:
    """The CLI's answer to a user error: exit 1, one 'Error:' line, no traceback."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert "Traceback" not in result.output
    return line


def _edit_graph(path: Path, edit) -> None:
    model = onnx.load(str(path))
    edit(model)
    onnx.save(model, str(path))


# --- build on a fresh GPU machine ----------------------------------------------------------------


def test_first_build_on_a_fresh_machine_keeps_its_engines_and_no_lock_file(tiny, gpu_machine):
    cfg, _, out = tiny
    assert not out.trt_root.exists()  # nothing made the engine folder before the build
    record = stages.run("build", cfg)
    target = Path(record.engines.dir)
    assert record.backend == "tensorrt" and target.name == "stand-in-gpu-test-double-sm89-trt11.4.0.106"
    assert sorted(p.name for p in target.iterdir()) == [
        "fp16.plan",
        "layers-fp16.json",
        "layers-w8a8.json",
        "manifest.json",
        "timing.cache",
        "w8a8.plan",
    ]
    assert set(Manifest.load(target / "manifest.json").engines) == {"fp16", "w8a8"}
    cached = (target / "timing.cache").read_bytes()
    stages.run("build", cfg)  # a second build reads the timing cache (locking it too) and leaves no lock either
    assert not list(target.glob("*.lock")) and (target / "timing.cache").read_bytes() == cached
    assert set(gpu_machine.refused) <= POLYGRAPHY_PROBES


def test_build_log_is_kept_per_engine(tiny, gpu_machine):
    cfg, _, out = tiny
    stages.run("build", cfg)
    log = out.log("build-w8a8").read_text()
    assert "Building engine with configuration" in log and "Profiling Verbosity    | ProfilingVerbosity.DETAILED" in log


# --- failures a user can cause: one line naming the graph, layer or engine -----------------------------


def test_onnx_parse_failure_names_the_graph_and_node(tiny, gpu_machine):
    cfg, path, out = tiny

    def asymmetric(model):  # TensorRT quantizes symmetrically only: a non-zero zero point is refused
        q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
        zero = next(i for i in model.graph.initializer if i.name == q.input[2])
        value = numpy_helper.to_array(zero).copy()
        value[...] = 3
        model.graph.initializer.append(numpy_helper.from_array(value, "nonzero_zero_point"))
        q.input[2] = "nonzero_zero_point"

    _edit_graph(out.graph("w8a8"), asymmetric)
    rerecord(cfg, out, "quantize")
    line = _one_line_error(_cli("build", "-c", str(path)))
    q = next(n for n in onnx.load(str(out.graph("w8a8"))).graph.node if n.op_type == "QuantizeLinear")
    assert f"{out.graph('w8a8')}: TensorRT's ONNX parser refuses it: In node" in line
    assert f"with name: {q.name} and operator: QuantizeLinear" in line and "zero point" in line
    assert f"full log: {out.log('build-w8a8')}" in line


def test_failed_build_names_the_graph_and_layer(tiny, gpu_machine):
    cfg, path, out = tiny

    def negative_scale(model):
        q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
        scale = next(i for i in model.graph.initializer if i.name == q.input[1])
        model.graph.initializer.append(numpy_helper.from_array(-numpy_helper.to_array(scale), "negative_scale"))
        q.input[1] = "negative_scale"

    _edit_graph(out.graph("w8a8"), negative_scale)
    rerecord(cfg, out, "quantize")
    q = next(n for n in onnx.load(str(out.graph("w8a8"))).graph.node if n.op_type == "QuantizeLinear")
    line = _one_line_error(_cli("build", "-c", str(path)))
    assert f"{out.graph('w8a8')}: TensorRT could not build an engine from it: " in line
    assert f"({q.name}: Assertion failed: scaleAllPositive" in line


def test_engine_that_does_not_deserialize_names_the_engine(tiny, gpu_machine):
    cfg, path, out = tiny
    record = stages.run("build", cfg)
    engine = Path(record.engines.dir) / "w8a8.plan"
    header, graph = standin_plan.deserialize(engine.read_bytes())
    # As if a plan from another TensorRT build had been copied in with a matching manifest.
    engine.write_bytes(standin_plan.serialize({**header, "tensorrt_version": "11.3.0.1"}, graph))
    manifest = json.loads(Path(record.engines.manifest).read_text())
    manifest["engines"]["w8a8"]["sha256"] = sha256_file(engine)
    Path(record.engines.manifest).write_text(json.dumps(manifest))
    rerecord(cfg, out, "build")
    line = _one_line_error(_cli("compare", "-c", str(path)))
    assert f"{engine}: TensorRT cannot deserialize this engine (" in line and "Version tag does not match" in line
    assert "rebuild it with trtpipe build" in line


def test_compare_and_bench_without_tensorrt_given_an_engine_build_record(tiny, tmp_path):
    cfg, path, out = tiny
    with standin(tmp_path / "gpu-machine"):
        stages.run("build", cfg)
    # Back on a machine without TensorRT, with the GPU machine's build record and engines.
    for command in ("compare", "bench"):
        line = _one_line_error(_cli(command, "-c", str(path)))
        assert "a TensorRT engine (the build record says so), and this machine cannot run it" in line
        assert "TensorRT is not installed" in line and "--backend onnxruntime" in line
        assert "POLYGRAPHY_AUTOINSTALL_DEPS" not in line


def test_layers_come_per_layer_when_the_engine_json_lists_none(tiny, tmp_path):
    """A missing "Layers" key stopped the build after the engine was written."""
    cfg, _, out = tiny
    with standin(tmp_path / "gpu-machine", inspector_layout="per-layer"):
        record = stages.run("build", cfg)
    saved = json.loads((Path(record.engines.dir) / "layers-w8a8.json").read_text())
    assert saved["LayersFrom"] == "get_layer_information" and "I/O Tensors" in saved
    w8a8 = record.engines.layers["w8a8"]
    assert w8a8.quantized_coverage == 1.0 and w8a8.undetermined is None and w8a8.reformat_layers == 2


def test_an_inspector_layout_trtpipe_cannot_read_leaves_coverage_undetermined_never_zero(tiny, tmp_path):
    from pipeline.evaluate.verdict import slow_causes
    from pipeline.results import BenchResult

    cfg, _, out = tiny
    with standin(tmp_path / "gpu-machine", inspector_layout="unknown"):
        record = stages.run("build", cfg)  # the engines are kept: only the layer report is unknown
    w8a8 = record.engines.layers["w8a8"]
    assert w8a8.quantized_coverage is None and w8a8.quantized_layers == 2
    assert w8a8.undetermined.startswith("the inspector's layer JSON is in a layout this trtpipe does not read (keys ")
    assert w8a8.warning == f"INT8 coverage undetermined: {w8a8.undetermined}"
    saved = json.loads(out.build_record.read_text())["layers"]["w8a8"]
    assert saved["quantized_coverage"] is None and "undetermined" in saved
    assert Manifest.load(Path(record.engines.manifest)).engines["w8a8"].int8_coverage is None
    bench = BenchResult("tensorrt", "TensorRT", "-", "fp16", "w8a8", (8,), None, 1, 1, 0.0, ((),), {}, ())
    assert slow_causes(bench, record, "w8a8")[0] == f"INT8 coverage undetermined: {w8a8.undetermined}"


def test_engine_json_without_layers_is_undetermined_not_an_error():
    summary = layer_report.summarize(layer_report.parse_layers({"I/O Tensors": []}), {"conv1"})
    assert summary.quantized_coverage is None and "listed no layers" in summary.undetermined
    assert summary.coverage_text().startswith("INT8 coverage undetermined: ")


# --- timing ----------------------------------------------------------------------------------------


def _kernel_ms(w8a8_speedup: float, fp16_ms_per_item: float = 0.125):
    """The stand-in GPU's time per inference: FP16 engines ``fp16_ms_per_item`` per item, Q/DQ engines
    ``w8a8_speedup`` times faster."""

    def kernel(header: dict, batch: int) -> float:
        return batch * fp16_ms_per_item / (w8a8_speedup if header["qdq"] else 1.0)

    return kernel


def test_bench_reports_latency_and_throughput_from_cuda_events(tiny, tmp_path):
    """Latency was one enqueue and a synchronize on the host clock, which pulls the INT8/FP16 ratio
    toward 1 on small models: the stand-in GPU's clock shows it (host time is not GPU time)."""
    cfg, _, out = tiny
    with standin(tmp_path / "gpu-machine", gpu=Gpu(kernel_ms=_kernel_ms(2.0))):
        stages.run("build", cfg)
        result = stages.run("bench", cfg)
    rows = {(r.precision, r.batch): r for r in result.runs[0]}
    # Each inference's latency is the GPU time between its two events: exactly its kernel time here.
    assert rows[("fp16", 8)].latency.median_ms == pytest.approx(1.0)
    assert rows[("w8a8", 8)].latency.p99_ms == pytest.approx(0.5) and rows[("w8a8", 1)].latency.min_ms == 0.0625
    # Throughput: the items of inferences enqueued back to back, over the first to the last event.
    assert rows[("w8a8", 8)].throughput == pytest.approx(8 / 0.5e-3) and result.speedup[8] == pytest.approx(2.0)
    assert "enqueued back to back" in result.includes and "CUDA events" in result.includes
    saved = json.loads((out.results_dir / "bench.json").read_text())["runs"][0][0]
    assert saved["items_per_s"] == saved["throughput_items_per_s"] > 0


def test_timing_enqueues_back_to_back_and_synchronizes_once_per_round(tiny, tmp_path):
    from pipeline.data import sample_inputs
    from pipeline.runners import artifacts, engine_to_run
    from pipeline.targets.tensorrt.timing import time_engine

    cfg, _, out = tiny
    gpu = Gpu(kernel_ms=_kernel_ms(2.0))
    with standin(tmp_path / "gpu-machine", gpu=gpu) as machine:
        stages.run("build", cfg)
        w8a8 = engine_to_run(next(a for a in artifacts(cfg, out) if a.name == "w8a8"))
        for graph in (False, True):
            gpu.calls.clear()
            machine.calls.clear()
            timed = time_engine(w8a8, 0, sample_inputs(cfg, 8), 2, 5, 0.0, cuda_graph=graph)
            assert list(timed.latencies_ms) == [0.5] * 5 and timed.items_per_s == pytest.approx(16000)
            # One enqueue first (TensorRT's set-up), then warm-up and 5 timed inferences, each between two
            # events with no synchronize between them: one after the first enqueue and one after the warm-up.
            launches = 2 + 5 if graph else 0
            assert machine.calls["IExecutionContext.execute_async_v3"] == (2 if graph else 1 + 2 + 5)
            assert gpu.calls["cudaGraphLaunch"] == launches and gpu.calls["cudaEventRecord"] == 10
            assert gpu.calls["cudaStreamSynchronize"] == 2 and gpu.calls["cudaEventSynchronize"] == 1
    assert not gpu.allocations and not gpu.streams and not gpu.events and not gpu.executables and not gpu.graphs


def test_bench_out_of_device_memory_is_one_line(tiny, tmp_path):
    cfg, path, _ = tiny
    # Room for batch 1's buffers (768 + 16 bytes), not batch 8's.
    with standin(tmp_path / "gpu-machine", gpu=Gpu(memory_bytes=2000)):
        stages.run("build", cfg)
        line = _one_line_error(_cli("bench", "-c", str(path)))
    assert (
        line.startswith("Error: bench fp16 (TensorRT) at batch 8: ") and "fp16.plan: cannot set up an inference" in line
    )
    assert "x [8, 3, 8, 8]: CUDA error 2 (cudaErrorMemoryAllocation: out of device memory)" in line
    assert "lower [bench] gpu_batches" in line


@pytest.mark.parametrize(
    ("section", "tf32"),
    [("", True), ('[export]\nkeep_fp32 = ["LayerNormalization", "Gemm"]', False), ("[build]\ntf32 = false", False)],
)
def test_tf32_is_on_unless_the_fp32_islands_or_the_config_say_otherwise(
    tmp_path, user_model, monkeypatch, section, tf32
):
    """TF32 was cleared on every build (Polygraphy's default), so FP32 islands ran in true FP32."""
    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path, user_model, top=f'name = "tiny"\n{FAST}\n{section}')
    cfg = load_config(path)
    stages.run("export", cfg)
    stages.run("quantize", cfg)
    with standin(tmp_path / "gpu-machine"):
        record = stages.run("build", cfg)
    folder = Path(record.engines.dir)
    for plan_file in ("fp16.plan", "w8a8.plan"):
        header, _ = standin_plan.deserialize((folder / plan_file).read_bytes())
        assert ("TF32" in header["flags"]) == tf32, (plan_file, header["flags"])
    assert Manifest.load(folder / "manifest.json").builder["tf32"] is tf32


def test_timed_engine_computes_what_the_graph_does(tiny, gpu_machine):
    from polygraphy import cuda

    from pipeline.data import sample_inputs
    from pipeline.runners import artifacts, engine_to_run
    from pipeline.targets.tensorrt.trt import execution

    cfg, _, out = tiny
    stages.run("build", cfg)
    w8a8 = next(a for a in artifacts(cfg, out) if a.name == "w8a8")
    feed = sample_inputs(cfg, 4)
    run, release = execution(engine_to_run(w8a8), 0, feed)
    try:
        run()
        (address,) = [a for a in gpu_machine.gpu.allocations if gpu_machine.gpu.allocations[a]._length_ == 4 * 4 * 4]
        got = np.frombuffer(gpu_machine.gpu.view(address, 64), dtype=np.float32).reshape(4, 4).copy()
    finally:
        release()
    from pipeline import ortsession

    expected = ortsession.run(ortsession.session(out.graph("w8a8"), cpu_only=True), feed)[0]
    assert np.allclose(got, expected, atol=1e-3)
    assert cuda.wrapper().handle is not None


# --- the examples, end to end through the CLI --------------------------------------------------------


@pytest.fixture(scope="module")
def exported_examples(tmp_path_factory):
    """Both bundled examples exported and quantized once (CPU), with a fast [bench]."""
    root = tmp_path_factory.mktemp("examples")
    repo = Path(__file__).resolve().parent.parent
    configs = {}
    for name in ("resnet_digits", "vit_digits"):
        text = (repo / "models" / f"{name}.toml").read_text()
        text = text.replace('"../examples/', f'"{repo}/examples/')
        path = root / "models" / f"{name}.toml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text + "\n" + FAST.replace("[1, 8]", "[4, 16]", 1) + "\n")
        cfg = load_config(path)
        stages.run("export", cfg, root=root)
        stages.run("quantize", cfg, root=root)
        configs[name] = path
    return root, configs


def _fresh_copy(exported, tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    root, configs = exported
    work = tmp_path / "project"
    shutil.copytree(root, work)
    return work, {name: work / "models" / f"{name}.toml" for name in configs}


@pytest.mark.parametrize("model", ["resnet_digits", "vit_digits"])
def test_example_build_compare_bench_report_deploy_on_tensorrt(model, exported_examples, tmp_path, monkeypatch):
    work, configs = _fresh_copy(exported_examples, tmp_path)
    monkeypatch.chdir(work)
    cfg_path = str(configs[model])
    with standin(tmp_path / "gpu-machine", gpu=Gpu(kernel_ms=_kernel_ms(2.0))) as machine:
        for command in (["build"], ["compare"], ["bench"], ["report"], ["deploy", "--to", str(tmp_path / "repo")]):
            result = _cli(command[0], "-c", cfg_path, *command[1:])
            assert result.exit_code == 0, (command, result.output, result.exception)
    out = Layout(model, work)
    record = json.loads(out.build_record.read_text())
    w8a8 = record["layers"]["w8a8"]
    # Every quantized layer runs INT8, the ViT's attention GEMMs inside fused Myelin layers included.
    assert w8a8["quantized_coverage"] == 1.0 and "warning" not in w8a8, w8a8
    compare = json.loads((out.results_dir / "compare.json").read_text())
    assert compare["passed"] and {r["artifact"] for r in compare["rows"]} == {
        "fp16 (TensorRT)",
        "w8a8 (TensorRT)",
        "w8a8-cpu (ONNX Runtime)",
    }
    bench = json.loads((out.results_dir / "bench.json").read_text())
    assert bench["backend"] == "tensorrt" and bench["batches"] == [4, 16]
    report = (out.reports_dir / "report.md").read_text()
    assert report.startswith(f"# {model}: FP16 vs w8a8 on TensorRT") and "execute_async_v3" in report
    assert "| w8a8 items/s |" in report and "timed with CUDA events" in report  # latency and throughput
    deployed = tmp_path / "repo" / model
    assert 'platform: "tensorrt_plan"' in (deployed / "config.pbtxt").read_text()
    assert sha256_file(deployed / "1" / "model.plan") == sha256_file(Path(record["dir"]) / "w8a8.plan")
    # Neither trtpipe nor Polygraphy touched a name TensorRT 11.4 lacks, beyond Polygraphy's own probes.
    assert set(machine.refused) <= POLYGRAPHY_PROBES, machine.refused
    assert not machine.refused_cuda


# --- make gpu-check ---------------------------------------------------------------------------------


@pytest.mark.parametrize("speedup", [1.02, 1.5])
def test_gpu_check_fails_w8a8_below_the_verdict_threshold_and_passes_it_above(exported_examples, tmp_path, speedup):
    """A w8a8 engine at 0.18x FP16 passed (any explanation counted), and 1.02x was "faster"."""
    from pipeline.targets.tensorrt.gpu_check import gpu_check

    work, configs = _fresh_copy(exported_examples, tmp_path)
    with standin(tmp_path / "gpu-machine", gpu=Gpu(kernel_ms=_kernel_ms(speedup))):
        result = gpu_check([configs["resnet_digits"]], root=work)
    saved = json.loads((work / "engines" / "gpu-check.json").read_text())
    assert saved == result and saved["tensorrt_version"] == "11.4.0.106" and saved["compute_capability"] == "8.9"
    (model,) = saved["models"]
    assert model["coverage"]["ok"] and model["coverage"]["by_precision"]["w8a8"]["share"] == 1.0
    assert set(model["coverage"]["by_precision"]) == {"w8a8"} and model["accuracy"]["ok"]
    speed = model["speed"]
    assert speed["batch"] == 16 and set(speed["by_batch"]) == {"4", "16"} and speed["speedup"] == pytest.approx(speedup)
    fast = speedup >= 1.05
    assert speed["ok"] is fast and model["passed"] is fast and saved["passed"] is fast and saved["complete"]
    if fast:
        assert speed["check"] == "w8a8 is 1.50x FP16 at batch 16 (at least 1.05x, [verdict] min_speedup)"
        assert model["deploy"] == "w8a8" and speed["causes"] == []
    else:  # the measured ratio and the likeliest causes the engine shows
        assert speed["check"].startswith("w8a8 is 1.02x FP16 at batch 16 (below 1.05x, [verdict] min_speedup); ")
        assert speed["causes"] == [
            "2 reformat layers in the engine",
            "10 of 12 Conv/GEMM/MatMul layers in INT8",
        ]
        assert model["deploy"] == "fp16"


def test_a_two_profile_model_deploys_to_triton_listing_each_instances_profiles(tmp_path, user_model, monkeypatch):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from tests.test_deploy import TWO_PROFILES

    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path, user_model, top=f'name = "tiny"\n{FAST}', batch=TWO_PROFILES)
    cfg = load_config(path)
    stages.run("export", cfg)
    stages.run("quantize", cfg)
    with standin(tmp_path / "gpu-machine", gpu=Gpu(kernel_ms=_kernel_ms(2.0))):
        for stage in ("build", "compare", "bench"):
            stages.run(stage, cfg)
        model_dir = stages.deploy(cfg, tmp_path / "repo")
    # Parsed by Triton's own schema (tritonclient's model_config_pb2), unknown fields refused.
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 64
    assert [list(g.profile) for g in config.instance_group] == [["0", "1"]]
    assert [w.batch_size for w in config.model_warmup] == [8, 32]
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["precision"] == "w8a8" and [p["x"]["max"][0] for p in manifest["profiles"]] == [16, 64]
    assert manifest["triton_container"]["tensorrt_version"] == "11.4.0.106"
    assert "libnvinfer.so.11.4.0" in manifest["triton_container"]["check"]
    header, _ = standin_plan.deserialize((model_dir / "1" / "model.plan").read_bytes())
    assert len(header["profiles"]) == 2  # the engine holds both profiles the config lists


def test_deploy_default_follows_the_verdict_and_a_given_precision_wins_with_a_warning(tiny, tmp_path, capsys):
    """deploy defaulted to w8a8 when the report's verdict was "deploy FP16"."""
    cfg, _, _ = tiny
    with standin(tmp_path / "gpu-machine", gpu=Gpu(kernel_ms=_kernel_ms(0.18))):
        for stage in ("build", "compare", "bench"):
            stages.run(stage, cfg)
        capsys.readouterr()
        default = stages.deploy(cfg, tmp_path / "repo")
        said = capsys.readouterr().err
        asked = stages.deploy(cfg, tmp_path / "other", precision="w8a8")
        warned = capsys.readouterr().err
    assert json.loads((default / "manifest.json").read_text())["precision"] == "fp16"
    assert "deploying fp16, as the verdict at the largest batch says: batch 8: deploy FP16: w8a8 is no faster " in said
    assert "(0.18x, below 1.05x)" in said and "WARNING" not in said
    assert json.loads((asked / "manifest.json").read_text())["precision"] == "w8a8"
    assert "WARNING: deploying w8a8 as --precision asks, against the verdict: batch 8: deploy FP16" in warned


def test_gpu_check_writes_each_model_as_it_finishes_and_goes_on_after_a_failure(tmp_path, monkeypatch):
    """One model's error aborted gpu-check before engines/gpu-check.json was written."""
    from pipeline.targets.tensorrt import gpu_check as module

    path = tmp_path / "engines" / "gpu-check.json"
    seen = []

    def check_model(config_path, root):
        seen.append(json.loads(path.read_text())["models"] if path.exists() else None)
        if config_path.name == "oom.toml":
            raise PipelineError("engines/oom/trt/w8a8.plan: batch 1024: CUDA out of memory")
        if config_path.name == "bug.toml":
            raise KeyError("Layers")
        return {"model": config_path.stem, "passed": True}

    monkeypatch.setattr(module, "check_model", check_model)
    monkeypatch.setattr(module, "_summary", lambda m: m.get("error", m.get("model")))
    with standin(tmp_path / "gpu-machine"):
        result = module.gpu_check([Path("a.toml"), Path("oom.toml"), Path("bug.toml"), Path("b.toml")], root=tmp_path)
    assert seen[0] is None and [m.get("model") for m in seen[1]] == ["a"]  # written before the next one ran
    assert [m.get("model", m.get("error")) for m in result["models"]] == [
        "a",
        "engines/oom/trt/w8a8.plan: batch 1024: CUDA out of memory",
        "KeyError: 'Layers'",
        "b",
    ]
    assert result["models"][2]["traceback"][0].startswith("Traceback")  # a bug keeps its traceback
    assert result["complete"] and not result["passed"] and json.loads(path.read_text()) == result


def test_gpu_check_stops_with_the_probe_reason_without_a_gpu(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import main
    from pipeline.targets.tensorrt.probe import probe

    result = CliRunner().invoke(main, ["gpu-check", "-c", str(tmp_path / "missing.toml")])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: gpu-check: {probe().reason}"


def test_fused_attention_counts_each_quantized_gemm():
    from tests.test_quantize import quantize

    _, w8a8 = quantize(graphs.attention())
    layers = layer_report.parse_layers({"Layers": standin_plan.layers(w8a8, 4)})
    quantized = layer_report.quantized_compute_inputs(w8a8)
    assert set(quantized) == {"proj_q", "proj_k", "proj_v", "qk", "av"}
    assert quantized["av"] == {"probs_DequantizeLinear", "probs_QuantizeLinear"}
    summary = layer_report.summarize(layers, quantized)
    # qk and av are inside one kgen (fused attention) layer: not a Conv/GEMM layer kind, its inputs Half,
    # still INT8: it swallowed the Q/DQ on their inputs.
    assert summary.int8_compute_layers == 3 and summary.int8_quantized_layers == 5
    assert summary.quantized_coverage == 1.0 and layer_report.coverage_warning(summary) is None


def test_a_fused_region_counts_the_int8_layers_it_swallowed():
    """A layer counted INT8 only when its first input reported Int8; Myelin regions report Half."""
    from tests.test_quantize import quantize

    _, w8a8 = quantize(graphs.attention())
    quantized = layer_report.quantized_compute_inputs(w8a8)
    regions = standin_plan.layers(w8a8, 4, myelin="foreign-node")
    summary = layer_report.summarize(layer_report.parse_layers({"Layers": regions}), quantized)
    assert summary.int8_quantized_layers == 5 and summary.quantized_coverage == 1.0 and summary.by_onnx_node
    # Only its input precision: none of the five (the rule before).
    assert not any(layer.runs_8bit for layer in layer_report.parse_layers({"Layers": regions}))
    # A region whose tactic is a float GEMM kernel runs FP16, whatever Q/DQ it swallowed: a real 0%.
    for layer in regions:
        if layer["LayerType"] == "Myelin":
            layer["TacticName"] = "sm80_xmma_gemm_f16f16_f16f16_f16_nn_n_tilesize32x32x64_by_fusion_tactic"
    fp16 = layer_report.summarize(layer_report.parse_layers({"Layers": regions}), quantized)
    assert fp16.quantized_coverage == 0.0 and fp16.undetermined is None
    assert "only 0 of 5 quantized layers run INT8" in layer_report.coverage_warning(fp16)


def test_example_vit_with_foreign_node_regions_reports_full_coverage(exported_examples, tmp_path):
    work, configs = _fresh_copy(exported_examples, tmp_path)
    cfg = load_config(configs["vit_digits"])
    with standin(tmp_path / "gpu-machine", myelin="foreign-node"):
        record = stages.run("build", cfg, root=work)
    inspected = json.loads((work / record.engines.dir / "layers-w8a8.json").read_text())["Layers"]
    regions = [layer for layer in inspected if layer["LayerType"] == "Myelin"]
    assert regions and all(t["Datatype"] == "Half" for r in regions for t in r["Inputs"])
    w8a8 = record.engines.layers["w8a8"]
    assert w8a8.quantized_coverage == 1.0 and w8a8.warning is None, w8a8
