"""The thin TensorRT layer: build through Polygraphy's loaders, inspect, load, bind an engine to a feed.

TensorRT 11 networks are strongly typed: the FP16 engine's precision comes
from the FP16 graph and the INT8 engine's from the Q/DQ graph. No FP16/INT8
builder flags (removed in 11) and no calibrators are used.

Polygraphy reports a failure by logging it (TensorRT's own messages go through its
logger too) and raising ``PolygraphyException``. Each call here captures that log and
turns the exception into one ``PipelineError`` naming the graph or engine, with
TensorRT's first error line (which names the node or layer).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import BuildSection
from pipeline.errors import PipelineError
from pipeline.targets.tensorrt.profiles import InputProfile

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class PolygraphyLog:
    """Polygraphy's log while a block runs, in ``path`` (kept) or a temporary file (removed)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.lines: list[str] = []

    def first_error(self, default: str) -> str:
        """TensorRT's (or Polygraphy's) first error line: ``[E] ...``, else the exception's text."""
        for line in self.lines:
            if line.startswith("[E] "):
                return line[4:].strip()
        return default.strip().splitlines()[0] if default.strip() else "no error logged"

    def where(self) -> str:
        return f"; full log: {self.path}" if self.path is not None else ""


@contextlib.contextmanager
def polygraphy_log(path: Path | None = None) -> Iterator[PolygraphyLog]:
    from polygraphy.logger import G_LOGGER

    log = PolygraphyLog(path)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        target = str(path)
    else:
        fd, target = tempfile.mkstemp(prefix="trtpipe.polygraphy.", suffix=".log")
        os.close(fd)
    previous = G_LOGGER.log_file
    G_LOGGER.log_file = target  # Polygraphy's documented way to copy its log to a file
    try:
        yield log
    finally:
        G_LOGGER.log_file = previous
        log.lines = [_ANSI.sub("", line) for line in Path(target).read_text(errors="replace").splitlines()]
        if path is None:
            Path(target).unlink(missing_ok=True)


class EngineFromOnnx:
    """Serialized engine bytes from an ONNX graph, built with the given profiles and settings."""

    def __init__(
        self, profiles: list[list[InputProfile]], settings: BuildSection, timing_cache: Path, tf32: bool = True
    ) -> None:
        self.profiles = profiles
        self.settings = settings
        self.timing_cache = timing_cache  # read if present, then extended: timings are reused across builds
        self.tf32 = tf32  # TF32 tactics for the FP32 Conv/GEMM/MatMul layers (Polygraphy clears it by default)

    def __call__(self, graph: Path, log: Path | None = None) -> bytes:
        import tensorrt as trt
        from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile
        from polygraphy.exception import PolygraphyException

        trt_profiles = []
        for per_input in self.profiles:
            profile = Profile()
            for p in per_input:
                profile.add(p.name, min=p.min, opt=p.opt, max=p.max)
            trt_profiles.append(profile)
        # Polygraphy opens "<cache>.lock" beside the timing cache before anything else makes the folder.
        self.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        failed: tuple[str, Exception] | None = None
        try:
            with polygraphy_log(log) as captured:
                try:
                    network = NetworkFromOnnxPath(str(graph), strongly_typed=True)()
                except PolygraphyException as exc:
                    failed = ("TensorRT's ONNX parser refuses it", exc)
                else:
                    config = CreateConfig(
                        profiles=trt_profiles,
                        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: self.settings.workspace_mib << 20},
                        builder_optimization_level=self.settings.optimization_level,
                        profiling_verbosity=trt.ProfilingVerbosity.DETAILED,  # the inspector reports precisions
                        tf32=self.tf32,
                        load_timing_cache=str(self.timing_cache) if self.timing_cache.is_file() else None,
                    )
                    build = EngineBytesFromNetwork(network, config=config, save_timing_cache=str(self.timing_cache))
                    try:
                        plan = build()
                    except PolygraphyException as exc:
                        failed = ("TensorRT could not build an engine from it", exc)
        finally:
            # Polygraphy leaves the lock file behind; one build at a time writes an engine folder.
            Path(f"{self.timing_cache}.lock").unlink(missing_ok=True)
        if failed is not None:
            what, exc = failed
            raise PipelineError(f"{graph}: {what}: {captured.first_error(str(exc))}{captured.where()}")
        return bytes(plan)


