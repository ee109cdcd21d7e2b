"""Which quantized layers a w8a8 graph's error comes from, and why.

Both graphs run on the same few held-out rows with the inputs and outputs of every weighted layer
and of every op the quantized graph rounds between them (a residual Add, a pooling, a Concat) as
extra outputs (quantization keeps those tensor names). A layer's share of the error is how much
relative error its output carries beyond its worst input's: the error it adds itself. The reason
looks at what per-tensor int8 does to the layer's input: a range far wider than the typical value
(outlier channels) or values clipped at the calibrated range.

Attribution is per graph output: only the layers that output reads count, and where the output is
one row selected from a sequence (CLIP's pooler_output: Gather of the class token, index 0), each
tensor's error is measured on that row, not diluted over every row of the sequence.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from pipeline import onnxutil, ortsession
from pipeline.calibration.cache import Ranges
from pipeline.config import Config
from pipeline.console import info
from pipeline.data import Feed
from pipeline.graphview import GraphView
from pipeline.placement import WEIGHTED, weight_axis
from pipeline.results import LayerError
from pipeline.targets.tensorrt.qdq import INT8_MAX, quantize_weight

# An input channel this many times wider than the median one leaves the others a handful of int8 levels.
OUTLIER_RATIO = 10.0
CLIPPED_SHARE = 1e-3
FLUSHED_SHARE = 0.2  # of an input's non-zero values under half an int8 step
WEIGHT_LOSS = 0.02  # relative error of a weight under per-channel int8 (typically ~1%)


def worst_layers(
    fp32: GraphView,
    quantized: onnx.ModelProto | GraphView,
    feed: Feed,
    ranges: Ranges,
    method: str,
    top: int = 5,
    output: str | None = None,
    within: RunBytes | None = None,
) -> list[LayerError]:
    """The ``top`` layers adding the most error to ``output`` (every output when None), largest first;
    the layers' tensors fetched in runs ``within`` bytes."""
    quantized = GraphView.of(quantized)
    graph = quantized.model.graph
    present = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    upstream = _upstream(fp32, output) if output is not None else None
    rounded = _rounded_ops(quantized.model)
    varying = fp32.input_dependent()
    layers = [
        (node, [t for t in node.input[:2] if t and t in varying and not fp32.is_weight(t) and t in present])
        for node in fp32.nodes
        if (node.op_type in WEIGHTED or _label(node) in rounded)
        and node.output[0] in present
        and node.output[0] in varying  # a constant (a Constant node's weight) is no layer
        and (upstream is None or _label(node) in upstream)
    ]
    row = selected_row(fp32, output) if output is not None else None
    tensors = sorted({t for node, inputs in layers for t in (*inputs, node.output[0])})
    err, ref = _errors(fp32, quantized, tensors, feed, row, ranges, method, within)
    found = []
    for node, inputs in layers:
        worst_in = max(inputs, key=lambda t: err[t], default=None)
        e_in = err[worst_in] if worst_in else 0.0
        e_out = err[node.output[0]]
        reason = _reason(node, fp32, inputs, ref)
        found.append(LayerError(_label(node), node.op_type, e_in, e_out, e_out - e_in, reason, output))
    return sorted(found, key=lambda e: e.added, reverse=True)[:top]


# Tensors fetched per run at most: one held-out batch of each at a time, whatever the graph's size.
TENSORS_PER_RUN = 64


