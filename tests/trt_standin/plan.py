"""What the stand-in's "engine" is: the ONNX graph it was built from, plus the layers TensorRT would report.

A stand-in plan is ``MAGIC``, a JSON header (TensorRT version, the GPU's compute capability,
I/O tensors, profiles, profiling verbosity, layers) and the ONNX graph's bytes. Inference runs
that graph on ONNX Runtime, as written (no graph optimizations), on the CPU.

Layers follow TensorRT's explicit-quantization behaviour closely enough for our report:
a DequantizeLinear feeding a Conv/ConvTranspose/Gemm/MatMul (and its QuantizeLinear) fuses
into that layer, which then runs INT8 and reports ``"Datatype": "Int8"`` on its input; Q/DQ
around an elementwise Add fuse into it; any other Q/DQ stands alone as a Quantize/Dequantize
layer; a Cast between float types (the FP16 graph's FP32 I/O and islands) is a reformat layer,
``Reformatting CopyNode for Input Tensor 0 to <consumer>``. Fused regions report as Myelin's
do (NVIDIA/TensorRT#4397): with ``myelin="kgen"`` attention (MatMul -> [Mul/Div] -> Softmax ->
MatMul) is one ``kgen`` layer; with ``myelin="foreign-node"`` the attention and the projections
feeding it are one ``Myelin`` layer named ``{ForeignNode[first...last]}``. Either region lists
every ONNX node it swallowed, its Q/DQ included, and reports the precision of the tensors
entering it (Half), not Int8. Every layer carries ``"Metadata"`` naming its ONNX nodes
(``[ONNX Layer: name]``, separated by ``\\x1e``), as TensorRT's inspector does.

The builder refuses what a strongly typed network cannot hold (``build_problems``): float inputs
of different types meeting in one op (TensorRT 11 inserts no casts), and TensorRT's Q/DQ rules.

In an FP8 graph (the DequantizeLinear reads FLOAT8E4M3FN) the same layers report ``"FP8"``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

MAGIC = b"TRT-STANDIN-PLAN"
COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
QDQ = ("QuantizeLinear", "DequantizeLinear")
_ONNX_DTYPES = {
    TensorProto.FLOAT: "FLOAT",
    TensorProto.FLOAT16: "HALF",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.INT8: "INT8",
    TensorProto.FLOAT8E4M3FN: "FP8",
    TensorProto.UINT8: "UINT8",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.BOOL: "BOOL",
}
# How TensorRT 11's inspector spells each DataType ("Datatype" key).
INSPECTOR_DTYPES = {
    "FLOAT": "Float",
    "HALF": "Half",
    "BF16": "BFloat16",
    "INT8": "Int8",
    "FP8": "FP8",  # the spelling of 11.x's FP8 in the inspector is unconfirmed (tensorrt11.md: [U])
    "UINT8": "UInt8",
    "INT32": "Int32",
    "INT64": "Int64",
    "BOOL": "Bool",
}
_LAYER_TYPES = {  # ONNX op -> (LayerType, ParameterType) as TensorRT's inspector reports them
    "Conv": ("CaskConvolution", "Convolution"),
    "ConvTranspose": ("CaskDeconvolution", "Deconvolution"),
    "Gemm": ("CaskGemmMatrixMultiply", "Matrix Multiply"),
    "MatMul": ("CaskGemmMatrixMultiply", "Matrix Multiply"),
    "QuantizeLinear": ("Quantize", "Quantize"),
    "DequantizeLinear": ("Dequantize", "Dequantize"),
    "Softmax": ("Softmax", "Softmax"),
    "Reshape": ("NoOp", "Shuffle"),
    "Transpose": ("Shuffle", "Shuffle"),
    "Cast": ("Cast", "Cast"),
}


_TACTICS = {"INT8": "sm89_xmma_gemm_i8i8_tensor16x8x32", "FP8": "sm89_xmma_gemm_e4m3e4m3_tensor16x8x32"}


def dtype_name(elem_type: int) -> str:
    return _ONNX_DTYPES.get(elem_type, "FLOAT")


def metadata(nodes: list[onnx.NodeProto]) -> str:
    return "\x1e".join(f"[ONNX Layer: {n.name}]" for n in nodes)


@dataclass
class Graph:
    """The ONNX graph with shapes inferred, and who produces and consumes each tensor."""

    model: onnx.ModelProto
    producer: dict[str, onnx.NodeProto] = field(default_factory=dict)
    consumers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    types: dict[str, int] = field(default_factory=dict)
    shapes: dict[str, list[int | str]] = field(default_factory=dict)
    initializers: dict[str, onnx.TensorProto] = field(default_factory=dict)

    @classmethod
    def of(cls, model: onnx.ModelProto) -> Graph:
        inferred = onnx.shape_inference.infer_shapes(model)
        g = cls(model)
        for n in model.graph.node:
            for o in n.output:
                g.producer[o] = n
            for i in n.input:
                g.consumers.setdefault(i, []).append(n)
        for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
            g.types[v.name] = v.type.tensor_type.elem_type
            g.shapes[v.name] = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or -1) for d in v.type.tensor_type.shape.dim
            ]
        for init in model.graph.initializer:
            g.initializers[init.name] = init
            g.types[init.name] = init.data_type
            g.shapes[init.name] = list(init.dims)
        for n in model.graph.node:  # Constant nodes are initializers to TensorRT
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        g.initializers[n.output[0]] = a.t
                        g.types[n.output[0]] = a.t.data_type
                        g.shapes[n.output[0]] = list(a.t.dims)
        return g

    def const(self, name: str) -> np.ndarray | None:
        t = self.initializers.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def via_dq(self, tensor: str) -> onnx.NodeProto | None:
        p = self.producer.get(tensor)
        return p if p is not None and p.op_type == "DequantizeLinear" else None

    def inputs(self) -> list[onnx.ValueInfoProto]:
        return [i for i in self.model.graph.input if i.name not in self.initializers]


# --- parsing: what TensorRT's ONNX parser refuses -----------------------------------------------


@dataclass(frozen=True)
class ParseProblem:
    node: int
    name: str
    op: str
    code: str  # ErrorCode member
    desc: str
    func: str


def parse_problems(model: onnx.ModelProto) -> list[ParseProblem]:
    g = Graph.of(model)
    problems = []
    for index, n in enumerate(model.graph.node):
        if n.domain not in ("", "ai.onnx"):
            problems.append(
                ParseProblem(
                    index,
                    n.name,
                    n.op_type,
                    "UNSUPPORTED_NODE",
                    f"No importer registered for op: {n.op_type}. Attempting to import as plugin.",
                    "importFallbackPluginImporter",
                )
            )
        elif n.op_type in QDQ and len(n.input) > 2:
            zero = g.const(n.input[2])
            if zero is None or np.any(zero != 0):
                problems.append(
                    ParseProblem(
                        index,
                        n.name,
                        n.op_type,
                        "INVALID_NODE",
                        "Assertion failed: shiftIsAllZeros(zeroPoint): TensorRT only supports symmetric quantization. "
                        "The zero point for the QuantizeLinear/DequantizeLinear operator must be all zeros.",
                        f"import{n.op_type}",
                    )
                )
    return problems


# --- building: what the builder refuses -------------------------------------------------------


# Ops whose float inputs must share one type in a strongly typed network (the data inputs: Where's
# condition and Q/DQ's scales aside), and the float types.
_SAME_TYPE = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "MatMul", "Gemm", "Conv", "Concat")
_FLOATS = {TensorProto.FLOAT: "Float", TensorProto.FLOAT16: "Half", TensorProto.BFLOAT16: "BFloat16"}


def build_problems(g: Graph) -> list[str]:
    """Errors TensorRT's builder reports: a strong-typing mismatch, and explicit quantization's rules
    (NvInfer.h's IQuantizeLayer)."""
    problems = []
    for n in g.model.graph.node:
        if n.op_type in _SAME_TYPE:
            types = sorted({_FLOATS[g.types[t]] for t in n.input if t and g.types.get(t) in _FLOATS})
            if len(types) > 1:
                problems.append(
                    f"{n.name}: inputs of different types ({' and '.join(types)}) in a strongly typed network; "
                    f"the graph must cast them to one type"
                )
    for n in g.model.graph.node:
        if n.op_type not in QDQ:
            continue
        scale = g.const(n.input[1])
        if scale is None:
            problems.append(f"{n.name}: scale must be a build-time constant")
            continue
        if np.any(scale <= 0):
            problems.append(f"{n.name}: Assertion failed: scaleAllPositive: scale coefficients must all be positive")
        if scale.size > 1 and n.input[0] not in g.initializers and g.via_dq(n.input[0]) is None:
            # A per-channel Q on an activation (the weight Q's input is an initializer).
            problems.append(
                f"{n.name}: per-channel quantization is supported only for weight inputs; "
                f"activations cannot be quantized per-channel"
            )
    return problems


# --- the layers the inspector reports ---------------------------------------------------------


def _tensor_json(g: Graph, name: str, dtype: str, batch: int) -> dict:
    dims = [batch if not isinstance(d, int) or d < 0 else d for d in g.shapes.get(name, [])]
    return {
        "Name": name,
        "Location": "Device",
        "Dimensions": dims,
        "Datatype": INSPECTOR_DTYPES[dtype],
        "Format": "Row major linear",
    }


def _attention_block(g: Graph, softmax: onnx.NodeProto) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]] | None:
    """MatMul -> [Mul/Div/Add]* -> Softmax -> [Q/DQ] -> MatMul, as Myelin fuses it: (ops, Q/DQ between them)."""
    ops = [softmax]
    p = g.producer.get(softmax.input[0])
    while p is not None and p.op_type in ("Mul", "Div", "Add"):
        ops.insert(0, p)
        p = g.producer.get(p.input[0])
    if p is None or p.op_type != "MatMul":
        return None
    ops.insert(0, p)
    between = []
    q = softmax
    while True:
        after = g.consumers.get(q.output[0], [])
        if len(after) != 1:
            return None
        q = after[0]
        if q.op_type not in QDQ:
            break
        between.append(q)
    if q.op_type != "MatMul":
        return None
    ops.append(q)
    return ops, between


