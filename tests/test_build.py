"""Build decisions that need no GPU: profiles, manifests and refusals, the layer report, the CPU fallback."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx
import pytest

from pipeline import records, stages
from pipeline.config import load_config
from pipeline.errors import PipelineError
from pipeline.fileio import sha256_file
from pipeline.layout import Layout
from pipeline.targets.tensorrt import layers as layer_report
from pipeline.targets.tensorrt.manifest import EngineEntry, Manifest, verify_engine
from pipeline.targets.tensorrt.probe import engine_dir_name, probe
from pipeline.targets.tensorrt.profiles import check_bench_batches, profile_index_for, profiles_for
from tests import graphs
from tests.conftest import write_config

FIXTURES = Path(__file__).parent / "fixtures"


# --- profiles ----------------------------------------------------------------


def _graph(shape=("batch", 16, 8, 8)) -> onnx.ModelProto:
    model = graphs.conv_transpose()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, shape, strict=True):
        dim.Clear()
        if isinstance(value, str):
            dim.dim_param = value
        else:
            dim.dim_value = value
    return model


def _cfg(tmp_path, user_model, **sections):
    sections.setdefault("inputs", '[[inputs]]\nname = "x"\nshape = ["batch", 16, 8, 8]')
    return load_config(write_config(tmp_path, user_model, **sections))


def test_profiles_from_config(tmp_path, user_model):
    cfg = _cfg(tmp_path, user_model, batch="[[batch]]\nmin=1\nopt=8\nmax=32\n\n[[batch]]\nmin=32\nopt=256\nmax=1024")
    profiles = profiles_for(cfg, _graph())
    assert [(p[0].min, p[0].opt, p[0].max) for p in profiles] == [
        ((1, 16, 8, 8), (8, 16, 8, 8), (32, 16, 8, 8)),
        ((32, 16, 8, 8), (256, 16, 8, 8), (1024, 16, 8, 8)),
    ]
    assert profile_index_for(cfg, 512) == 1 and profile_index_for(cfg, 4) == 0


def test_profile_static_axis_mismatch_names_input_and_axis(tmp_path, user_model):
    cfg = _cfg(tmp_path, user_model, inputs='[[inputs]]\nname = "x"\nshape = ["batch", 3, 8, 8]')
    with pytest.raises(PipelineError, match=r"input 'x' axis 1 is 16 in the graph but 3 in the config"):
        profiles_for(cfg, _graph())


def test_other_dynamic_axis_needs_a_range(tmp_path, user_model):
    with pytest.raises(PipelineError, match=r"input axis 'h' is dynamic but has no range; add \[\[axes\]\]"):
        _cfg(tmp_path, user_model, inputs='[[inputs]]\nname = "x"\nshape = ["batch", 16, "h", 8]')
    ranged = _cfg(
        tmp_path,
        user_model,
        inputs='[[inputs]]\nname = "x"\nshape = ["batch", 16, "h", 8]',
        top='name = "tiny"\n[[axes]]\nname = "h"\nmin = 4\nopt = 8\nmax = 16',
    )
    (profile,) = profiles_for(ranged, _graph(("batch", 16, "h", 8)))
    assert profile[0].max == (32, 16, 16, 8)


def test_graph_static_where_config_is_dynamic(tmp_path, user_model):
    cfg = _cfg(tmp_path, user_model)
    with pytest.raises(PipelineError, match=r"input 'x' axis 0 is 4 in the graph"):
        profiles_for(cfg, _graph((4, 16, 8, 8)))


def test_bench_batches_must_fit_a_profile(tmp_path, user_model):
    cfg = _cfg(tmp_path, user_model)  # one profile [1, 32]
    check_bench_batches(cfg, (1, 16, 32), "bench.gpu_batches")
    with pytest.raises(PipelineError, match=r"bench.gpu_batches batch 128 is outside every \[batch\] profile"):
        check_bench_batches(cfg, (16, 128), "bench.gpu_batches")


# --- manifest and refusals --------------------------------------------------


def _manifest(tmp_path) -> Path:
    engine = tmp_path / "w8a8.plan"
    engine.write_bytes(b"\x00serialized engine bytes" * 100)
    manifest = Manifest(
        "tiny",
        "11.4.0.106",
        "NVIDIA A100-SXM4-80GB",
        "8.0",
        [{"x": {"min": [1, 16, 8, 8], "opt": [8, 16, 8, 8], "max": [32, 16, 8, 8]}}],
        {"workspace_mib": 4096},
    )
    manifest.engines["w8a8"] = EngineEntry(
        "w8a8", engine.name, sha256_file(engine), "model.w8a8.onnx", "ab" * 32, 12.5, 0.95
    )
    manifest.save(tmp_path / "manifest.json")
    return tmp_path / "manifest.json"


def test_manifest_round_trip_and_accepts_a_matching_engine(tmp_path):
    path = _manifest(tmp_path)
    loaded = Manifest.load(path)
    assert loaded.engines["w8a8"].int8_coverage == 0.95 and loaded.compute_capability == "8.0"
    assert verify_engine(path, "w8a8", "11.4.0.106", "8.0") == tmp_path / "w8a8.plan"


def test_refuses_a_truncated_engine(tmp_path):
    path = _manifest(tmp_path)
    engine = tmp_path / "w8a8.plan"
    engine.write_bytes(engine.read_bytes()[:100])
    with pytest.raises(PipelineError, match=r"differs from the manifest.*truncated or corrupt"):
        verify_engine(path, "w8a8", "11.4.0.106", "8.0")


def test_refuses_another_tensorrt_version_or_gpu(tmp_path):
    path = _manifest(tmp_path)
    with pytest.raises(PipelineError, match=r"built with TensorRT 11.4.0.106, this machine has 11.5.0"):
        verify_engine(path, "w8a8", "11.5.0", "8.0")
    with pytest.raises(PipelineError, match=r"built for compute capability 8.0 .*this GPU is 8.9"):
        verify_engine(path, "w8a8", "11.4.0.106", "8.9")
    with pytest.raises(PipelineError, match=r"no fp16 engine \(built: w8a8\)"):
        verify_engine(path, "fp16", "11.4.0.106", "8.0")


def test_engine_folder_names_gpu_cc_and_version():
    assert engine_dir_name("NVIDIA A100-SXM4-80GB", "8.0", "11.4.0.106") == "nvidia-a100-sxm4-80gb-sm80-trt11.4.0.106"


# --- layer report -------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["layers-trt10.json", "layers-trt11.json"])
def test_layer_report_reads_both_spellings(fixture):
    info = json.loads((FIXTURES / fixture).read_text())
    parsed = layer_report.parse_layers(info)
    by_name = {layer.name: layer for layer in parsed}
    assert by_name["conv1 + relu_1"].inputs == ("int8",)
    assert by_name["stem_conv + relu"].inputs == ("fp16",)
    assert by_name["pool + head"].outputs == ("fp32",)
    summary = layer_report.summarize(parsed, quantized={"conv1", "conv2", "conv3"})
    assert (summary.layers, summary.compute_layers, summary.int8_compute_layers) == (9, 5, 2)
    assert (summary.reformat_layers, summary.unfused_qdq_layers) == (2, 2)
    assert summary.int8_coverage == pytest.approx(0.4)
    assert not summary.by_onnx_node  # these fixtures carry no "Metadata": counted by compute layer
    warning = layer_report.coverage_warning(summary)
    assert warning is not None and "only 2 of 3 quantized layers run INT8" in warning and "2 reformat" in warning
    assert layer_report.coverage_warning(layer_report.summarize(parsed, quantized={"conv1", "conv2"})) is None


def test_layer_report_without_detailed_verbosity():
    summary = layer_report.summarize(layer_report.parse_layers({"Layers": ["conv1 + relu", "head"]}), {"conv1"})
    assert not summary.detailed
    assert "without DETAILED" in layer_report.coverage_warning(summary)


def test_expected_int8_layers_counted_from_the_qdq_graph():
    from tests.test_quantize import quantize

    _, w8a8 = quantize(graphs.residual())
    assert layer_report.quantized_compute_node_names(w8a8) == {"conv1", "conv2"}


# --- backend choice on a machine without TensorRT --------------------------------


def test_probe_explains_a_missing_tensorrt(monkeypatch):
    probe.cache_clear()
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as if it were not installed
    cap = probe()
    probe.cache_clear()
    assert not cap.available and "TensorRT is not installed" in cap.reason and "trtpipe[gpu]" in cap.reason


@pytest.mark.skipif(probe().available, reason="this machine has TensorRT and a GPU")
def test_build_without_tensorrt_records_why_and_tensorrt_backend_refuses(make_config, tmp_path):
    cfg = make_config()
    stages.run("export", cfg, root=tmp_path)
    stages.run("quantize", cfg, root=tmp_path)
    record = stages.run("build", cfg, root=tmp_path)
    assert record.backend == "onnxruntime" and record.reason == probe().reason and record.engines is None
    assert json.loads(Layout.of(cfg, tmp_path).build_record.read_text())["backend"] == "onnxruntime"
    with pytest.raises(PipelineError, match=r"--backend tensorrt: .*trtpipe\[gpu\]"):
        stages.run("build", cfg, root=tmp_path, backend="tensorrt")
    # Refused before anything was removed: the previous build and its record stand (they were deleted
    # first, so deploy then refused and `trtpipe engines` rebuilt, recompared and rebenched).
    out = Layout.of(cfg, tmp_path)
    assert out.record("build").is_file() and out.build_record.is_file()
    assert records.rerun_reason(cfg, out, stages.STAGES["build"]) is None
