"""Parse the engine inspector's JSON: which precision each layer runs at.

TensorRT 10 writes each tensor's ``"Format/Datatype"`` in one string
("Channel major INT8 format where channel % 32 == 0"); TensorRT 11 splits it
into ``"Datatype"`` and ``"Format"``. Both are read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

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


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str  # LayerType
    inputs: tuple[str, ...]  # datatypes
    outputs: tuple[str, ...]

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
    def runs_int8(self) -> bool:
        return bool(self.inputs) and self.inputs[0] == "int8"


@dataclass(frozen=True)
class LayerSummary:
    layers: int
    compute_layers: int
    int8_compute_layers: int
    reformat_layers: int
    unfused_qdq_layers: int
    detailed: bool  # False when the engine was built without DETAILED profiling verbosity

    @property
    def int8_coverage(self) -> float:
        return self.int8_compute_layers / self.compute_layers if self.compute_layers else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "int8_coverage": self.int8_coverage}


def tensor_dtype(tensor: dict[str, Any]) -> str:
    text = tensor.get("Datatype") or tensor.get("Format/Datatype") or ""
    upper = str(text).upper()
    return next((name for key, name in _DTYPES if key in upper), "unknown")


def parse_layers(info: dict[str, Any] | list[Any]) -> list[Layer]:
    """Layers from ``get_engine_information`` JSON (a dict with "Layers") or a list of per-layer JSON."""
    raw = info.get("Layers", []) if isinstance(info, dict) else info
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
            )
        )
    return layers


def summarize(layers: list[Layer]) -> LayerSummary:
    compute = [layer for layer in layers if layer.is_compute]
    return LayerSummary(
        layers=len(layers),
        compute_layers=len(compute),
        int8_compute_layers=sum(layer.runs_int8 for layer in compute),
        reformat_layers=sum(layer.is_reformat for layer in layers),
        unfused_qdq_layers=sum(layer.is_qdq for layer in layers),
        detailed=any(layer.kind != "unknown" for layer in layers),
    )


COVERAGE_WARNING = 0.90


def coverage_warning(summary: LayerSummary, expected_int8_layers: int) -> str | None:
    """A loud warning when the w8a8 engine runs too few of its quantized layers in INT8."""
    if not summary.detailed:
        return "engine built without DETAILED profiling verbosity: layer precisions unknown"
    expected = max(expected_int8_layers, 1)
    share = min(summary.int8_compute_layers / expected, 1.0)
    if share < COVERAGE_WARNING:
        return (
            f"only {summary.int8_compute_layers} of {expected_int8_layers} quantized layers run INT8 "
            f"({share:.0%} < {COVERAGE_WARNING:.0%}); {summary.reformat_layers} reformat layers, "
            f"{summary.unfused_qdq_layers} unfused Q/DQ layers: expect little or no speedup over FP16"
        )
    return None


def quantized_compute_nodes(model) -> int:
    """Conv/GEMM/MatMul nodes of a Q/DQ ONNX graph whose data input comes through a DequantizeLinear."""
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return sum(
        1
        for n in model.graph.node
        if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and n.input and n.input[0] in dq_outputs
    )