# What a ForeignNode region swallows upstream of an attention block: projections and their plumbing.
_ABSORBED = ("MatMul", "QuantizeLinear", "DequantizeLinear", "Transpose", "Reshape", "Add", "Mul", "Div")


def _region(g: Graph, seed: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``seed`` and every node upstream of it that Myelin takes into the same region (``_ABSORBED``)."""
    members = {n.name: n for n in seed}
    frontier = [t for n in seed for t in n.input]
    while frontier:
        p = g.producer.get(frontier.pop())
        if p is not None and p.op_type in _ABSORBED and p.name not in members:
            members[p.name] = p
            frontier += [t for t in p.input if t not in g.initializers]
    return list(members.values())


def layers(model: onnx.ModelProto, batch: int, myelin: str = "kgen") -> list[dict]:
    """Engine layers in TensorRT 11's DETAILED inspector form, in graph order; fused regions as
    ``myelin`` says ("kgen" or "foreign-node")."""
    g = Graph.of(model)
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    fused: set[str] = set()  # nodes folded into another layer
    found: list[tuple[int, dict]] = []

    def dtype_of(tensor: str) -> str:
        dq = g.via_dq(tensor)  # a layer fed through a DequantizeLinear takes its stored type: INT8 or FP8
        return stored(dq.input[0]) if dq is not None else dtype_name(g.types.get(tensor, TensorProto.FLOAT))

    def stored(tensor: str) -> str:  # a Q output, a quantized weight
        return dtype_name(g.types.get(tensor, TensorProto.INT8))

    def tensor(name: str, dtype: str | None = None) -> dict:
        return _tensor_json(g, name, dtype or dtype_of(name), batch)

    def qdq_feeding(inputs: list[str]) -> list[onnx.NodeProto]:
        """The DQ (and its Q) in front of each input: TensorRT fuses them into the consumer."""
        folded = []
        for t in inputs:
            dq = g.via_dq(t)
            if dq is not None:
                q = g.producer.get(dq.input[0])
                folded += [dq] + ([q] if q is not None and q.op_type == "QuantizeLinear" else [])
        return folded

    for softmax in (n for n in model.graph.node if n.op_type == "Softmax"):
        block = _attention_block(g, softmax)
        if block is None or softmax.name in fused:
            continue
        ops, between = block
        matmuls = [n for n in ops if n.op_type == "MatMul"]
        swallowed = [*ops, *between, *qdq_feeding([t for m in matmuls for t in m.input])]
        if myelin == "foreign-node":
            swallowed = _region(g, swallowed)
        swallowed = sorted({n.name: n for n in swallowed}.values(), key=lambda n: order[n.name])
        fused.update(n.name for n in swallowed)
        produced = {o for n in swallowed for o in n.output}
        entering = list(dict.fromkeys(t for n in swallowed for t in n.input if t not in produced))
        entering = [t for t in entering if t not in g.initializers]
        first, last = swallowed[0], swallowed[-1]
        name = (
            f"{{ForeignNode[{first.name}...{last.name}]}}"
            if myelin == "foreign-node"
            else f"_gemm_mha_v2_myl0_{len(found)}"
        )
        found.append(
            (
                order[first.name],
                {
                    "Name": name,
                    "LayerType": "Myelin" if myelin == "foreign-node" else "kgen",
                    # The region's own inputs: what enters it, before the Q/DQ it swallowed (Half, not Int8).
                    "Inputs": [tensor(t, dtype_name(g.types.get(t, TensorProto.FLOAT))) for t in entering],
                    "Outputs": [tensor(ops[-1].output[0])],
                    "TacticName": ("__myl_" if myelin == "foreign-node" else "_gemm_mha_v2_") + "0x" + "0" * 32,
                    "StreamId": 0,
                    "Metadata": metadata(swallowed),
                },
            )
        )

    for n in model.graph.node:
        if n.name in fused or n.op_type not in COMPUTE:
            continue
        fused.update(x.name for x in qdq_feeding(list(n.input[:2])))
        kind, param = _LAYER_TYPES[n.op_type]
        runs = dtype_of(n.input[0])  # INT8, FP8, or the float type
        entry = {
            "Name": n.name,
            "LayerType": kind,
            "Inputs": [tensor(n.input[0])],
            "Outputs": [tensor(n.output[0])],
            "ParameterType": param,
            "TacticName": _TACTICS.get(runs, "sm89_xmma_gemm_f16f16_tensor16x8x16"),
            "StreamId": 0,
            "Metadata": metadata([n]),
        }
        weights = n.input[1] if len(n.input) > 1 else None
        if weights is not None and (weights in g.initializers or g.via_dq(weights) is not None):
            count = int(np.prod(g.shapes.get(weights) or [0]))
            entry["Weights"] = {"Type": INSPECTOR_DTYPES[dtype_of(weights)], "Count": count}
        elif weights is not None:
            entry["Inputs"].append(tensor(weights))
        found.append((order[n.name], entry))

    for n in model.graph.node:  # Q/DQ around an elementwise Add fuse into it (explicit-quantization rule 5)
        if n.op_type == "Add" and n.name not in fused:
            fused.update(x.name for x in qdq_feeding(list(n.input)))
            fused.update(c.name for c in g.consumers.get(n.output[0], []) if c.op_type == "QuantizeLinear")

    for n in model.graph.node:
        if n.name in fused or n.op_type in ("Constant", "Identity") or n.op_type in COMPUTE:
            continue
        before, after = g.types.get(n.input[0]), g.types.get(n.output[0])
        if n.op_type == "Cast" and before in _FLOATS and after in _FLOATS and before != after:
            # A type change between layers is a reformat (as at the network's FP32 input and output).
            consumer = next(iter(g.consumers.get(n.output[0], [])), None)
            producer = g.producer.get(n.input[0])
            where = (
                f"Input Tensor 0 to {consumer.name}"
                if consumer is not None
                else f"Output Tensor 0 to {producer.name if producer is not None else n.name}"
            )
            found.append(
                (
                    order[n.name],
                    {
                        "Name": f"Reformatting CopyNode for {where}",
                        "LayerType": "Reformat",
                        "Inputs": [tensor(n.input[0])],
                        "Outputs": [tensor(n.output[0])],
                        "TacticValue": "0x0",
                        "StreamId": 0,
                        "Metadata": metadata([n]),
                    },
                )
            )
            continue
        kind, param = _LAYER_TYPES.get(n.op_type, ("PointWiseV2", "PointWise"))
        found.append(
            (
                order[n.name],
                {
                    "Name": n.name,
                    "LayerType": kind,
                    "Inputs": [tensor(t) for t in n.input if t and t not in g.initializers],
                    "Outputs": [tensor(o, stored(o) if n.op_type == "QuantizeLinear" else None) for o in n.output],
                    "ParameterType": param,
                    "StreamId": 0,
                    "Metadata": metadata([n]),
                },
            )
        )
    return [entry for _, entry in sorted(found, key=lambda item: item[0])]


# --- the serialized plan ----------------------------------------------------------------------


def serialize(header: dict, model_bytes: bytes) -> bytes:
    head = json.dumps(header, sort_keys=True).encode()
    return MAGIC + struct.pack("<Q", len(head)) + head + model_bytes


def deserialize(data: bytes) -> tuple[dict, bytes] | None:
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        return None
    (size,) = struct.unpack_from("<Q", data, len(MAGIC))
    start = len(MAGIC) + 8
    try:
        header = json.loads(data[start : start + size])
    except ValueError:
        return None
    return header, data[start + size :]
