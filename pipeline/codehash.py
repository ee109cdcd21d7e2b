"""The code a stage runs, by sha256: a change to the pipeline re-runs only the stages that use it.

A stage's code is its module (``pipeline/stages/NAME.py``) and, file by file, every pipeline module
it imports (imports inside functions included: heavy ones are lazy), and every pipeline module those
import in turn. Read from the source, not by importing it: an edit to quantize's Q/DQ placement
changes quantize's code version and not bench's. Other stage modules are not followed: a stage
names the stages it reads from, it does not run their code.
"""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path

PACKAGE = Path(__file__).parent
STAGES_PACKAGE = "stages"
# The bookkeeping itself: it makes no output (a change to what a record holds bumps its version).
NOT_FOLLOWED = ("pipeline.records", "pipeline.codehash")
# Packages whose ``__init__`` gathers everything below it (the library API, the stage list): their
# bytes count, the imports they gather do not.
GATHERING = ("pipeline", "pipeline.stages")


def stage_code_version(module: str, package: Path = PACKAGE) -> str:
    """sha256 over the source the stage module ``module`` runs: its file, then each module file it
    reaches. Worked out once per state of the package's files (every stage's check asks for it again)."""
    state = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(package.rglob("*.py")))
    key = (module, state)
    if key not in _VERSIONS:
        _VERSIONS[key] = _version(module, package)
    return _VERSIONS[key]


_VERSIONS: dict[tuple, str] = {}


def _version(module: str, package: Path) -> str:
    found = _files_of(package, module)
    if not found or _module_name(package, found[-1]) != module:
        raise ValueError(f"{module}: no such stage module in {package}")
    h = hashlib.sha256()
    for path in sorted(_closure(package, {module}, own=module)):
        h.update(f"{path.relative_to(package).as_posix()}\0".encode() + path.read_bytes() + b"\n")
    return h.hexdigest()


def _closure(package: Path, modules: set[str], own: str) -> set[Path]:
    """The files of ``modules``, the ``__init__`` of each package above them and, followed, every
    pipeline module a module's own file imports (a registry's ``"module:attr"`` entries included);
    other stage modules than ``own`` (and ``pipeline.stages.base``) are left out, and a package's
    ``__init__`` is followed only where the package itself is imported."""
    files: set[Path] = set()
    followed: set[str] = set()
    todo = [m for m in modules if _followed(m, own)]
    while todo:
        module = todo.pop()
        found = _files_of(package, module)
        files.update(found)
        if not found or module in followed or module in GATHERING:
            continue
        followed.add(module)
        own_file = found[-1]
        if _module_name(package, own_file) != module:
            continue  # ``from a import name``: the name is no module of its own
        todo += [m for m in _imported(ast.parse(own_file.read_text()), module) if _followed(m, own)]
    return files


def _followed(module: str, own: str) -> bool:
    stages = f"{PACKAGE.name}.{STAGES_PACKAGE}."
    if module.startswith(stages) and module not in (own, stages + "base"):
        return False
    return module not in NOT_FOLLOWED


_REGISTRY_ENTRY = re.compile(rf"({PACKAGE.name}(?:\.\w+)+):\w+")


def _imported(node: ast.AST, importer: str) -> list[str]:
    """Pipeline modules ``node`` imports, written as ``import a.b`` or ``from a import b`` (``b`` may be
    a module or a name: both are tried), relative imports resolved against ``importer``, and the
    modules of registry entries (``"pipeline.targets.tensorrt.target:TensorRT"``). Imports only type
    checkers run (``if TYPE_CHECKING:``) are not code a stage runs."""
    found = []
    for n in _walk_runtime(node):
        if isinstance(n, ast.Import):
            found += [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                anchor = importer.split(".")[: -n.level]
                base = ".".join([*anchor, base] if base else anchor)
            found += [base, *(f"{base}.{a.name}" for a in n.names)]
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and (m := _REGISTRY_ENTRY.fullmatch(n.value)):
            found.append(m[1])
    root = PACKAGE.name
    return [m for m in found if m == root or m.startswith(root + ".")]


def _walk_runtime(node: ast.AST):
    """``ast.walk`` without the bodies of ``if TYPE_CHECKING:`` blocks."""
    todo = [node]
    while todo:
        n = todo.pop()
        yield n
        if isinstance(n, ast.If) and isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING":
            todo.extend(n.orelse)
            continue
        todo.extend(ast.iter_child_nodes(n))


def _files_of(package: Path, module: str) -> list[Path]:
    """The ``__init__`` of each package above ``module``, then its own file (its ``__init__`` where it
    is a package); none where it names no file (an attribute)."""
    parts = module.split(".")[1:]
    found = [package / Path(*parts[:i]) / "__init__.py" for i in range(len(parts) + 1)]
    found.append(package / Path(*parts).with_suffix(".py") if parts else package / "__init__.py")
    return list(dict.fromkeys(p for p in found if p.is_file()))


def _module_name(package: Path, path: Path) -> str:
    rel = path.relative_to(package).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join([PACKAGE.name, *parts])
