"""Every stage writes only inside engines/, calib/ and the deploy folder: temporary files too.

The commands run as a user runs them (``python -m pipeline``), with an audit hook that logs each
path Python opens for writing, creates, renames, replaces or removes (what ONNX Runtime's
quantizer, onnx, Polygraphy and torch do through Python included; C++ writes are not seen):
``benchmarks.audit``, which the fault catalogue uses too.
"""

from __future__ import annotations

import os
import subprocess
import sys

from benchmarks.audit import audited, written, written_outside
from tests.conftest import FAST_BENCH, write_config


def test_every_stage_writes_only_inside_its_folders(tmp_path, user_model):
    project, hooks, tmp = tmp_path / "project", tmp_path / "hooks", tmp_path / "tmp"
    for folder in (project, tmp):
        folder.mkdir()
    config = write_config(project, user_model, top=f'name = "tiny"\n{FAST_BENCH}')
    env = audited({**os.environ, "TMPDIR": str(tmp)}, hooks)
    for command in (["engines", "-c", str(config)], ["deploy", "-c", str(config), "--to", "deployed"]):
        run = subprocess.run([sys.executable, "-m", "pipeline", *command], cwd=project, env=env, capture_output=True)
        assert run.returncode == 0, run.stderr.decode()[-2000:]

    assert written_outside(hooks, [project / "engines", project / "calib", project / "deployed"]) == []
    assert any(p.is_relative_to(project / "engines") and ".scratch.trtpipe-" in str(p) for p in written(hooks))
    assert list(tmp.iterdir()) == []
    assert not [p for p in (project / "engines" / "tiny").iterdir() if ".trtpipe-" in p.name]  # removed at exit
