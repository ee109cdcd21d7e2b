"""Can this machine build and run TensorRT engines? And which GPU and TensorRT is it?

Checks, in order: ``tensorrt`` imports (its native libraries load with it), the CUDA
driver loads, the CUDA runtime that Polygraphy will load (for device memory and streams)
is found and loads, and through it the driver sees a device. The first failure is the reason,
with how to fix it.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from functools import lru_cache

INSTALL_HINT = (
    "on a GPU machine that reaches NVIDIA's package index, pip install 'trtpipe[gpu]' (see README, GPU setup)"
)
_CC_MAJOR, _CC_MINOR = 75, 76  # cudaDevAttrComputeCapability{Major,Minor} (and CU_DEVICE_ATTRIBUTE_* alike)
_CUDART = "libcudart.so*"
# Where CUDA runtimes live that Polygraphy 0.53 does not search: the CUDA 13 pip wheel
# (nvidia-cuda-runtime: nvidia/cu13/lib), versioned toolkits, and distribution packages.
_ELSEWHERE = ("nvidia/cu13/lib",)
_SYSTEM_ELSEWHERE = ("/usr/local/cuda-*/lib64", "/usr/local/cuda*/targets/*/lib", "/usr/lib/*-linux-gnu", "/usr/lib64")


@dataclass(frozen=True)
class Capability:
    available: bool
    reason: str | None = None
    trt_version: str | None = None
    gpu_name: str | None = None
    compute_capability: str | None = None  # "8.6"
    cuda_runtime: str | None = None  # the libcudart Polygraphy loads

    @property
    def target_dir_name(self) -> str:
        """``<gpu>-sm<cc>-trt<version>``: engines run only where they were built."""
        return engine_dir_name(
            self.gpu_name or "unknown-gpu", self.compute_capability or "0.0", self.trt_version or "0"
        )


def engine_dir_name(gpu_name: str, compute_capability: str, trt_version: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
    return f"{slug}-sm{compute_capability.replace('.', '')}-trt{trt_version}"


@lru_cache(maxsize=1)
def probe() -> Capability:
    try:
        import tensorrt as trt
    except ImportError as exc:
        lib = re.search(r"lib\w+\.so[.\d]*", str(exc))
        why = f"TensorRT's libraries do not load ({lib.group(0)} missing)" if lib else "TensorRT is not installed"
        return Capability(False, f"{why}; {INSTALL_HINT}")
    version = getattr(trt, "__version__", "0")
    if int(version.split(".")[0]) < 10:
        return Capability(
            False,
            f"TensorRT {version} is too old: strongly typed builds need 10 or newer "
            f"(trtpipe targets 11); {INSTALL_HINT}",
            version,
        )
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return Capability(False, "no NVIDIA driver (libcuda.so.1 not found): no CUDA GPU on this machine", version)
    runtime = cuda_runtime()
    if isinstance(runtime, str):
        return Capability(False, runtime, version)
    path, cudart = runtime
    gpu = _cuda_device(cudart, path)
    if isinstance(gpu, str):
        return Capability(False, gpu, version, cuda_runtime=path)
    name, cc = gpu
    return Capability(True, None, version, name, cc, path)


def polygraphy_cuda_dirs() -> list[str]:
    """Where Polygraphy 0.53's ``polygraphy.cuda`` looks for ``libcudart.so*``, in its order
    (``Cuda.__init__``): LD_LIBRARY_PATH, /usr/local/cuda/lib64, /usr/lib, /lib, then the
    CUDA 12 pip wheel's ``nvidia/cuda_runtime/lib`` on sys.path."""
    dirs = [
        *os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep),
        "/usr/local/cuda/lib64",
        "/usr/lib",
        "/lib",
    ]
    dirs += [os.path.join(p, "nvidia", "cuda_runtime", "lib") for p in sys.path if p and os.path.isdir(p)]
    try:
        spec = importlib.util.find_spec("nvidia.cuda_runtime")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        dirs += [os.path.join(loc, "lib") for loc in spec.submodule_search_locations]
    return list(dict.fromkeys(os.path.normpath(d) for d in dirs if d))


def _first_match(dirs: list[str]) -> str | None:
    for d in dirs:
        found = sorted(glob.glob(os.path.join(d, _CUDART)))
        if found:
            return found[0]
    return None


def cuda_runtime() -> tuple[str, ctypes.CDLL] | str:
    """The CUDA runtime Polygraphy will load, loaded; or why it will not load, and the fix."""
    found = _first_match(polygraphy_cuda_dirs())
    path = found or "libcudart.so"  # Polygraphy's fallback: the default loader's search
    try:
        return path, ctypes.CDLL(path)
    except OSError as exc:
        if found:
            return (
                f"the CUDA runtime Polygraphy would use, {found}, does not load ({exc}); reinstall it "
                f"(CUDA toolkit, or pip install nvidia-cuda-runtime) or put a working one first on LD_LIBRARY_PATH"
            )
    elsewhere = _first_match(
        [os.path.join(p, sub) for p in sys.path if p and os.path.isdir(p) for sub in _ELSEWHERE]
        + [d for pattern in _SYSTEM_ELSEWHERE for d in sorted(glob.glob(pattern))]
    )
    if elsewhere:
        folder = os.path.dirname(elsewhere)
        return (
            f"Polygraphy will not find the CUDA runtime at {elsewhere} (it searches LD_LIBRARY_PATH, "
            f"/usr/local/cuda/lib64 and nvidia/cuda_runtime/lib only): export LD_LIBRARY_PATH={folder}:$LD_LIBRARY_PATH"
        )
    return (
        "no CUDA runtime (libcudart.so) found: install the CUDA toolkit and put its lib64 on LD_LIBRARY_PATH, "
        "or pip install nvidia-cuda-runtime and export LD_LIBRARY_PATH=<site-packages>/nvidia/cu13/lib"
    )


def _cuda_device(cudart, path: str) -> tuple[str, str] | str:
    """(name, compute capability) of device 0 through the CUDA runtime, or why there is none."""
    count = ctypes.c_int(0)
    status = cudart.cudaGetDeviceCount(ctypes.byref(count))
    if status == 35:  # cudaErrorInsufficientDriver
        return f"the NVIDIA driver is older than the CUDA runtime {path}: update the driver or use an older runtime"
    if status == 100 or (status == 0 and count.value == 0):  # cudaErrorNoDevice
        return "no CUDA device is visible (check CUDA_VISIBLE_DEVICES)"
    if status != 0:
        return f"the CUDA runtime {path} cannot use the GPU (cudaGetDeviceCount: CUDA error {status})"
    props = ctypes.create_string_buffer(4096)  # cudaDeviceProp starts with char name[256]; sized generously
    cudart.cudaGetDeviceProperties(props, 0)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    cudart.cudaDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, 0)
    cudart.cudaDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, 0)
    name = props.raw[:256].split(b"\0", 1)[0].decode(errors="replace")
    return name, f"{major.value}.{minor.value}"
