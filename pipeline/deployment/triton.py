"""Triton Inference Server model repositories: ``DIR/NAME/config.pbtxt`` + ``DIR/NAME/1/model.{plan,onnx}``.

The config is built as Triton's own ``ModelConfig`` protobuf (from tritonclient)
and written in protobuf text format, then parsed back against the schema.

An engine with several optimization profiles: Triton's TensorRT backend uses the profiles its
instance groups list, profile 0 alone where they list none, and refuses a model whose
``max_batch_size`` exceeds the largest batch those profiles take ("configuration specified
max-batch N but TensorRT engine only supports max-batch M", its model_state.cc). Its dynamic
batcher may hand any instance any batch from 1 to ``max_batch_size``, and an instance picks, per
batch, the closest of *its* profiles (``GetMostOptimizedProfile``). So the one instance group lists
every profile, and ``max_batch_size`` is the largest profile max, refused where the profiles leave
a batch size between 1 and it to none. Each profile's context is warmed up at its opt batch
(``model_warmup``); CUDA graphs are asked for where bench timed them (``[bench] cuda_graph``).

A TensorRT-target Q/DQ graph deployed on ONNX Runtime (a GPU machine without TensorRT engines)
runs INT8 only through the TensorRT execution accelerator: its config asks for it (on the CUDA EP
alone the Q/DQ pairs are simulated in float).
"""

from __future__ import annotations

import onnx

from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.targets.base import ENGINE

_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
}


def container(trt_version: str) -> dict[str, str]:
    """Which Triton container an engine loads in, for the manifest and the README: one TensorRT build
    per release, and an engine deserializes only in the TensorRT version that built it. Triton moved to
    TensorRT 11 with release 26.06 (triton-inference-server/onnxruntime_backend bb4926b, "prepare ONNX
    Runtime backend for 26.06 (TRT 11 ...)"); the TensorRT build in each release is in its notes."""
    soname = ".".join(trt_version.split(".")[:3])
    return {
        "tensorrt_version": trt_version,
        "image": "nvcr.io/nvidia/tritonserver:<YY.MM>-py3",
        "release": f"the release whose notes list TensorRT {trt_version}"
        + (" (TensorRT 11 from 26.06 on)" if trt_version.startswith("11.") else ""),
        "check": f"docker run --rm nvcr.io/nvidia/tritonserver:<YY.MM>-py3 sh -c 'ls /usr/lib/*-linux-gnu/"
        f"libnvinfer.so.*' shows libnvinfer.so.{soname}",
    }


def model_config_pb2():
    try:
        from tritonclient.grpc import model_config_pb2 as mc
    except ImportError:
        raise PipelineError(
            "--format triton validates config.pbtxt against Triton's schema, which comes with "
            "tritonclient: pip install 'trtpipe[deploy]'"
        ) from None
    return mc


def build_config(
    cfg: Config,
    graph: onnx.ModelProto,
    backend: str,
    device: str,
    preferred: list[int],
    tensorrt_accelerator: bool = False,
):
    """A ``ModelConfig`` for the graph's I/O (an engine keeps its source graph's names, shapes, dtypes).
    ``tensorrt_accelerator``: the ONNX graph is a TensorRT-target Q/DQ graph on a GPU."""
    mc = model_config_pb2()
    batch_first = all(spec.batch_axis == 0 for spec in (*cfg.inputs, *cfg.outputs))
    max_batch = max(p.max for p in cfg.batch) if batch_first else 0
    if max_batch and backend == ENGINE:
        check_profiles_cover(cfg, max_batch)
    config = mc.ModelConfig(name=cfg.name, max_batch_size=max_batch)
    if backend == ENGINE:
        config.platform = "tensorrt_plan"
    else:
        config.platform = "onnxruntime_onnx"
        config.backend = "onnxruntime"
    for value in graph.graph.input:
        config.input.add(name=value.name, data_type=_dtype(value), dims=_dims(value, batch_first))
    for value in graph.graph.output:
        config.output.add(name=value.name, data_type=_dtype(value), dims=_dims(value, batch_first))
    if max_batch:
        config.dynamic_batching.preferred_batch_size.extend(b for b in preferred if b <= max_batch)
        config.dynamic_batching.max_queue_delay_microseconds = 100
    group = config.instance_group.add(
        count=1, kind=mc.ModelInstanceGroup.KIND_GPU if device == "GPU" else mc.ModelInstanceGroup.KIND_CPU
    )
    if backend == ENGINE:
        group.profile.extend(str(i) for i in range(len(cfg.batch)))  # every instance serves every batch size
        for i, profile in enumerate(cfg.batch):
            _warmup(config, cfg, graph, f"profile {i} at batch {profile.opt}", profile.opt if batch_first else 0)
        if cfg.bench.cuda_graph:
            config.optimization.cuda.graphs = True
    elif tensorrt_accelerator:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(
            name="tensorrt"  # Triton's name for ONNX Runtime's TensorRT execution provider
        )
        # trt_int8_enable: the Q/DQ pairs build INT8 kernels (the mapping in Triton's onnxruntime_backend README)
        accelerator.parameters["precision_mode"] = "INT8"
        accelerator.parameters["max_workspace_size_bytes"] = str(cfg.build.workspace_mib << 20)
        accelerator.parameters["trt_engine_cache_enable"] = "1"  # build the engines once, not at every load
    return config


