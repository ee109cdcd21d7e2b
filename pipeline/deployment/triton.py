"""Triton Inference Server model repositories: ``DIR/NAME/config.pbtxt`` + ``DIR/NAME/1/model.{plan,onnx}``.

The config is built as Triton's own ``ModelConfig`` protobuf (from tritonclient)
and written in protobuf text format, then parsed back against the schema.
"""

from __future__ import annotations

import onnx

from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.results import BenchResult
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


def model_config_pb2():
    try:
        from tritonclient.grpc import model_config_pb2 as mc
    except ImportError:
        raise PipelineError(
            "--format triton validates config.pbtxt against Triton's schema, which comes with "
            "tritonclient: pip install 'trtpipe[deploy]'"
        ) from None
    return mc


def build_config(cfg: Config, graph: onnx.ModelProto, backend: str, device: str, preferred: list[int]):
    """A ``ModelConfig`` for the graph's I/O (an engine keeps its source graph's names, shapes, dtypes)."""
    mc = model_config_pb2()
    batch_first = all(spec.batch_axis == 0 for spec in (*cfg.inputs, *cfg.outputs))
    max_batch = max(p.max for p in cfg.batch) if batch_first else 0
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
    config.instance_group.add(
        count=1, kind=mc.ModelInstanceGroup.KIND_GPU if device == "GPU" else mc.ModelInstanceGroup.KIND_CPU
    )
    return config


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


def preferred_batch_sizes(bench: BenchResult | None, precision: str) -> list[int]:
    """Batch sizes from the bench results whose throughput is within 80% of the best: worth waiting for."""
    if bench is None:
        return []
    rows = [r for r in bench.runs[0] if r.precision == precision]
    if not rows:
        return []
    best = max(r.throughput for r in rows)
    return sorted(r.batch for r in rows if r.throughput >= 0.8 * best)
