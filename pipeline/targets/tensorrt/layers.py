"""Parse the engine inspector's JSON: which precision each layer runs at.

TensorRT 10 writes each tensor's ``"Format/Datatype"`` in one string
("Channel major INT8 format where channel % 32 == 0"); TensorRT 11 splits it
into ``"Datatype"`` and ``"Format"``. Both are read. The engine-level JSON lists the
layers under ``"Layers"``; where it does not, the build asks the inspector for each layer
(``get_layer_information(i)``, ``trt.engine_information``), and a layout read neither way
leaves INT8 coverage *undetermined*, said as such, never 0%.

A layer's ``"Metadata"`` names the ONNX nodes it was made from (``[ONNX Layer: name]``,
several for a fusion). That is how coverage is counted: a quantized ONNX Conv/Gemm/MatMul
runs INT8 when the engine layer holding it takes INT8 input, or when that layer swallowed
the DequantizeLinear on the node's data input too. The second case is how fused regions
report: Myelin fuses a transformer's GEMMs and attention into layers of its own kinds
(``gemm``, ``kgen``, ``Myelin``/``{ForeignNode[...]}``), whose inputs are the region's,
often Half (NVIDIA/TensorRT#4397 shows such output for a Q/DQ BERT), while the Q/DQ pairs
it absorbed quantize inside it. A region whose tactic names a float GEMM kernel
(``f16f16``, ``f32f32``, ``bf16bf16``, no ``i8``) is not counted INT8, whatever it swallowed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
_FLOAT_KERNEL = re.compile(r"f16f16|f32f32|bf16bf16", re.I)  # a float GEMM/conv tactic (sm80_xmma_gemm_f16f16_...)
UNREADABLE = "unreadable"  # a layer entry with none of the inspector's keys
_ONNX_NODE = re.compile(r"\[ONNX Layer: (.*?)\](?=\x1e|\[ONNX Layer: |$)", re.S)


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str  # LayerType
    inputs: tuple[str, ...]  # datatypes
    outputs: tuple[str, ...]
    onnx_nodes: tuple[str, ...] = ()  # from "Metadata": the ONNX nodes this layer was made from
    tactic: str = ""

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

    @property
    def float_kernel(self) -> bool:
        return bool(_FLOAT_KERNEL.search(self.tactic)) and "i8" not in self.tactic.lower()

    def int8_for(self, node: str, dequantize: frozenset[str]) -> bool:
        """Does this layer run ONNX node ``node`` in INT8: it holds the node, and takes INT8 input or
        swallowed ``dequantize`` (the DequantizeLinear on the node's data input) without a float kernel."""
        if node not in self.onnx_nodes:
            return False
        return self.runs_8bit or (bool(dequantize & set(self.onnx_nodes)) and not self.float_kernel)


def tensor_dtype(tensor: dict[str, Any]) -> str:
    text = tensor.get("Datatype") or tensor.get("Format/Datatype") or ""
    upper = str(text).upper()
    return next((name for key, name in _DTYPES if key in upper), "unknown")


def parse_layers(info: dict[str, Any] | list[Any], source: str = "engine") -> list[Layer]:
    """Layers from ``get_engine_information`` JSON (a dict with "Layers") or a list of per-layer JSON;
    an engine-level dict without "Layers" has none (``summarize`` then says coverage is undetermined)."""
    raw = (info.get("Layers") or []) if isinstance(info, dict) else info
    layers = []
    for item in raw:
        if not isinstance(item, dict):  # LAYER_NAMES_ONLY verbosity: names, no precisions
            layers.append(Layer(str(item), "unknown", (), ()))
            continue
        if not set(item) & {"Name", "LayerType", "ParameterType", "Inputs", "Outputs", "Metadata"}:
            layers.append(Layer(f"keys {', '.join(map(str, item)) or 'none'}", UNREADABLE, (), ()))
            continue
        layers.append(
            Layer(
                name=str(item.get("Name", "")),
                kind=str(item.get("LayerType") or item.get("ParameterType") or "unknown"),
                inputs=tuple(tensor_dtype(t) for t in item.get("Inputs", []) or [] if isinstance(t, dict)),
                outputs=tuple(tensor_dtype(t) for t in item.get("Outputs", []) or [] if isinstance(t, dict)),
                onnx_nodes=tuple(_ONNX_NODE.findall(str(item.get("Metadata") or ""))),
                tactic=str(item.get("TacticName") or ""),
            )
        )
    return layers


def _undetermined(layers: list[Layer]) -> str | None:
    """Why the layers cannot tell which run INT8, or None when they can."""
    if not layers:
        return "the engine inspector listed no layers (neither in its engine JSON nor per layer)"
    readable = [layer for layer in layers if layer.kind != UNREADABLE]
    if not readable:
        return f"the inspector's layer JSON is in a layout this trtpipe does not read ({layers[0].name})"
    if all(layer.kind == "unknown" and not layer.inputs for layer in readable):
        return "engine built without DETAILED profiling verbosity: layer precisions unknown"
    if all(dtype == "unknown" for layer in readable for dtype in layer.inputs):
        return "no layer reports a datatype this trtpipe reads for its inputs"
    return None


def summarize(
    layers: list[Layer], quantized: Mapping[str, frozenset[str]] | set[str] | frozenset[str] = frozenset()
) -> LayerSummary:
    """``quantized``: the ONNX Conv/Gemm/MatMul nodes the Q/DQ graph quantizes (empty for FP16), each with
    the Q/DQ nodes on its data input where known (``quantized_compute_inputs``)."""
    qdq = quantized if isinstance(quantized, Mapping) else dict.fromkeys(quantized, frozenset())
    undetermined = _undetermined(layers)
    by_onnx_node = any(layer.onnx_nodes for layer in layers)
    int8_nodes = {n for n, dq in qdq.items() if any(layer.int8_for(n, dq) for layer in layers)}
    compute = [layer for layer in layers if layer.is_compute]
    int8_compute = sum(layer.runs_8bit or any(layer.int8_for(n, qdq[n]) for n in int8_nodes) for layer in compute)
    if undetermined is not None:
        covered = 0
    elif by_onnx_node:
        covered = len(int8_nodes)
    else:  # no metadata (TensorRT < 8.6): one compute layer per quantized node is the best guess
        covered = min(int8_compute, len(qdq))
    return LayerSummary(
        layers=len(layers),
        compute_layers=len(compute),
        int8_compute_layers=int8_compute,
        reformat_layers=sum(layer.is_reformat for layer in layers),
        unfused_qdq_layers=sum(layer.is_qdq for layer in layers),
        detailed=any(layer.kind != "unknown" for layer in layers),
        quantized_layers=len(qdq),
        int8_quantized_layers=covered,
        by_onnx_node=by_onnx_node,
        undetermined=undetermined if qdq else None,
    )


COVERAGE_WARNING = 0.90


def coverage_warning(summary: LayerSummary) -> str | None:
    """A loud warning when the w8a8 engine runs too few of its quantized layers in INT8, or when how
    many it runs cannot be told."""
    if not summary.detailed:
        return "engine built without DETAILED profiling verbosity: layer precisions unknown"
    if summary.quantized_coverage is None:
        return f"INT8 coverage undetermined: {summary.undetermined}"
    if summary.quantized_coverage < COVERAGE_WARNING:
        return (
            f"only {summary.int8_quantized_layers} of {summary.quantized_layers} quantized layers run INT8 "
            f"({summary.quantized_coverage:.0%} < {COVERAGE_WARNING:.0%}); {summary.reformat_layers} reformat "
            f"layers, {summary.unfused_qdq_layers} unfused Q/DQ layers: expect little or no speedup over FP16"
        )
    return None


def quantized_compute_inputs(model) -> dict[str, frozenset[str]]:
    """Conv/GEMM/MatMul nodes of a Q/DQ ONNX graph whose data input comes through a DequantizeLinear,
    each with that DequantizeLinear and the QuantizeLinear feeding it (what a fused region swallows)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found = {}
    for n in model.graph.node:
        if n.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or not n.input:
            continue
        dq = producer.get(n.input[0])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        found[n.name] = frozenset({dq.name} | ({q.name} if q is not None and q.op_type == "QuantizeLinear" else set()))
    return found


def quantized_compute_node_names(model) -> set[str]:
    """Conv/GEMM/MatMul nodes of a Q/DQ ONNX graph whose data input comes through a DequantizeLinear."""
    return set(quantized_compute_inputs(model))


def quantized_compute_nodes(model) -> int:
    return len(quantized_compute_node_names(model))
