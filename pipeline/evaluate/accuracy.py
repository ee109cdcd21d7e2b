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
    agreement: float | None  # top-1 agreement with FP32 on decisive rows (classifier outputs)
    metric: float | None  # task metric of this artifact (first output), e.g. top-1 %
    reference_metric: float | None
    failures: tuple[str, ...] = ()
    batch: int | None = None

    def as_dict(self) -> dict:
        return {
            "artifact": self.artifact,
            **({"batch": self.batch} if self.batch is not None else {}),
            "output": self.output,
            **self.stats.as_dict(),
            "top1_agreement": self.agreement,
            "metric": self.metric,
            "fp32_metric": self.reference_metric,
            "failures": list(self.failures),
        }


def score_outputs(
    cfg: Config,
    artifact: str,
    got: list[np.ndarray],
    ref: list[np.ndarray],
    labels: np.ndarray | None,
    gate: Gate | None,
    batch: int | None = None,
) -> list[AccuracyRow]:
    """Per output: error statistics, top-1 agreement, the task metric and the gate's verdict."""
    metric_on = cfg.evaluation is not None and cfg.evaluation.metric == "top1" and labels is not None
    ref_metric = top1(ref[0], labels) if metric_on else None
    rows = []
    for i, spec in enumerate(cfg.outputs):
        stats = error_stats(got[i], ref[i])
        agreement = top1_agreement(got[i], ref[i]) if ref[i].ndim == 2 else None
        metric = top1(got[i], labels) if metric_on and i == 0 else None
        failures = gate_failures(stats, gate, agreement, metric, ref_metric) if gate is not None else []
        first = i == 0
        rows.append(
            AccuracyRow(
                artifact, spec.name, stats, agreement, metric, ref_metric if first else None, tuple(failures), batch
            )
        )
    return rows


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
    rows = []
    for name in artifacts:
        got = [np.concatenate([b[i] for b in outs[name]]) for i in range(len(cfg.outputs))]
        rows.extend(score_outputs(cfg, name, got, ref, y, gates.get(name)))
    return rows


def accuracy_table(rows: list[AccuracyRow]) -> tuple[list[str], list[list[object]]]:
    """Headers and rows for ``console.table``; a batch column when the rows carry one."""
    with_batch = any(r.batch is not None for r in rows)
    headers = [
        "artifact",
        *(["batch"] if with_batch else []),
        "output",
        "cosine",
        "centered cos",
        "rel error",
        "max abs",
        "top-1 agree",
        "top-1 %",
        "FP32 top-1 %",
        "gate",
    ]
    body = [
        [
            r.artifact,
            *([r.batch] if with_batch else []),
            r.output,
            f"{r.stats.cosine:.5f}",
            f"{r.stats.centered_cosine:.5f}",
            r.stats.rel_error,
            r.stats.max_abs,
            "-" if r.agreement is None else f"{100 * r.agreement:.2f}%",
            "-" if r.metric is None else f"{r.metric:.2f}",
            "-" if r.reference_metric is None else f"{r.reference_metric:.2f}",
            "FAIL: " + "; ".join(r.failures) if r.failures else "ok",
        ]
        for r in rows
    ]
    return headers, body
