"""A change to the pipeline's code changes the code version of exactly the stages that run it."""

from __future__ import annotations

import shutil

import pytest

from pipeline import codehash
from pipeline.records import STAGES


@pytest.fixture
def package(tmp_path):
    """A copy of the pipeline package to edit."""
    copy = tmp_path / "pipeline"
    shutil.copytree(codehash.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _versions(package):
    return {stage: codehash.stage_code_version(stage, package) for stage in STAGES}


def _changed_by(package, edit) -> set[str]:
    before = _versions(package)
    edit(package)
    after = _versions(package)
    return {stage for stage in STAGES if before[stage] != after[stage]}


def _append(relative: str):
    return lambda package: (package / relative).write_text((package / relative).read_text() + "\nSOMETHING_NEW = 1\n")


def _edit_stage_function(name: str):
    """A new first statement in stages.py's ``name`` function (after its docstring)."""

    def edit(package):
        path = package / "stages.py"
        text = path.read_text()
        head = f"\ndef {name}("
        start = text.index(head)
        body = text.index('"""', text.index('"""', start) + 3) + 3  # past the docstring
        path.write_text(text[:body] + "\n    _ = None  # an edit" + text[body:])

    return edit


def test_an_edit_to_one_stage_function_changes_that_stage_only(package):
    assert _changed_by(package, _edit_stage_function("bench")) == {"bench"}


def test_an_edit_to_a_private_helper_changes_the_stages_that_call_it(package):
    # _ranges is calibrate's, and quantize's too (it recalibrates a stale cache).
    assert _changed_by(package, _edit_stage_function("_ranges")) == {"calibrate", "quantize"}


def test_an_edit_to_a_module_changes_the_stages_importing_it(package):
    assert _changed_by(package, _append("evaluate/timing.py")) == {"bench"}
    assert _changed_by(package, _append("targets/tensorrt/layers.py")) == {"build"}
    assert _changed_by(package, _append("targets/rules.py")) == {"quantize"}
    assert _changed_by(package, _append("sources/parity.py")) == {"export"}
    assert _changed_by(package, _append("config.py")) == set(STAGES)  # every stage reads its config


def test_the_bookkeeping_is_not_a_stage_input(package):
    assert _changed_by(package, _append("records.py")) == set()


def test_an_unknown_stage_is_a_bug():
    with pytest.raises(ValueError, match="no stage function 'deploy2'"):
        codehash.stage_code_version("deploy2")
