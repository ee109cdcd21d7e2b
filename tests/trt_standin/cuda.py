"""Test double of a GPU machine's CUDA libraries, as ``ctypes`` sees them.

Polygraphy's ``polygraphy.cuda`` loads ``libcudart.so*`` with ``ctypes.CDLL`` and calls
``cudaMalloc``/``cudaMemcpy``/``cudaStream*`` on the handle; our probe loads the driver
(``libcuda.so.1``) and that same runtime. Inside ``standin()`` a ``ctypes.CDLL`` of either
library returns one of the handles below instead, so Polygraphy's own code (its library
search, its ``Cuda`` wrapper, ``DeviceArray``, ``Stream``) runs unchanged.

"Device" memory is host memory owned here: every pointer handed out is checked on use
(a copy into freed or foreign memory is an error, as it would be on a GPU), and streams are
checked the same way; ``Gpu.memory_bytes`` makes ``cudaMalloc`` run out as a real GPU does.

The GPU keeps a clock (``Gpu.clock_ms``) that only inferences advance: each one by
``Gpu.kernel_ms(header, batch)`` where a test sets it (an INT8 engine 5x slower than FP16), else
by the host time it took to run. CUDA events recorded on a stream read that clock, so timing with
events measures what the stand-in GPU "computed", not the host's bookkeeping. Stream capture
records the work enqueued on a capturing stream instead of running it; a graph launch runs it.

The runtime accepts only functions ``libcudart.so.13`` exports (``names/libcudart-13.json``,
from the real library); the driver only the five CUDA driver API functions the probe uses (the
driver is not on the package index, so that list is written from ``cuda.h``, not extracted).
"""

from __future__ import annotations

import ctypes
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CUDART_FUNCTIONS = frozenset(
    json.loads((Path(__file__).parent / "names" / "libcudart-13.json").read_text())["functions"]
)
DRIVER_FUNCTIONS = frozenset({"cuInit", "cuDeviceGetCount", "cuDeviceGet", "cuDeviceGetName", "cuDeviceGetAttribute"})

SUCCESS = 0
ERROR_INVALID_VALUE = 1
ERROR_MEMORY_ALLOCATION = 2
ERROR_INSUFFICIENT_DRIVER = 35
ERROR_NO_DEVICE = 100
ERROR_INVALID_RESOURCE_HANDLE = 400
ERROR_ILLEGAL_STATE = 401
ERROR_STREAM_CAPTURE_UNSUPPORTED = 900
_CC_MAJOR, _CC_MINOR = 75, 76  # cudaDevAttrComputeCapabilityMajor/Minor (same numbers in the driver API)


class NotInCuda(AttributeError):
    """The real library exports no such function."""


@dataclass
class Gpu:
    """What the stand-in machine's GPU reports."""

    name: str = "Stand-in GPU (test double)"
    compute_capability: tuple[int, int] = (8, 9)
    runtime_version: int = 13050  # CUDA 13.5
    devices: int = 1
    allocations: dict[int, ctypes.Array] = field(default_factory=dict)
    streams: set[int] = field(default_factory=set)
    next_stream: int = 0x5_0000
    refused: list[str] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)  # CUDA functions called, and how often
    memory_bytes: int | None = None  # device memory; None: as much as the host has
    # Simulated GPU time of one inference, from the engine's plan header and the batch; None: host time.
    kernel_ms: Callable[[dict, int], float] | None = None
    clock_ms: float = 0.0
    events: dict[int, float | None] = field(default_factory=dict)  # event -> clock when recorded
    captures: dict[int, list[Callable[[], None]]] = field(default_factory=dict)  # capturing stream -> work
    graphs: dict[int, list[Callable[[], None]]] = field(default_factory=dict)
    executables: dict[int, list[Callable[[], None]]] = field(default_factory=dict)
    next_handle: int = 0x9_0000

    def handle(self) -> int:
        self.next_handle += 0x10
        return self.next_handle

    def valid_stream(self, stream: int) -> bool:
        return stream == 0 or stream in self.streams

    def owning(self, address: int, nbytes: int) -> bool:
        """Is [address, address + nbytes) inside one live allocation?"""
        for start, buf in self.allocations.items():
            if start <= address and address + nbytes <= start + ctypes.sizeof(buf):
                return True
        return False

    def view(self, address: int, nbytes: int) -> memoryview:
        if not self.owning(address, nbytes):
            raise MemoryError(f"stand-in GPU: {nbytes} bytes at {address:#x} are not in a live device allocation")
        return memoryview((ctypes.c_char * nbytes).from_address(address)).cast("B")


