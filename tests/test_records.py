"""Stage records: what each stage read and wrote by sha256, the refusals they give, and
``trtpipe engines`` re-running exactly the stages a change reaches."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import records, stages
from pipeline.callables import load_callable
from pipeline.codehash import stage_code_version
from pipeline.config import load_config
from pipeline.errors import PipelineError
from pipeline.fileio import after_record, sha256_file, write_bytes
from pipeline.layout import Layout
from pipeline.stages import STAGES
from tests.conftest import FAST_BENCH, config_text, write_config

AFTER_EXPORT = ["calibrate", "quantize", "build", "compare", "bench", "report"]


def _project(tmp_path: Path, user_model: Path, bench: str = FAST_BENCH):
    """The tiny model with a weights file and a folder of .npz calibration data, run from tmp_path."""
    weights, data = tmp_path / "weights.pt", tmp_path / "calib"
    if not weights.exists():
        torch.save(load_callable(f"{user_model}:build", tmp_path, "model")().state_dict(), weights)
        data.mkdir()
        images = load_callable(f"{user_model}:images", tmp_path, "data")
        for i in range(4):
            np.savez(data / f"{i}.npz", x=images(16, 16 * i))
    model = f'[model]\nsource = "{user_model}:build"\nweights = "{weights}"\n[model.args]\nchannels = 16'
    calibration = f'[calibration]\nsource = "{data}"\nsamples = 64\nbatch_size = 16'
    path = write_config(tmp_path, user_model, top=f'name = "tiny"\n{bench}', model=model, calibration=calibration)
    return load_config(path), weights, data


def _new_weights(weights: Path) -> None:
    state = torch.load(weights, weights_only=True)
    state["conv1.weight"] = state["conv1.weight"] * 1.5
    torch.save(state, weights)


def test_each_stage_records_the_sha256_of_what_it_read_and_wrote(tmp_path, user_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg, weights, data = _project(tmp_path, user_model)
    out = Layout.of(cfg)
    stages.run("export", cfg)
    stages.run("quantize", cfg)  # calibrates first, and records that too
    export, calibrate, quantize = (records.load_record(out, s) for s in ("export", "calibrate", "quantize"))
    # Files inside the project by their path in it (a moved project is the same one), others by their absolute path.
    assert export.inputs["weights weights.pt"] == sha256_file(weights)
    assert export.inputs[f"model source {user_model.relative_to(tmp_path)}"] == sha256_file(user_model)
    assert export.inputs[records.CODE] == stage_code_version("pipeline.stages.export")
    assert any(k.startswith("config [name, model,") for k in export.inputs)
    assert export.outputs == {out.key(out.graph(p)): sha256_file(out.graph(p)) for p in ("fp32", "fp16")}
    assert calibrate.inputs[out.key(out.graph("fp32"))] == export.outputs["engines/tiny/onnx/model.fp32.onnx"]
    assert f"calibration data {data}" in calibrate.inputs
    assert calibrate.outputs == {"calib/tiny/ranges.json": sha256_file(out.ranges)}
    assert quantize.inputs["calib/tiny/ranges.json"] == sha256_file(out.ranges) and quantize.passed
    assert set(quantize.outputs) == {
        "engines/tiny/onnx/model.w8a8.onnx",
        "engines/tiny/onnx/model.w8a8-cpu.onnx",
        "engines/tiny/results/quantize.json",
    }
    # New weights: no stage after export trusts the old graphs; the line names the file and the command.
    _new_weights(weights)
    for stage in (STAGES["calibrate"], STAGES["quantize"], STAGES["build"]):
        with pytest.raises(
            PipelineError,
            match=rf"^weights weights\.pt changed since trtpipe export ran; re-run trtpipe export -c {cfg.path}$",
        ):
            stage(cfg)
    # A damaged record is one line too.
    out.record("export").write_text('{"version": 1, "stage": "export"')
    with pytest.raises(
        PipelineError, match=r"records/export\.json: not a record of trtpipe export .*re-run trtpipe export"
    ):
        stages.run("calibrate", cfg)


def test_engines_reruns_exactly_what_depends_on_a_change(tmp_path, user_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg, weights, data = _project(tmp_path, user_model)
    out = Layout.of(cfg)
    assert stages.engines(cfg) == list(stages.NAMES)
    assert stages.engines(cfg) == []
    # Calibration data only, with the same names, sizes and modification times: its bytes are what count.
    first = data / "0.npz"
    stat = first.stat()
    with np.load(first) as npz:
        np.savez(first, x=npz["x"] * 1.5)
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert first.stat().st_size == stat.st_size
    assert stages.engines(cfg) == AFTER_EXPORT
    # One config section: only the stages reading [bench].
    cfg, _, _ = _project(tmp_path, user_model, FAST_BENCH.replace("warmup = 1", "warmup = 2"))
    assert stages.engines(cfg) == ["bench", "report"]
    # New weights: everything from export on.
    _new_weights(weights)
    assert records.rerun_reason(cfg, out, STAGES["export"]) == "weights weights.pt changed"
    assert stages.engines(cfg) == list(stages.NAMES)
    # Other code in bench (pipeline.codehash tells which stages run a file): bench, and report on its new timings.
    real = records.stage_code_version
    monkeypatch.setattr(records, "stage_code_version", lambda s: "0" * 64 if s == "pipeline.stages.bench" else real(s))
    assert records.rerun_reason(cfg, out, STAGES["bench"]) == f"{records.CODE} changed"
    assert stages.engines(cfg) == ["bench", "report"]


def test_deploy_refuses_after_an_upstream_change(tmp_path, user_model, monkeypatch):
    """Accuracy measured on graphs exported from other weights says nothing of the model as it is now."""
    monkeypatch.chdir(tmp_path)
    cfg, weights, _ = _project(tmp_path, user_model)
    stages.engines(cfg, until="compare")
    _new_weights(weights)
    with pytest.raises(PipelineError, match=r"weights weights\.pt changed since trtpipe export ran"):
        stages.deploy(cfg, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_what_a_killed_run_left_is_swept_by_the_next(tmp_path, user_model, monkeypatch):
    """Temporary names carry their writer's process id: the next stage removes those whose writer died
    (a full-size graph among them), never those of a run still going."""
    import subprocess
    import sys

    monkeypatch.chdir(tmp_path)
    cfg, _, _ = _project(tmp_path, user_model)
    out = Layout.of(cfg)
    stages.run("export", cfg)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    killed = [
        out.onnx_dir / f".model.fp32.onnx.trtpipe-{pid}.x1.calib.onnx",
        out.onnx_dir / f".model.w8a8.onnx.trtpipe-{pid}.staged.x2",
        out.results_dir / f".quantize.json.trtpipe-{pid}.x3.tmp",
    ]
    running = out.onnx_dir / f".model.w8a8.onnx.trtpipe-{os.getpid()}.x4.tmp"
    for path in (*killed, running):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if "staged" in path.name else path.write_bytes(out.graph("fp32").read_bytes())
    stages.run("calibrate", cfg)
    assert [p for p in killed if p.exists()] == [] and running.exists()


def test_a_record_that_cannot_be_written_leaves_the_outputs_before_it(tmp_path, user_model, monkeypatch):
    """A full disk at the record: the run's outputs never take their names (they wait for the record),
    the previous run's stay as they were, and no temporary file is left."""
    monkeypatch.chdir(tmp_path)
    cfg, _, _ = _project(tmp_path, user_model)
    out = Layout.of(cfg)
    stages.run("export", cfg)
    stages.run("calibrate", cfg)
    before = out.ranges.read_bytes()
    out.record("calibrate").unlink()
    (out.record("calibrate") / "in the way").mkdir(parents=True)  # the record's rename fails
    with pytest.raises(OSError), after_record():
        write_bytes(out.ranges, b"this run's ranges")
        records.finish(cfg, out, STAGES["calibrate"], [out.ranges])
    assert out.ranges.read_bytes() == before
    assert [p for p in tmp_path.rglob("*") if ".trtpipe-" in p.name] == []


