"""Auto's per-tensor ranges checked on the whole graph's output, on the samples clipping cuts.

``auto`` judges each tensor's range by the layers reading it, on the first calibration rows. A
range that clips (percentile, entropy, mse) cuts the largest values, and those are not spread
over the samples: on RegNetY-400MF (random weights) one image of the 128 holds the largest value
of 108 of its 152 calibrated tensors. Judged on the first rows, which do not hold it, clipping
looks free, and auto's ranges beat max on 108 of the 128 images; on that one image its output
error was 7x max's, enough for a relative error of 0.61 over the 128 against max's 0.52.

So the calibration passes also find, for every captured tensor, the sample holding its largest
|x| (``ExtremeRows``), and keep the inputs of the samples holding the most such extremes. Then
each target's graph is simulated (the FP32 graph with Q/DQ where that target puts them, weights
int8 per channel; FP8 Q/DQ and weights for the FP8 target) under auto's per-tensor ranges and
under each single method on every tensor, on the first rows and those extreme samples. The
extremes are measured, the first rows stand for the rest (a stratified estimate of the output
error over all calibration samples, summed over the outputs and the targets), and the single method
estimated lowest replaces the per-tensor ranges whenever its estimate is below theirs by at least
``CLOSE`` standard errors of the first rows' part of the difference. Below that the lead is within
the first rows' sampling error and the per-tensor ranges stay; the output then says so, naming the
method estimated lower and by how much. (On resnet_digits entropy led by 1.0 and mse by 1.6 standard
errors; on 300 held-out rows each was worse than the per-tensor ranges, entropy's CPU graph by 25%.
On RapidOCR's trained detector entropy led by 2.2 and its TensorRT graph's held-out error was 2.3x
the per-tensor ranges'.)

Where a target's graph is FP8, the kept ranges' FP8 scales are then placed within their octave:
E4M3 keeps 3 significant bits, so x / s and x / 2s round alike and a scale in between rounds each
value differently, while clipping nothing more than amax does. Where values repeat in every sample
(a BatchNorm after a ReLU turns each channel's zeros into one constant: CREPE's head) that rounding
does not average out. Each factor 2^(k/8) of the scale is run, and the one estimated lowest is
kept, with no lead required: none clips more, so where the octave does not matter the choice costs
only the estimate's noise (measured, 2-3% of the error on two of 16 models, where no factor led by
even 1.5 standard errors: docs/benchmarks/fp8.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pipeline import ortsession
from pipeline.calibration import methods
from pipeline.calibration.cache import WholeGraphCheck
from pipeline.data import Feed, rows_along
from pipeline.evaluate.metrics import SPREAD_FLOOR
from pipeline.graphview import GraphView
from pipeline.placement import Placement
from pipeline.targets.tensorrt.qdq import INT8, activation_scale, quantize_weight

AUTO = methods.AUTO  # the candidate of auto's per-tensor choices; the others are one method on every tensor
CLOSE = 3.0  # a lead by fewer standard errors is within the first rows' sampling error: said so
HELD = 32  # samples whose inputs are held while streaming (each holding some tensor's largest |x|)
# Where in the octave above amax / 448 an FP8 scale may sit: E4M3 rounds x / s and x / 2s alike (in its
# normal range), so a wider search repeats itself, and none of these clips more than amax does.
FP8_STEPS = 8
FP8_SCALES = tuple(2.0 ** (k / FP8_STEPS) for k in range(FP8_STEPS))


@dataclass(frozen=True)
class CheckRows:
    """The rows the whole-graph check runs on (``feed``: the first rows, then the extreme samples,
    ``count`` in all), run through a session ``step`` rows at a time: at most a calibration batch, so
    a run holds what inference at that batch holds, not the activations of every checked row at once.
    ``batch_axes`` names each input's batch axis (0 where not given, None for an input without one,
    the same in every piece)."""

    feed: Feed
    count: int
    step: int
    batch_axes: Mapping[str, int | None]

    def pieces(self) -> Iterator[tuple[slice, Feed]]:
        step = max(1, self.step)
        for start in range(0, self.count, step):
            rows = slice(start, min(start + step, self.count))
            yield rows, {n: rows_along(v, self.batch_axes.get(n, 0), rows) for n, v in self.feed.items()}

    def outputs(self, session) -> list[np.ndarray]:
        """``session``'s outputs on every row, the pieces' joined along their leading axis where it is
        one per row (an output that is not, the errors skip: ``output_divisors``, the first piece's)."""
        parts = [(rows, ortsession.run(session, feed)) for rows, feed in self.pieces()]
        if len(parts) == 1:
            return parts[0][1]
        joined = []
        for i, first in enumerate(parts[0][1]):
            per_row = all(np.ndim(out[i]) and len(out[i]) == r.stop - r.start for r, out in parts)
            joined.append(np.concatenate([out[i] for _, out in parts]) if per_row else first)
        return joined


@dataclass(frozen=True)
class Range:
    """A tensor's observed extremes and its amax under one candidate."""

    min: float
    max: float
    amax: float


class ExtremeRows:
    """Streams the calibration runs (every pass): per captured tensor, the sample holding its largest
    |x|; the inputs of such samples are held (at most ``held``, those holding the fewest dropped).

    ``batch_axes`` names each input's batch axis (0 where not given, None for none). A captured
    tensor's leading axis is the batch, or the batch merged with another axis batch-major
    (attention's batch x heads); any other layout is not tracked. Only runs of the first run's
    shape are followed: the check runs its rows as one batch, and rows of another sequence length
    cannot join it (``shape_key``).
    """

    def __init__(self, batch_axes: Mapping[str, int | None], held: int = HELD) -> None:
        self.batch_axes = dict(batch_axes)
        self.held = held
        self.starts: list[int] = []  # first sample of each run, counted over the followed runs
        self.sizes: list[int] = []
        self.shapes: list[tuple] = []  # each run's shape_key
        self.recent: dict[int, Feed] = {}  # the last runs' feeds, by run number
        self.best: dict[str, tuple[float, int | None]] = {}  # tensor -> (largest |x|, sample or None if dropped)
        self.inputs: dict[int, Feed] = {}  # sample -> its inputs (one row)
        self.holds: dict[int, int] = {}  # held sample -> how many tensors' largest |x| it holds

    @property
    def samples(self) -> int:
        return sum(self.sizes)

    @property
    def followed(self) -> int:
        """Samples of the runs followed: those of the first run's shape."""
        return sum(n for n, shape in zip(self.sizes, self.shapes, strict=True) if shape == self.shapes[0])

    def hold(self, runs: Iterable[Feed]) -> Iterator[Feed]:
        """``runs`` as they are, remembering the last few (a run is folded while the next runs)."""
        for number, feed in enumerate(runs):
            if number == len(self.sizes):  # the first pass: every later pass replays the same runs
                # Samples are numbered among the followed runs only, as the kept rows the check
                # starts from are: a run of another shape before them shifts neither.
                self.starts.append(self.followed if self.shapes else 0)
                self.sizes.append(self._rows(feed))
                self.shapes.append(shape_key(feed, self.batch_axes))
            self.recent[number] = feed
            self.recent.pop(number - 3, None)
            yield feed

    def _rows(self, feed: Feed) -> int:
        sizes = [v.shape[self.batch_axes.get(n, 0)] for n, v in feed.items() if self.batch_axes.get(n, 0) is not None]
        return sizes[0] if sizes else 1

    def update(self, run: int, names: Sequence[str], values: Sequence[np.ndarray]) -> None:
        if self.shapes[run] != self.shapes[0]:
            return
        rows = self.sizes[run]
        for name, value in zip(names, values, strict=True):
            value = np.asarray(value)
            if value.dtype.kind != "f" or value.ndim == 0 or value.shape[0] % rows or not value.size:
                continue
            flat = value.reshape(rows, -1)
            per_row = np.maximum(flat.max(axis=1), -flat.min(axis=1))
            row = int(np.argmax(per_row))
            if per_row[row] > self.best.get(name, (0.0, None))[0]:
                self._take(name, float(per_row[row]), run, row)
        while len(self.inputs) > self.held:  # drop the one holding the fewest (the earliest of those)
            gone = min(self.holds, key=lambda s: (self.holds[s], s))
            del self.holds[gone], self.inputs[gone]
            self.best = {t: (v, None if s == gone else s) for t, (v, s) in self.best.items()}

    def _take(self, tensor: str, value: float, run: int, row: int) -> None:
        sample = self.starts[run] + row
        old = self.best.get(tensor, (0.0, None))[1]
        self.best[tensor] = (value, sample)
        self.holds[sample] = self.holds.get(sample, 0) + 1
        if old is not None:
            self.holds[old] -= 1
            if not self.holds[old]:  # it holds no tensor's largest value any more
                del self.holds[old], self.inputs[old]
        if sample not in self.inputs:
            feed = self.recent[run]
            take = lambda n, a: feed[n].copy() if a is None else np.take(feed[n], [row], a)  # noqa: E731  a copy
            self.inputs[sample] = {n: take(n, self.batch_axes.get(n, 0)) for n in feed}

    def top(self, k: int) -> list[int]:
        """The ``k`` samples holding the most tensors' largest values (at least one each), most first."""
        return sorted(self.holds, key=lambda s: (-self.holds[s], s))[:k]


def shape_key(feed: Feed, batch_axes: Mapping[str, int | None]) -> tuple:
    """Each input's shape without its batch axis: rows of two batches share a batch only where equal."""
    key = []
    for name in sorted(feed):
        axis = batch_axes.get(name, 0)
        key.append((name, tuple(d for i, d in enumerate(feed[name].shape) if i != axis)))
    return tuple(key)


def simulation(view: GraphView, placement: Placement) -> onnx.ModelProto:
    """The FP32 graph (``view`` with its weights) with Q/DQ where ``placement`` says; each activation's
    scale and zero point are graph inputs named ``scale:T`` and ``zero:T`` (a symmetric placement's
    zero of a type ONNX Runtime takes no input of, FP8, is one constant ``zero:``)."""
    model = view.model
    scheme = placement.scheme or INT8
    zero_type = helper.np_dtype_to_tensor_dtype(scheme.dtype) if placement.symmetric else TensorProto.UINT8
    fed = _fed(placement)
    nodes = [_copy(n) for n in model.graph.node]
    by_name = {n.name: n for n in nodes}
    position = {n.name: i for i, n in enumerate(nodes)}
    before: dict[int, list[onnx.NodeProto]] = {}  # Q/DQ to insert before the node at that position
    sim = helper.make_model(helper.make_graph([], "simulation", [], []), opset_imports=model.opset_import)
    sim.ir_version, graph = model.ir_version, sim.graph
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    for tensor, edges in sorted(placement.activations.items()):
        readers = _readers(nodes, tensor) if edges is None else [(by_name[n], i) for n, i in edges]
        scale, zero, dq = f"scale:{tensor}", f"zero:{tensor}" if fed else "zero:", f"{tensor}:dequantized"
        before.setdefault(min((position[n.name] for n, _ in readers), default=len(nodes)), []).extend(
            [
                helper.make_node("QuantizeLinear", [tensor, scale, zero], [f"{tensor}:quantized"]),
                helper.make_node("DequantizeLinear", [f"{tensor}:quantized", scale, zero], [dq]),
            ]
        )
        graph.input.extend([_scalar(scale, TensorProto.FLOAT), *([_scalar(zero, zero_type)] if fed else [])])
        for node, index in readers:
            node.input[index] = dq
        for output in graph.output if edges is None else ():
            if output.name == tensor:  # quantize_static quantizes a graph output its op makes
                output.name = dq
    if not fed and placement.activations:
        graph.initializer.add().CopyFrom(numpy_helper.from_array(np.zeros((), scheme.dtype), "zero:"))
    for node_name, index, tensor, axis in placement.weights:
        q, scale = quantize_weight(view.constant(tensor).astype(np.float32), axis, np.dtype(np.float32), scheme)
        base = f"{node_name}:{index}:weight"
        names = [f"{base}:{scheme.dtype.name}", f"{base}:scale", f"{base}:zero"]
        for array, name in zip((q, scale, np.zeros(scale.shape, scheme.dtype)), names, strict=True):
            graph.initializer.add().CopyFrom(numpy_helper.from_array(array, name))
        before.setdefault(position[node_name], []).append(
            helper.make_node("DequantizeLinear", names, [base], axis=axis)
        )
        by_name[node_name].input[index] = base
    graph.node.extend(new for i, node in enumerate(nodes) for new in (*before.get(i, []), node))
    graph.node.extend(before.get(len(nodes), []))
    used = {t for n in graph.node for t in n.input}
    graph.initializer.extend(i for i in model.graph.initializer if i.name in used)  # replaced weights go
    sim.functions.extend(model.functions)
    helper.set_model_props(sim, {"trtpipe.target": "simulation"})
    return sim


def _scalar(name: str, elem_type: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, [])


def _fed(placement: Placement) -> bool:
    """Are the simulation's zero points inputs? Not FP8 ones: ONNX Runtime takes no FP8 input."""
    return not placement.symmetric or (placement.scheme or INT8).dtype.kind in "iu"


def _copy(message):
    out = type(message)()
    out.CopyFrom(message)
    return out


def _readers(nodes: Sequence[onnx.NodeProto], tensor: str) -> list[tuple[onnx.NodeProto, int]]:
    return [(node, i) for node in nodes for i, t in enumerate(node.input) if t == tensor]


def scales(placement: Placement, ranges: Mapping[str, Range], fp8_scale: float = 1.0) -> dict[str, np.ndarray]:
    """The scale and zero-point inputs of ``placement``'s simulation under ``ranges`` (per tensor),
    as the target's quantizer computes them: TensorRT's FP16 scale amax / 127 (amax / 448 for FP8,
    times ``fp8_scale``; a Concat's group sharing its largest amax); ONNX Runtime's uint8 scale and
    zero point over [min, max] clipped to +-amax (a Concat's group over the union of theirs) and
    widened to hold 0."""
    factor = fp8_scale if placement.symmetric and (placement.scheme or INT8).relative else 1.0
    source = {t: ranges[placement.range_of.get(t, t)] for t in placement.activations}
    amax = {t: r.amax * factor for t, r in source.items()}
    bounds = {t: (max(r.min, -r.amax), min(r.max, r.amax)) for t, r in source.items()}
    for group in placement.shared:
        members = [t for t in group if t in amax]
        widest = max(amax[t] for t in members)
        joined = (min(bounds[t][0] for t in members), max(bounds[t][1] for t in members))
        amax.update(dict.fromkeys(members, widest))
        bounds.update(dict.fromkeys(members, joined))
    feed = {}
    for tensor in placement.activations:
        if placement.symmetric:
            scheme = placement.scheme or INT8
            scale, zero = activation_scale(amax[tensor], np.dtype(np.float16), scheme), np.zeros((), scheme.dtype)
        else:
            scale, zero = uint8_scale(*bounds[tensor]) or (1.0, np.uint8(0))
        feed[f"scale:{tensor}"] = np.array(scale, np.float32)
        if _fed(placement):
            feed[f"zero:{tensor}"] = np.array(zero)
    return feed


def uint8_scale(lo: float, hi: float) -> tuple[np.float32, np.uint8] | None:
    """ONNX Runtime's asymmetric uint8 scale and zero point (``quant_utils.compute_scale_zp``) over
    [lo, hi] widened to hold 0; None for a range of nothing but 0."""
    lo, hi = float(np.float32(min(lo, 0.0))), float(np.float32(max(hi, 0.0)))  # as saved for its quantizer
    wide = (hi - lo) / 255.0
    if wide < np.finfo(np.float32).tiny:
        return None
    return np.float32(wide), np.uint8(np.round(-lo / wide))  # from the float64 scale: 127.5 rounds to 128


def row_errors(
    outputs: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    weights: np.ndarray,
    divisors: Sequence[float | None] | None = None,
) -> np.ndarray:
    """Per row: the squared error of each output over that output's spread (the mean squared distance
    of its rows from their mean row, or its mean square where that part is tiny, as ``metrics``
    judges), summed over outputs; means weighted by ``weights`` (how many samples each row stands for).
    ``divisors``: ``output_divisors(reference, weights)``, made once for every candidate judged. One
    row at a time in float64: a segmentation net's outputs, whole, are several times its activations."""
    total = np.zeros(len(weights))
    for out, ref, divisor in zip(outputs, reference, divisors or output_divisors(reference, weights), strict=True):
        if divisor is None:
            continue  # not one row per sample: no part in the per-row errors
        out, ref = np.asarray(out).reshape(len(weights), -1), np.asarray(ref).reshape(len(weights), -1)
        for i in range(len(weights)):
            diff = np.asarray(out[i], np.float64) - np.asarray(ref[i], np.float64)
            total[i] += np.square(diff).sum() / divisor
    return total


def output_divisors(reference: Sequence[np.ndarray], weights: np.ndarray) -> list[float | None]:
    """What ``row_errors`` divides each output's squared errors by: its spread over the rows, or its
    mean square where the spread is tiny beside it; None for an output that is not one row per sample."""
    w = weights / weights.sum()
    found: list[float | None] = []
    for ref in reference:
        if np.ndim(ref) == 0 or len(ref) != len(weights) or not np.issubdtype(np.asarray(ref).dtype, np.floating):
            found.append(None)
            continue
        ref = np.asarray(ref, np.float64).reshape(len(weights), -1)
        mean = w @ ref
        norm = w @ np.array([np.square(row).sum() for row in ref])
        spread = w @ np.array([np.square(row - mean).sum() for row in ref])
        found.append(spread if spread >= SPREAD_FLOOR**2 * norm and spread > 0 else max(norm, 1e-30))
    return found


def stands_for(rows: int, first: int, samples: int) -> np.ndarray:
    """How many calibration samples each checked row stands for: each of the ``first`` rows for its
    share of the samples that are no extreme, each extreme after them for itself."""
    return np.array([(samples - (rows - first)) / first] * first + [1.0] * (rows - first))


def verdict(errors: Mapping[str, np.ndarray], first: int, samples: int) -> WholeGraphCheck:
    """The candidate to keep, from each candidate's ``row_errors`` (summed over targets) on the rows
    checked (the first ``first``, then the extremes): the method whose estimate over all ``samples`` is
    lowest where it leads auto's per-tensor ranges by at least ``CLOSE`` standard errors (the sampling
    error of the first rows' part of its difference to auto; the extremes are measured, not sampled),
    else auto."""
    if first < 2:
        raise ValueError("the whole-graph check needs at least 2 first rows for its standard errors")
    weights = stands_for(len(errors[AUTO]), first, samples)
    estimates = {c: float(weights @ e / samples) for c, e in errors.items()}
    names = methods.names()
    standard = {
        m: float(weights[0] * np.sqrt(first) * np.std((errors[m] - errors[AUTO])[:first], ddof=1) / samples)
        for m in names
    }
    best = min(names, key=estimates.__getitem__)
    lead = _lead(estimates, standard, best)
    chosen = best if lead >= CLOSE else AUTO
    return WholeGraphCheck(chosen, estimates, standard, first, len(errors[AUTO]) - first, samples)


def best_method(whole: WholeGraphCheck) -> tuple[str, float]:
    """The single method estimated lowest, and by how many standard errors it leads auto's per-tensor
    ranges (negative: it trails them; inf: a lead without spread)."""
    best = min(methods.names(), key=whole.estimates.__getitem__)
    return best, _lead(whole.estimates, whole.standard_errors, best)


def _lead(estimates: Mapping[str, float], standard: Mapping[str, float], method: str) -> float:
    gap = estimates[AUTO] - estimates[method]
    if standard[method] > 0:
        return gap / standard[method]
    return float("inf") if gap > 0 else (0.0 if gap == 0 else float("-inf"))


def judge(
    simulations: Sequence[tuple[Path, Placement]],
    candidates: Mapping[str, Mapping[str, Range]],
    feed: CheckRows,
    reference: Sequence[np.ndarray],
    rows: tuple[int, int],
    samples: int,
    threads: int = 1,
) -> WholeGraphCheck:
    """Each candidate's ranges (per tensor) on each placement's simulation (one session at a time),
    scored against ``reference`` on ``feed``'s rows, which are (first rows, extremes after them);
    then, where a placement is FP8's, the kept candidate's FP8 scales placed in their octave
    (``FP8_SCALES``, the estimate's lowest)."""
    first, extremes = rows
    weights = stands_for(first + extremes, first, samples)
    runs = {name: (ranges, 1.0) for name, ranges in candidates.items()}
    whole = verdict(_errors(simulations, runs, feed, reference, weights, threads), first, samples)
    if not any(p.symmetric and (p.scheme or INT8).relative for _, p in simulations):
        return whole
    kept = candidates[whole.chosen]
    phased = {f: (kept, f) for f in FP8_SCALES}
    errors = _errors(simulations, phased, feed, reference, weights, threads)
    estimates = {f: float(weights @ e / samples) for f, e in errors.items()}
    best = min(FP8_SCALES, key=estimates.__getitem__)  # ties: the lowest factor, 1 first
    return dataclasses.replace(whole, fp8_scale=best, fp8_estimates=estimates)


def _errors(
    simulations: Sequence[tuple[Path, Placement]],
    candidates: Mapping[object, tuple[Mapping[str, Range], float]],
    feed: CheckRows,
    reference: Sequence[np.ndarray],
    weights: np.ndarray,
    threads: int,
) -> dict[object, np.ndarray]:
    """Per candidate (its ranges and FP8 scale factor): ``row_errors`` summed over the simulations."""
    errors = {c: np.zeros(len(weights)) for c in candidates}
    divisors = output_divisors(reference, weights)
    for path, placement in simulations:
        session = ortsession.session(path, threads=threads, cpu_only=True, spin=False, arena=False)
        runs: dict[tuple, np.ndarray] = {}  # candidates with the same scales run once
        for name, (ranges, fp8_scale) in candidates.items():
            scale_feed = scales(placement, ranges, fp8_scale)
            key = tuple(float(v) for _, v in sorted(scale_feed.items()))
            if key not in runs:
                runs[key] = _piecewise_errors(session, feed, scale_feed, reference, weights, divisors)
            errors[name] = errors[name] + runs[key]
        del session
    return errors


def _piecewise_errors(
    session,
    feed: CheckRows,
    scale_feed: Feed,
    reference: Sequence[np.ndarray],
    weights: np.ndarray,
    divisors: Sequence[float | None],
) -> np.ndarray:
    """``row_errors`` of ``session`` (fed ``scale_feed`` besides the rows), a piece of rows at a time:
    each piece's outputs are dropped once scored."""
    errors = np.zeros(len(weights))
    for rows, piece in feed.pieces():
        outputs = session.run(None, {**piece, **scale_feed})
        ref = [r if d is None else r[rows] for r, d in zip(reference, divisors, strict=True)]
        errors[rows] = row_errors(outputs, ref, weights[rows], divisors)
    return errors
