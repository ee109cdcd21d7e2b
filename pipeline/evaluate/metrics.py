"""Numbers that say how far an output is from its reference, on the output's own scale.

Absolute errors mean nothing across models (logits of 10 or of 1000), and raw cosine
hides loss when rows share a large constant part: a random-weight ResNet-50's w8a8
logits had cosine 0.982 but only 0.31 once the part every row shares was removed.
So the gates judge:

* ``centered_cosine``: cosine after subtracting the reference's mean row (over the
  batch), i.e. agreement on how outputs *vary* between inputs; raw cosine where there
  is a single row, or where that varying part is under ``SPREAD_FLOOR`` of the norm;
* ``rel_error``: ||out - ref|| over the reference's spread around that mean row (its
  norm where the raw cosine is used);
* top-1 agreement only on *decisive* rows, whose reference top-1 logit leads the
  runner-up by at least ``DECISIVE_MARGIN`` of the row's standard deviation: near-ties
  (random-weight nets) flip under any rounding and say nothing about accuracy.

Every statistic comes from running sums, so ``ErrorAccumulator`` takes an output
batch by batch in bounded memory and gives what ``error_stats`` gives on the whole.

Where held-out data has labels, the task metric (``[evaluation] metric``: ``top1``, ``top5``,
``mse``, ``psnr`` or a user callable, see ``TaskMetric``) is folded the same way, on the first output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline.callables import load_callable, user_code
from pipeline.config import Config, Gate
from pipeline.errors import PipelineError
from pipeline.schema import saved

DECISIVE_MARGIN = 0.1
# Below this share of the output's norm, the part that varies between rows is at the reference's own
# rounding level (a net whose output hardly depends on its input): judge the raw output instead.
SPREAD_FLOOR = 1e-2
MIN_DECISIVE_ROWS = 10  # fewer decisive rows than this: agreement is not judged


def decisive_rows_needed(min_agreement: float) -> int:
    """Decisive rows a gate's ``min_top1_agreement`` is judged on: enough that one flipped row alone
    keeps the agreement within it, n >= 1 / (1 - min_agreement) (34 rows for 0.97). On fewer, one
    flip of a near-tie (a random-weight net's rows; 1 of 12) would fail a gate that allows 3 in 100:
    the gate would demand every row agree. A gate of 1.0 allows no flip: MIN_DECISIVE_ROWS do."""
    if min_agreement >= 1.0:
        return MIN_DECISIVE_ROWS
    return max(MIN_DECISIVE_ROWS, math.ceil(1.0 / (1.0 - min_agreement) - 1e-9))


@dataclass(frozen=True)
class ErrorStats:
    max_abs: float
    mean_abs: float
    max_rel: float
    mean_rel: float
    cosine: float
    centered_cosine: float
    rel_error: float  # of the output's spread (the centered measure)
    norm_rel_error: float  # of the output's norm (the raw measure)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Score:
    """A graph against FP32 on held-out rows: the worst output's cosine, centered cosine and relative
    error (of the spread, see metrics.py), and the task metric where labels exist."""

    cosine: float
    centered_cosine: float
    rel_error: float
    metric: float | None
    # What the artifact's accuracy gate says of these rows when one was asked (the budget's search
    # must meet the gate too: agreement, error, metric); saved only when it fails.
    gate_failures: tuple[str, ...] | None = saved(omitted=True)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> Score:
        """A saved score; ValueError when a figure is out of its range. (A graph whose output overflows
        scores NaN when measured; such a score is saved as NaN and read back as NaN.)"""
        metric = raw["metric"]
        score = cls(
            float(raw["cosine"]),
            float(raw["centered_cosine"]),
            float(raw["rel_error"]),
            None if metric is None else float(metric),
        )
        cosines = [c for c in (score.cosine, score.centered_cosine) if not math.isnan(c)]
        if any(abs(c) > 1.0 for c in cosines) or score.rel_error < 0:
            raise ValueError(f"a score out of range: {raw}")
        return score


BLOCK_VALUES = 1 << 20  # values of each output folded at once (a block of rows, at least one)


@dataclass
class ErrorAccumulator:
    """Running sums over rows (axis 0 is the batch) from which ``ErrorStats`` follow exactly."""

    rows: int = 0
    values: int = 0
    max_abs: float = 0.0
    sum_abs: float = 0.0
    max_rel: float = 0.0
    sum_rel: float = 0.0
    dot: float = 0.0  # sum of out * ref
    out_sq: float = 0.0
    ref_sq: float = 0.0
    diff_sq: float = 0.0
    sum_out: np.ndarray | None = field(default=None, repr=False)  # per position within a row
    sum_ref: np.ndarray | None = field(default=None, repr=False)

    def update(self, out: np.ndarray, ref: np.ndarray) -> ErrorAccumulator:
        """Folds a batch in a block of rows at a time, each in float64 with its temporaries: a
        segmentation net's batch of outputs, whole, would take several times what inference holds."""
        ref = np.asarray(ref)
        rows = ref.shape[0] if ref.ndim else 1
        ref = ref.reshape(rows, -1)
        out = np.asarray(out).reshape(ref.shape)
        step = max(1, BLOCK_VALUES // max(ref.shape[1], 1))
        for start in range(0, rows, step):
            self._add(out[start : start + step], ref[start : start + step])
        return self

    def _add(self, out: np.ndarray, ref: np.ndarray) -> None:
        ref = np.asarray(ref, dtype=np.float64)
        out = np.asarray(out, dtype=np.float64)
        diff = np.abs(out - ref)
        # Relative error against max(|ref|, 1e-3): near-zero references would otherwise dominate.
        rel = diff / np.maximum(np.abs(ref), 1e-3)
        self.rows += out.shape[0]
        self.values += diff.size
        self.max_abs = max(self.max_abs, float(diff.max(initial=0.0)))
        self.sum_abs += float(diff.sum())
        self.max_rel = max(self.max_rel, float(rel.max(initial=0.0)))
        self.sum_rel += float(rel.sum())
        self.dot += float(np.sum(out * ref))
        self.out_sq += float(np.sum(out * out))
        self.ref_sq += float(np.sum(ref * ref))
        self.diff_sq += float(np.sum(diff * diff))
        self.sum_out = out.sum(axis=0) if self.sum_out is None else self.sum_out + out.sum(axis=0)
        self.sum_ref = ref.sum(axis=0) if self.sum_ref is None else self.sum_ref + ref.sum(axis=0)

    def result(self) -> ErrorStats:
        n = max(self.rows, 1)
        cosine = _cosine(self.dot, self.out_sq, self.ref_sq, self.diff_sq)
        centered, spread_sq = cosine, self.ref_sq
        if self.rows > 1 and self.sum_ref is not None and self.sum_out is not None:
            mean_ref = self.sum_ref / n
            # sum over rows of (o - m)(r - m), (o - m)^2, (r - m)^2 with m the reference's mean row
            dot = self.dot - mean_ref @ self.sum_out - mean_ref @ self.sum_ref + n * mean_ref @ mean_ref
            out_sq = self.out_sq - 2 * mean_ref @ self.sum_out + n * mean_ref @ mean_ref
            varying_sq = float(self.ref_sq - n * mean_ref @ mean_ref)
            if varying_sq >= SPREAD_FLOOR**2 * self.ref_sq:  # else the output hardly depends on the input
                centered = _cosine(float(dot), float(out_sq), varying_sq, self.diff_sq)
                spread_sq = varying_sq
        rel_error = float(np.sqrt(self.diff_sq / spread_sq)) if spread_sq > 0 else float(self.diff_sq > 0)
        norm_rel = float(np.sqrt(self.diff_sq / self.ref_sq)) if self.ref_sq > 0 else float(self.diff_sq > 0)
        return ErrorStats(
            self.max_abs,
            self.sum_abs / max(self.values, 1),
            self.max_rel,
            self.sum_rel / max(self.values, 1),
            cosine,
            centered,
            rel_error,
            norm_rel,
        )


def _cosine(dot: float, a_sq: float, b_sq: float, diff_sq: float) -> float:
    denom = np.sqrt(max(a_sq, 0.0) * max(b_sq, 0.0))
    if denom > 0:
        return float(np.clip(dot / denom, -1.0, 1.0))
    return 1.0 if diff_sq == 0 else 0.0  # all zeros: equal or not


def error_stats(out: np.ndarray, ref: np.ndarray) -> ErrorStats:
    return ErrorAccumulator().update(out, ref).result()


@dataclass
class Agreement:
    """Top-1 agreement with the reference on decisive rows, batch by batch."""

    decisive: int = 0
    agreeing: int = 0

    def update(self, out: np.ndarray, ref: np.ndarray) -> Agreement:
        ref = np.asarray(ref, dtype=np.float64)
        top2 = np.sort(ref, axis=-1)[..., -2:]
        margin = top2[..., 1] - top2[..., 0]
        decisive = margin >= DECISIVE_MARGIN * ref.std(axis=-1)
        same = np.argmax(out, axis=-1) == np.argmax(ref, axis=-1)
        self.decisive += int(decisive.sum())
        self.agreeing += int((same & decisive).sum())
        return self

    def result(self) -> float | None:
        return self.agreeing / self.decisive if self.decisive >= MIN_DECISIVE_ROWS else None


def top1_agreement(out: np.ndarray, ref: np.ndarray) -> float | None:
    """Share of decisive rows whose arg-max class matches the reference's (None: too few decisive rows)."""
    return Agreement().update(out, ref).result()


def gate_failures(
    stats: ErrorStats,
    gate: Gate,
    agreement: float | None = None,
    metric: float | None = None,
    reference_metric: float | None = None,
    task: TaskMetric | None = None,
    decisive: int = 0,
) -> list[str]:
    """Human-readable reasons a result fails ``gate`` (empty when it passes); the metric's drop is
    judged when ``task`` says what the metric is; top-1 agreement on ``decisive`` rows only when they
    are enough to (``decisive_rows_needed``)."""
    problems = []
    kind, cosine = ("centered cosine", stats.centered_cosine) if gate.centered else ("cosine", stats.cosine)
    if cosine < gate.min_cosine:
        problems.append(f"{kind} {cosine:.6f} < {gate.min_cosine}")
    rel, of = (stats.rel_error, "spread") if gate.centered else (stats.norm_rel_error, "norm")
    if gate.max_rel_error is not None and rel > gate.max_rel_error:
        problems.append(f"relative error {rel:.4g} > {gate.max_rel_error} (of the output's {of})")
    if gate.max_abs is not None and stats.max_abs > gate.max_abs:
        problems.append(f"max abs error {stats.max_abs:.3g} > {gate.max_abs}")
    judged = gate.min_top1_agreement is not None and decisive >= decisive_rows_needed(gate.min_top1_agreement)
    if judged and agreement is not None and agreement < gate.min_top1_agreement:
        problems.append(f"top-1 agreement {agreement:.4f} < {gate.min_top1_agreement} ({decisive} decisive rows)")
    if gate.max_metric_drop is not None and task is not None and metric is not None and reference_metric is not None:
        drop = task.drop(metric, reference_metric)
        if drop > gate.max_metric_drop:
            problems.append(f"{task.describe(metric, reference_metric)} (allowed {gate.max_metric_drop})")
    return problems


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return float(np.mean(np.argmax(logits, axis=-1) == labels) * 100.0)


def topk_hits(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per row, whether the label is among the ``k`` largest scores (all of them when fewer)."""
    logits = np.asarray(logits)
    k = min(k, logits.shape[-1])
    best = np.argpartition(logits, -k, axis=-1)[..., -k:]
    return (best == np.asarray(labels)[..., None]).any(axis=-1)


@dataclass
class Share:
    """A share counted over batches: top-1 hits against labels."""

    hits: int = 0
    total: int = 0

    def add(self, matches: np.ndarray) -> None:
        self.hits += int(np.count_nonzero(matches))
        self.total += matches.size

    @property
    def value(self) -> float | None:
        return self.hits / self.total if self.total else None


class MetricStream:
    """One graph's task metric, folded batch by batch; ``value`` is None before any labelled row."""

    def update(self, out: np.ndarray, labels: np.ndarray) -> None:
        raise NotImplementedError

    @property
    def value(self) -> float | None:
        raise NotImplementedError


class TopK(MetricStream):
    """Percent of rows whose label is among the ``k`` highest scores of the output's last axis."""

    def __init__(self, k: int) -> None:
        self.k, self.share = k, Share()

    def update(self, out: np.ndarray, labels: np.ndarray) -> None:
        self.share.add(topk_hits(out, labels, self.k))

    @property
    def value(self) -> float | None:
        return None if self.share.value is None else 100.0 * self.share.value


class SquaredError(MetricStream):
    """The mean squared error against target labels shaped as the output, over every value; as PSNR
    in dB of ``peak`` when ``peak`` is given (infinite where the output equals the targets)."""

    def __init__(self, peak: float | None = None) -> None:
        self.peak, self.total, self.count = peak, 0.0, 0

    def update(self, out: np.ndarray, labels: np.ndarray) -> None:
        out = np.asarray(out, np.float64)
        if np.shape(labels) != out.shape:
            raise PipelineError(
                f"[evaluation] metric mse/psnr: labels of shape {list(np.shape(labels))}, the first output "
                f"is {list(out.shape)}; give one target of the output's shape per row"
            )
        self.total += float(np.sum((out - np.asarray(labels, np.float64)) ** 2))
        self.count += out.size

    @property
    def value(self) -> float | None:
        if not self.count:
            return None
        mse = self.total / self.count
        if self.peak is None:
            return mse
        return math.inf if mse == 0 else 10.0 * math.log10(self.peak**2 / mse)


class UserMetric(MetricStream):
    """The user's ``fn(outputs, labels) -> float`` on each batch, averaged over batches by their rows."""

    def __init__(self, fn: Callable[..., object], spec: str) -> None:
        self.fn, self.spec, self.total, self.rows = fn, spec, 0.0, 0

    def update(self, out: np.ndarray, labels: np.ndarray) -> None:
        with user_code(f"computing evaluation.metric {self.spec!r}"):
            found = self.fn(out, labels)
        if isinstance(found, bool) or not isinstance(found, int | float | np.integer | np.floating):
            raise PipelineError(f"evaluation.metric {self.spec!r} returned {type(found).__name__}, not a number")
        if not math.isfinite(float(found)):
            raise PipelineError(f"evaluation.metric {self.spec!r} returned {float(found)}; return a finite number")
        rows = len(out) if np.ndim(out) else 1
        self.total += float(found) * rows
        self.rows += rows

    @property
    def value(self) -> float | None:
        return self.total / self.rows if self.rows else None


@dataclass(frozen=True)
class TaskMetric:
    """``[evaluation] metric``: its name, which way is better, and a fresh stream per graph scored."""

    name: str  # as tables and messages show it
    higher_is_better: bool
    make: Callable[[], MetricStream] = field(repr=False, compare=False)

    def stream(self) -> MetricStream:
        return self.make()

    def drop(self, metric: float, reference: float) -> float:
        """How much worse than the reference ``metric`` is, in the metric's units (negative: better)."""
        return reference - metric if self.higher_is_better else metric - reference

    def describe(self, metric: float, reference: float) -> str:
        return f"{self.name} {metric:.4g}, {self.drop(metric, reference):.4g} worse than FP32's {reference:.4g}"


BUILTIN_STREAMS: dict[str, tuple[str, Callable[[Config], MetricStream]]] = {
    "top1": ("top-1 %", lambda cfg: TopK(1)),
    "top5": ("top-5 %", lambda cfg: TopK(5)),
    "mse": ("MSE", lambda cfg: SquaredError()),
    "psnr": ("PSNR dB", lambda cfg: SquaredError(peak=cfg.evaluation.peak)),
}


def task_metric(cfg: Config) -> TaskMetric | None:
    """The config's task metric, None without ``[evaluation]``; a user callable is imported here."""
    evaluation = cfg.evaluation
    if evaluation is None:
        return None
    if evaluation.metric in BUILTIN_STREAMS:
        name, make = BUILTIN_STREAMS[evaluation.metric]
        return TaskMetric(name, evaluation.better_higher, lambda: make(cfg))
    fn = load_callable(evaluation.metric, cfg.root, "evaluation.metric")
    return TaskMetric(
        evaluation.metric.rpartition(":")[2], evaluation.better_higher, lambda: UserMetric(fn, evaluation.metric)
    )
