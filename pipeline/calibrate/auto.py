"""``method = "auto"``: per tensor, the range under which the layers reading it stay closest to FP32.

The histogram pass gives four ranges per tensor (max, percentile, entropy, mse). The ones
best for a tensor's own values (entropy, mse) can clip rare large values a layer's output
depends on (softmax peaks, a few outlier channels); max keeps them but rounds everything
else coarser. Which costs more shows in the output of the layer reading the tensor, not in
the tensor's histogram. So the first ``AUTO_ROWS`` rows of the calibration stream run the
FP32 graph once more, with the consumed tensors and their layers' weights and other inputs
as extra outputs (ONNX Runtime returns an initializer asked for as an output, so no copy of
the weights is parsed here). For each distinct range, each layer's output is recomputed with
the tensor quantized and dequantized and its weights quantized as the Q/DQ graphs quantize
them (per channel, symmetric int8, ``qdq.quantize_weight``); another activation input
(attention's second MatMul operand) stays FP32. The range with the least sum over the layers
of ||y_q - y||^2 / ||y||^2 wins, the error counted once for each graph the range serves:
symmetric int8 over +-amax (TensorRT) plus uint8 over the observed [min, max] clipped to
+-amax (ONNX Runtime CPU, see ``ort_cpu``). Against the TensorRT term alone, the sum cut the
CPU graph's output error by 10-17% on both examples at the same or lower TensorRT error (uint8
halves the step on one-sided tensors, so the CPU graph wants less clipping), and moved either
graph's by under 0.002 on two random-weight nets.

A tensor no Conv, ConvTranspose, Gemm or MatMul reads (pooling and Concat inputs, residual
skips, the CPU graph's Add/Mul/... tensors) takes ``mse``: its own int8 error.

The captures are cut into groups by ``memory.split`` within the calibration's run budget,
one ONNX Runtime run per group. Each layer runs as a one-node graph on ONNX Runtime, so its
ONNX attributes apply as written (Conv's auto_pad and asymmetric pads, Gemm's transA/transB,
alpha, beta) and no torch is imported (1.5 s of CPU time, more than calibrating either example).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from pipeline import ortsession
from pipeline.calibrate import memory
from pipeline.calibrate.cache import AutoChoice, Ranges
from pipeline.config import RANGE_METHODS
from pipeline.console import info
from pipeline.data import Feed
from pipeline.quantize.placement import WEIGHTED, GraphView, weight_axis
from pipeline.quantize.qdq import INT8_MAX, activation_scale, quantize_weight

AUTO_ROWS = 8  # calibration rows the readers' outputs are compared on: 16 or 32 chose no more stably
OWN_ERROR = "mse"  # the choice for a tensor no weighted layer reads
Use = tuple[onnx.NodeProto, int]  # a weighted layer and which of its inputs the tensor is


@dataclass(frozen=True)
class Measured:
    """What the histogram pass found for one tensor, and the calibrated tensors holding its values."""

    min: float
    max: float
    amax: dict[str, float]  # per RANGE_METHODS
    tensors: tuple[str, ...]


class AutoRanges:
    """Keeps the first rows of the calibration stream (``tap``), then chooses every tensor's range.

    ``budget`` bounds the bytes one group's captures and layer outputs take; ``batch_axes``
    names each input's batch axis (0 where not given, None for an input without one).
    """

    def __init__(
        self,
        rows: int = AUTO_ROWS,
        budget: int = memory.MIN_RUN_BYTES,
        batch_axes: Mapping[str, int | None] | None = None,
    ) -> None:
        self.rows = rows
        self.budget = budget
        self.batch_axes = dict(batch_axes or {})
        self.kept: list[Feed] = []
        self.count = 0

    def tap(self, batches: Iterable[Feed]) -> Iterator[Feed]:
        for feed in batches:
            if self.count < self.rows:
                self._keep(feed)
            yield feed

    def _keep(self, feed: Feed) -> None:
        axes = {name: self.batch_axes.get(name, 0) for name in feed}
        sizes = [feed[n].shape[a] for n, a in axes.items() if a is not None]
        take = min(sizes[0], self.rows - self.count) if sizes else self.rows
        # Copies (np.take copies): a view would keep the whole batch alive.
        rows = lambda n, a: feed[n].copy() if a is None else np.take(feed[n], range(take), a)  # noqa: E731
        self.kept.append({n: rows(n, a) for n, a in axes.items()})
        self.count += take

    def feed(self) -> Feed:
        if not self.kept:
            return {}
        axes = {name: self.batch_axes.get(name, 0) for name in self.kept[0]}
        joined = lambda n, a: self.kept[0][n] if a is None else np.concatenate([k[n] for k in self.kept], a)  # noqa: E731
        return {n: joined(n, a) for n, a in axes.items()}

    def __call__(
        self, fp32: Path, view: GraphView, found: dict[str, Measured], session_with_outputs
    ) -> dict[str, AutoChoice]:
        """The choice for each key of ``found``, judged on every layer reading any of its ``tensors``.
        ``session_with_outputs(fp32, value_infos)`` opens a session on ``fp32`` with those extra outputs."""
        start = time.perf_counter()
        feed = self.feed()
        uses = {src: consumers(view, m.tensors) for src, m in found.items()}
        judged = [src for src, m in found.items() if uses[src] and len(set(m.amax.values())) > 1]
        choices = {src: _without_layers(m.amax) for src, m in found.items() if src not in judged}
        # A group holds its captures while one tensor at a time is judged: the budget takes both.
        held = {src: _held_bytes(view, uses[src], self.count) for src in judged}
        working = max((_working_bytes(view, uses[src], self.count) for src in judged), default=0)
        kernels = _Kernels(view)
        for group in memory.split(view, held, max(self.budget - working, 1)) if judged else ():
            layers = [u for src in group for u in uses[src]]
            values = _capture(fp32, view, layers, feed, self.kept, session_with_outputs)
            for src in group:
                choices[src] = _by_layers(view, uses[src], values, found[src], kernels)
        info(
            f"auto: {len(judged)} of {len(found)} ranges chosen by the output error of the layers reading "
            f"them, on {self.count} calibration rows, in {time.perf_counter() - start:.2f} s"
        )
        return choices


def consumers(view: GraphView, tensors: Iterable[str]) -> list[Use]:
    """The weighted layers reading any of ``tensors`` as input 0 or 1 (the inputs Q/DQ go on)."""
    wanted = set(tensors)
    return [(node, i) for node in view.nodes if node.op_type in WEIGHTED for i in (0, 1) if node.input[i] in wanted]


def _without_layers(amax: dict[str, float]) -> AutoChoice:
    """The choice for a tensor whose methods agree, or that no weighted layer reads."""
    if len(set(amax.values())) == 1:
        return AutoChoice("max", f"every method gives the same range (+-{amax['max']:.4g})", {})
    return AutoChoice(
        OWN_ERROR, f"no Conv, ConvTranspose, Gemm or MatMul reads it: its own int8 error decides ({OWN_ERROR})", {}
    )


def _by_layers(
    view: GraphView, uses: list[Use], values: dict[str, np.ndarray], found: Measured, kernels: _Kernels
) -> AutoChoice:
    layers = [_Layer(view, node, index, values, kernels) for node, index in uses]
    amax = found.amax
    by_amax = {a: sum(layer.error(a, found.min, found.max) for layer in layers) for a in sorted(set(amax.values()))}
    errors = {m: by_amax[a] for m, a in amax.items()}
    best = min(RANGE_METHODS, key=lambda m: (errors[m], RANGE_METHODS.index(m)))  # ties: the first listed
    names = [f"{node.op_type} {node.name}" for node, _ in uses]
    where = ", ".join(names[:2]) + (f" (+{len(names) - 2} more)" if len(names) > 2 else "")
    scores = ", ".join(f"{m} {errors[m]:.3g}" for m in RANGE_METHODS)
    return AutoChoice(best, f"least output error of {where}: {scores}", errors)


def _held_bytes(view: GraphView, uses: list[Use], rows: int) -> int:
    """The captured inputs (weights included) of the layers reading one tensor."""
    return sum(_bytes(view, t, rows) for t in {t for node, _ in uses for t in node.input if t})


def _working_bytes(view: GraphView, uses: list[Use], rows: int) -> int:
    """What judging one tensor adds: per layer its FP32 output and int8 weights dequantized, then
    one quantized input, output and difference at a time."""
    outputs = [rows * memory.sample_bytes(view, node.output[0]) for node, _ in uses]
    weights = sum(_bytes(view, t, rows) for node, _ in uses for t in node.input[:2] if t and view.is_weight(t))
    inputs = max(_bytes(view, node.input[i], rows) for node, i in uses)
    return sum(outputs) + weights + inputs + 2 * max(outputs)


def _bytes(view: GraphView, tensor: str, rows: int) -> int:
    if tensor in view.initializers:
        init = view.initializers[tensor]
        return int(np.prod(init.dims, dtype=np.int64)) * helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
    per_row = memory.sample_bytes(view, tensor)
    return per_row * rows if tensor in view.input_dependent() else per_row


def _capture(
    fp32: Path, view: GraphView, uses: list[Use], feed: Feed, runs: list[Feed], session_with_outputs
) -> dict[str, np.ndarray]:
    """Every input of the ``uses`` layers on ``feed``: graph inputs from the feed, the rest from one run
    per kept calibration run (``runs``, which make up ``feed``), joined along the batch axis. Run by
    run, ONNX Runtime holds one calibration run's activations, as calibration itself does, not all
    the kept rows' at once (ResNet-50: 1.1 GB against 0.5 GB for plain inference, run whole)."""
    needed = {t for node, _ in uses for t in node.input if t}
    wanted = sorted(needed - set(feed))
    session = session_with_outputs(fp32, [_value_info(view, t) for t in wanted if t not in view.outputs])
    outputs = [session.run(wanted, ortsession.feed_for(session, run)) for run in runs]
    varying = [i for i, t in enumerate(wanted) if t in view.input_dependent()]
    rows = [_rows(run) for run in runs]
    if len(runs) > 1 and not all(o[i].shape[:1] == (n,) for o, n in zip(outputs, rows, strict=True) for i in varying):
        outputs = [session.run(wanted, ortsession.feed_for(session, feed))]  # a batch axis not first: run whole
    values = {
        t: np.concatenate([o[i] for o in outputs]) if i in varying and len(outputs) > 1 else outputs[0][i]
        for i, t in enumerate(wanted)
    }
    values.update({t: feed[t] for t in needed & set(feed)})
    return {t: np.asarray(v, np.float32) for t, v in values.items()}


