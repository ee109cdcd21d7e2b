"""``QdqOnnxFromOnnx``: apply a TensorRT placement plan to the FP16 graph.

Symmetric int8 with zero-point 0 (or another ``Scheme``: FP8 E4M3 for
``pipeline.targets.tensorrt_fp8``). Activation scales are per tensor, in the
dtype of the tensor they quantize (FP16 in the FP16 graph, as strongly typed
TensorRT requires). Weights are stored as int8 initializers behind a
DequantizeLinear with per-channel scales: half the size of ModelOpt's FP16
weights with a Q/DQ pair, and the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pipeline import onnxutil
from pipeline.calibration.cache import Ranges
from pipeline.calibration.methods import AUTO
from pipeline.errors import PipelineError
from pipeline.graphview import GraphView
from pipeline.onnxutil import producer_map
from pipeline.placement import Plan

INT8_MAX = 127.0
FP16_TINY = float(np.finfo(np.float16).tiny)  # smallest normal FP16: scales must stay positive


@dataclass(frozen=True)
class Scheme:
    """The 8-bit type a TensorRT Q/DQ graph stores: symmetric over +-``qmax`` levels with zero point 0;
    ``quantize`` rounds and clips ``x / scale`` as QuantizeLinear does (saturating) into ``dtype``."""

    precision: str  # the graph's ``trtpipe.precision``
    qmax: float  # a scale is amax / qmax
    dtype: np.dtype  # of the stored values and of the zero point
    quantize: Callable[[np.ndarray], np.ndarray]
    # Rounds to a fixed number of significant bits (FP8): a scale and twice it round alike, one between
    # them differently, so calibration's whole-graph check chooses where in that octave the scales sit.
    relative: bool = False


def _int8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), -INT8_MAX, INT8_MAX).astype(np.int8)  # round half to even


INT8 = Scheme("w8a8", INT8_MAX, np.dtype(np.int8), _int8)


def _scale_floor(dtype: np.dtype) -> float:
    return FP16_TINY if dtype == np.float16 else 1e-12


def activation_scale(amax: float, dtype: np.dtype, scheme: Scheme = INT8) -> np.ndarray:
    return np.array(max(amax / scheme.qmax, _scale_floor(dtype)), dtype=dtype)


def quantize_weight(w: np.ndarray, axis: int, dtype: np.dtype, scheme: Scheme = INT8) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric: (weights in ``scheme``'s type, scales in ``dtype``) along ``axis``."""
    reduce_axes = tuple(a for a in range(w.ndim) if a != axis)
    amax = np.abs(w).max(axis=reduce_axes) if reduce_axes else np.abs(w)
    scale = np.maximum(amax / scheme.qmax, _scale_floor(dtype)).astype(dtype)
    shape = [1] * w.ndim
    shape[axis] = -1
    # Quantize with the scale as stored, so DequantizeLinear reproduces these numbers exactly.
    return scheme.quantize(w / scale.astype(np.float32).reshape(shape)), scale