def test_outputs_take_their_names_only_after_the_record_naming_them(tmp_path, user_model, monkeypatch):
    """Quantize stopped after its record but before its last output (its rename fails here, as a kill
    could stop it there): every output on disk is one the record names with its bytes, and the one
    missing makes the record stale, so nothing downstream trusts it and engines re-runs quantize."""
    monkeypatch.chdir(tmp_path)
    cfg, _, _ = _project(tmp_path, user_model)
    out = Layout.of(cfg)
    stages.run("export", cfg)
    (out.result("quantize") / "in the way").mkdir(parents=True)
    with pytest.raises(OSError):
        stages.run("quantize", cfg, force=True)
    record = records.load_record(out, "quantize")
    graphs = [out.graph("w8a8"), out.graph("w8a8-cpu")]
    assert sorted(record.outputs) == sorted(out.key(p) for p in [*graphs, out.result("quantize")])
    assert [record.outputs[out.key(p)] == sha256_file(p) for p in graphs] == [True, True]
    stale = f"{out.key(out.result('quantize'))} changed since it was written"
    assert records.rerun_reason(cfg, out, STAGES["quantize"]) == stale
    with pytest.raises(PipelineError, match="changed since trtpipe quantize wrote it"):
        records.verify(cfg, out, STAGES["build"])
    assert [p for p in tmp_path.rglob("*") if ".trtpipe-" in p.name] == []  # the failed rename's too


