"""Every stage writes only inside engines/, calib/ and the deploy folder: temporary files too.

The commands run as a user runs them (``python -m pipeline``), with an audit hook that logs each
path Python opens for writing, creates, renames, replaces or removes (what ONNX Runtime's
quantizer, onnx, Polygraphy and torch do through Python included; C++ writes are not seen).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import FAST_BENCH, write_config

# A sitecustomize that runs before the pipeline: the log file is opened before the hook exists.
AUDIT_HOOK = textwrap.dedent(
    """
    import os, sys

    _log = open(os.environ["WRITES_LOG"], "a", buffering=1)
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    _PATH_EVENTS = {"os.mkdir": 1, "os.remove": 1, "os.rmdir": 1, "os.truncate": 1, "shutil.rmtree": 1}

    def _note(path):
        if isinstance(path, (str, bytes, os.PathLike)):
            path = os.fsdecode(path)
            _log.write(os.path.abspath(path) + "\\n")

    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & _WRITE:
                _note(path)
        elif event in ("os.rename", "os.replace"):
            if args[2] is None and args[3] is None:
                _note(args[0]), _note(args[1])
        elif event in _PATH_EVENTS and args[-1] is None:  # relative to a folder fd: its rmtree was logged
            _note(args[0])

    sys.addaudithook(_hook)
    """
)


def test_every_stage_writes_only_inside_its_folders(tmp_path, user_model):
    project, hooks, tmp = tmp_path / "project", tmp_path / "hooks", tmp_path / "tmp"
    for folder in (project, hooks, tmp):
        folder.mkdir()
    (hooks / "sitecustomize.py").write_text(AUDIT_HOOK)
    log = tmp_path / "writes.log"
    config = write_config(project, user_model, top=f'name = "tiny"\n{FAST_BENCH}')
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(hooks), str(Path(__file__).parent.parent)]),
        "PYTHONDONTWRITEBYTECODE": "1",  # the interpreter's own bytecode cache is not ours
        "TMPDIR": str(tmp),
        "WRITES_LOG": str(log),
    }
    for command in (["engines", "-c", str(config)], ["deploy", "-c", str(config), "--to", "deployed"]):
        run = subprocess.run([sys.executable, "-m", "pipeline", *command], cwd=project, env=env, capture_output=True)
        assert run.returncode == 0, run.stderr.decode()[-2000:]

    written = {Path(line) for line in log.read_text().splitlines()}
    roots = [project / "engines", project / "calib", project / "deployed"]
    outside = sorted(str(p) for p in written if not any(p.is_relative_to(r) for r in roots))
    assert not [p for p in outside if not p.startswith("/dev/")], outside
    assert any(p.is_relative_to(project / "engines") and ".scratch.trtpipe-" in str(p) for p in written)
    assert list(tmp.iterdir()) == []
    assert not [p for p in (project / "engines" / "tiny").iterdir() if ".trtpipe-" in p.name]  # removed at exit
