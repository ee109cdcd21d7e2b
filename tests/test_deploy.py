"""Deploy: a Triton repository whose config parses against Triton's schema, and every refusal."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from tritonclient.grpc import model_config_pb2 as mc

from pipeline import stages
from pipeline.cli import main
from pipeline.deployment import triton
from pipeline.errors import PipelineError


def _compared(cfg):
    stages.run("compare", cfg)
    stages.run("bench", cfg)


def test_triton_repository_on_cpu(pipeline_run, tmp_path):
    cfg, _, out = pipeline_run
    _compared(cfg)
    model_dir = stages.deploy(cfg, tmp_path / "repo", precision="w8a8")
    assert sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()) == [
        "1/model.onnx",
        "config.pbtxt",
        "manifest.json",
    ]
    config = triton.parse((model_dir / "config.pbtxt").read_text())
    assert (config.name, config.platform, config.backend) == ("tiny", "onnxruntime_onnx", "onnxruntime")
    assert config.max_batch_size == 32  # the [batch] profile's max
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("x", mc.TYPE_FP32, [3, 8, 8])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("logits", mc.TYPE_FP32, [4])]
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    # The [batch] profile's opt and max, whatever batches bench timed.
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 32]
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["precision"] == "w8a8-cpu" and manifest["accuracy_gate"] == {"passed": True}
    # The graph runs with the declared names and shapes.
    sess = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.sin(np.arange(5 * 3 * 8 * 8, dtype=np.float32)).reshape(5, *config.input[0].dims)
    (y,) = sess.run([config.output[0].name], {config.input[0].name: x})
    assert y.shape == (5, *config.output[0].dims)


@pytest.mark.parametrize("pipeline_run", ["[verdict]\nmin_speedup = 100.0"], indirect=True)
def test_a_cpu_build_ships_fp32_where_its_8_bit_graph_is_no_faster(pipeline_run, tmp_path):
    """Below [verdict] min_speedup: quantize says the CPU graph is not recommended, the report keeps
    FP32, and deploy ships the FP32 graph with the verdict in its manifest (it shipped the slower
    w8a8-cpu graph, with a warning only)."""
    from pipeline import results
    from pipeline.records import sha256
    from pipeline.results import QuantizeResult

    cfg, _, out = pipeline_run
    assert results.load(QuantizeResult, out).cpu_recommended is False
    _compared(cfg)
    assert "the largest batch decides for the model: **FP32**" in stages.run("report", cfg).read_text()
    model_dir = stages.deploy(cfg, tmp_path / "repo")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["precision"] == "fp32" and manifest["accuracy_gate"] == {"passed": True}
    assert manifest["speed_verdict"].startswith("batch 8: deploy FP32: w8a8 is no faster (")
    assert sha256(model_dir / "1" / "model.onnx") == sha256(out.graph("fp32")) == manifest["sha256"]
    asked = stages.deploy(cfg, tmp_path / "asked", precision="w8a8")  # asked for: shipped, the verdict beside it
    assert json.loads((asked / "manifest.json").read_text())["speed_verdict"] == manifest["speed_verdict"]


def test_plain_format(pipeline_run, tmp_path):
    cfg, _, _ = pipeline_run
    _compared(cfg)
    folder = stages.deploy(cfg, tmp_path / "plain", precision="fp16", fmt="plain")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "manifest.json", "model.fp16.onnx"]
    assert 'ort.InferenceSession("model.fp16.onnx"' in (folder / "README.md").read_text()


def test_refuses_a_file_that_changed_since_build(pipeline_run, tmp_path):
    cfg, _, out = pipeline_run
    _compared(cfg)
    graph = out.graph("w8a8-cpu")
    graph.write_bytes(graph.read_bytes() + b"\x00")
    changed = r"model\.w8a8-cpu\.onnx changed since trtpipe quantize wrote it; re-run trtpipe quantize -c "
    with pytest.raises(PipelineError, match=changed):
        stages.deploy(cfg, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()  # nothing written


def test_refuses_a_missing_precision(pipeline_run, tmp_path):
    cfg, _, out = pipeline_run
    _compared(cfg)
    out.graph("fp16").unlink()
    with pytest.raises(PipelineError, match=r"model.fp16.onnx: missing"):
        stages.deploy(cfg, tmp_path / "repo", precision="fp16")
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("pipeline_run", ['[quantize]\ntargets = ["tensorrt"]'], indirect=True)
def test_w8a8_on_a_cpu_build_without_its_cpu_graph_names_the_target(pipeline_run, tmp_path):
    """It said "no w8a8 artifact to deploy (have: fp16, w8a8)": the w8a8 there is TensorRT's graph."""
    cfg, _, _ = pipeline_run
    stages.run("compare", cfg)
    with pytest.raises(
        PipelineError,
        match=r"tiny: no w8a8 artifact to deploy on this CPU-only build: \[quantize\] targets in \S+tiny\.toml "
        r"lacks 'onnxruntime-cpu'; add it and run trtpipe engines, or deploy --precision fp16$",
    ):
        stages.deploy(cfg, tmp_path / "repo")


