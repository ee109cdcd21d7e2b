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
