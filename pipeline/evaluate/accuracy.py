"""Accuracy of deployable artifacts against the FP32 reference on held-out data."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from pipeline.config import Config, Gate
from pipeline.data import Feed, heldout_batches
from pipeline.evaluate.metrics import ErrorStats, error_stats, gate_failures, top1, top1_agreement

Infer = Callable[[Feed], list[np.ndarray]]


@dataclass(frozen=True)
class AccuracyRow:
    artifact: str
    output: str
    stats: ErrorStats
    agreement: float | None  # top-1 agreement with FP32 (classifier outputs)
    metric: float | None  # task metric of this artifact (first output), e.g. top-1 %
    reference_metric: float | None
    failures: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {
            "artifact": self.artifact,
            "output": self.output,
            **self.stats.as_dict(),
            "top1_agreement": self.agreement,
            "metric": self.metric,
            "fp32_metric": self.reference_metric,
            "failures": list(self.failures),
        }


def evaluate(
    cfg: Config, reference: Infer, artifacts: Mapping[str, Infer], gates: Mapping[str, Gate], batch_size: int = 64
) -> list[AccuracyRow]:
    """Run every artifact and the reference over the held-out set; per-output stats and gates."""
    outs: dict[str, list[list[np.ndarray]]] = {name: [] for name in ("__ref__", *artifacts)}
    labels: list[np.ndarray] = []
    for feed, lab in heldout_batches(cfg, batch_size):
        outs["__ref__"].append(reference(feed))
        for name, infer in artifacts.items():
            outs[name].append(infer(feed))
        if lab is not None:
            labels.append(lab)
    ref = [np.concatenate([b[i] for b in outs["__ref__"]]) for i in range(len(cfg.outputs))]
    y = np.concatenate(labels) if labels else None
    metric_on = cfg.evaluation is not None and cfg.evaluation.metric == "top1" and y is not None
    ref_metric = top1(ref[0], y) if metric_on else None
    rows = []
    for name in artifacts:
        got = [np.concatenate([b[i] for b in outs[name]]) for i in range(len(cfg.outputs))]
        for i, spec in enumerate(cfg.outputs):
            stats = error_stats(got[i], ref[i])
            agreement = top1_agreement(got[i], ref[i]) if ref[i].ndim == 2 else None
            metric = top1(got[i], y) if metric_on and i == 0 else None
            gate = gates.get(name)
            failures = []
            if gate is not None:
                failures = gate_failures(stats, gate, agreement)
                if (
                    gate.max_metric_drop is not None
                    and metric is not None
                    and ref_metric - metric > gate.max_metric_drop
                ):
                    failures.append(
                        f"top-1 {metric:.2f}% is {ref_metric - metric:.2f} points under FP32 "
                        f"(allowed {gate.max_metric_drop})"
                    )
            rows.append(
                AccuracyRow(name, spec.name, stats, agreement, metric, ref_metric if i == 0 else None, tuple(failures))
            )
    return rows


def accuracy_table(rows: list[AccuracyRow]) -> tuple[list[str], list[list[object]]]:
    headers = ["artifact", "output", "cosine", "max abs", "top-1 agree", "top-1 %", "FP32 top-1 %", "gate"]
    body = [
        [
            r.artifact,
            r.output,
            f"{r.stats.cosine:.5f}",
            r.stats.max_abs,
            "-" if r.agreement is None else f"{100 * r.agreement:.2f}%",
            "-" if r.metric is None else f"{r.metric:.2f}",
            "-" if r.reference_metric is None else f"{r.reference_metric:.2f}",
            "FAIL: " + "; ".join(r.failures) if r.failures else "ok",
        ]
        for r in rows
    ]
    return headers, body
