"""The code a stage runs, by sha256: a change to the pipeline re-runs only the stages that use it.

A stage is its function in ``stages.py`` and the private helpers that function calls there, plus
every pipeline module they import (imports inside functions included: heavy ones are lazy) and,
file by file, every pipeline module those import in turn. Read from the source, not by importing it:
an edit to quantize's Q/DQ placement changes quantize's code version and not bench's.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE = Path(__file__).parent
STAGES_FILE = "stages.py"
# The bookkeeping itself: it makes no output (a change to what a record holds bumps its version).
NOT_FOLLOWED = ("pipeline.records", "pipeline.codehash")


def stage_code_version(stage: str, package: Path = PACKAGE) -> str:
    """sha256 over the source ``stage`` runs: its part of stages.py, then each module file it reaches.
    Worked out once per state of the package's files (every stage's check asks for it again)."""
    state = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(package.rglob("*.py")))
    key = (stage, state)
    if key not in _VERSIONS:
        _VERSIONS[key] = _version(stage, package)
    return _VERSIONS[key]


_VERSIONS: dict[tuple, str] = {}


def _version(stage: str, package: Path) -> str:
    h = hashlib.sha256()
    own, modules = _stage_part(package, stage)
    h.update(f"{STAGES_FILE}\0{own}\n".encode())
    for path in sorted(_closure(package, modules)):
        h.update(f"{path.relative_to(package).as_posix()}\0".encode() + path.read_bytes() + b"\n")
    return h.hexdigest()


def _stage_part(package: Path, stage: str) -> tuple[str, set[str]]:
    """The text of stages.py that ``stage`` runs (its module-level statements, its function and the
    helpers it calls, transitively) and the modules that text imports."""
    source = (package / STAGES_FILE).read_text()
    tree = ast.parse(source)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    if stage not in functions:
        raise ValueError(f"{STAGES_FILE} has no stage function {stage!r}")
    used, todo = set(), [stage]
    while todo:
        name = todo.pop()
        if name not in used:
            used.add(name)
            todo += [n.id for n in ast.walk(functions[name]) if isinstance(n, ast.Name) and n.id in functions]
    # A module-level statement (imports, constants, the stage table) may matter to any stage.
    parts = [n for n in tree.body if not isinstance(n, ast.FunctionDef) or n.name in used]
    text = "\n".join(ast.get_source_segment(source, n) or "" for n in parts)
    modules = {m for n in parts for m in _imported(n, "pipeline")}
    return text, modules


def _closure(package: Path, modules: set[str]) -> set[Path]:
    """The files of ``modules``, their packages' ``__init__`` files and every pipeline module they import."""
    files: set[Path] = set()
    todo = [m for m in modules if m not in NOT_FOLLOWED]
    while todo:
        for path in _files_of(package, todo.pop()):
            if path not in files:
                files.add(path)
                tree = ast.parse(path.read_text())
                todo += [m for m in _imported(tree, _module_name(package, path)) if m not in NOT_FOLLOWED]
    return files


def _imported(node: ast.AST, importer: str) -> list[str]:
    """Pipeline modules ``node`` imports, written as ``import a.b`` or ``from a import b`` (``b`` may be
    a module or a name: both are tried), relative imports resolved against ``importer``."""
    found = []
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            found += [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                anchor = importer.split(".")[: -n.level]
                base = ".".join([*anchor, base] if base else anchor)
            found += [base, *(f"{base}.{a.name}" for a in n.names)]
    root = PACKAGE.name
    return [m for m in found if m == root or m.startswith(root + ".")]


def _files_of(package: Path, module: str) -> list[Path]:
    """The source file of ``module`` (if it is one) and the ``__init__`` of each package above it."""
    parts = module.split(".")[1:]
    found = [package / Path(*parts[:i]) / "__init__.py" for i in range(len(parts) + 1)]
    found.append(package / Path(*parts).with_suffix(".py") if parts else package / "__init__.py")
    return [p for p in found if p.is_file()]


def _module_name(package: Path, path: Path) -> str:
    rel = path.relative_to(package).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join([PACKAGE.name, *parts])
