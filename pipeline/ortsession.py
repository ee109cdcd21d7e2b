"""ONNX Runtime sessions with explicit threads and providers, fed in the graph's dtypes.

Which graph optimizations a graph gets is decided here, in ``options``, for every caller."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto

from pipeline import onnxutil
from pipeline.errors import PipelineError
from pipeline.targets.base import ENGINE, FP16

_ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}
_QDQ = ("QuantizeLinear", "DequantizeLinear")


def providers() -> list[str]:
    """CUDA first when this onnxruntime has it, else CPU."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def runs_as_written(graph: onnx.ModelProto | Path) -> bool:
    """Is this a TensorRT-target graph: our FP16 graph, a TensorRT-target Q/DQ graph, or auto's
    simulation of either target (whose scales are inputs: nothing to fuse)? Ours say so in their
    metadata (a file's read without parsing its graph); a peer's (ModelOpt's) is known by its FP16
    Q/DQ scales, which ONNX Runtime's own CPU Q/DQ graphs never have (a file of a peer's is parsed,
    and let go on return). (ONNX Runtime 1.32's CPU fusions crashed the process on ViT-B/16's FP16
    graph; TensorRT, not they, decides how an FP16 graph runs.)"""
    props = onnxutil.metadata(graph) if isinstance(graph, Path) else {p.key: p.value for p in graph.metadata_props}
    ours = _ours_as_written(props)
    if ours is not None:
        return ours
    model = onnx.load(str(graph), load_external_data=False) if isinstance(graph, Path) else graph
    fp16 = {i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT16}
    fp16 |= {
        n.output[0]
        for n in model.graph.node
        if n.op_type == "Constant" and any(a.t.data_type == TensorProto.FLOAT16 for a in n.attribute)
    }
    return any(n.op_type in _QDQ and len(n.input) > 1 and n.input[1] in fp16 for n in model.graph.node)


def _ours_as_written(props: dict[str, str]) -> bool | None:
    """Whether a graph of ours runs as written, by the metadata we give every graph; None for another's."""
    if props.get("trtpipe.target") in (ENGINE, "simulation") or props.get("trtpipe.precision") == FP16:
        return True
    return False if "trtpipe.precision" in props else None


def options(
    graph: onnx.ModelProto | Path,
    threads: int | None = None,
    spin: bool = True,
    arena: bool = True,
    shared: bool = False,
) -> ort.SessionOptions:
    """Session options for ``graph`` (a graph or its file): the one place that decides how a graph is
    optimized.

    A TensorRT-target Q/DQ graph runs exactly as written: no graph optimizations, and
    ``session.disable_quant_qdq`` also stops the Q/DQ rewrite ONNX Runtime makes at every
    level (EnsureUniqueDQForNodeUnit). On a CPU that graph is a numerical simulation of
    TensorRT, and ONNX Runtime's rewrites change its numbers: WeightBiasQuantization, a
    basic-level pass, re-quantizes each Conv/Gemm bias to int32 through b / (s_x * s_w)
    typed as the bias, so in an FP16 graph a quotient above 65504 is inf and the bias
    becomes -2^31 * s_x * s_w. Running as written measured no slower than the basic level.
    Every other graph, the CPU w8a8 graph included, is fully optimized: that is how it deploys.
    ``arena=False`` returns a run's activations to the system after it: for several sessions alive
    at once, each of whose CPU arena would otherwise keep its own peak. ``shared`` takes the arena
    this process's timed sessions share (``shared_arena``) instead of one of the session's own.
    """
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if runs_as_written(graph):
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    opts.enable_cpu_mem_arena = arena
    if shared:
        _register_shared_arena()
        opts.add_session_config_entry("session.use_env_allocators", "1")
        # A memory pattern asks for one block per run, each graph its own size: interleaved graphs
        # each left a block in the shared arena that the others' did not fit (PoolFormerV2's speed
        # search held three graphs' activations). Tensor by tensor, each run reuses the last's chunks.
        opts.enable_mem_pattern = False
    if not spin:  # idle ONNX Runtime threads sleep instead of spinning, leaving the cores to our own work
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return opts


def session(
    graph: str | os.PathLike[str] | onnx.ModelProto,
    threads: int | None = None,
    cpu_only: bool = False,
    spin: bool = True,
    arena: bool = True,
    shared: bool = False,
    weights_folder: Path | None = None,
) -> ort.InferenceSession:
    """An ONNX Runtime session for a graph file (or an in-memory graph, whose weights may be in files
    in ``weights_folder``: ``GraphView.move_weights``), with ``options``. A file's options are chosen
    without keeping a parsed copy: ONNX Runtime's own holds the weights once."""
    if isinstance(graph, onnx.ModelProto):
        source: str | bytes = graph.SerializeToString()
    else:
        graph = Path(graph)
        if not graph.is_file():
            raise PipelineError(f"{graph}: graph not found; run the stage that makes it first")
        source = str(graph)
    opts = options(graph, threads, spin, arena, shared)
    if weights_folder is not None:
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(weights_folder))
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"] if cpu_only else providers())


def session_for(
    path: str | os.PathLike[str], cpu: bool, threads: int | None = None, arena: bool = True, shared: bool = False
) -> ort.InferenceSession:
    """A session on the EP an artifact needs: a graph that deploys on a CPU (``cpu``) on the CPU EP,
    the others on CUDA where present. ``options`` picks the optimizations."""
    return session(path, threads=threads, cpu_only=cpu, arena=arena, shared=shared)


# Graphs timed against each other run interleaved, run by run, each in a session with an arena (as it
# serves): with an arena each, every graph's peak activations would be held at once, where serving
# one holds one. So timed sessions share one CPU arena. It grows by what a run asks (not in doubling
# steps), so its regions free after the timing go back whole (``release_shared_arena``).
_ARENA_GROWS_AS_ASKED = 1  # OrtArenaCfg's arena_extend_strategy: kSameAsRequested
_SHRINK = "memory.enable_memory_arena_shrinkage"
_shared: list[bool] = []  # registered with ONNX Runtime's environment, once per process


def _cpu_arena_info() -> ort.OrtMemoryInfo:
    return ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)


def _register_shared_arena() -> None:
    if not _shared:
        ort.create_and_register_allocator(_cpu_arena_info(), ort.OrtArenaCfg(0, _ARENA_GROWS_AS_ASKED, -1, -1))
        _shared.append(True)


def release_shared_arena() -> None:
    """The shared arena's free regions returned to the system, once the timed sessions are done:
    ONNX Runtime shrinks an arena at the end of a run asked to, here a one-node graph's in that arena."""
    if not _shared:
        return
    x = onnx.helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "release", [x], [y])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    shrink = ort.RunOptions()
    shrink.add_run_config_entry(_SHRINK, "cpu:0")
    session(model, cpu_only=True, shared=True).run(None, {"x": np.zeros(1, np.float32)}, shrink)


def feed_for(sess: ort.InferenceSession, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cast the feed to the dtypes the graph declares (an FP16-I/O graph takes float16)."""
    return {i.name: np.ascontiguousarray(feed[i.name], dtype=_ORT_TO_NUMPY.get(i.type)) for i in sess.get_inputs()}


def run(sess: ort.InferenceSession, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [
        np.asarray(o, dtype=np.float32) if np.asarray(o).dtype == np.float16 else np.asarray(o)
        for o in sess.run(None, feed_for(sess, feed))
    ]