def test_refuses_before_compare(pipeline_run, tmp_path):
    cfg, _, _ = pipeline_run
    with pytest.raises(PipelineError, match=r"no compare results; run trtpipe compare before deploying"):
        stages.deploy(cfg, tmp_path / "repo")


@pytest.mark.parametrize("pipeline_run", ["[accuracy.w8a8_cpu]\nmin_cosine = 0.9999999"], indirect=True)
def test_failed_gate_refuses_unless_forced(pipeline_run, tmp_path):
    cfg, path, _ = pipeline_run
    with pytest.raises(PipelineError, match=r"accuracy gate failed for w8a8-cpu"):
        stages.run("compare", cfg)
    result = CliRunner().invoke(main, ["deploy", "-c", str(path), "--to", str(tmp_path / "repo")])
    assert result.exit_code == 1 and "failed its accuracy gate" in result.output and "--force" in result.output
    assert not (tmp_path / "repo").exists()
    forced = stages.deploy(cfg, tmp_path / "repo", force=True)
    gate = json.loads((forced / "manifest.json").read_text())["accuracy_gate"]
    assert gate["passed"] is False and gate["overridden_with_force"] is True and "cosine" in gate["failures"][0]


def test_tensorrt_config_for_an_engine(make_config):
    from tests import graphs

    cfg = make_config(
        inputs='[[inputs]]\nname = "x"\nshape = ["batch", 16, 8, 8]',
        outputs='[[outputs]]\nname = "y"\nshape = ["batch", 16, 16, 16]',
    )
    config = triton.build_config(cfg, graphs.conv_transpose(), "tensorrt", "GPU", [8, 16, 64])
    parsed = triton.parse(triton.to_text(config))
    assert parsed.platform == "tensorrt_plan" and parsed.backend == ""
    assert parsed.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert list(parsed.dynamic_batching.preferred_batch_size) == [8, 16]  # 64 exceeds max_batch_size 32
    assert list(parsed.input[0].dims) == [16, 8, 8]


TWO_PROFILES = "[[batch]]\nmin = 1\nopt = 8\nmax = 16\n\n[[batch]]\nmin = 17\nopt = 32\nmax = 64"


def test_an_engine_with_two_profiles_lists_both_for_its_instances(make_config):
    """max_batch_size was the largest max over the profiles and instance_group listed none: Triton's
    TensorRT backend then uses profile 0 alone, whose max (16) is below it, and refuses the model."""
    from tests import graphs

    cfg = make_config(batch=TWO_PROFILES, inputs='[[inputs]]\nname = "x"\nshape = ["batch", 16, 8, 8]')
    parsed = triton.parse(triton.to_text(triton.build_config(cfg, graphs.residual(), "tensorrt", "GPU", [8, 32])))
    (group,) = parsed.instance_group
    assert list(group.profile) == ["0", "1"] and group.kind == mc.ModelInstanceGroup.KIND_GPU
    # The backend's rule (model_state.cc): max_batch_size at most the largest max of the listed profiles.
    assert parsed.max_batch_size == max(cfg.batch[int(i)].max for i in group.profile) == 64
    assert [(w.name, w.batch_size) for w in parsed.model_warmup] == [
        ("profile 0 at batch 8", 8),
        ("profile 1 at batch 32", 32),
    ]
    assert list(parsed.model_warmup[1].inputs["x"].dims) == [16, 8, 8] and parsed.model_warmup[1].inputs["x"].zero_data
    assert not parsed.optimization.cuda.graphs  # only where [bench] cuda_graph timed them


def test_profiles_that_leave_a_batch_size_to_none_are_refused(make_config):
    from tests import graphs

    cfg = make_config(batch="[[batch]]\nmin = 1\nopt = 8\nmax = 16\n\n[[batch]]\nmin = 33\nopt = 48\nmax = 64")
    with pytest.raises(
        PipelineError, match=r"no \[batch\] profile \(\[1, 16\], \[33, 64\]\) takes a batch of 17 to 32"
    ):
        triton.build_config(cfg, graphs.residual(), "tensorrt", "GPU", [])
    assert triton.build_config(cfg, graphs.residual(), "onnxruntime", "GPU", []).max_batch_size == 64  # ORT: any