class QdqOnnxFromOnnx:
    def __init__(self, plan: Plan, ranges: Ranges, method: str, scheme: Scheme = INT8) -> None:
        self.plan = plan
        self.ranges = ranges
        self.method = method
        self.scheme = scheme  # int8, or FP8 E4M3 (pipeline.targets.tensorrt_fp8)

    def __call__(self, fp16: onnx.ModelProto, fp32: onnx.ModelProto | GraphView) -> onnx.ModelProto:
        """``fp32`` (or its view) gives the weights, folded where they pass through a Transpose or Reshape.
        The FP16 graph's weights may be in a file beside the FP32 graph's (``GraphView.move_weights``):
        those the graph keeps are read in once the quantized layers' are dropped."""
        model = onnx.ModelProto()
        model.CopyFrom(fp16)
        for i, node in enumerate(model.graph.node):
            node.name = node.name or f"{node.op_type}_{i}"  # edges are addressed by node name
        dtype_of = _dtypes(model)
        nodes = {n.name: n for n in model.graph.node}
        position = {n.name: i for i, n in enumerate(model.graph.node)}
        fp32_view = GraphView.of(fp32)
        new_nodes: dict[str, list[onnx.NodeProto]] = {}  # inserted before the consumer named by key
        amax = self._amax_with_shared_scales()

        producer = producer_map(model.graph)
        for tensor, edges in sorted(self.plan.activations.items()):
            uses = []
            for node_name, idx in edges:
                node = nodes.get(node_name)
                if node is None:
                    raise PipelineError(
                        f"node {node_name!r} is in the FP32 graph but not the FP16 graph; re-run export"
                    )
                uses.append((node, idx))
            # The FP16 converter casts once per consumer: those uses share one Q/DQ pair,
            # on the earliest Cast so it precedes every consumer.
            casts = [
                node.input[idx]
                for node, idx in uses
                if (src := producer.get(node.input[idx])) is not None
                and src.op_type == "Cast"
                and src.input[0] == tensor
            ]
            shared_cast = min(casts, key=lambda t: position[producer[t].name]) if casts else None
            by_fp16_tensor: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
            for node, idx in uses:
                t16 = shared_cast if node.input[idx] in casts else node.input[idx]
                by_fp16_tensor.setdefault(t16, []).append((node, idx))
            for t16, group in by_fp16_tensor.items():
                dtype = dtype_of.get(t16, np.float16)
                scale = activation_scale(amax[tensor], dtype, self.scheme)
                base = _safe(t16)
                scale_name, zp_name = f"{base}_scale", f"{base}_zero_point"
                zero = np.zeros((), self.scheme.dtype)
                model.graph.initializer.extend(
                    [numpy_helper.from_array(scale, scale_name), numpy_helper.from_array(zero, zp_name)]
                )
                q_out, dq_out = f"{base}_quantized", f"{base}_dequantized"
                pair = [
                    helper.make_node(
                        "QuantizeLinear", [t16, scale_name, zp_name], [q_out], name=f"{base}_QuantizeLinear"
                    ),
                    helper.make_node(
                        "DequantizeLinear", [q_out, scale_name, zp_name], [dq_out], name=f"{base}_DequantizeLinear"
                    ),
                ]
                first_use = min(group, key=lambda use: position[use[0].name])[0]
                new_nodes.setdefault(first_use.name, []).extend(pair)
                for node, idx in group:
                    node.input[idx] = dq_out

        for wq in self.plan.weights:
            node = nodes[wq.node]
            name16 = node.input[wq.input_index]
            source = fp32_view.constant(wq.tensor)
            if source is None:
                raise PipelineError(f"weight {wq.tensor!r} missing from the FP32 graph; re-run export")
            dtype = dtype_of.get(name16, np.float16)
            q, scale = quantize_weight(source.astype(np.float32), wq.axis, dtype, self.scheme)
            base = _safe(f"{wq.node}_{wq.tensor}")
            stored = f"{base}_{self.scheme.dtype.name}"  # _int8, _float8_e4m3fn
            model.graph.initializer.extend(
                [
                    numpy_helper.from_array(q, stored),
                    numpy_helper.from_array(scale, f"{base}_scale"),
                    numpy_helper.from_array(np.zeros(scale.shape, self.scheme.dtype), f"{base}_zero_point"),
                ]
            )
            dq = helper.make_node(
                "DequantizeLinear",
                [stored, f"{base}_scale", f"{base}_zero_point"],
                [f"{base}_dequantized"],
                name=f"{base}_DequantizeLinear",
                axis=wq.axis,
            )
            new_nodes.setdefault(node.name, []).append(dq)
            node.input[wq.input_index] = f"{base}_dequantized"

        ordered = []
        for node in model.graph.node:
            ordered.extend(new_nodes.get(node.name, []))
            ordered.append(node)
        del model.graph.node[:]
        model.graph.node.extend(ordered)
        drop_dead_nodes(model)
        drop_unused_initializers(model)
        if fp32_view.weights_folder is not None:
            model = onnxutil.with_data(model, fp32_view.weights_folder, in_place=True)
        precision = self.scheme.precision
        onnx.helper.set_model_props(model, {"trtpipe.precision": precision, "trtpipe.target": "tensorrt"})
        return onnxutil.check(model, f"{precision} graph")

    def _amax_with_shared_scales(self) -> dict[str, float]:
        def amax_of(t: str) -> float:
            if t not in self.ranges.tensors:
                raise PipelineError(f"no calibration range for tensor {t!r}; re-run calibrate")
            return self.ranges.amax(t, self.method)

        amax = {t: amax_of(self.plan.ranged_as(t)) for t in self.plan.activations}
        for group in self.plan.scale_groups():  # one scale across pooling, data movement and Concat
            shared = max(amax[t] for t in group)
            amax.update(dict.fromkeys(group, shared))
        whole = self.ranges.whole_graph
        if self.scheme.relative and self.method == AUTO and whole is not None:
            # Where in their octave calibration's whole-graph check placed auto's FP8 scales.
            amax = {t: a * whole.fp8_scale for t, a in amax.items()}
        return amax


def _dtypes(model: onnx.ModelProto) -> dict[str, np.dtype]:
    inferred = onnxutil.infer_shapes_lean(model)  # types only: no serialized copies of the weights
    out = {}
    for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        et = v.type.tensor_type.elem_type
        if et in (TensorProto.FLOAT, TensorProto.FLOAT16):
            out[v.name] = np.dtype(helper.tensor_dtype_to_np_dtype(et))
    for init in inferred.graph.initializer:
        if init.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16):
            out[init.name] = np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type))
    return out


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_." else "_" for c in name)


def drop_dead_nodes(model: onnx.ModelProto) -> None:
    """Remove nodes none of whose outputs is read (Casts left without consumers)."""
    while True:
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        live = [n for n in model.graph.node if any(o in used for o in n.output)]
        if len(live) == len(model.graph.node):
            return
        del model.graph.node[:]
        model.graph.node.extend(live)


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    """Remove initializers nothing reads, in place: the kept ones are not copied (a list of them
    extended back into the graph would copy every weight)."""
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    initializers = model.graph.initializer
    for i in reversed([i for i, init in enumerate(initializers) if init.name not in used]):
        del initializers[i]