def _value(arg: Any) -> int:
    """An integer from what ctypes callers pass: c_void_p, c_size_t, c_int, plain int, or None."""
    if arg is None:
        return 0
    if isinstance(arg, int):
        return arg
    value = getattr(arg, "value", arg)
    return int(value or 0)


def _out(ref: Any, value: float | bytes) -> None:
    """Write through a ``ctypes.byref(...)`` (or a pointer/buffer) as the C function would."""
    target = getattr(ref, "_obj", ref)
    if isinstance(value, bytes):
        ctypes.memmove(ctypes.addressof(target), value, len(value))
    else:
        target.value = value


class _Library:
    _functions: frozenset[str] = frozenset()
    _soname = ""

    def __init__(self, gpu: Gpu, path: str) -> None:
        self._gpu = gpu
        self._name = path

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("_"):
            return object.__getattribute__(self, name)
        if name not in object.__getattribute__(self, "_functions"):
            object.__getattribute__(self, "_gpu").refused.append(name)
            raise NotInCuda(f"{object.__getattribute__(self, '_name')}: undefined symbol: {name}")
        object.__getattribute__(self, "_gpu").calls[name] += 1
        try:
            return object.__getattribute__(self, name)
        except AttributeError:  # a real export the stand-in does not implement: loud, not a probe's False
            raise NotImplementedError(f"{self._soname}: {name} exists but the stand-in does not implement it") from None


