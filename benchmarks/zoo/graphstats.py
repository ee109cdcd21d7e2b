"""Figures read off a written Q/DQ graph that the stages do not save (yet).

- violations: TensorRT explicit-quantization rules broken (``pipeline.targets.rules``);
- coverage: share of Conv/ConvTranspose/Gemm/MatMul nodes whose first (activation) input
  comes out of a DequantizeLinear, i.e. that can run in INT8;
- int8-weight share: elements of int8 (or, in an FP8 graph, FP8 E4M3) initializers over elements
  of all weight-like initializers (rank >= 2; biases, scales and zero points left out).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from pipeline import targets

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class GraphStats:
    violations: int
    compute_nodes: int
    quantized_nodes: int
    int8_weight_share: float

    @property
    def coverage(self) -> float:
        return self.quantized_nodes / self.compute_nodes if self.compute_nodes else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "coverage": self.coverage}


def graph_stats(path: Path, target: str) -> GraphStats:
    """``target``: the runtime whose quantization rules apply ("tensorrt" or "onnxruntime-cpu")."""
    model = onnx.load(str(path))
    graph = model.graph
    dq_outputs = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    compute = [n for n in graph.node if n.op_type in COMPUTE_OPS]
    quantized = sum(1 for n in compute if n.input[0] in dq_outputs)
    return GraphStats(
        violations=len(targets.get(target).violations(model)),
        compute_nodes=len(compute),
        quantized_nodes=quantized,
        int8_weight_share=_int8_share(graph),
    )


def _int8_share(graph: onnx.GraphProto) -> float:
    int8 = total = 0
    for init in graph.initializer:
        if len(init.dims) < 2:
            continue
        size = int(np.prod(init.dims))
        total += size
        if init.data_type in (TensorProto.INT8, TensorProto.FLOAT8E4M3FN):
            int8 += size
    return int8 / total if total else 0.0