def _rows(feed: Feed) -> int:
    """Rows of a kept run: its first input's leading dimension (the kept runs are cut along it)."""
    first = next(iter(feed.values()))
    return first.shape[0] if first.ndim else 1


def _value_info(view: GraphView, tensor: str) -> onnx.ValueInfoProto:
    if tensor in view.value_infos:
        return view.value_infos[tensor]
    if tensor in view.initializers:  # a weight: ONNX Runtime returns it as an output too
        init = view.initializers[tensor]
        return helper.make_tensor_value_info(tensor, init.data_type, list(init.dims))
    return helper.make_empty_tensor_value_info(tensor)  # untyped by shape inference: ONNX Runtime accepts it


def fake_quant(x: np.ndarray, amax: float) -> np.ndarray:
    """Symmetric int8 quantize-dequantize, as QuantizeLinear (round half to even, saturate) then
    DequantizeLinear compute it."""
    scale = float(activation_scale(amax, np.dtype(np.float32)))
    return (np.clip(np.round(x / scale), -INT8_MAX - 1, INT8_MAX) * scale).astype(np.float32)


def fake_quant_uint8(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Asymmetric uint8 quantize-dequantize over [lo, hi] widened to hold 0, with ONNX Runtime's
    scale and zero point (``quant_utils.compute_scale_zp``)."""
    lo, hi = float(np.float32(min(lo, 0.0))), float(np.float32(max(hi, 0.0)))  # as saved for its quantizer
    wide = (hi - lo) / 255.0
    if wide < np.finfo(np.float32).tiny:
        return np.zeros_like(x)
    zero = np.round(-lo / wide)  # from the float64 scale, as ONNX Runtime does: 127.5 rounds to 128
    scale = np.float32(wide)
    return ((np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale).astype(np.float32)


def dequantized_weight(w: np.ndarray, axis: int) -> np.ndarray:
    q, scale = quantize_weight(w.astype(np.float32), axis, np.dtype(np.float32))
    shape = [1] * w.ndim
    shape[axis] = -1
    return q.astype(np.float32) * scale.reshape(shape)


class _Layer:
    """One weighted layer reading the tensor as input ``index``: its FP32 output, and its output
    with that input fake-quantized to a given range and its weights int8."""

    def __init__(self, view: GraphView, node: onnx.NodeProto, index: int, values: dict[str, np.ndarray], kernels):
        self.index = index
        inputs = [values[t] for t in node.input if t]
        self.quantized = [
            dequantized_weight(v, weight_axis(node.op_type, node, v.ndim, i))
            if i in (0, 1) and i != index and view.is_weight(node.input[i])
            else v
            for i, v in enumerate(inputs)
        ]
        self.run = kernels(node)
        self.ref = self.run(inputs)
        self.ref_sq = float(np.square(self.ref, dtype=np.float64).sum())

    def error(self, amax: float, lo: float, hi: float) -> float:
        """Relative squared output error with the input as the TensorRT graph quantizes it (int8 over
        +-amax) plus as the ONNX Runtime CPU graph does (uint8 over [lo, hi] clipped to +-amax)."""
        x = self.quantized[self.index]
        return self._error(fake_quant(x, amax)) + self._error(fake_quant_uint8(x, max(lo, -amax), min(hi, amax)))

    def _error(self, x: np.ndarray) -> float:
        inputs = list(self.quantized)
        inputs[self.index] = x
        diff = self.run(inputs) - self.ref
        return float(np.square(diff, dtype=np.float64).sum()) / self.ref_sq if self.ref_sq > 0 else 0.0


class _Kernels:
    """Each layer as a one-node graph on ONNX Runtime, its attributes as written; one session per
    op type, attribute set and input count (every MatMul shares one). One thread: these products
    are small, and multi-threaded BLAS stalled up to 40 ms a call on a busy 2-core machine."""

    def __init__(self, view: GraphView) -> None:
        self.opsets = [o for o in view.model.opset_import if o.domain in ("", "ai.onnx")]
        self.ir_version = view.model.ir_version
        self.sessions: dict[bytes, object] = {}

    def __call__(self, node: onnx.NodeProto):
        names = [f"in{i}" for i, t in enumerate(node.input) if t]
        copy = helper.make_node(node.op_type, [f"in{i}" if t else "" for i, t in enumerate(node.input)], ["y"])
        copy.attribute.extend(node.attribute)
        key = copy.SerializeToString(deterministic=True)
        if key not in self.sessions:
            # No arena: one per session would keep its largest output for good (ResNet-50 at 224: ~20
            # layer shapes, each arena tens of MB, past the calibration memory rule).
            model = self._model(copy, names)
            self.sessions[key] = ortsession.session(model, threads=1, cpu_only=True, spin=False, arena=False)
        session = self.sessions[key]
        return lambda inputs: session.run(["y"], dict(zip(names, inputs, strict=True)))[0]

    def _model(self, node: onnx.NodeProto, names: list[str]) -> onnx.ModelProto:
        float_info = lambda name: helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)  # noqa: E731
        graph = helper.make_graph([node], "layer", [float_info(n) for n in names], [float_info("y")])
        return helper.make_model(graph, opset_imports=self.opsets, ir_version=self.ir_version)


def summary(ranges: Ranges, top: int = 3) -> list[str]:
    """How many tensors took each method and why, then the ``top`` largest cuts in their readers'
    output error against entropy (the previous default)."""
    choices = [r.auto for r in ranges.tensors.values()]
    counts = ", ".join(f"{m} {n}" for m in RANGE_METHODS if (n := sum(c.method == m for c in choices)))
    by_layers = sum(bool(c.errors) for c in choices)
    agree = sum(c.reason.startswith("every method gives") for c in choices)
    lines = [
        f"auto ranges: {counts} tensor(s); {by_layers} by the output error of the layers reading them, "
        f"{len(choices) - by_layers - agree} by their own error ({OWN_ERROR}), {agree} where every method agrees"
    ]
    cuts = {}  # by reason: tensors sharing statistics share one choice
    for name, r in sorted(ranges.tensors.items()):
        if r.auto.errors and r.auto.method != "entropy":
            chosen = r.auto.errors[r.auto.method]  # 0 where the chosen range reproduces FP32 exactly
            ratio = r.auto.errors["entropy"] / chosen if chosen > 0 else math.inf
            cuts.setdefault(r.auto.reason, (ratio, name))
    for ratio, name in sorted(cuts.values(), reverse=True)[:top]:
        c = ranges.tensors[name].auto
        lines.append(
            f"  {name}: readers' output error {c.errors['entropy']:.3g} with entropy, "
            f"{c.errors[c.method]:.3g} with {c.method} ({ratio:.1f}x less)"
        )
    return lines
