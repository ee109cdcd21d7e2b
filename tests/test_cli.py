"""The CLI stays thin: every command has help, and importing it loads no heavy backend."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main

COMMANDS = ["engines", "export", "calibrate", "quantize", "build", "compare", "bench", "report", "deploy"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0 and "--config" in result.output


def test_cli_import_loads_no_heavy_backend():
    heavy = "('torch', 'onnxruntime', 'tensorrt')"
    code = f"import sys, pipeline.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_build_help_explains_where_and_why():
    text = CliRunner().invoke(main, ["build", "--help"]).output
    assert "<gpu>-sm<cc>-trt<version>" in text and "compute capability" in text and "manifest.json" in text


def test_ctrl_c_is_one_line_and_status_130(tmp_path, user_model, monkeypatch):
    from click.testing import CliRunner

    from pipeline import stages
    from pipeline.cli import main
    from tests.conftest import write_config

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setitem(stages.STAGES, "export", interrupted)
    result = CliRunner().invoke(main, ["export", "-c", str(write_config(tmp_path, user_model))])
    assert result.exit_code == 130
    assert result.output.strip().splitlines() == ["interrupted"]


def test_a_command_keeps_its_temporaries_under_engines_and_removes_them(tmp_path, user_model, monkeypatch):
    """While a command runs, tempfile (and child processes' TMPDIR) point inside engines/NAME; after
    it, the folder is gone and the caller's settings are back, even when the command failed."""
    import os
    import tempfile

    from click.testing import CliRunner

    from pipeline import stages
    from pipeline.cli import main
    from tests.conftest import write_config

    monkeypatch.chdir(tmp_path)
    seen = []

    def export(cfg, *args, **kwargs):
        seen.append((Path(tempfile.gettempdir()), os.environ["TMPDIR"]))
        raise RuntimeError("a bug")

    monkeypatch.setitem(stages.STAGES, "export", export)
    before = tempfile.gettempdir(), os.environ.get("TMPDIR")
    result = CliRunner().invoke(main, ["export", "-c", str(write_config(tmp_path, user_model))])
    assert isinstance(result.exception, RuntimeError)  # a bug keeps its traceback
    ((scratch, env),) = seen
    assert scratch.parent == tmp_path / "engines" / "tiny" and str(scratch) == env
    assert not scratch.exists()
    assert (tempfile.gettempdir(), os.environ.get("TMPDIR")) == before


def test_ctrl_c_after_the_work_is_done_changes_nothing(tmp_path, user_model):
    """A Ctrl-C while the process exits (torch and ONNX Runtime torn down) is ignored: it was death by
    SIGINT (exit -2), or here a KeyboardInterrupt in an exit handler, after the outputs were complete."""
    from tests.conftest import write_config

    config = write_config(tmp_path, user_model)
    child = textwrap.dedent(
        f"""
        import atexit, os, signal, time
        atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(0.5)))  # runs last
        from pipeline import stages
        stages.STAGES["report"] = lambda cfg, *a, **k: None  # the work, done
        from pipeline.cli import main
        main(["report", "-c", {str(config)!r}])
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}  # this checkout's pipeline
    run = subprocess.run([sys.executable, "-c", child], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert (run.returncode, run.stderr) == (0, "")
    folder = tmp_path / "engines" / "tiny"  # removed with the scratch folder: the work wrote nothing
    assert not folder.exists() or not [p for p in folder.iterdir() if ".trtpipe-" in p.name]
