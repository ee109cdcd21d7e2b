"""trtpipe's TensorRT code path, executed on the TensorRT 11.4 stand-in (tests/trt_standin).

Build, compare, bench, report and deploy run through Polygraphy's real loaders and runner and
our TensorRT layer; each defect the stand-in found has a test here. The GPU tests in
tests/gpu stay the final word on what real TensorRT does.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from pipeline import stages
from pipeline.artifacts import Artifacts
from pipeline.build.manifest import Manifest
from pipeline.cli import main
from pipeline.config import load_config
from tests.conftest import write_config
from tests.test_trt_standin import POLYGRAPHY_PROBES
from tests.trt_standin import standin

FAST = "[bench]\ngpu_batches = [1, 8]\ncpu_batches = [1, 8]\nwarmup = 1\niterations = 3\nmin_seconds = 0.0"


@pytest.fixture
def tiny(tmp_path, user_model, monkeypatch):
    """The tiny user model exported and quantized (on the CPU), run from tmp_path."""
    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path, user_model, top=f'name = "tiny"\n{FAST}')
    cfg = load_config(path)
    stages.export(cfg)
    stages.quantize(cfg)
    return cfg, path, Artifacts.of(cfg)


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
    record = stages.build(cfg)
    target = Path(record["dir"])
    assert record["backend"] == "tensorrt" and target.name == "stand-in-gpu-test-double-sm89-trt11.4.0.106"
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
    stages.build(cfg)  # a second build reads the timing cache (locking it too) and leaves no lock either
    assert not list(target.glob("*.lock")) and (target / "timing.cache").read_bytes() == cached
    assert set(gpu_machine.refused) <= POLYGRAPHY_PROBES