def test_a_tensorrt_qdq_graph_on_onnx_runtime_asks_for_the_tensorrt_accelerator(make_config):
    """On the CUDA EP alone the TensorRT-target Q/DQ graph is simulated in float, yet was deployed as w8a8."""
    from tests import graphs

    cfg = make_config(inputs='[[inputs]]\nname = "x"\nshape = ["batch", 16, 8, 8]')
    config = triton.parse(triton.to_text(triton.build_config(cfg, graphs.residual(), "onnxruntime", "GPU", [], True)))
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "INT8"
    assert accelerator.parameters["max_workspace_size_bytes"] == str(4096 << 20)
    plain = triton.parse(triton.to_text(triton.build_config(cfg, graphs.residual(), "onnxruntime", "GPU", [])))
    assert not plain.optimization.execution_accelerators.gpu_execution_accelerator


def test_on_a_gpu_without_engines_the_tensorrt_qdq_graph_deploys_with_the_tensorrt_accelerator(
    pipeline_run, tmp_path, monkeypatch
):
    from pipeline import ortsession

    cfg, _, _ = pipeline_run
    # A GPU machine without TensorRT: the build records the CUDA EP (ONNX Runtime here falls back to the CPU).
    monkeypatch.setattr(ortsession, "providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    stages.run("build", cfg, backend="onnxruntime")
    stages.run("compare", cfg)
    model_dir = stages.deploy(cfg, tmp_path / "repo", precision="w8a8")
    config = triton.parse((model_dir / "config.pbtxt").read_text())
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert config.backend == "onnxruntime" and config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "INT8"
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["precision"] == "w8a8" and manifest["execution_accelerator"].startswith("tensorrt: ")
    plain = stages.deploy(cfg, tmp_path / "plain", precision="w8a8", fmt="plain")
    assert '("TensorrtExecutionProvider", {"trt_int8_enable": True' in (plain / "README.md").read_text()


def test_config_text_with_an_unknown_field_is_refused():
    with pytest.raises(PipelineError, match="does not parse against Triton's model config schema"):
        triton.parse('name: "x"\nmax_batch_sise: 8\n')


def test_refuses_bytes_compare_did_not_measure_even_after_a_new_build(pipeline_run, tmp_path):
    """Re-quantized (other bytes) and rebuilt, so the build record matches: compare measured the old graph."""
    cfg, path, out = pipeline_run
    _compared(cfg)
    import dataclasses

    other = dataclasses.replace(cfg, calibration=dataclasses.replace(cfg.calibration, method="max"))
    stages.run("quantize", other)
    stages.run("build", other, backend="onnxruntime")
    changed = r"model\.w8a8\S*\.onnx changed since trtpipe compare ran; re-run trtpipe compare"
    with pytest.raises(PipelineError, match=changed):
        stages.deploy(other, tmp_path / "repo")
    assert not (tmp_path / "repo" / "tiny").exists()
    stages.run("compare", other)
    assert (stages.deploy(other, tmp_path / "repo") / "1" / "model.onnx").is_file()


def test_a_folder_deploy_did_not_write_is_kept_unless_replace(pipeline_run, tmp_path):
    cfg, _, _ = pipeline_run
    _compared(cfg)
    mine = tmp_path / "repo" / "tiny"
    (mine / "2").mkdir(parents=True)
    (mine / "config.pbtxt").write_text("# hand-tuned\n")
    (mine / "2" / "model.onnx").write_bytes(b"old model")
    with pytest.raises(PipelineError, match="holds files trtpipe deploy did not write .* pass --replace"):
        stages.deploy(cfg, tmp_path / "repo")
    assert (mine / "config.pbtxt").read_text() == "# hand-tuned\n" and (mine / "2" / "model.onnx").is_file()
    stages.deploy(cfg, tmp_path / "repo", replace=True)
    assert sorted(p.relative_to(mine).as_posix() for p in mine.rglob("*") if p.is_file()) == [
        "1/model.onnx",
        "config.pbtxt",
        "manifest.json",
    ]  # no version 2 left for the new config to serve
    assert [p.name for p in (tmp_path / "repo").iterdir()] == ["tiny"]  # no staging or old folder left


def test_redeploy_replaces_its_own_folder_whole(pipeline_run, tmp_path):
    cfg, _, _ = pipeline_run
    _compared(cfg)
    model_dir = stages.deploy(cfg, tmp_path / "repo")
    (model_dir / "2").mkdir()
    (model_dir / "2" / "model.onnx").write_bytes(b"stale")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "repo" / f".tiny.deploy.trtpipe-{int(dead.stdout)}.x").mkdir()  # a deploy killed midway
    running = tmp_path / "repo" / f".tiny.deploy.trtpipe-{os.getpid()}.y"  # one still running beside it
    running.mkdir()
    # A version folder the user dropped in (common Triton practice) is theirs: the old code deleted it.
    with pytest.raises(PipelineError, match=r"repo/tiny: holds files trtpipe deploy did not write .* --replace"):
        stages.deploy(cfg, tmp_path / "repo", precision="fp16")
    assert (model_dir / "2" / "model.onnx").read_bytes() == b"stale"
    (model_dir / "1" / "model.onnx").write_bytes(b"edited by hand")  # nor is a file edited since deploy wrote it
    shutil.rmtree(model_dir / "2")
    with pytest.raises(PipelineError, match=r"holds files trtpipe deploy did not write"):
        stages.deploy(cfg, tmp_path / "repo", precision="fp16")
    stages.deploy(cfg, tmp_path / "repo", precision="fp16", replace=True)
    assert json.loads((model_dir / "manifest.json").read_text())["precision"] == "fp16"
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == [running.name, "tiny"]