def test_a_stage_that_never_records_its_held_outputs_is_a_bug(tmp_path):
    with pytest.raises(RuntimeError, match="never placed"), after_record():
        write_bytes(tmp_path / "out.json", b"{}")
    assert list(tmp_path.iterdir()) == []


def test_a_graphs_external_weights_are_recorded_with_it(tmp_path, user_model, monkeypatch):
    """A graph saved with its weights beside it (model.NAME.onnx.data) holds only where they lie:
    its record names the weights' bytes too, so other weights under the same graph bytes are seen."""
    monkeypatch.chdir(tmp_path)
    cfg, _, _ = _project(tmp_path, user_model)
    out = Layout.of(cfg)
    stages.run("export", cfg)
    data = out.graph("fp32").with_name(out.graph("fp32").name + ".data")
    data.write_bytes(b"weights")
    record = records.finish(cfg, out, STAGES["export"], [out.graph("fp32"), out.graph("fp16")])
    assert record.outputs[out.key(data)] == sha256_file(data)
    data.write_bytes(b"other weights")
    assert records.rerun_reason(cfg, out, STAGES["export"]) == f"{out.key(data)} changed since it was written"


def test_a_project_moved_to_another_folder_is_the_same_project(tmp_path, user_model, monkeypatch):
    """Files inside the project are recorded by their path in it: moved elsewhere (another checkout,
    a CI runner), nothing changed and no stage is stale."""
    import shutil

    first = tmp_path / "first"
    (first / "cfg").mkdir(parents=True)
    shutil.copy(user_model, first / "net.py")
    torch.save(load_callable(f"{user_model}:build", tmp_path, "model")().state_dict(), first / "weights.pt")
    model = '[model]\nsource = "../net.py:build"\nweights = "../weights.pt"\n[model.args]\nchannels = 16'
    (first / "cfg" / "tiny.toml").write_text(config_text("../net.py", model=model))
    monkeypatch.chdir(first)
    stages.run("export", load_config(first / "cfg" / "tiny.toml"))
    assert "weights weights.pt" in records.load_record(Layout("tiny", first), "export").inputs
    shutil.copytree(first, tmp_path / "second")
    monkeypatch.chdir(tmp_path / "second")
    cfg = load_config(tmp_path / "second" / "cfg" / "tiny.toml")
    assert records.rerun_reason(cfg, Layout.of(cfg), STAGES["export"]) is None
    stages.run("calibrate", cfg)