def engine_information(plan: bytes) -> dict[str, Any]:
    """The engine inspector's whole-engine JSON. Where it lists no ``"Layers"`` (a layout TensorRT may
    write), each layer's ``get_layer_information(i)`` fills them in, and ``"LayersFrom"`` says so."""

    import tensorrt as trt

    engine = load_engine_bytes(plan, "the engine just built")
    inspector = engine.create_engine_inspector()
    found = _json_or_text(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    info = found if isinstance(found, dict) else {"EngineInformation": found}
    if not isinstance(info.get("Layers"), list):
        info["Layers"] = [
            _json_or_text(inspector.get_layer_information(i, trt.LayerInformationFormat.JSON))
            for i in range(engine.num_layers)
        ]
        info["LayersFrom"] = "get_layer_information"
    return info


def _json_or_text(text: str) -> Any:
    import json

    try:
        return json.loads(text)
    except ValueError:  # a layer name alone (LAYER_NAMES_ONLY), or text that is no JSON
        return text


def load_engine_bytes(plan: bytes, name: str):
    from polygraphy.backend.trt import EngineFromBytes
    from polygraphy.exception import PolygraphyException

    failed = None
    with polygraphy_log() as captured:
        try:
            return EngineFromBytes(plan)()
        except PolygraphyException as exc:
            failed = exc
    raise PipelineError(
        f"{name}: TensorRT cannot deserialize this engine ({captured.first_error(str(failed))}); "
        f"rebuild it with trtpipe build on this machine"
    )


def load_engine(path: Path):
    """Deserialize an engine file; call ``manifest.verify_engine`` first."""
    return load_engine_bytes(Path(path).read_bytes(), str(path))


# cudaError_t values a user can cause, by name (the runtime API's; any other is "CUDA error N").
CUDA_ERRORS = {
    1: "cudaErrorInvalidValue",
    2: "cudaErrorMemoryAllocation: out of device memory",
    35: "cudaErrorInsufficientDriver",
    100: "cudaErrorNoDevice",
    400: "cudaErrorInvalidResourceHandle",
    700: "cudaErrorIllegalAddress",
    719: "cudaErrorLaunchFailure",
}


def cuda_error(status: int) -> str:
    return f"CUDA error {status} ({CUDA_ERRORS[status]})" if status in CUDA_ERRORS else f"CUDA error {status}"


class BoundEngine:
    """An engine ready to run one feed: execution context, optimization profile, input shapes and
    device buffers set once, inputs copied to the device once. ``enqueue`` queues one inference
    (``execute_async_v3``) on its stream and nothing else; ``release`` frees buffers and stream.

    A CUDA failure while setting up (out of device memory at a large batch) is one ``PipelineError``
    naming the engine and the shapes."""

    def __init__(self, engine_path: Path, profile: int, feed: dict[str, np.ndarray]) -> None:
        import tensorrt as trt
        from polygraphy import cuda
        from polygraphy.exception import PolygraphyException

        self.engine_path = engine_path
        self.buffers: list[Any] = []
        self.stream = None
        shapes = ", ".join(f"{n} {list(v.shape)}" for n, v in feed.items())
        engine = load_engine(engine_path)
        self.context = engine.create_execution_context()
        try:
            try:
                self.stream = cuda.Stream()
                self._bind(trt, cuda, engine, profile, feed)
            except PolygraphyException as exc:
                raise PipelineError(
                    f"{engine_path}: cannot set up an inference at {shapes}: {_cuda_failure(exc)}"
                ) from None
        except BaseException:
            self.release()
            raise

    def _bind(self, trt, cuda, engine, profile: int, feed: dict[str, np.ndarray]) -> None:
        context, path = self.context, self.engine_path
        if not context.set_optimization_profile_async(profile, self.stream.ptr):
            raise PipelineError(f"{path}: TensorRT cannot select optimization profile {profile}")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        for name in inputs:
            host = np.ascontiguousarray(feed[name], dtype=trt.nptype(engine.get_tensor_dtype(name)))
            if not context.set_input_shape(name, host.shape):
                raise PipelineError(
                    f"{path}: input {name!r} of shape {list(host.shape)} is outside optimization "
                    f"profile {profile}; see [batch] in the config"
                )
            self.buffers.append(cuda.DeviceArray(shape=host.shape, dtype=host.dtype).copy_from(host))
            context.set_tensor_address(name, self.buffers[-1].ptr)
        for name in names:
            if name in inputs:
                continue
            shape = tuple(context.get_tensor_shape(name))
            self.buffers.append(cuda.DeviceArray(shape=shape, dtype=trt.nptype(engine.get_tensor_dtype(name))))
            context.set_tensor_address(name, self.buffers[-1].ptr)

    def enqueue(self, stream: int | None = None) -> None:
        if not self.context.execute_async_v3(self.stream.ptr if stream is None else stream):
            raise PipelineError(
                f"{self.engine_path}: TensorRT's execute_async_v3 failed (see the TensorRT error above)"
            )

    def synchronize(self) -> None:
        self.stream.synchronize()

    def release(self) -> None:
        for buffer in self.buffers:
            buffer.free()
        self.buffers = []
        if self.stream is not None:
            self.stream.free()
            self.stream = None


def _cuda_failure(exc: Exception) -> str:
    """Polygraphy's "CUDA Error: 2. To figure out what this means, refer to ..." as the error's name."""
    text = str(exc).strip()
    found = re.search(r"CUDA Error: (\d+)", text)
    if found is None:
        return (text.splitlines() or ["unknown CUDA failure"])[0]
    status = int(found.group(1))
    hint = "; a smaller batch fits: lower [bench] gpu_batches (or the [batch] profile's max)" if status == 2 else ""
    return cuda_error(status) + hint


def execution(engine_path: Path, profile: int, feed: dict[str, np.ndarray]) -> tuple[Callable[[], None], ...]:
    """One inference of the engine as a zero-argument callable (``execute_async_v3`` and a stream
    synchronize, on a ``BoundEngine``), and what releases its buffers."""
    bound = BoundEngine(engine_path, profile, feed)

    def run() -> None:
        bound.enqueue()
        bound.synchronize()

    return run, bound.release