@pytest.mark.parametrize("to", ["engines", "calib", "engines/tiny/onnx", ".."])
def test_refuses_a_destination_over_the_stages_own_folders(pipeline_run, tmp_path, to):
    """--to engines --replace would have swapped engines/tiny (every graph, every record) for the
    deployment; --to .. (the project's own name) the whole project."""
    cfg, _, out = pipeline_run
    _compared(cfg)
    graphs = sorted(out.onnx_dir.iterdir())
    cfg = dataclasses.replace(cfg, name=tmp_path.name) if to == ".." else cfg
    with pytest.raises(PipelineError, match=rf"^--to {re.escape(to)}: .*(engines|calib).* a folder of its own"):
        stages.deploy(cfg, Path(to), replace=True)
    assert sorted(out.onnx_dir.iterdir()) == graphs


def test_a_users_folder_with_a_manifest_is_not_deploys(pipeline_run, tmp_path):
    """Any manifest.json with model and sha256 keys was taken as deploy's own: a user's registry folder
    and hand-tuned config.pbtxt were replaced without --replace (issue 23, item 3)."""
    cfg, _, _ = pipeline_run
    _compared(cfg)
    theirs = tmp_path / "repo" / "tiny"
    theirs.mkdir(parents=True)
    (theirs / "manifest.json").write_text(json.dumps({"model": "tiny", "sha256": "0" * 64}))
    (theirs / "config.pbtxt").write_text("# tuned by hand\n")
    with pytest.raises(PipelineError, match=r"holds files trtpipe deploy did not write"):
        stages.deploy(cfg, tmp_path / "repo")
    assert (theirs / "config.pbtxt").read_text() == "# tuned by hand\n"


def test_the_sweep_restores_only_a_deployment_deploy_wrote(pipeline_run, tmp_path):
    """A dead writer's .NAME.old.* that is a stray file or a link pointing outside was renamed into
    place as the deployment, then deploy crashed (issue 23, item 6): it is left alone now."""
    cfg, _, _ = pipeline_run
    _compared(cfg)
    repo = tmp_path / "repo"
    repo.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    link = repo / f".tiny.old.trtpipe-{int(dead.stdout)}.x"
    link.symlink_to(outside)
    stray = repo / f".tiny.old.trtpipe-{int(dead.stdout)}.y"
    stray.write_text("not a deployment")
    model_dir = stages.deploy(cfg, repo)
    assert model_dir.is_dir() and not model_dir.is_symlink() and (model_dir / "config.pbtxt").is_file()
    assert link.is_symlink() and stray.read_text() == "not a deployment" and outside.is_dir()


def test_a_file_where_the_deployment_goes_is_one_line(pipeline_run, tmp_path):
    cfg, _, _ = pipeline_run
    _compared(cfg)
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "tiny").write_text("a file")
    with pytest.raises(PipelineError, match=r"repo/tiny: a file or a link, not a deployment's folder"):
        stages.deploy(cfg, tmp_path / "repo", replace=True)
    assert (tmp_path / "repo" / "tiny").read_text() == "a file"
