"""Numbers that say how far an output is from its reference."""

from __future__ import annotations

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
    out = np.asarray(out, dtype=np.float64).ravel()
    ref = np.asarray(ref, dtype=np.float64).ravel()
    diff = np.abs(out - ref)
    # Relative error against max(|ref|, 1e-3): near-zero references would otherwise dominate.
    rel = diff / np.maximum(np.abs(ref), 1e-3)
    denom = np.linalg.norm(out) * np.linalg.norm(ref)
    cosine = float(out @ ref / denom) if denom > 0 else float(np.array_equal(out, ref))
    return ErrorStats(float(diff.max()), float(diff.mean()), float(rel.max()), float(rel.mean()), cosine)


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
