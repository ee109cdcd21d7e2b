"""Can this machine build and run TensorRT engines? And which GPU and TensorRT is it?

Checks, in order: ``tensorrt`` imports (its native libraries load with it),
the CUDA driver loads, and it sees a device. The first failure is the reason.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass
from functools import lru_cache

INSTALL_HINT = (
    "on a GPU machine that reaches NVIDIA's package index, pip install 'trtpipe[gpu]' (see README, GPU setup)"
)
_CC_MAJOR, _CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_{MAJOR,MINOR}


@dataclass(frozen=True)
class Capability:
    available: bool
    reason: str | None = None
    trt_version: str | None = None
    gpu_name: str | None = None
    compute_capability: str | None = None  # "8.6"

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
    gpu = _cuda_device()
    if isinstance(gpu, str):
        return Capability(False, gpu, version)
    name, cc = gpu
    return Capability(True, None, version, name, cc)


def _cuda_device() -> tuple[str, str] | str:
    """(name, compute capability) of device 0, or why there is none."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver (libcuda.so.1 not found): no CUDA GPU on this machine"
    if cuda.cuInit(0) != 0:
        return "the NVIDIA driver is present but cuInit failed: no usable CUDA GPU"
    count = ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return "no CUDA device is visible (check CUDA_VISIBLE_DEVICES)"
    device = ctypes.c_int(0)
    cuda.cuDeviceGet(ctypes.byref(device), 0)
    name = ctypes.create_string_buffer(256)
    cuda.cuDeviceGetName(name, 256, device)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, device)
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, device)
    return name.value.decode(errors="replace"), f"{major.value}.{minor.value}"
