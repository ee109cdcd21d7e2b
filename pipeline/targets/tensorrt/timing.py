"""Timing an engine the way trtexec does: CUDA events on the stream, inferences enqueued back to back.

After ``warmup`` inferences (and a synchronize), each round enqueues ``iterations`` inferences one
after another on the engine's stream, each between two CUDA events recorded on that stream, with no
synchronize between them; one ``cudaEventSynchronize`` ends the round. Rounds repeat until the GPU
time adds up to ``min_seconds`` (or ``max_iterations`` inferences). From the events:

* **latency**: each inference's GPU time, from its start event to its end event (trtexec's "GPU
  Compute Time"), as percentiles;
* **throughput**: items per second, every inference's batch over the time from each round's first
  start event to its last end event: what back-to-back serving sustains, gaps included where the
  host cannot enqueue as fast as the GPU computes.

With ``cuda_graph`` the inference is captured once into a CUDA graph (after one plain enqueue, as
TensorRT asks) and each one is a ``cudaGraphLaunch`` (trtexec's ``--useCudaGraph``): less host work
per inference, which matters for small models. Inputs and outputs stay on the device; nothing is
copied to or from the host while timing, and none of Polygraphy's per-call checks run.

The events and graphs go through the CUDA runtime Polygraphy loaded (``polygraphy.cuda``), the one
the engine's buffers and stream come from. A CUDA failure is one ``PipelineError`` naming the engine.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.targets.tensorrt.trt import BoundEngine, cuda_error

_CAPTURE_THREAD_LOCAL = 1  # cudaStreamCaptureModeThreadLocal, as trtexec captures


@dataclass(frozen=True)
class EngineTiming:
    latencies_ms: np.ndarray  # GPU time of each timed inference
    items_per_s: float  # back to back, over the rounds' spans
    cuda_graph: bool


class _Cuda:
    """The few CUDA runtime calls timing needs, each checked: events, and stream capture into graphs."""

    def __init__(self, engine: Path) -> None:
        from polygraphy import cuda

        self.lib = cuda.wrapper().handle
        self.engine = engine

    def check(self, status: int, call: str) -> None:
        if status != 0:
            raise PipelineError(f"{self.engine}: {call} failed while timing: {cuda_error(int(status))}")

    def event(self) -> int:
        handle = ctypes.c_void_p()
        self.check(self.lib.cudaEventCreate(ctypes.byref(handle)), "cudaEventCreate")
        return handle.value

    def record(self, event: int, stream: int) -> None:
        self.check(self.lib.cudaEventRecord(ctypes.c_void_p(event), ctypes.c_void_p(stream)), "cudaEventRecord")

    def wait(self, event: int) -> None:
        self.check(self.lib.cudaEventSynchronize(ctypes.c_void_p(event)), "cudaEventSynchronize")

    def elapsed_ms(self, start: int, end: int) -> float:
        ms = ctypes.c_float()
        self.check(
            self.lib.cudaEventElapsedTime(ctypes.byref(ms), ctypes.c_void_p(start), ctypes.c_void_p(end)),
            "cudaEventElapsedTime",
        )
        return float(ms.value)

    def destroy_event(self, event: int) -> None:
        self.check(self.lib.cudaEventDestroy(ctypes.c_void_p(event)), "cudaEventDestroy")

    def capture(self, bound: BoundEngine) -> tuple[int, int]:
        """(graph, executable graph) of one enqueue on the engine's stream."""
        stream = ctypes.c_void_p(bound.stream.ptr)
        self.check(self.lib.cudaStreamBeginCapture(stream, _CAPTURE_THREAD_LOCAL), "cudaStreamBeginCapture")
        try:
            bound.enqueue()
        finally:
            graph = ctypes.c_void_p()
            self.check(self.lib.cudaStreamEndCapture(stream, ctypes.byref(graph)), "cudaStreamEndCapture")
        executable = ctypes.c_void_p()
        self.check(
            self.lib.cudaGraphInstantiate(ctypes.byref(executable), graph, ctypes.c_ulonglong(0)),
            "cudaGraphInstantiate",
        )
        return graph.value, executable.value

    def launch(self, executable: int, stream: int) -> None:
        self.check(self.lib.cudaGraphLaunch(ctypes.c_void_p(executable), ctypes.c_void_p(stream)), "cudaGraphLaunch")

    def destroy_graph(self, graph: int, executable: int) -> None:
        self.check(self.lib.cudaGraphExecDestroy(ctypes.c_void_p(executable)), "cudaGraphExecDestroy")
        self.check(self.lib.cudaGraphDestroy(ctypes.c_void_p(graph)), "cudaGraphDestroy")


def time_engine(
    engine: Path,
    profile: int,
    feed: dict[str, np.ndarray],
    warmup: int,
    iterations: int,
    min_seconds: float,
    cuda_graph: bool = False,
    max_iterations: int = 5000,
) -> EngineTiming:
    """Per-inference GPU latency and back-to-back throughput of ``engine`` on ``feed``."""
    batch = len(next(iter(feed.values())))
    bound = BoundEngine(engine, profile, feed)
    cuda = _Cuda(engine)
    events: list[int] = []
    graph = None
    try:
        stream = bound.stream.ptr
        bound.enqueue()  # TensorRT finishes its lazy set-up on the first enqueue (and before a capture)
        bound.synchronize()
        if cuda_graph:
            graph = cuda.capture(bound)

        def infer() -> None:
            if graph is not None:
                cuda.launch(graph[1], stream)
            else:
                bound.enqueue()

        for _ in range(warmup):
            infer()
        bound.synchronize()
        events = [cuda.event() for _ in range(2 * iterations)]
        latencies: list[float] = []
        spans = 0.0
        while len(latencies) < max_iterations and (not latencies or spans < min_seconds * 1e3):
            for i in range(iterations):
                cuda.record(events[2 * i], stream)
                infer()
                cuda.record(events[2 * i + 1], stream)
            cuda.wait(events[-1])
            latencies += [cuda.elapsed_ms(events[2 * i], events[2 * i + 1]) for i in range(iterations)]
            spans += cuda.elapsed_ms(events[0], events[-1])
        return EngineTiming(np.asarray(latencies), batch * len(latencies) / max(spans / 1e3, 1e-9), cuda_graph)
    finally:
        for event in events:
            cuda.destroy_event(event)
        if graph is not None:
            cuda.destroy_graph(*graph)
        bound.release()
