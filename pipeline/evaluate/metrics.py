"""Numbers that say how far an output is from its reference."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from pipeline.config import Gate


@dataclass(frozen=True)
class ErrorStats:
    max_abs: float
    mean_abs: float
    max_rel: float
    mean_rel: float
    cosine: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def error_stats(out: np.ndarray, ref: np.ndarray) -> ErrorStats:
    stream = ErrorStream()
    stream.update(out, ref)
    return stream.stats()


class ErrorStream:
    """``error_stats`` over batches folded one at a time: maxima and float64 running sums,
    so the numbers are those of all batches at once (up to summation order)."""

    def __init__(self) -> None:
        self.count = 0
        self.max_abs = self.sum_abs = self.max_rel = self.sum_rel = 0.0
        self.dot = self.out_sq = self.ref_sq = 0.0
        self.equal = True  # for the cosine of all-zero outputs

    def update(self, out: np.ndarray, ref: np.ndarray) -> None:
        out = np.asarray(out, dtype=np.float64).ravel()
        ref = np.asarray(ref, dtype=np.float64).ravel()
        if out.size == 0:
            return
        diff = np.abs(out - ref)
        # Relative error against max(|ref|, 1e-3): near-zero references would otherwise dominate.
        rel = diff / np.maximum(np.abs(ref), 1e-3)
        self.count += diff.size
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.sum_abs += float(diff.sum())
        self.max_rel = max(self.max_rel, float(rel.max()))
        self.sum_rel += float(rel.sum())
        self.dot += float(out @ ref)
        self.out_sq += float(out @ out)
        self.ref_sq += float(ref @ ref)
        self.equal = self.equal and bool(np.array_equal(out, ref))

    def stats(self) -> ErrorStats:
        n = max(self.count, 1)
        denom = math.sqrt(self.out_sq) * math.sqrt(self.ref_sq)
        cosine = self.dot / denom if denom > 0 else float(self.equal)
        return ErrorStats(self.max_abs, self.sum_abs / n, self.max_rel, self.sum_rel / n, cosine)


def gate_failures(
    stats: ErrorStats,
    gate: Gate,
    agreement: float | None = None,
    metric: float | None = None,
    reference_metric: float | None = None,
) -> list[str]:
    """Human-readable reasons a result fails ``gate`` (empty when it passes)."""
    problems = []
    if stats.cosine < gate.min_cosine:
        problems.append(f"cosine {stats.cosine:.6f} < {gate.min_cosine}")
    if gate.max_abs is not None and stats.max_abs > gate.max_abs:
        problems.append(f"max abs error {stats.max_abs:.3g} > {gate.max_abs}")
    if gate.min_top1_agreement is not None and agreement is not None and agreement < gate.min_top1_agreement:
        problems.append(f"top-1 agreement {agreement:.4f} < {gate.min_top1_agreement}")
    if gate.max_metric_drop is not None and metric is not None and reference_metric is not None:
        drop = reference_metric - metric
        if drop > gate.max_metric_drop:
            problems.append(f"top-1 {metric:.2f}% is {drop:.2f} points under FP32 (allowed {gate.max_metric_drop})")
    return problems


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return float(np.mean(np.argmax(logits, axis=-1) == labels) * 100.0)


def top1_agreement(out: np.ndarray, ref: np.ndarray) -> float:
    """Share of rows whose arg-max class matches the reference's."""
    return float(np.mean(np.argmax(out, axis=-1) == np.argmax(ref, axis=-1)))


@dataclass
class Share:
    """A share counted over batches: top-1 hits against labels or against the reference's arg-max."""

    hits: int = 0
    total: int = 0

    def add(self, matches: np.ndarray) -> None:
        self.hits += int(np.count_nonzero(matches))
        self.total += matches.size

    @property
    def value(self) -> float | None:
        return self.hits / self.total if self.total else None