@dataclass(frozen=True)
class RunBytes:
    """What one run's fetched tensors may hold: a quarter of what plain inference at ``batch`` holds of
    activations (the FP32 and the quantized graph's values of a group are alive at once, beside one
    tensor's arithmetic in float64), each dynamic axis at its size in ``axes``."""

    bytes: int
    axes: Mapping[str, int]

    @classmethod
    def of(cls, view: GraphView, batch: int, axes: Mapping[str, int]) -> RunBytes:
        from pipeline.calibration.memory import MIN_RUN_BYTES, liveness_peak

        return cls(max(batch * liveness_peak(view, axes) // 4, MIN_RUN_BYTES), dict(axes))


def _runs(view: GraphView, tensors: list[str], rows: int, within: RunBytes | None) -> list[tuple[str, ...]]:
    """``tensors`` in groups fetched a run each (graph order): at most TENSORS_PER_RUN, and with
    ``within``, each group's values on ``rows`` rows within its bytes."""
    from pipeline.calibration.memory import sample_bytes, split

    if within is None:
        return [tuple(tensors[i : i + TENSORS_PER_RUN]) for i in range(0, len(tensors), TENSORS_PER_RUN)]
    sizes = {t: rows * sample_bytes(view, t, within.axes) for t in tensors}
    groups = split(view, sizes, within.bytes)
    return [g[i : i + TENSORS_PER_RUN] for g in groups for i in range(0, len(g), TENSORS_PER_RUN)]


def _errors(
    fp32: GraphView,
    quantized: GraphView,
    tensors: list[str],
    feed: Feed,
    row: tuple[int, int, int] | None,
    ranges: Ranges,
    method: str,
    within: RunBytes | None = None,
) -> tuple[dict[str, float], dict[str, InputStats]]:
    """Each tensor's relative error (on the selected ``row`` where its shape has that axis), and what
    the reasons look at in the FP32 values of the weighted layers' calibrated inputs (``InputStats``):
    every value is dropped as soon as measured, so memory holds one run's tensors."""
    keep = {t for n in fp32.nodes if n.op_type in WEIGHTED for t in n.input[:2] if t in ranges.tensors}
    err: dict[str, float] = {}
    stats: dict[str, InputStats] = {}
    rows = max((len(v) for v in feed.values() if np.ndim(v)), default=1)
    for group in _runs(fp32, tensors, rows, within):
        chunk = list(group)
        ref = _values(fp32.model, fp32, chunk, feed)
        got = _values(quantized.model, quantized, chunk, feed)
        for t in chunk:
            ref_t = np.asarray(ref.pop(t), np.float64)  # one tensor in float64 at a time
            err[t] = _relative_error(_on_row(np.asarray(got.pop(t), np.float64), row), _on_row(ref_t, row))
            if t in keep:
                stats[t] = InputStats.of(ref_t, ranges.amax(t, method))
    return err, stats


def _on_row(x: np.ndarray, row: tuple[int, int, int] | None) -> np.ndarray:
    """``x``'s selected row (axis, index) where that axis has the selected tensor's length, else all of it."""
    if row is None:
        return x
    axis, index, length = row
    return np.take(x, index, axis=axis) if x.ndim > axis and x.shape[axis] == length else x


def selected_row(view: GraphView, output: str) -> tuple[int, int, int] | None:
    """(axis, index, the axis's length) when ``output`` is one row selected from a sequence by a Gather
    of a constant scalar index on an axis after the batch (through ops that move values), else None."""
    from pipeline.targets.onnxruntime_cpu.norms import PASSES

    node = view.producer.get(output)
    while node is not None and node.op_type in PASSES:
        if node.op_type == "Gather" and view.is_weight(node.input[1]):
            index = view.constant(node.input[1])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            shape = view.shape(node.input[0])
            if index is not None and index.size == 1 and axis >= 1 and shape and len(shape) > axis and shape[axis]:
                return axis, int(index.reshape(-1)[0]) % shape[axis], shape[axis]
        node = view.producer.get(node.input[0])
    return None


# Nodes are told apart by name, and by their first output where they have none (Paddle2ONNX leaves
# most nameless): the quantizers keep names, and may rename the output of a node they quantize.
def _label(node: onnx.NodeProto) -> str:
    """The node's name, or its output where it has none."""
    return node.name or f"-> {node.output[0]}"


def _upstream(view: GraphView, output: str) -> set[str]:
    """The nodes ``output`` is computed from (``_label``)."""
    found: set[str] = set()
    todo = [output]
    while todo:
        node = view.producer.get(todo.pop())
        if node is not None and _label(node) not in found:
            found.add(_label(node))
            todo += [t for t in node.input if t]
    return found


def _rounded_ops(quantized: onnx.ModelProto) -> set[str]:
    """Nodes of the quantized graph (other than Q/DQ, by ``_label``) that read an activation through
    a DequantizeLinear of a QuantizeLinear or write one into a QuantizeLinear: where it rounds between layers."""
    producer = {o: n for n in quantized.graph.node for o in n.output}
    quantizes = {n.input[0] for n in quantized.graph.node if n.op_type == "QuantizeLinear"}
    qdq = ("QuantizeLinear", "DequantizeLinear")

    def dequantized(t: str) -> bool:
        dq = producer.get(t)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        return q is not None and q.op_type == "QuantizeLinear"

    return {
        _label(n)
        for n in quantized.graph.node
        if n.op_type not in qdq and (any(dequantized(t) for t in n.input) or any(o in quantizes for o in n.output))
    }


def _values(model: onnx.ModelProto, view: GraphView, tensors: list[str], feed: Feed) -> dict[str, np.ndarray]:
    """``tensors`` as extra outputs (as ONNX Runtime returns them); a tensor shape inference could not
    type (after a com.microsoft op) is named without a type, which ONNX Runtime accepts. The outputs
    are added to ``model`` itself while its session loads, then taken off: no copy of its weights."""
    have = {o.name for o in model.graph.output}
    outputs = len(model.graph.output)
    model.graph.output.extend(
        view.value_infos[t] if t in view.value_infos else onnx.helper.make_empty_tensor_value_info(t)
        for t in tensors
        if t not in have
    )
    try:
        sess = ortsession.session(model, cpu_only=True, weights_folder=view.weights_folder)
    finally:
        del model.graph.output[outputs:]
    return dict(zip(tensors, sess.run(tensors, ortsession.feed_for(sess, feed)), strict=True))


def _relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    """||got - ref|| / ||ref|| over the finite values: an additive mask's -inf in both counts as equal."""
    finite = np.isfinite(ref) & np.isfinite(got)
    with np.errstate(invalid="ignore"):  # -inf - -inf, masked out below
        diff = np.where(finite, got - ref, np.where(got == ref, 0.0, np.inf))
    norm = float(np.linalg.norm(np.where(finite, ref, 0.0)))
    return float(np.linalg.norm(diff)) / norm if norm > 0 else float(np.linalg.norm(np.where(finite, got, 0.0)))


@dataclass(frozen=True)
class InputStats:
    """What a reason looks at in a layer input's FP32 values ``x``, within its calibrated ``amax``: the
    largest |x| per channel as a convolution and as a GEMM read it (``_channel_amax``), the share of
    values clipped, and the share of non-zero ones under half an int8 step."""

    conv_channels: np.ndarray
    gemm_channels: np.ndarray
    amax: float
    clipped: float
    flushed: float

    @classmethod
    def of(cls, values: np.ndarray, amax: float) -> InputStats:
        x = np.abs(values)
        clipped = float(np.mean(x > amax))
        flushed = float(np.mean((x > 0) & (x < amax / (2 * INT8_MAX))))
        return cls(_channel_amax(True, x), _channel_amax(False, x), amax, clipped, flushed)


def _reason(node: onnx.NodeProto, fp32: GraphView, inputs: list[str], found: dict[str, InputStats]) -> str:
    notes = []
    for t in inputs:
        if t not in found:
            continue
        stats = found[t]
        amax, clipped, flushed = stats.amax, stats.clipped, stats.flushed
        channels = stats.conv_channels if node.op_type in ("Conv", "ConvTranspose") else stats.gemm_channels
        typical = float(np.median(channels)) if channels.size else 0.0
        if typical > 0 and channels.max() / typical > OUTLIER_RATIO:
            c = int(channels.argmax())
            notes.append(
                f"input {t}: channel {c} spans +-{channels[c]:.3g}, {channels[c] / typical:.0f}x the median "
                f"channel ({typical:.3g}): per-tensor int8 spends its levels on outlier channels"
            )
        elif clipped > CLIPPED_SHARE:
            notes.append(f"input {t} clipped at +-{amax:.3g} for {100 * clipped:.2f}% of its values")
        elif flushed > FLUSHED_SHARE:  # a wide range over mostly tiny values: they round to zero
            notes.append(
                f"input {t}: {100 * flushed:.0f}% of its non-zero values are under half an int8 step "
                f"(range +-{amax:.3g}) and round to 0"
            )
    weight = _weight_note(node, fp32)
    rounding = "int8 rounding of its input and weights" if node.op_type in WEIGHTED else "int8 rounding of its inputs"
    return "; ".join([*notes, *([weight] if weight else [])]) or rounding


def _weight_note(node: onnx.NodeProto, fp32: GraphView) -> str | None:
    """How much the weight loses to per-channel int8, when that is large enough to matter."""
    tensor = node.input[1] if len(node.input) > 1 else ""
    if not tensor or not fp32.is_weight(tensor):
        return None
    w = fp32.constant(tensor)
    if w is None or w.ndim < 2:
        return None
    axis = weight_axis(node.op_type, node, w.ndim)
    q, scale = quantize_weight(w.astype(np.float32), axis, np.dtype(np.float32))
    shape = [1] * w.ndim
    shape[axis] = -1
    loss = _relative_error(q.astype(np.float64) * scale.reshape(shape), w)
    return f"its weights lose {100 * loss:.1f}% (relative) to per-channel int8" if loss > WEIGHT_LOSS else None


def _channel_amax(conv: bool, x: np.ndarray) -> np.ndarray:
    """Per input channel, the largest |value|: axis 1 for a convolution, the last (K) for a GEMM."""
    if x.ndim < 2:
        return x.reshape(-1)
    axis = 1 if conv else x.ndim - 1
    return np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1).max(axis=1)


ATTRIBUTION_ROWS = 4  # held-out rows both graphs run with every layer's tensors as outputs


def explain_losses(
    cfg: Config,
    fp32: GraphView,
    graphs: dict[str, Path],
    rows: list,
    ranges: Ranges,
    method: str,
) -> dict[str, list[LayerError]]:
    """For each w8a8 graph whose centered cosine on some output is under its gate's, the layers adding
    the most error to each such output, printed and returned by graph name. ``graphs``: each w8a8
    graph's file; ``fp32`` the FP32 graph's view (its weights in memory, or in a file it reads them from)."""
    from pipeline.data import sample_inputs

    low: dict[str, list[str]] = {}
    for r in rows:
        if r.artifact in graphs and r.stats.centered_cosine < cfg.accuracy.gate(r.artifact).min_cosine:
            outputs = low.setdefault(r.artifact, [])
            outputs += [] if r.output in outputs else [r.output]  # once, whatever shapes it was scored at
    if not low:
        return {}
    feed = sample_inputs(cfg, min(ATTRIBUTION_ROWS, max(p.max for p in cfg.batch)))
    # Held within what the memory rule allows beside calibration's own batch of plain inference.
    within = RunBytes.of(fp32, cfg.calibration.batch_size, {a.name: a.max for a in cfg.axes})
    found: dict[str, list[LayerError]] = {}
    for name in sorted(low):  # one graph at a time, its weights in a file while its sessions read them
        with tempfile.TemporaryDirectory(prefix="trtpipe.attribution.") as tmp:
            quantized = GraphView(onnxutil.load(graphs[name], f"{name} graph"))
            quantized.move_weights(Path(tmp) / graphs[name].name)
            found[name] = []
            for output in low[name]:
                worst = worst_layers(fp32, quantized, feed, ranges, method, output=output, within=within)
                found[name] += worst
                _say_worst(cfg, fp32, name, output, worst)
    return found


def _say_worst(cfg: Config, fp32: GraphView, name: str, output: str, worst: list[LayerError]) -> None:
    row = selected_row(fp32, output)
    where = f"output {output!r}" + (f" (row {row[1]} of axis {row[0]})" if row else "")
    info(f"{cfg.name}: {name} loses accuracy on {where}; the layers adding the most error (relative to FP32):")
    for e in worst:
        info(f"  {e}")
