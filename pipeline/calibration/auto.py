"""``method = "auto"``: per tensor, the range under which the layers reading it stay closest to FP32.

The calibration pass gives each tensor one range per registered method (``methods/``: max,
percentile, entropy and mse built in). The ones best for a tensor's own values (entropy, mse) can
clip rare large values a layer's output depends on (softmax peaks, a few outlier channels); max
keeps them but rounds everything else coarser.
Which costs more shows in the output of the layer reading the tensor, not in the tensor's
histogram. So the calibration passes also keep the first ``AUTO_ROWS`` rows of the activations
those layers read (written to disk as each run is folded: no extra session, no extra run of the
graph), and their weights come from the graph file. For each distinct range, each layer's
output is recomputed with the tensor quantized and dequantized and its weights quantized as each
target's Q/DQ graph stores them (per channel, symmetric: int8, or FP8 E4M3 in the FP8 graph;
``Target.fake_quant_weight``); another activation input (attention's second MatMul operand)
stays FP32. The range with the least sum over the layers of ||y_q - y||^2 / ||y||^2 wins, the
error counted once for each graph the range serves, each with its own activations and weights:
symmetric int8 over +-amax (TensorRT), E4M3 over +-amax (TensorRT FP8), uint8 over the observed
[min, max] clipped to +-amax (ONNX Runtime CPU, see ``ort_cpu``). Against the TensorRT term alone, the sum
cut the CPU graph's output error by 10-17% on both examples at the same or lower TensorRT error
(uint8 halves the step on one-sided tensors, so the CPU graph wants less clipping), and moved
either graph's by under 0.002 on two random-weight nets.

A tensor no Conv, ConvTranspose, Gemm or MatMul reads (pooling and Concat inputs, residual
skips, the CPU graph's Add/Mul/... tensors) takes ``mse``: its own int8 error.

The first rows rarely hold the largest values a clipping range cuts, so these choices are then
checked on the whole graph's output, on those rows and on the samples that do hold them
(``wholegraph``): one method on every tensor replaces them wherever its estimate is lower by more
than the sampling error; where it is lower by less, the output says so.

Each layer runs as a one-node graph on ONNX Runtime, so its ONNX attributes apply as
written (Conv's auto_pad and asymmetric pads, Gemm's transA/transB, alpha, beta) and no torch
is imported (1.5 s of CPU time, more than calibrating either example).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from pipeline import ortsession
from pipeline.calibration import methods
from pipeline.calibration.cache import AutoChoice, Ranges, WholeGraphCheck
from pipeline.calibration.memory import sample_bytes
from pipeline.calibration.wholegraph import (
    AUTO,
    CLOSE,
    CheckRows,
    ExtremeRows,
    Range,
    best_method,
    judge,
    shape_key,
    simulation,
    uint8_scale,
)
from pipeline.console import info
from pipeline.data import Feed, rows_along
from pipeline.graphview import GraphView
from pipeline.onnxutil import save_weights_beside
from pipeline.phases import timed
from pipeline.placement import WEIGHTED, Placement, weight_axis
from pipeline.targets.tensorrt.qdq import INT8, INT8_MAX, Scheme, activation_scale, quantize_weight

# Calibration rows (at most a calibration batch) the readers' outputs are compared on, and the
# whole-graph check's first rows. On 8, the digits ViT's per-tensor choices were noisy: the check's
# estimates ranked percentile 2x better than them on 8 rows and 1.5x worse on 32.
AUTO_ROWS = 32
EXTREMES = 8  # samples holding the most tensors' largest |x| that the whole-graph check also runs on
OWN_ERROR = "mse"  # the choice for a tensor no weighted layer reads (a built-in method, as is "max")
Use = tuple[onnx.NodeProto, int]  # a weighted layer and which of its inputs the tensor is


@dataclass(frozen=True)
class Measured:
    """What the histogram pass found for one tensor, and the calibrated tensors holding its values."""

    min: float
    max: float
    amax: dict[str, float]  # per registered method
    tensors: tuple[str, ...]


class AutoRanges:
    """Keeps the first rows of the calibration stream, then chooses every tensor's range.

    ``tap`` keeps the graph inputs of the first runs (up to ``rows`` rows); ``start`` names the
    tensors the calibration passes must capture for the layers auto judges (their activation
    inputs), and ``keep`` writes those tensors' kept rows to a folder as the passes fold each
    run, so no ONNX Runtime session or graph run is added for auto and only one tensor's layers
    are in memory at a time. ``batch_axes`` names each input's batch axis (0 where not given,
    None for an input without one). With ``placements`` (each target's, as ``Placement``), the
    choices are checked on the whole graph: ``hold`` streams every pass's runs for ``ExtremeRows``,
    and ``reference`` runs the FP32 graph on the rows the check runs on.
    """

    def __init__(
        self,
        rows: int = AUTO_ROWS,
        batch_axes: Mapping[str, int | None] | None = None,
        placements: Sequence[Placement] = (),
        fake_quants: Sequence[TargetQuant] = (),
        chunk_bytes: int | None = None,
        check_step: int | None = None,
    ) -> None:
        self.rows = rows
        self.check_step = check_step  # rows the whole-graph check runs at once (all of them where None)
        self.chunk_bytes = chunk_bytes  # what one piece of the kept rows may take while judged (``chunks``)
        # How each configured target quantizes an input: a range is judged by the sum of their errors.
        self.fake_quants = tuple(fake_quants) or BOTH_SCHEMES
        self.batch_axes = dict(batch_axes or {})
        self.placements = tuple(placements)
        self.extremes = ExtremeRows(self.batch_axes)
        self.checked: tuple[CheckRows, list[np.ndarray], tuple[int, int]] | None = (
            None  # rows, FP32 outputs, (first, extremes)
        )
        self.simulations: list[tuple[Path, Placement]] = []
        self.kept: list[Feed] = []
        self.takes: list[tuple[int, int]] = []  # per kept run: its rows, and how many of them are kept
        self.count = 0
        self.folder: Path | None = None
        self.files: dict[str, str] = {}  # captured tensor -> its files' stem in ``folder``

    def tap(self, batches: Iterable[Feed]) -> Iterator[Feed]:
        for feed in batches:
            if self.count < self.rows:
                self._keep_inputs(feed)
            yield feed

    def _keep_inputs(self, feed: Feed) -> None:
        axes = {name: self.batch_axes.get(name, 0) for name in feed}
        sizes = [feed[n].shape[a] for n, a in axes.items() if a is not None]
        take = min(sizes[0], self.rows - self.count) if sizes else self.rows
        if self.kept and shape_key(feed, self.batch_axes) != shape_key(self.kept[0], self.batch_axes):
            # Kept rows are judged as one batch: a run of another shape (sequence length) keeps none.
            self.takes.append((sizes[0] if sizes else take, 0))
            return
        # Copies (np.take copies): a view would keep the whole batch alive.
        rows = lambda n, a: feed[n].copy() if a is None else np.take(feed[n], range(take), a)  # noqa: E731
        self.kept.append({n: rows(n, a) for n, a in axes.items()})
        self.takes.append((sizes[0] if sizes else take, take))
        self.count += take

    def hold(self, runs: Iterable[Feed]) -> Iterable[Feed]:
        """A pass's runs, as the whole-graph check follows them (every pass: each captures other tensors)."""
        return self.extremes.hold(runs) if self.placements else runs

    def feed(self) -> Feed:
        if not self.kept:
            return {}
        axes = {name: self.batch_axes.get(name, 0) for name in self.kept[0]}
        joined = lambda n, a: self.kept[0][n] if a is None else np.concatenate([k[n] for k in self.kept], a)  # noqa: E731
        return {n: joined(n, a) for n, a in axes.items()}

    def start(self, view: GraphView, measured: Iterable[str], folder: Path) -> set[str]:
        """The tensors to capture for judging the ``measured`` tensors; their rows go to ``folder``."""
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        wanted = sorted(layer_activations(view, measured))
        self.files = {name: str(i) for i, name in enumerate(wanted)}
        return set(wanted)

    def keep(self, run: int, names: Sequence[str], values: Sequence[np.ndarray], view: GraphView) -> None:
        """Write the kept rows of run ``run`` of the captured ``names`` (run numbers count from 0
        in every pass over the data, which replays the same runs)."""
        if self.placements:
            self.extremes.update(run, list(names), list(values))
        if run >= len(self.takes) or self.folder is None:
            return
        rows, take = self.takes[run]
        if not take:
            return
        varying = view.input_dependent()
        for name, value in zip(names, values, strict=True):
            if name in self.files and (run == 0 or name in varying):
                np.save(self.folder / f"{self.files[name]}.{run}.npy", _first_rows(np.asarray(value), rows, take))

    def chunks(self, view: GraphView, uses: list[Use]) -> Iterator[dict[str, np.ndarray]]:
        """The activation inputs of the ``uses`` layers (graph inputs and captured tensors) on the kept
        rows, one kept run at a time, each run cut into pieces of as many rows as ``chunk_bytes`` holds
        (``_piece_rows``): what is judged on them is summed over the pieces, so memory holds one piece's
        inputs, outputs and quantized copies, not every kept row's."""
        needed = sorted({t for node, _ in uses for t in node.input if t and not view.is_weight(t)})
        varying = view.input_dependent()
        fixed = {t: np.load(self._file(t, 0)).astype(np.float32) for t in needed if t not in varying}
        runs = [r for r, (_, take) in enumerate(self.takes) if take]
        for run, inputs in zip(runs, self.kept, strict=True):
            take = self.takes[run][1]
            rows: dict[str, tuple[np.ndarray, int | None]] = {}  # tensor -> (its kept rows, its batch axis)
            for t in needed:
                if t in inputs:
                    rows[t] = (inputs[t], self.batch_axes.get(t, 0))
                elif t in varying:
                    rows[t] = (np.load(self._file(t, run)), 0)
            per_row = {t: a.shape[axis] // take for t, (a, axis) in rows.items() if axis is not None}
            whole = any(rows[t][0].shape[rows[t][1]] % take for t in per_row)  # a layout not led by rows
            step = take if whole else self._piece_rows(view, uses, rows, take)
            for start in range(0, take, step):
                piece = dict(fixed)
                for t, (a, axis) in rows.items():
                    if axis is not None and not whole:  # per_row knows the tensors with a batch axis
                        a = rows_along(a, axis, slice(start * per_row[t], min(start + step, take) * per_row[t]))
                    piece[t] = np.asarray(a, np.float32)
                yield piece

    def _file(self, tensor: str, run: int) -> Path:
        return self.folder / f"{self.files[tensor]}.{run}.npy"

    def _piece_rows(
        self, view: GraphView, uses: list[Use], rows: dict[str, tuple[np.ndarray, int | None]], take: int
    ) -> int:
        """Rows per piece within ``chunk_bytes``: per row, the inputs with a quantized copy per target,
        and each layer's output four times over (its reference, a quantized run, their float64 difference)."""
        if self.chunk_bytes is None:
            return take
        inputs = sum(a.nbytes for a, axis in rows.values() if axis is not None) / take
        outputs = 0.0
        for node, index in uses:
            x = node.input[index]
            grow = sample_bytes(view, node.output[0]) / max(sample_bytes(view, x), 1) or 1.0
            outputs += grow * (rows[x][0].nbytes / take if x in rows else inputs)
        cost = inputs * (1 + len(self.fake_quants)) + 4 * outputs
        return max(1, min(take, int(self.chunk_bytes // max(cost, 1.0))))

    def reference(self, fp32: Path, threads: int) -> None:
        """The FP32 graph's outputs on the rows the whole-graph check runs on: the first rows that are
        no extreme sample, then the extreme samples. Run before the weights are parsed in Python, so
        they are held once (by ONNX Runtime here)."""
        extreme = self.extremes.top(EXTREMES) if self.placements else []
        first = [r for r in range(self.count) if r not in extreme]
        if len(first) < 2:  # no standard error from fewer: the check cannot say anything is clearly better
            return
        kept = self.feed()
        rows = {}
        for name, value in kept.items():
            axis = self.batch_axes.get(name, 0)
            parts = [np.take(value, first, axis), *(self.extremes.inputs[s][name] for s in extreme)]
            rows[name] = value if axis is None else np.concatenate(parts, axis)
        count = len(first) + len(extreme)
        checked = CheckRows(rows, count, self.check_step or count, self.batch_axes)
        session = ortsession.session(fp32, threads=threads, cpu_only=True, spin=False, arena=False)
        self.checked = (checked, checked.outputs(session), (len(first), len(extreme)))

    def __call__(
        self, view: GraphView, found: dict[str, Measured], weights: GraphView, folder: Path | None = None
    ) -> dict[str, AutoChoice]:
        """The choice for each key of ``found``, judged on every layer reading any of its ``tensors``;
        ``weights`` is ``view`` with its weights' data (``GraphView.with_weights``). After
        ``reference``, each target's simulation for ``check`` is written to ``folder`` too, so the
        weights are not needed once this returns."""
        start = time.perf_counter()
        uses = {src: consumers(view, m.tensors) for src, m in found.items()}
        judged = [src for src, m in found.items() if uses[src] and len(set(m.amax.values())) > 1]
        choices = {src: _without_layers(m.amax) for src, m in found.items() if src not in judged}
        kernels = _Kernels(view)
        with timed("auto: candidate ranges"):
            for src in judged:
                pieces = self.chunks(view, uses[src])
                choices[src] = _by_layers(weights, uses[src], pieces, found[src], kernels, self.fake_quants)
        info(
            f"auto: {len(judged)} of {len(found)} ranges chosen by the output error of the layers reading "
            f"them, on {self.count} calibration rows, in {time.perf_counter() - start:.2f} s"
        )
        if self.checked is not None and folder is not None:
            measured = {t for m in found.values() for t in m.tensors}
            with timed("whole-graph check"):
                for i, placement in enumerate(self.placements):
                    placement = _ranged(placement, measured)
                    path = save_weights_beside(simulation(weights, placement), folder / f"simulation{i}.onnx")
                    self.simulations.append((path, placement))
        return choices

    def check(
        self, found: dict[str, Measured], choices: dict[str, AutoChoice], threads: int = 1
    ) -> tuple[dict[str, AutoChoice], WholeGraphCheck | None]:
        """``choices`` checked on the whole graph (``wholegraph``), and the check's record; unchanged,
        with no record, where it cannot run (no placements, fewer than 2 first rows)."""
        if self.checked is None or not self.simulations:
            return choices, None
        start = time.perf_counter()
        candidates = {
            c: {
                t: Range(m.min, m.max, m.amax[choices[src].method if c == AUTO else c])
                for src, m in found.items()
                for t in m.tensors
            }
            for c in (AUTO, *methods.names())
        }
        feed, reference, rows = self.checked
        whole = judge(self.simulations, candidates, feed, reference, rows, self.extremes.followed, threads)
        if whole.chosen != AUTO:
            choices = {src: dataclasses.replace(c, method=whole.chosen, local=c.method) for src, c in choices.items()}
        info(f"auto: {whole_graph_line(whole)}, in {time.perf_counter() - start:.2f} s")
        return choices, whole


def _ranged(placement: Placement, measured: set[str]) -> Placement:
    """``placement`` on the tensors that have a range (the quantizers refuse a graph missing one)."""
    known = {t: e for t, e in placement.activations.items() if placement.range_of.get(t, t) in measured}
    return dataclasses.replace(placement, activations=known)


def whole_graph_line(whole: WholeGraphCheck) -> str:
    """One line: what the whole-graph check kept, and the estimates it compared."""
    return _kept_line(whole) + fp8_scale_line(whole)


def fp8_scale_line(whole: WholeGraphCheck) -> str:
    """Where in their octave the FP8 scales were put, and the estimates that chose it; "" without FP8."""
    found = whole.fp8_estimates
    if not found:
        return ""
    return (
        f"; FP8 scales amax / 448 x {whole.fp8_scale:.3f}, the lowest of {len(found)} in their octave "
        f"(output error {found[whole.fp8_scale]:.3g}, at x 1 {found[1.0]:.3g})"
    )


def _kept_line(whole: WholeGraphCheck) -> str:
    est = whole.estimates
    others = ", ".join(f"{m} {est[m]:.3g}" for m in methods.names())
    rows = f"{whole.rows} first rows and {whole.extremes} extreme sample(s) standing for {whole.samples}"
    best, lead = best_method(whole)
    if whole.chosen == AUTO:
        why = (
            f"; {best} estimated lower, but by {lead:.2g} standard error(s) of the first rows, within their "
            f"sampling error ({CLOSE:g} needed)"
            if est[best] < est[AUTO]
            else ""
        )
        return (
            f"whole graph: per-tensor ranges kept (output error {est[AUTO]:.3g}{why}; "
            f"one method on every tensor: {others}; {rows})"
        )
    return (
        f"whole graph: {whole.chosen} on every tensor, output error {est[whole.chosen]:.3g} against the per-tensor "
        f"ranges' {est[AUTO]:.3g}, lower by {lead:.3g} standard errors ({others}; {rows})"
    )


def _first_rows(value: np.ndarray, rows: int, take: int) -> np.ndarray:
    """The first ``take`` of a run's ``rows`` rows: the leading axis is the batch, or the batch
    merged with another axis batch-major (attention's B*heads); any other layout is kept whole."""
    if take == rows or value.ndim == 0 or value.shape[0] % rows:
        return value
    return value[: take * (value.shape[0] // rows)]


# Readers that average a whole tensor: a range that clips it shifts their mean (an SE block's
# channel weights, in the CPU graph that rounds their input), which the tensor's own error hides.
AVERAGING = ("GlobalAveragePool",)


def consumers(view: GraphView, tensors: Iterable[str]) -> list[Use]:
    """The weighted layers reading any of ``tensors`` as input 0 or 1 (the inputs Q/DQ go on), and
    the averaging ops reading one."""
    wanted = set(tensors)
    return [(node, i) for node in view.nodes for i in _judged_inputs(node) if node.input[i] in wanted]


def _judged_inputs(node: onnx.NodeProto) -> tuple[int, ...]:
    if node.op_type in WEIGHTED:
        return (0, 1)
    return (0,) if node.op_type in AVERAGING else ()


def layer_activations(view: GraphView, tensors: Iterable[str]) -> set[str]:
    """What auto needs captured to recompute the layers reading ``tensors``: their inputs that are
    neither graph inputs nor weights."""
    return {
        t
        for node, _ in consumers(view, tensors)
        for t in node.input
        if t and t not in view.inputs and not view.is_weight(t)
    }


def _without_layers(amax: dict[str, float]) -> AutoChoice:
    """The choice for a tensor whose methods agree, or that no weighted layer reads."""
    if len(set(amax.values())) == 1:
        return AutoChoice("max", f"every method gives the same range (+-{amax['max']:.4g})", {})
    return AutoChoice(
        OWN_ERROR,
        f"no Conv, ConvTranspose, Gemm, MatMul or {', '.join(AVERAGING)} reads it: its own int8 error decides "
        f"({OWN_ERROR})",
        {},
    )


def _by_layers(
    view: GraphView,
    uses: list[Use],
    pieces: Iterable[dict[str, np.ndarray]],
    found: Measured,
    kernels: _Kernels,
    fake_quants: Sequence[TargetQuant],
) -> AutoChoice:
    """``view`` with its weights' data; ``pieces``, the layers' activation inputs piece by piece (``chunks``)."""
    layers = [_Layer(view, node, index, kernels, fake_quants) for node, index in uses]
    amax = found.amax
    candidates = sorted(set(amax.values()))
    for piece in pieces:
        for layer in layers:
            layer.reference(piece)
        for a in candidates:
            shared: dict[str, list[np.ndarray]] = {}
            for layer in layers:
                layer.add_error(piece, a, found.min, found.max, shared)
        for layer in layers:
            layer.ref = None  # this piece's outputs go before the next piece's
    by_amax = {a: sum(layer.error(a) for layer in layers) for a in candidates}
    errors = {m: by_amax[a] for m, a in amax.items()}
    order = methods.names()
    best = min(order, key=lambda m: (errors[m], order.index(m)))  # ties: the first registered
    names = [f"{node.op_type} {node.name}" for node, _ in uses]
    where = ", ".join(names[:2]) + (f" (+{len(names) - 2} more)" if len(names) > 2 else "")
    scores = ", ".join(f"{m} {errors[m]:.3g}" for m in order)
    return AutoChoice(best, f"least output error of {where}: {scores}", errors)


def fake_quant(x: np.ndarray, amax: float) -> np.ndarray:
    """Symmetric int8 quantize-dequantize, as QuantizeLinear (round half to even, saturate) then
    DequantizeLinear compute it."""
    scale = float(activation_scale(amax, np.dtype(np.float32)))
    y = np.asarray(x / scale, np.float32)  # in place from here: one temporary, not five, on a layer's input
    np.round(y, out=y)
    np.clip(y, -INT8_MAX - 1, INT8_MAX, out=y)
    y *= np.float32(scale)
    return y


def fake_quant_uint8(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Asymmetric uint8 quantize-dequantize over [lo, hi] widened to hold 0, with ONNX Runtime's
    scale and zero point (``quant_utils.compute_scale_zp``)."""
    found = uint8_scale(lo, hi)
    if found is None:
        return np.zeros_like(x)
    scale, zero = found[0], float(found[1])
    y = np.asarray(x / scale, np.float32)  # in place from here, as ``fake_quant``
    np.round(y, out=y)
    y += np.float32(zero)
    np.clip(y, 0, 255, out=y)
    y -= np.float32(zero)
    y *= scale
    return y


# x, amax, lo, hi -> x as a target's graph quantizes an activation (``Target.fake_quant``)
FakeQuant = Callable[[np.ndarray, float, float, float], np.ndarray]


def int8_scheme(x: np.ndarray, amax: float, lo: float, hi: float) -> np.ndarray:
    """Symmetric int8 over +-amax (TensorRT's)."""
    return fake_quant(x, amax)


def uint8_scheme(x: np.ndarray, amax: float, lo: float, hi: float) -> np.ndarray:
    """Asymmetric uint8 over [lo, hi] clipped to +-amax (ONNX Runtime's CPU graph)."""
    return fake_quant_uint8(x, max(lo, -amax), min(hi, amax))


def dequantized_weight(w: np.ndarray, axis: int, scheme: Scheme = INT8) -> np.ndarray:
    """``w`` as a Q/DQ graph stores it per channel along ``axis`` (``scheme``'s type), dequantized."""
    q, scale = quantize_weight(w.astype(np.float32), axis, np.dtype(np.float32), scheme)
    shape = [1] * w.ndim
    shape[axis] = -1
    return q.astype(np.float32) * scale.reshape(shape)


# w, axis -> w as a target's graph stores a weight, dequantized (``Target.fake_quant_weight``)
WeightQuant = Callable[[np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class TargetQuant:
    """How one target's graph quantizes a layer: its activation input, and its weights."""

    activation: FakeQuant
    weight: WeightQuant = dequantized_weight


# Where no target is named (a test, a benchmark): both schemes, symmetric int8 and asymmetric uint8,
# each with per-channel int8 weights.
BOTH_SCHEMES: tuple[TargetQuant, ...] = (TargetQuant(int8_scheme), TargetQuant(uint8_scheme))


class _Layer:
    """One weighted layer reading the tensor as input ``index``, judged piece by piece of the kept rows:
    per range, its squared output error with that input fake-quantized to the range and its weights
    as each target stores them, summed over the targets and the pieces, against its FP32 output's."""

    def __init__(
        self, view: GraphView, node: onnx.NodeProto, index: int, kernels, fake_quants: Sequence[TargetQuant]
    ) -> None:
        self.index = index
        self.input = node.input[index]
        self.names = [t for t in node.input if t]
        self.weights = {
            i: np.asarray(view.constant(t), np.float32) for i, t in enumerate(self.names) if view.is_weight(t)
        }
        axes = {
            i: weight_axis(node.op_type, node, self.weights[i].ndim, i)
            for i in (0, 1)
            if i != index and i in self.weights
        }
        by_weight: dict[WeightQuant, dict[int, np.ndarray]] = {}  # targets storing weights alike share them
        self.targets = []
        for quant in fake_quants:
            if quant.weight not in by_weight:
                by_weight[quant.weight] = {
                    i: quant.weight(w, axes[i]) if i in axes else w for i, w in self.weights.items()
                }
            self.targets.append((quant.activation, by_weight[quant.weight]))
        self.run = kernels(node)
        self.ref: np.ndarray | None = None  # the FP32 output on the piece being judged
        self.ref_sq = 0.0
        self.diff_sq: dict[float, float] = {}  # by amax: the squared output error so far, over targets and pieces

    def _inputs(self, weights: dict[int, np.ndarray], piece: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [weights[i] if i in weights else piece[t] for i, t in enumerate(self.names)]

    def reference(self, piece: dict[str, np.ndarray]) -> None:
        self.ref = self.run(self._inputs(self.weights, piece))
        self.ref_sq += float(np.square(self.ref, dtype=np.float64).sum())

    def add_error(self, piece: dict[str, np.ndarray], amax: float, lo: float, hi: float, shared: dict) -> None:
        """Add this piece's error under ``amax`` (TensorRT's int8 over +-amax, FP8's E4M3 over +-amax,
        ONNX Runtime CPU's uint8 over [lo, hi] clipped to +-amax: ``Target.fake_quant``). ``shared``
        holds the quantized inputs by tensor for one range and piece, so layers reading one tensor
        (attention's Q, K and V) quantize it once: the input is an activation, the same for every
        target's weights."""
        if self.input not in shared:
            shared[self.input] = [quantize(piece[self.input], amax, lo, hi) for quantize, _ in self.targets]
        total = self.diff_sq.get(amax, 0.0)
        for (_, stored), x in zip(self.targets, shared[self.input], strict=True):
            inputs = self._inputs(stored, piece)
            inputs[self.index] = x
            # In place: one float32 and one float64 copy of the output, the values and their sum as np.square's.
            diff = np.subtract(self.run(inputs), self.ref, dtype=np.float32).astype(np.float64)
            np.square(diff, out=diff)
            total += float(diff.sum())
        self.diff_sq[amax] = total

    def error(self, amax: float) -> float:
        """Relative squared output error under ``amax``, summed over the targets."""
        return self.diff_sq[amax] / self.ref_sq if self.ref_sq > 0 else 0.0


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
    """How many tensors took each method and why, the whole-graph check's verdict, then (where the
    per-tensor ranges were kept) the ``top`` largest cuts in their readers' output error against
    entropy (the previous default)."""
    choices = [r.auto for r in ranges.tensors.values()]
    local = lambda c: c.local or c.method  # noqa: E731  the tensor's own choice
    counts = ", ".join(f"{m} {n}" for m in methods.names() if (n := sum(local(c) == m for c in choices)))
    by_layers = sum(bool(c.errors) for c in choices)
    agree = sum(c.reason.startswith("every method gives") for c in choices)
    why = (
        f"{by_layers} by the output error of the layers reading them, "
        f"{len(choices) - by_layers - agree} by their own error ({OWN_ERROR}), {agree} where every method agrees"
    )
    whole = ranges.whole_graph
    if whole is not None and whole.chosen != AUTO:
        return [
            f"auto ranges: {whole.chosen} on all {len(choices)} tensors, by the whole graph's output error; "
            f"per tensor they would have been {counts} ({why})",
            f"  {whole_graph_line(whole)}",
        ]
    lines = [f"auto ranges: {counts or 'no'} tensor(s); {why}"]  # none: the targets quantize no activation
    if whole is not None:
        lines.append(f"  {whole_graph_line(whole)}")
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
