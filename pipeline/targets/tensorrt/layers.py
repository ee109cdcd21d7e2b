"""Parse the engine inspector's JSON: which precision each layer runs at.

TensorRT 10 writes each tensor's ``"Format/Datatype"`` in one string
("Channel major INT8 format where channel % 32 == 0"); TensorRT 11 splits it
into ``"Datatype"`` and ``"Format"``. Both are read.

A layer's ``"Metadata"`` names the ONNX nodes it was made from (``[ONNX Layer: name]``,
several for a fusion). That is how coverage is counted: a quantized ONNX Conv/Gemm/MatMul
runs INT8 when the engine layer holding it takes INT8 input. Myelin fuses a transformer's
GEMMs and attention into layers of its own kinds (``gemm``, ``kgen``: one layer for a
Q/K/V projection or a whole attention block, NVIDIA/TensorRT#4397), so counting by layer
kind would miss them; their reported precision and node list count them instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pipeline.errors import PipelineError
from pipeline.results import LayerSummary

# Order matters: longer names first, so "INT8" is not read as "INT" and "FP16" not as "FP".
_DTYPES = (
    ("BFLOAT16", "bf16"),
    ("BF16", "bf16"),
    ("FP8", "fp8"),
    ("FLOAT8", "fp8"),
    ("INT64", "int64"),
    ("INT32", "int32"),
    ("UINT8", "uint8"),
    ("INT8", "int8"),
    ("INT4", "int4"),
    ("FP16", "fp16"),
    ("HALF", "fp16"),
    ("FP32", "fp32"),
    ("FLOAT", "fp32"),
    ("BOOL", "bool"),
)
_COMPUTE = ("CONVOLUTION", "DECONVOLUTION", "GEMM", "MATRIXMULTIPLY", "MATMUL", "FULLYCONNECTED")
_QDQ = ("QUANTIZE",)  # Quantize, Dequantize, QuantizeLinear, DequantizeLinear
_ONNX_NODE = re.compile(r"\[ONNX Layer: (.*?)\](?=\x1e|\[ONNX Layer: |$)", re.S)


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str  # LayerType
    inputs: tuple[str, ...]  # datatypes
    outputs: tuple[str, ...]
    onnx_nodes: tuple[str, ...] = ()  # from "Metadata": the ONNX nodes this layer was made from

    @property
    def is_compute(self) -> bool:
        kind = self.kind.upper()
        return any(k in kind for k in _COMPUTE) and not self.is_qdq

    @property
    def is_reformat(self) -> bool:
        return self.kind.upper() == "REFORMAT" or self.name.startswith("Reformatting CopyNode")

    @property
    def is_qdq(self) -> bool:
        """A Quantize/Dequantize layer left standing: Q/DQ that did not fuse into a neighbour."""
        return any(k in self.kind.upper() for k in _QDQ)

    @property
    def runs_8bit(self) -> bool:
        """It takes INT8 input (or FP8, in an FP8 engine): the int8_* counts count both."""
        return bool(self.inputs) and self.inputs[0] in ("int8", "fp8")


def tensor_dtype(tensor: dict[str, Any]) -> str:
    text = tensor.get("Datatype") or tensor.get("Format/Datatype") or ""
    upper = str(text).upper()
    return next((name for key, name in _DTYPES if key in upper), "unknown")


def parse_layers(info: dict[str, Any] | list[Any], source: str = "engine") -> list[Layer]:
    """Layers from ``get_engine_information`` JSON (a dict with "Layers") or a list of per-layer JSON.

    Engine-level JSON without "Layers" is an error: an empty report would read as "no INT8".
    """
    if isinstance(info, dict):
        if "Layers" not in info:
            raise PipelineError(
                f'{source}: the engine inspector\'s JSON has no "Layers" (keys: {", ".join(info) or "none"}), '
                f"so which layers run INT8 is unknown; please report it with this file and the TensorRT version"
            )
        raw = info["Layers"]
    else:
        raw = info
    layers = []
    for item in raw:
        if isinstance(item, str):  # LAYER_NAMES_ONLY verbosity: names, no precisions
            layers.append(Layer(item, "unknown", (), ()))
            continue
        layers.append(
            Layer(
                name=str(item.get("Name", "")),
                kind=str(item.get("LayerType") or item.get("ParameterType") or "unknown"),
                inputs=tuple(tensor_dtype(t) for t in item.get("Inputs", []) or []),
                outputs=tuple(tensor_dtype(t) for t in item.get("Outputs", []) or []),
                onnx_nodes=tuple(_ONNX_NODE.findall(str(item.get("Metadata") or ""))),
            )
        )
    return layers


def summarize(layers: list[Layer], quantized: set[str] | frozenset[str] = frozenset()) -> LayerSummary:
    """``quantized``: names of the ONNX Conv/Gemm/MatMul nodes the Q/DQ graph quantizes (empty for FP16)."""
    compute = [layer for layer in layers if layer.is_compute]
    int8_compute = sum(layer.runs_8bit for layer in compute)
    by_onnx_node = any(layer.onnx_nodes for layer in layers)
    if by_onnx_node:
        int8_nodes = {n for layer in layers if layer.runs_8bit for n in layer.onnx_nodes}
        covered = len(set(quantized) & int8_nodes)
    else:  # no metadata (TensorRT < 8.6): one compute layer per quantized node is the best guess
        covered = min(int8_compute, len(quantized))
    return LayerSummary(
        layers=len(layers),
        compute_layers=len(compute),
        int8_compute_layers=int8_compute,
        reformat_layers=sum(layer.is_reformat for layer in layers),
        unfused_qdq_layers=sum(layer.is_qdq for layer in layers),
        detailed=any(layer.kind != "unknown" for layer in layers),
        quantized_layers=len(quantized),
        int8_quantized_layers=covered,
        by_onnx_node=by_onnx_node,
    )


COVERAGE_WARNING = 0.90


def coverage_warning(summary: LayerSummary) -> str | None:
    """A loud warning when the w8a8 engine runs too few of its quantized layers in INT8."""
    if not summary.detailed:
        return "engine built without DETAILED profiling verbosity: layer precisions unknown"
    if summary.quantized_coverage < COVERAGE_WARNING:
        return (
            f"only {summary.int8_quantized_layers} of {summary.quantized_layers} quantized layers run INT8 "
            f"({summary.quantized_coverage:.0%} < {COVERAGE_WARNING:.0%}); {summary.reformat_layers} reformat "
            f"layers, {summary.unfused_qdq_layers} unfused Q/DQ layers: expect little or no speedup over FP16"
        )
    return None


def quantized_compute_node_names(model) -> set[str]:
    """Conv/GEMM/MatMul nodes of a Q/DQ ONNX graph whose data input comes through a DequantizeLinear."""
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {
        n.name
        for n in model.graph.node
        if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and n.input and n.input[0] in dq_outputs
    }


def quantized_compute_nodes(model) -> int:
    return len(quantized_compute_node_names(model))
