"""A record names only bytes its stage read (issue 23, item 1): inputs are fingerprinted as the stage
starts, files read whole (weights, the user's modules) are read once and refused if they are not those
bytes, and an input that changed while the stage ran is refused at its end, with nothing recorded.

Each test pauses a stage inside the user's own code (a builder, a data callable) and swaps a file there,
as a training job saving its next checkpoint or an editor in a second terminal would.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

from pipeline import records, stages
from pipeline.config import load_config
from pipeline.errors import PipelineError
from pipeline.layout import Layout
from tests.conftest import USER_MODEL, config_text

# The user model, whose builder and calibration data can swap a file while the stage runs.
SWAPPING = textwrap.dedent(
    """
    import os
    from pathlib import Path

    def swap(path, source):
        Path(path).write_bytes(Path(source).read_bytes())

    def build_then_swap(channels=16, classes=4, path="", source=""):
        swap(path, source)  # the builder runs after export started, before the weights are read
        return build(channels, classes)

    def swap_then_heldout(batch_size, path="", source=""):
        swap(path, source)  # export reads held-out rows after the model and its weights
        yield from heldout(batch_size)

    def calibration_then_swap(samples, batch_size, path="", source=""):
        first = True
        for feed in calibration(samples, batch_size):
            yield feed
            if first:
                swap(path, source)  # read mid-stream: the stage has consumed the first batch
                first = False
    """
)


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net = tmp_path / "net.py"
    net.write_text(USER_MODEL + SWAPPING)
    torch.manual_seed(0)
    first, second = tmp_path / "first.pt", tmp_path / "second.pt"
    namespace: dict = {}
    exec(USER_MODEL, namespace)
    torch.save(namespace["build"]().state_dict(), first)
    net_two = namespace["build"]()
    with torch.no_grad():
        for p in net_two.parameters():
            p.mul_(0.5)
    torch.save(net_two.state_dict(), second)
    (tmp_path / "weights.pt").write_bytes(first.read_bytes())
    return tmp_path, net, first, second


def _config(tmp_path, net, model: str, calibration: str | None = None, evaluation: str | None = None):
    sections = {"model": model}
    if calibration is not None:
        sections["calibration"] = calibration
    if evaluation is not None:
        sections["evaluation"] = evaluation
    (tmp_path / "tiny.toml").write_text(config_text(str(net), **sections))
    return load_config(tmp_path / "tiny.toml")


def test_weights_saved_anew_before_export_reads_them_are_refused(project):
    tmp_path, net, first, second = project
    model = (
        f'[model]\nsource = "{net}:build_then_swap"\nweights = "weights.pt"\n'
        f'[model.args]\npath = "{tmp_path / "weights.pt"}"\nsource = "{second}"'
    )
    cfg = _config(tmp_path, net, model)
    with pytest.raises(PipelineError, match=r"weights\.pt: changed after trtpipe export started, before it read"):
        stages.run("export", cfg)
    out = Layout.of(cfg)
    assert records.load_record(out, "export") is None and not out.graph("fp32").exists()


def test_data_changed_while_calibrate_runs_is_refused_with_nothing_recorded(project):
    """The calibration callable's file is what its fingerprint hashes: edited mid-stream, the ranges
    come from both versions; the old code recorded the new file's hash."""
    tmp_path, net, first, second = project
    cfg = _config(tmp_path, net, f'[model]\nsource = "{net}:build"')
    stages.run("export", cfg)
    edited = tmp_path / "edited.py"
    edited.write_text(net.read_text() + "\n# edited while calibrate ran\n")
    calibration = (
        f'[calibration]\nsource = "{net}:calibration_then_swap"\nsamples = 64\nbatch_size = 16\n'
        f'[calibration.args]\npath = "{net}"\nsource = "{edited}"'
    )
    cfg = _config(tmp_path, net, f'[model]\nsource = "{net}:build"', calibration)
    stages.run("export", cfg)
    with pytest.raises(
        PipelineError, match=r"calibration data .* changed while trtpipe calibrate ran, .*nothing was recorded"
    ):
        stages.run("calibrate", cfg)
    out = Layout.of(cfg)
    assert records.load_record(out, "calibrate") is None
    assert records.rerun_reason(cfg, out, stages.STAGES["calibrate"]) == "not run yet"


def test_weights_saved_anew_after_export_read_them_are_refused_at_its_end(project):
    """Read first, then replaced (export reads held-out rows after the weights): the graph
    holds the first weights; the old code recorded the second's hash, and engines called it current."""
    tmp_path, net, first, second = project
    evaluation = (
        f'[evaluation]\nsource = "{net}:swap_then_heldout"\n'
        f'[evaluation.args]\npath = "{tmp_path / "weights.pt"}"\nsource = "{second}"'
    )
    cfg = _config(tmp_path, net, f'[model]\nsource = "{net}:build"\nweights = "weights.pt"', evaluation=evaluation)
    with pytest.raises(
        PipelineError, match=r"weights weights\.pt changed while trtpipe export ran, .*nothing was recorded"
    ):
        stages.run("export", cfg)
    assert records.load_record(Layout.of(cfg), "export") is None
