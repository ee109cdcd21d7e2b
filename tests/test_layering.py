"""Which package imports which: a producer never imports its consumer."""

from __future__ import annotations

import ast
from pathlib import Path

PIPELINE = Path(__file__).resolve().parent.parent / "pipeline"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_graph_view_belongs_to_neither_calibrate_nor_quantize():
    assert {m for m in _imports(PIPELINE / "graphview.py") if m.startswith("pipeline")} == {"pipeline.onnxutil"}


def test_the_calibrator_does_not_import_the_quantizer():
    """Calibration makes ranges that quantization consumes (pipeline.calibration.cache); the calibrator
    reads graphs through the neutral GraphView."""
    assert not {m for m in _imports(PIPELINE / "calibration" / "calibrator.py") if m.startswith("pipeline.targets")}


# A target's or precision's name in quotes; only the targets and the config's defaults spell them.
TARGET_LITERALS = ('"tensorrt"', '"tensorrt-fp8"', '"onnxruntime-cpu"', '"w8a8"', '"w8a8-cpu"', '"fp8"', '"fp16"')
# interrupts.py names the tensorrt Python module, whose import it holds Ctrl-C for: no target;
# deployment/triton.py names Triton's TensorRT execution accelerator ("tensorrt" in config.pbtxt).
SPELLS_A_MODULE_NAME = {"interrupts.py", "deployment/triton.py"}


def test_only_the_targets_spell_target_and_precision_names():
    spelled = set()
    for path in PIPELINE.rglob("*.py"):
        rel = path.relative_to(PIPELINE).as_posix()
        if rel.startswith("targets/") or rel == "config.py":
            continue
        if any(literal in path.read_text() for literal in TARGET_LITERALS):
            spelled.add(rel)
    assert spelled <= SPELLS_A_MODULE_NAME and len(spelled) <= 3


def test_no_result_is_read_with_a_question_mark_default():
    import re

    found = [
        f"{p.relative_to(PIPELINE)}: {line.strip()}"
        for p in PIPELINE.rglob("*.py")
        for line in p.read_text().splitlines()
        if re.search(r"""\.get\([^()]*,\s*['"]\?['"]\)""", line)
    ]
    assert found == []
