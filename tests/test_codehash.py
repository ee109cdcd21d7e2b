"""A change to the pipeline's code changes the code version of exactly the stages that run it."""

from __future__ import annotations

import shutil

import pytest

from pipeline import codehash
from pipeline.stages import NAMES


@pytest.fixture
def package(tmp_path):
    """A copy of the pipeline package to edit."""
    copy = tmp_path / "pipeline"
    shutil.copytree(codehash.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _versions(package):
    return {stage: codehash.stage_code_version(f"pipeline.stages.{stage}", package) for stage in NAMES}


def _changed_by(package, edit) -> set[str]:
    before = _versions(package)
    edit(package)
    after = _versions(package)
    return {stage for stage in NAMES if before[stage] != after[stage]}


def _append(relative: str):
    return lambda package: (package / relative).write_text((package / relative).read_text() + "\nSOMETHING_NEW = 1\n")


def test_an_edit_to_one_stage_module_changes_that_stage_only(package):
    assert _changed_by(package, _append("stages/bench.py")) == {"bench"}
    assert _changed_by(package, _append("stages/export.py")) == {"export"}


def test_an_edit_to_a_shared_helper_changes_the_stages_that_run_it(package):
    # The calibration cache's policy is calibrate's, and quantize's too (it recalibrates a stale cache).
    assert _changed_by(package, _append("calibration/inputs.py")) == {"calibrate", "quantize"}


def test_an_edit_to_a_module_changes_the_stages_importing_it(package):
    # bench and quantize's speed check; the CPU target's speed search times with it too, and every stage
    # that uses the targets reaches that target through the registry.
    timing = _changed_by(package, _append("evaluate/timing.py"))
    assert {"bench", "quantize"} <= timing and "export" not in timing
    assert _changed_by(package, _append("sources/parity.py")) == {"export"}
    # The torch source is reached through the sources' registry entry, not an import statement.
    assert _changed_by(package, _append("sources/torch/binding.py")) == {"export"}
    assert _changed_by(package, _append("config.py")) == set(NAMES)  # every stage reads its config


def test_a_target_reached_through_its_registry_entry_is_the_code_of_the_stages_that_use_targets(package):
    changed = _changed_by(package, _append("targets/tensorrt/qdq.py"))
    assert {"calibrate", "quantize", "build", "compare", "bench"} <= changed
    assert "export" not in changed  # export names the FP16 graph, it runs no target


def test_a_range_method_reached_through_its_registry_entry_is_the_code_of_calibrate_and_quantize(package):
    changed = _changed_by(package, _append("calibration/methods/entropy.py"))
    assert {"calibrate", "quantize"} <= changed
    assert "export" not in changed


def test_the_bookkeeping_is_not_a_stage_input(package):
    assert _changed_by(package, _append("records.py")) == set()


def test_an_unknown_stage_is_a_bug():
    with pytest.raises(ValueError, match="no such stage module"):
        codehash.stage_code_version("pipeline.stages.deploy2")
