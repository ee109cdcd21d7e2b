"""The capability probe checks the CUDA runtime Polygraphy will really load, in every layout."""

from __future__ import annotations

import importlib
import os

import pytest

from pipeline.targets.tensorrt import probe as probe_module
from pipeline.targets.tensorrt.probe import probe
from tests.trt_standin import standin
from tests.trt_standin.cuda import Gpu


def test_our_search_is_polygraphys(tmp_path, monkeypatch):
    polygraphy_cuda = importlib.import_module("polygraphy.cuda.cuda")
    monkeypatch.setenv("LD_LIBRARY_PATH", f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert probe_module.polygraphy_cuda_dirs() == polygraphy_cuda._find_cuda_lib_dirs()


def test_toolkit_runtime_on_the_loader_path(tmp_path):
    with standin(tmp_path, cudart="toolkit") as machine:
        cap = probe()
    assert cap.available, cap.reason
    assert cap.cuda_runtime == str(machine.cudart)
    assert (cap.gpu_name, cap.compute_capability) == ("Stand-in GPU (test double)", "8.9")
    assert cap.trt_version == "11.4.0.106"


def test_cuda12_pip_runtime_is_where_polygraphy_looks(tmp_path):
    with standin(tmp_path, cudart="pip-cu12") as machine:
        cap = probe()
    assert cap.available and cap.cuda_runtime.endswith("nvidia/cuda_runtime/lib/libcudart.so.12"), cap
    assert machine.cudart.name == "libcudart.so.12"


def test_cuda13_pip_runtime_needs_the_loader_path_and_says_so(tmp_path):
    # nvidia-cuda-runtime 13 installs nvidia/cu13/lib/libcudart.so.13, where Polygraphy 0.53 does not look:
    # without this check the probe said "available" and compare then failed with a raw OSError.
    with standin(tmp_path, cudart="pip-cu13") as machine:
        cap = probe()
        folder = machine.cudart.parent
    assert not cap.available
    assert f"Polygraphy will not find the CUDA runtime at {machine.cudart}" in cap.reason
    assert f"export LD_LIBRARY_PATH={folder}:$LD_LIBRARY_PATH" in cap.reason
    with standin(tmp_path, cudart="pip-cu13", on_loader_path=True):
        assert probe().available


def test_no_cuda_runtime_anywhere(tmp_path):
    with standin(tmp_path, cudart=None):
        cap = probe()
    assert not cap.available and "no CUDA runtime (libcudart.so) found" in cap.reason
    assert "pip install nvidia-cuda-runtime" in cap.reason


def test_a_runtime_that_does_not_load(tmp_path):
    with standin(tmp_path, cudart="toolkit", cudart_loads=False) as machine:
        cap = probe()
    assert not cap.available
    assert f"the CUDA runtime Polygraphy would use, {machine.cudart}, does not load (" in cap.reason


@pytest.mark.parametrize(
    ("gpu", "reason"),
    [
        (Gpu(devices=0), "no CUDA device is visible"),
        (Gpu(name="Old driver"), None),
    ],
)
def test_device_through_the_runtime(tmp_path, gpu, reason):
    with standin(tmp_path, gpu=gpu):
        cap = probe()
    if reason is None:
        assert cap.available and cap.gpu_name == "Old driver"
    else:
        assert not cap.available and reason in cap.reason


def test_no_driver(tmp_path):
    with standin(tmp_path, driver=False):
        cap = probe()
    assert not cap.available and "no NVIDIA driver" in cap.reason


def test_build_falls_back_with_the_runtime_reason(tmp_path, make_config):
    from pipeline import stages

    cfg = make_config()
    stages.run("export", cfg, root=tmp_path)
    stages.run("quantize", cfg, root=tmp_path, targets=("tensorrt",))
    with standin(tmp_path / "machine", cudart="pip-cu13"):
        record = stages.run("build", cfg, root=tmp_path)
    assert record.backend == "onnxruntime" and "LD_LIBRARY_PATH" in record.reason