class CudaRuntime(_Library):
    """``libcudart.so.13`` as ``ctypes.CDLL`` returns it; every function returns a ``cudaError_t``."""

    _functions = CUDART_FUNCTIONS
    _soname = "libcudart.so.13"

    def cudaGetDeviceCount(self, count):
        _out(count, self._gpu.devices)
        return SUCCESS if self._gpu.devices else ERROR_NO_DEVICE

    def cudaDeviceGetAttribute(self, value, attr, device):
        if _value(device) >= self._gpu.devices:
            return ERROR_INVALID_VALUE
        major, minor = self._gpu.compute_capability
        _out(value, {_CC_MAJOR: major, _CC_MINOR: minor}.get(_value(attr), 0))
        return SUCCESS

    def cudaGetDeviceProperties(self, prop, device):
        if _value(device) >= self._gpu.devices:
            return ERROR_INVALID_VALUE
        _out(prop, self._gpu.name.encode()[:255] + b"\x00")  # cudaDeviceProp starts with char name[256]
        return SUCCESS

    def cudaRuntimeGetVersion(self, version):
        _out(version, self._gpu.runtime_version)
        return SUCCESS

    def cudaMalloc(self, ptr, size):
        nbytes = max(_value(size), 1)
        used = sum(ctypes.sizeof(b) for b in self._gpu.allocations.values())
        if self._gpu.memory_bytes is not None and used + nbytes > self._gpu.memory_bytes:
            _out(ptr, 0)
            return ERROR_MEMORY_ALLOCATION
        buf = (ctypes.c_char * nbytes)()
        address = ctypes.addressof(buf)
        self._gpu.allocations[address] = buf
        _out(ptr, address)
        return SUCCESS

    def cudaFree(self, ptr):
        address = _value(ptr)
        if address == 0:  # cudaFree(NULL) is a no-op
            return SUCCESS
        if self._gpu.allocations.pop(address, None) is None:
            return ERROR_INVALID_VALUE
        return SUCCESS

    def _copy(self, dst, src, count, kind) -> int:
        nbytes, kind = _value(count), _value(kind)
        dst, src = _value(dst), _value(src)
        # cudaMemcpyKind: 0 host->host, 1 host->device, 2 device->host, 3 device->device, 4 default
        if kind in (2, 3) and not self._gpu.owning(src, nbytes):
            return ERROR_INVALID_VALUE
        if kind in (1, 3) and not self._gpu.owning(dst, nbytes):
            return ERROR_INVALID_VALUE
        ctypes.memmove(dst, src, nbytes)
        return SUCCESS

    def cudaMemcpy(self, dst, src, count, kind):
        return self._copy(dst, src, count, kind)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        if _value(stream) and _value(stream) not in self._gpu.streams:
            return ERROR_INVALID_RESOURCE_HANDLE
        return self._copy(dst, src, count, kind)

    def cudaStreamCreate(self, stream):
        self._gpu.next_stream += 0x10
        self._gpu.streams.add(self._gpu.next_stream)
        _out(stream, self._gpu.next_stream)
        return SUCCESS

    def cudaStreamSynchronize(self, stream):
        handle = _value(stream)
        if handle in self._gpu.captures:  # not while capturing
            return ERROR_STREAM_CAPTURE_UNSUPPORTED
        return SUCCESS if self._gpu.valid_stream(handle) else ERROR_INVALID_RESOURCE_HANDLE

    # --- events: they read the GPU's clock --------------------------------------------------------

    def cudaEventCreate(self, event):
        handle = self._gpu.handle()
        self._gpu.events[handle] = None
        _out(event, handle)
        return SUCCESS

    def cudaEventRecord(self, event, stream):
        handle, stream = _value(event), _value(stream)
        if handle not in self._gpu.events or not self._gpu.valid_stream(stream):
            return ERROR_INVALID_RESOURCE_HANDLE
        if stream in self._gpu.captures:
            return ERROR_STREAM_CAPTURE_UNSUPPORTED  # timing events do not belong inside a graph
        self._gpu.events[handle] = self._gpu.clock_ms
        return SUCCESS

    def cudaEventSynchronize(self, event):
        return SUCCESS if _value(event) in self._gpu.events else ERROR_INVALID_RESOURCE_HANDLE

    def cudaEventElapsedTime(self, ms, start, end):
        times = [self._gpu.events.get(_value(e)) for e in (start, end)]
        if any(t is None for t in times):  # unknown or never recorded
            return ERROR_INVALID_RESOURCE_HANDLE
        _out(ms, times[1] - times[0])
        return SUCCESS

    def cudaEventDestroy(self, event):
        if _value(event) not in self._gpu.events:
            return ERROR_INVALID_RESOURCE_HANDLE
        del self._gpu.events[_value(event)]
        return SUCCESS

    # --- stream capture and graphs --------------------------------------------------------------

    def cudaStreamBeginCapture(self, stream, mode):
        handle = _value(stream)
        if handle == 0 or handle not in self._gpu.streams:  # the legacy default stream cannot capture
            return ERROR_INVALID_RESOURCE_HANDLE if handle else ERROR_STREAM_CAPTURE_UNSUPPORTED
        if handle in self._gpu.captures:
            return ERROR_ILLEGAL_STATE
        self._gpu.captures[handle] = []
        return SUCCESS

    def cudaStreamEndCapture(self, stream, graph):
        work = self._gpu.captures.pop(_value(stream), None)
        if work is None:
            return ERROR_ILLEGAL_STATE
        handle = self._gpu.handle()
        self._gpu.graphs[handle] = work
        _out(graph, handle)
        return SUCCESS

    def cudaGraphInstantiate(self, executable, graph, flags):
        work = self._gpu.graphs.get(_value(graph))
        if work is None:
            return ERROR_INVALID_VALUE
        handle = self._gpu.handle()
        self._gpu.executables[handle] = list(work)
        _out(executable, handle)
        return SUCCESS

    def cudaGraphLaunch(self, executable, stream):
        work = self._gpu.executables.get(_value(executable))
        if work is None or not self._gpu.valid_stream(_value(stream)):
            return ERROR_INVALID_RESOURCE_HANDLE
        for step in work:
            step()
        return SUCCESS

    def cudaGraphExecDestroy(self, executable):
        return SUCCESS if self._gpu.executables.pop(_value(executable), None) is not None else ERROR_INVALID_VALUE

    def cudaGraphDestroy(self, graph):
        return SUCCESS if self._gpu.graphs.pop(_value(graph), None) is not None else ERROR_INVALID_VALUE

    def cudaStreamDestroy(self, stream):
        handle = _value(stream)
        if handle not in self._gpu.streams:
            return ERROR_INVALID_RESOURCE_HANDLE
        self._gpu.streams.discard(handle)
        return SUCCESS


class CudaDriver(_Library):
    """``libcuda.so.1``: the driver API calls the probe makes; each returns a ``CUresult``."""

    _functions = DRIVER_FUNCTIONS
    _soname = "libcuda.so.1"

    def cuInit(self, flags):
        return SUCCESS

    def cuDeviceGetCount(self, count):
        _out(count, self._gpu.devices)
        return SUCCESS

    def cuDeviceGet(self, device, ordinal):
        _out(device, _value(ordinal))
        return SUCCESS if _value(ordinal) < self._gpu.devices else ERROR_INVALID_VALUE

    def cuDeviceGetName(self, name, length, device):
        _out(name, self._gpu.name.encode()[: _value(length) - 1] + b"\x00")
        return SUCCESS

    def cuDeviceGetAttribute(self, value, attr, device):
        major, minor = self._gpu.compute_capability
        _out(value, {_CC_MAJOR: major, _CC_MINOR: minor}.get(_value(attr), 0))
        return SUCCESS


def is_cudart(path: str) -> bool:
    return os.path.basename(str(path)).startswith("libcudart.so")


def is_driver(path: str) -> bool:
    return os.path.basename(str(path)) == "libcuda.so.1"
