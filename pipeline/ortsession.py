"""ONNX Runtime sessions with explicit threads and providers, fed in the graph's dtypes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pipeline.errors import PipelineError

_ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}


def providers() -> list[str]:
    """CUDA first when this onnxruntime has it, else CPU."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def session(
    path: str | os.PathLike[str],
    threads: int | None = None,
    cpu_only: bool = False,
    fuse_qdq: bool = True,
    spin: bool = True,
    arena: bool = True,
) -> ort.InferenceSession:
    """An ONNX Runtime session.

    ``fuse_qdq=False`` runs Q/DQ unfused (basic graph optimizations only): for the
    TensorRT-target w8a8 graph, whose FP16 Q/DQ ONNX Runtime's CPU fusions
    (QLinearConcat, ...) have no kernels for; on CPU it is a numerical simulation.
    ``arena=False`` returns a run's activations to the system after it: for several
    sessions alive at once, each of whose CPU arena would otherwise keep its own peak.
    """
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: graph not found; run the stage that makes it first")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not fuse_qdq:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.enable_cpu_mem_arena = arena
    if not spin:  # idle ONNX Runtime threads sleep instead of spinning, leaving the cores to our own work
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"] if cpu_only else providers())


CPU_GRAPHS = ("fp32", "w8a8-cpu")  # what deploys on a CPU


def session_for(
    path: str | os.PathLike[str],
    precision: str,
    threads: int | None = None,
    cpu_only: bool | None = None,
    arena: bool = True,
) -> ort.InferenceSession:
    """A session with the options an artifact needs: the CPU graphs on the CPU EP (unless
    ``cpu_only`` says otherwise), the TensorRT-target w8a8 graph with Q/DQ unfused."""
    return session(
        path,
        threads=threads,
        cpu_only=precision in CPU_GRAPHS if cpu_only is None else cpu_only,
        fuse_qdq=precision != "w8a8",
        arena=arena,
    )


def feed_for(sess: ort.InferenceSession, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cast the feed to the dtypes the graph declares (an FP16-I/O graph takes float16)."""
    return {i.name: np.ascontiguousarray(feed[i.name], dtype=_ORT_TO_NUMPY.get(i.type)) for i in sess.get_inputs()}


def run(sess: ort.InferenceSession, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [
        np.asarray(o, dtype=np.float32) if np.asarray(o).dtype == np.float16 else np.asarray(o)
        for o in sess.run(None, feed_for(sess, feed))
    ]
