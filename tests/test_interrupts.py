"""Ctrl-C while a compiled extension initialises waits for its import to finish (pipeline.interrupts)."""

from __future__ import annotations

import signal
import sys
import textwrap

import pytest
from click.testing import CliRunner

from pipeline import interrupts

# A package that is sent Ctrl-C halfway through its own initialisation, as torch is when Ctrl-C comes
# in the first seconds of trtpipe compare; "done" says its code ran to the end.
PACKAGE = textwrap.dedent(
    """
    import os, signal
    from pathlib import Path

    os.kill(os.getpid(), signal.SIGINT)
    Path(__file__).with_name("done").write_text("ran to the end")
    """
)


@pytest.fixture
def extension(tmp_path, monkeypatch):
    (tmp_path / "fakeext").mkdir()
    (tmp_path / "fakeext" / "__init__.py").write_text(PACKAGE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fakeext", raising=False)
    yield tmp_path / "fakeext" / "done"
    sys.modules.pop("fakeext", None)


def test_ctrl_c_during_a_held_import_is_raised_once_its_code_ran(extension):
    with pytest.raises(KeyboardInterrupt), interrupts.imports_held(frozenset({"fakeext"})):
        import fakeext  # noqa: F401
    assert extension.read_text() == "ran to the end"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert not [f for f in sys.meta_path if isinstance(f, interrupts._Finder)]


def test_other_imports_are_interrupted_where_they_are(extension):
    with pytest.raises(KeyboardInterrupt), interrupts.imports_held(frozenset({"numpy"})):
        import fakeext  # noqa: F401
    assert not extension.exists()


def test_every_command_holds_the_extensions_imports(extension, tmp_path, user_model, monkeypatch):
    from pipeline import stages
    from pipeline.cli import main
    from tests.conftest import write_config

    def export(cfg, *args, **kwargs):
        import fakeext  # noqa: F401

    monkeypatch.setitem(stages.STAGES, "export", export)
    monkeypatch.setattr(interrupts, "HELD", interrupts.HELD | {"fakeext"})
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["export", "-c", str(write_config(tmp_path, user_model))])
    assert (result.exit_code, result.output.strip()) == (130, "interrupted")
    assert extension.read_text() == "ran to the end"


def test_ctrl_c_while_a_command_cleans_up_changes_nothing(tmp_path, user_model, monkeypatch):
    """The work is over once the stage returned: a Ctrl-C while its temporaries are removed (click's
    context closing) was "Aborted!", exit 1. In-process callers get their Ctrl-C back afterwards."""
    import os

    import click

    from pipeline import stages
    from pipeline.cli import main
    from tests.conftest import write_config

    def export(cfg, *args, **kwargs):
        click.get_current_context().call_on_close(lambda: os.kill(os.getpid(), signal.SIGINT))

    monkeypatch.setitem(stages.STAGES, "export", export)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["export", "-c", str(write_config(tmp_path, user_model))])
    assert (result.exit_code, result.output) == (0, "")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_ctrl_c_tests_pass_with_sigint_ignored_as_a_background_shell_starts_them():
    """``bash -c 'make test' &``, nohup and some CI runners start Python with SIGINT ignored (issue 23, item 12)."""
    import subprocess
    import sys

    child = (
        "import signal, subprocess, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        "sys.exit(subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', "
        f"{__file__!r}, '-k', 'not sigint_ignored']).returncode)"
    )
    run = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:]