def check_profiles_cover(cfg: Config, max_batch: int) -> None:
    """Every batch size from 1 to ``max_batch`` must fall in some [batch] profile: Triton's dynamic
    batcher forms any of them, and a batch no profile takes fails at run time."""
    covered = 0
    for p in sorted(cfg.batch, key=lambda p: p.min):
        if p.min > covered + 1:
            break
        covered = max(covered, p.max)
    if covered >= max_batch:
        return
    gap_end = min((p.min - 1 for p in cfg.batch if p.min > covered), default=max_batch)
    ranges = ", ".join(f"[{p.min}, {p.max}]" for p in cfg.batch)
    raise PipelineError(
        f"{cfg.path}: no [batch] profile ({ranges}) takes a batch of {covered + 1} to {gap_end}, and Triton may "
        f"form any batch from 1 to max_batch_size {max_batch}; make the profiles cover 1..{max_batch} without a "
        f"gap (the first profile's min 1, each next one's min the previous max + 1)"
    )


def _warmup(config, cfg: Config, graph: onnx.ModelProto, name: str, batch: int) -> None:
    """A zero-data warm-up request at ``batch`` (0: the model does not batch), each named dynamic axis
    at its [[axes]] opt."""
    opt = {a.name: a.opt for a in cfg.axes}
    specs = {s.name: s for s in cfg.inputs}
    sample = config.model_warmup.add(name=name, batch_size=batch, count=1)
    for value in graph.graph.input:
        shape = specs[value.name].shape if value.name in specs else _dims(value, False)
        dims = [opt.get(d, 1) if isinstance(d, str) else max(d, 1) for d in (shape[1:] if batch else shape)]
        entry = sample.inputs[value.name]
        entry.data_type = _dtype(value)
        entry.dims.extend(dims)
        entry.zero_data = True


def _dtype(value: onnx.ValueInfoProto) -> int:
    mc = model_config_pb2()
    elem = value.type.tensor_type.elem_type
    if elem not in _TYPES:
        raise PipelineError(f"tensor {value.name!r}: dtype {onnx.TensorProto.DataType.Name(elem)} has no Triton type")
    return mc.DataType.Value(_TYPES[elem])


def _dims(value: onnx.ValueInfoProto, batch_first: bool) -> list[int]:
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
    return dims[1:] if batch_first else dims


def to_text(config) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def parse(text: str):
    """Parse config.pbtxt text against Triton's ModelConfig schema (unknown fields are errors)."""
    from google.protobuf import text_format

    mc = model_config_pb2()
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as exc:
        raise PipelineError(f"config.pbtxt does not parse against Triton's model config schema: {exc}") from None


def preferred_batch_sizes(cfg: Config) -> list[int]:
    """Each [batch] profile's opt and max: the batches its engine was tuned for and the most it takes.
    Not from bench timings: those are at whatever batches and shapes bench ran, and a batcher waiting
    for a batch no profile is tuned for only adds queueing delay."""
    return sorted({b for p in cfg.batch for b in (p.opt, p.max)})
