"""What the package asks pip for: one ONNX Runtime, at least the release with the API we use."""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# 1.26.0's wheel has neither quantize_static(calibration_cache_path=) nor
# onnxruntime.quantization.calibrate.save_tensors_data; 1.27.0's has both
# (microsoft/onnxruntime#28221). Checked by reading both wheels from the package index.
FIRST_ORT_WITH_CACHE_API = "1.27"


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_gpu_extra_installs_no_second_onnx_runtime():
    everything = PROJECT["dependencies"] + PROJECT["optional-dependencies"]["gpu"]
    # onnxruntime and onnxruntime-gpu both own the onnxruntime/ package; only one may be installed.
    assert [_name(r) for r in everything if _name(r).startswith("onnxruntime")] == ["onnxruntime"]


def test_onnxruntime_floor_is_the_first_release_with_the_api_we_use():
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    (requirement,) = [r for r in PROJECT["dependencies"] if _name(r) == "onnxruntime"]
    assert requirement.replace(" ", "") == f"onnxruntime>={FIRST_ORT_WITH_CACHE_API}"
    assert "calibration_cache_path" in inspect.signature(quantize_static).parameters
    assert callable(save_tensors_data)


def test_readme_gpu_install_keeps_one_onnx_runtime_and_finds_the_cuda_runtime():
    readme = (ROOT / "README.md").read_text()
    gpu = readme[readme.index("### GPU setup") : readme.index("## Config: one TOML file per model")]
    block = gpu[gpu.index("```bash") : gpu.index("```", gpu.index("```bash") + 3)]
    commands = [line.split("#")[0] for line in block.splitlines()]
    assert any("pip install -e '.[examples,dev,deploy,gpu]'" in c for c in commands)
    assert not any("onnxruntime" in c for c in commands)  # neither installed beside nor swapped in
    assert "nvidia/cu13/lib" in gpu and "LD_LIBRARY_PATH" in gpu


def test_every_benchmark_module_imports():
    """The benchmarks are run by hand (make bench-*), not by the suite: a renamed pipeline name they
    import would otherwise break them unseen."""
    import importlib
    import pkgutil

    import benchmarks

    for found in pkgutil.walk_packages(benchmarks.__path__, "benchmarks."):
        if not found.name.endswith("__main__"):
            importlib.import_module(found.name)
