"""trtpipe as a library: the API ``help(pipeline)`` lists, a config made in code run through every
stage without a TOML file, nothing process-wide changed, and a package without import cycles."""

from __future__ import annotations

import ast
import os
import pydoc
import signal
import sys
import tempfile
from pathlib import Path

import pipeline

PIPELINE = Path(pipeline.__file__).parent


def test_help_lists_the_api():
    text = pydoc.render_doc(pipeline, renderer=pydoc.plaintext)
    for name in ("load_config", "config_from_dict", "run", "engines", "deploy", "Config", "PipelineError"):
        assert name in pipeline.__all__ and f"{name}" in text, name
    assert pipeline.STAGES == ("export", "calibrate", "quantize", "build", "compare", "bench", "report")


def _process_state() -> tuple:
    return (
        signal.getsignal(signal.SIGINT),
        tempfile.tempdir,
        os.environ.get("TMPDIR"),
        tuple(type(f).__name__ for f in sys.meta_path),
    )


def test_a_config_made_in_code_runs_every_stage_and_deploys(tmp_path, user_model, monkeypatch):
    """No TOML file anywhere: the dict stands for ``project/tiny.toml``, and the model file and data
    callables resolve from that folder, as they would from the file's."""
    monkeypatch.chdir(tmp_path)  # the library's default root, as the command's
    project = tmp_path / "project"
    project.mkdir()
    net = f"{user_model}"
    cfg = pipeline.config_from_dict(
        {
            "name": "tiny",
            "model": {"source": f"{net}:build", "args": {"channels": 16}},
            "inputs": [{"name": "x", "shape": ["batch", 3, 8, 8]}],
            "outputs": [{"name": "logits", "shape": ["batch", 4]}],
            "batch": {"min": 1, "opt": 8, "max": 32},
            "calibration": {"source": f"{net}:calibration", "samples": 64, "batch_size": 16},
            "evaluation": {"source": f"{net}:heldout"},
            "bench": {"cpu_batches": [1, 8], "warmup": 1, "iterations": 5, "min_seconds": 0.05},
        },
        project / "tiny.toml",
    )
    assert not (project / "tiny.toml").exists()
    before = _process_state()
    assert pipeline.engines(cfg) == list(pipeline.STAGES)
    assert (tmp_path / "engines" / "tiny" / "reports" / "report.md").is_file()
    assert pipeline.engines(cfg) == []  # every record current: nothing runs again
    deployed = pipeline.deploy(cfg, str(tmp_path / "served"))  # a str path, as a script passes it
    assert (deployed / "config.pbtxt").is_file()
    assert _process_state() == before


def test_a_config_built_from_its_dataclasses_is_the_loaded_one(tmp_path, user_model):
    from tests.conftest import write_config

    path = write_config(tmp_path, user_model)
    loaded = pipeline.load_config(path)
    built = pipeline.Config(
        name="tiny",
        model=pipeline.ModelSection(f"{user_model}:build", {"channels": 16}),
        inputs=(pipeline.TensorSpec("x", ("batch", 3, 8, 8)),),
        outputs=(pipeline.TensorSpec("logits", ("batch", 4)),),
        batch=(pipeline.BatchProfile(1, 8, 32),),
        calibration=pipeline.CalibrationSection(f"{user_model}:calibration", samples=64, batch_size=16),
        evaluation=pipeline.EvaluationSection(f"{user_model}:heldout"),
        quantize=pipeline.QuantizeSection(speed_search_seconds=0),  # what the tests' configs set (conftest)
        path=path.resolve(),
    )
    assert built == loaded


def _imports(path: Path, module: str) -> set[str]:
    """The pipeline modules a file imports, at the top or inside a function (``from a import b``: the
    module ``a.b`` where there is one, else ``a``); imports for type checkers only are left out."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in _walk_runtime(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base)
    return {m for m in found if m == "pipeline" or m.startswith("pipeline.")}


def _walk_runtime(tree: ast.AST):
    """``ast.walk`` without the bodies of ``if TYPE_CHECKING:`` blocks."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (PIPELINE / rel).with_suffix(".py").is_file() or (PIPELINE / rel / "__init__.py").is_file()


def _module_of(path: Path) -> str:
    rel = path.relative_to(PIPELINE).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(["pipeline", *parts])


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_pipeline_modules():
    """Lazy imports inside functions count too. The package's own ``__init__`` files are left out:
    ``pipeline`` (the library API) and ``pipeline.stages`` (the stage list) gather what is below them."""
    gathering = {"pipeline", "pipeline.stages"}
    edges = {}
    for path in PIPELINE.rglob("*.py"):
        module = _module_of(path)
        if module in {"pipeline", "pipeline.stages"}:
            continue
        edges[module] = {m for m in _imports(path, module) if m not in gathering or m == module} - {module}
    assert _cycles(edges) == []


def test_no_subpackage_shadows_an_api_name():
    """Importing ``pipeline.X.y`` sets the attribute ``pipeline.X``: a subpackage named as an API
    function (``pipeline/deploy/`` beside ``pipeline.deploy``) replaced the function by the package."""
    import importlib
    import pkgutil

    for found in pkgutil.walk_packages(pipeline.__path__, "pipeline."):
        if not found.name.endswith("__main__"):
            importlib.import_module(found.name)
    for name in ("run", "engines", "deploy", "sensitivity", "load_config", "config_from_dict"):
        assert callable(getattr(pipeline, name)) and not isinstance(getattr(pipeline, name), type(pipeline)), name


def test_importing_the_package_loads_no_native_extension():
    """coverage's --cov=pipeline.targets.tensorrt (make test) imports the package to find it, then
    restores sys.modules: an __init__ that loaded onnx's native extension made the next import of
    onnx abort the process ("refusing to add duplicate key")."""
    import subprocess

    code = (
        "import sys; import pipeline.targets.tensorrt; "
        "heavy = [m for m in ('onnx', 'torch', 'onnxruntime', 'numpy') if m in sys.modules]; "
        "print(heavy); assert not heavy"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PIPELINE.parent)
    assert run.returncode == 0, run.stdout + run.stderr
