"""TEST DOUBLE: a GPU machine with TensorRT 11.4 and CUDA 13, for CPU tests. Never shipped.

``standin()`` makes this process look like a GPU machine for the duration of a ``with`` block:

* ``import tensorrt`` gives ``tests/trt_standin/tensorrt.py``, which implements what trtpipe and
  Polygraphy 0.53's TensorRT loaders and runner touch, and refuses (``AttributeError``,
  recorded in ``StandIn.refused``) any name that the real 11.4 bindings lack, and (``TypeError``,
  as pybind11 raises it) any call whose arguments bind to none of the real signatures;
* ``ctypes.CDLL`` of ``libcuda.so.1`` or of a ``libcudart.so*`` placed where a GPU machine
  would have it returns the test doubles of ``cuda.py``, so Polygraphy's ``polygraphy.cuda``
  (device memory, streams) and our probe run their own code against them.

This machine's own CUDA files (a CPU machine may have a toolkit at /usr/local/cuda) are hidden
from ``glob.glob`` and ``ctypes.CDLL`` during the block: the stand-in machine's CUDA runtime is
the one ``cudart`` places. Everything is restored on exit: ``sys.modules``, ``ctypes.CDLL``,
``glob.glob``, ``LD_LIBRARY_PATH``, ``sys.path``, Polygraphy's cached CUDA wrapper and the
probe's cache. Stand-in objects that
outlive the block refuse to be used. The real GPU tests (``tests/gpu``) stay the final word.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import importlib
import os
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.trt_standin import _strict
from tests.trt_standin.cuda import CudaDriver, CudaRuntime, Gpu, is_cudart, is_driver

# Where a GPU machine keeps its CUDA runtime, relative to the stand-in's scratch folder.
CUDART_LAYOUTS = {
    "toolkit": "usr/local/cuda-13.0/lib64/libcudart.so.13",  # its lib64 on LD_LIBRARY_PATH
    "pip-cu12": "site-packages/nvidia/cuda_runtime/lib/libcudart.so.12",  # nvidia-cuda-runtime-cu12
    "pip-cu13": "site-packages/nvidia/cu13/lib/libcudart.so.13",  # nvidia-cuda-runtime 13.x
}


@dataclass
class StandIn:
    gpu: Gpu
    root: Path
    cudart: Path | None
    refused: list[str] = field(default_factory=lambda: _strict.REFUSED)
    calls: Counter = field(default_factory=lambda: _strict.CALLS)  # TensorRT names touched, and how often

    @property
    def refused_cuda(self) -> list[str]:
        return self.gpu.refused


@contextlib.contextmanager
def standin(
    root: Path,
    *,
    cudart: str | None = "toolkit",
    on_loader_path: bool | None = None,
    driver: bool = True,
    cudart_loads: bool = True,
    gpu: Gpu | None = None,
    inspector_layout: str = "engine",
    myelin: str = "kgen",
) -> Iterator[StandIn]:
    """A GPU machine inside this process, its files under ``root``.

    ``cudart`` picks where its CUDA runtime lives (``CUDART_LAYOUTS``, or None for none);
    ``on_loader_path`` whether that folder is on ``LD_LIBRARY_PATH`` (default: only for the
    toolkit layout, as a toolkit install sets it and the pip wheels do not); ``cudart_loads``
    False leaves that file to the real loader, which refuses it (a broken install).
    ``inspector_layout`` is where the engine inspector puts the layers ("engine": in the engine
    JSON; "per-layer": only per layer; "unknown": in no layout trtpipe reads), ``myelin`` how fused
    regions report ("kgen" attention layers, or "foreign-node" regions with their projections).
    """
    polygraphy_cuda = importlib.import_module("polygraphy.cuda.cuda")

    from pipeline.targets.tensorrt.probe import probe
    from tests.trt_standin import tensorrt as trt_standin

    gpu = gpu or Gpu()
    root = Path(root)
    library = None
    if cudart is not None:
        library = root / CUDART_LAYOUTS[cudart]
        library.parent.mkdir(parents=True, exist_ok=True)
        library.write_bytes(b"stand-in placeholder: not a shared library\n")  # a real dlopen of it fails
    on_loader_path = cudart == "toolkit" if on_loader_path is None else on_loader_path

    real_cdll, real_glob = ctypes.CDLL, glob.glob
    saved = {
        "module": sys.modules.get("tensorrt", _MISSING),
        "ld": os.environ.get("LD_LIBRARY_PATH"),
        "path": list(sys.path),
        "g_cuda": polygraphy_cuda.G_CUDA,
        "options": dict(trt_standin._si_options),
    }

    def loader_path() -> list[str]:
        return [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]

    def ours(path: str) -> bool:
        return Path(path).resolve().is_relative_to(root.resolve())

    def hidden_glob(pattern, *args, **kwargs):
        found = real_glob(pattern, *args, **kwargs)
        return [p for p in found if not is_cudart(p) or ours(p)]

    def cdll(name, *args, **kwargs):
        path = str(name)
        if is_driver(path):
            if driver:
                return CudaDriver(gpu, path)
            raise OSError(f"{path}: cannot open shared object file: No such file or directory")
        if is_cudart(path):
            found = (
                Path(path)
                if os.path.dirname(path)
                else next((Path(d) / path for d in loader_path() if (Path(d) / path).is_file()), None)
            )
            if cudart_loads and library is not None and found is not None and found.resolve() == library.resolve():
                return CudaRuntime(gpu, path)
            if found is None or not ours(str(found)):  # this machine's own CUDA is not the stand-in machine's
                raise OSError(f"{path}: cannot open shared object file: No such file or directory")
        return real_cdll(name, *args, **kwargs)

    try:
        sys.modules["tensorrt"] = trt_standin
        trt_standin._si_options.update(gpu=gpu, inspector_layout=inspector_layout, myelin=myelin)
        ctypes.CDLL = cdll
        glob.glob = hidden_glob
        if library is not None and on_loader_path:
            os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([str(library.parent), *loader_path()])
        if cudart and cudart.startswith("pip"):
            sys.path.insert(0, str(root / "site-packages"))
        polygraphy_cuda.G_CUDA = None  # Polygraphy's wrapper is made anew, through our ctypes.CDLL
        probe.cache_clear()
        _strict.REFUSED.clear()
        _strict.CALLS.clear()
        _strict.STATE["active"] = True
        yield StandIn(gpu, root, library)
    finally:
        _strict.STATE["active"] = False
        probe.cache_clear()
        polygraphy_cuda.G_CUDA = saved["g_cuda"]
        sys.path[:] = saved["path"]
        if saved["ld"] is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = saved["ld"]
        ctypes.CDLL, glob.glob = real_cdll, real_glob
        trt_standin._si_options.clear()
        trt_standin._si_options.update(saved["options"])
        if saved["module"] is _MISSING:
            sys.modules.pop("tensorrt", None)
        else:
            sys.modules["tensorrt"] = saved["module"]


_MISSING = object()
