"""Signed records (issue 23, item 2): with a key set outside the project, a record edited by hand is
refused in one line; without one, the same edit passes, as docs/provenance.md says it does."""

from __future__ import annotations

import json

import pytest

from pipeline import records, stages
from pipeline.errors import PipelineError
from pipeline.fileio import sha256_file


def _swap_in_unmeasured_bytes(out) -> None:
    """What an attacker with write access does: another graph in place of the CPU graph, and the
    three sha256 strings that name it re-pointed (quantize's output, compare's and bench's inputs)."""
    graph = out.graph("w8a8-cpu")
    old = sha256_file(graph)
    graph.write_bytes(out.graph("fp32").read_bytes())
    new = sha256_file(graph)
    for stage in ("quantize", "compare", "bench"):
        path = out.record(stage)
        if path.is_file():
            path.write_text(path.read_text().replace(old, new))


@pytest.fixture
def compared(pipeline_run, monkeypatch, tmp_path):
    monkeypatch.setenv("TRTPIPE_SIGNING_KEY", "a key kept outside the project")
    cfg, _, out = pipeline_run
    for stage in ("export", "calibrate", "quantize", "build", "compare"):
        stages.run(stage, cfg)
    return cfg, out


def test_records_are_signed_and_deploy_carries_the_chain(compared, tmp_path):
    cfg, out = compared
    raw = json.loads(out.record("compare").read_text())
    assert len(raw["signature"]) == 64
    manifest = json.loads((stages.deploy(cfg, tmp_path / "repo") / "manifest.json").read_text())
    assert manifest["records"]["compare"] == raw["signature"]
    assert set(manifest["records"]) == {"export", "calibrate", "quantize", "build", "compare"}


def test_a_record_edited_by_hand_is_refused_by_deploy_with_a_key(compared, tmp_path):
    cfg, out = compared
    _swap_in_unmeasured_bytes(out)
    with pytest.raises(PipelineError, match=r"records/compare.json: its signature does not match its content"):
        stages.deploy(cfg, tmp_path / "repo")
    assert not (tmp_path / "repo" / "tiny").exists()


def test_an_unsigned_record_is_refused_once_a_key_is_set(pipeline_run, monkeypatch):
    cfg, _, out = pipeline_run  # recorded without a key
    monkeypatch.setenv("TRTPIPE_SIGNING_KEY", "set afterwards")
    with pytest.raises(PipelineError, match=r"records/export.json: not signed, and a signing key is set"):
        records.verify_stage(cfg, out, stages.STAGES["export"])


def test_without_a_key_the_same_edit_passes_as_documented(pipeline_run, tmp_path):
    """The limit docs/provenance.md states: unsigned records catch accidents, not someone who can
    edit the project; deploy then ships bytes compare never measured."""
    cfg, _, out = pipeline_run
    for stage in ("build", "compare"):
        stages.run(stage, cfg)
    _swap_in_unmeasured_bytes(out)
    deployed = stages.deploy(cfg, tmp_path / "repo")
    assert (deployed / "1" / "model.onnx").read_bytes() == out.graph("fp32").read_bytes()
