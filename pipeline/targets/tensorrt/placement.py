"""Where Q/DQ go for TensorRT: a plan made on the FP32 graph, applied to the FP16 graph.

The rules (TensorRT's explicit-quantization guidance, as ModelOpt applies it):

* quantize the inputs of Conv, ConvTranspose, Gemm and MatMul (attention's
  batched MatMuls included), never their outputs; weights per-channel;
* at a residual Add fed by a quantized Conv, quantize the skip input and leave
  the Conv's input alone: the Add becomes the Conv's epilogue;
* quantize a pooling op's input when its output is quantized, so it runs INT8, with one scale for
  both (the output takes the input's range, as TensorRT carries the scale through);
* likewise across ops that move every value (Reshape, Transpose, Flatten, Squeeze, Unsqueeze):
  TensorRT moves the Q/DQ pair across them onto their input, so the graph quantizes it there too,
  with the same scale; not across Gather and Slice, which select some values whose range can be far
  narrower (a ViT's class token): they keep their own, and TensorRT requantizes;
* give a Concat whose output is quantized the same scale on every input and its output, the widest
  of their ranges (a fused Concat copies 8-bit values: one scale or none);
* everything else (LayerNorm, Softmax, GELU, ...) stays FP16;
* layers too small to gain (channels, K or N under ``min_channels``, GEMV)
  stay FP16, and the plan says why.

A plan names edges ``(node name, input index)``, so it applies to the FP16 graph
whose nodes keep their names even where the converter inserted Casts.
"""

from __future__ import annotations

import re

import onnx

from pipeline.config import QuantizeSection
from pipeline.graphview import GraphView
from pipeline.placement import (
    MOVES,
    POOLING,
    WEIGHTED,
    Plan,
    Skipped,
    WeightQuant,
    check_exclusions,
    excluded_reason,
    too_small,
    weight_axis,
)


def plan_tensorrt(model: onnx.ModelProto | GraphView, settings: QuantizeSection) -> Plan:
    view = GraphView.of(model)
    check_exclusions(view, settings)
    plan = Plan()
    patterns = [re.compile(p) for p in settings.exclude_patterns]
    quantized_nodes: set[str] = set()

    for node in view.nodes:
        if node.op_type not in WEIGHTED:
            continue
        reason = excluded_reason(node, settings, patterns) or too_small(node, view, settings.min_channels)
        if reason:
            plan.skipped.append(Skipped(node.name, node.op_type, reason))
            continue
        for idx in (0, 1):  # Conv: data, weight; Gemm/MatMul: A, B (either may be an activation)
            tensor = node.input[idx]
            shape = view.shape(tensor) if view.is_weight(tensor) else None
            if shape is not None:
                axis = weight_axis(node.op_type, node, len(shape), idx)
                plan.weights.append(WeightQuant(node.name, node.op_type, idx, tensor, axis))
            else:
                plan.add_edge(tensor, (node.name, idx))
        quantized_nodes.add(node.name)
        plan.quantized.append((node.name, node.op_type))

    _residual_adds(view, plan, quantized_nodes)
    _carry_back(view, plan)
    return plan


def _residual_adds(view: GraphView, plan: Plan, quantized: set[str]) -> None:
    """At an Add fed by a quantized Conv, quantize the other (skip) input."""
    depth = view.depth()
    for node in view.nodes:
        if node.op_type != "Add" or len(node.input) != 2 or any(view.is_const(i) for i in node.input):
            continue
        fusible = [idx for idx, t in enumerate(node.input) if _fuses_as_epilogue(t, view, quantized)]
        if not fusible:
            continue
        # Two conv branches (a downsampling block): the deeper one is the main path and
        # takes the Add as its epilogue; the shallower (shortcut) branch is quantized.
        main = max(fusible, key=lambda idx: depth.get(node.input[idx], 0))
        skip = 1 - main
        plan.add_edge(node.input[skip], (node.name, skip))


def _fuses_as_epilogue(tensor: str, view: GraphView, quantized: set[str]) -> bool:
    producer = view.producer.get(tensor)
    if producer is not None and producer.op_type == "BatchNormalization" and len(view.consumers.get(tensor, [])) == 1:
        tensor = producer.input[0]
        producer = view.producer.get(tensor)
    return (
        producer is not None
        and producer.op_type in ("Conv", "ConvTranspose")
        and producer.name in quantized
        and len(view.consumers.get(tensor, [])) == 1
    )


def _carry_back(view: GraphView, plan: Plan) -> None:
    """Extend quantization backwards through pooling, data movement and Concat until nothing changes."""
    changed = True
    grouped: set[str] = set()
    while changed:
        changed = False
        for node in view.nodes:
            out = node.output[0] if node.output else ""
            if out not in plan.activations:
                continue
            if _carries_scale(node, view) and (node.name, 0) not in plan.activations.get(node.input[0], []):
                plan.add_edge(node.input[0], (node.name, 0))
                plan.range_of[out] = node.input[0]
                if node.op_type in POOLING:
                    plan.quantized.append((node.name, node.op_type))
                changed = True
            elif node.op_type == "Concat" and node.name not in grouped:
                inputs = [t for t in node.input if not view.is_const(t)]
                for idx, t in enumerate(node.input):
                    if not view.is_const(t):
                        plan.add_edge(t, (node.name, idx))
                plan.shared_scale.append((out, *inputs))
                plan.quantized.append((node.name, node.op_type))
                grouped.add(node.name)
                changed = True


def _carries_scale(node: onnx.NodeProto, view: GraphView) -> bool:
    """Does TensorRT carry one scale through ``node``, from its first input to its output?"""
    if node.op_type in POOLING:
        return True
    varying = view.input_dependent()
    # Gather and Slice select some of the values: a range of their own can be far narrower than their
    # input's (a ViT's class token against all tokens), so they keep it and TensorRT requantizes.
    return node.op_type in MOVES and node.op_type not in ("Gather", "Slice") and node.input[0] in varying
