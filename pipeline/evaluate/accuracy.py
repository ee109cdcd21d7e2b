"""Accuracy of deployable artifacts against the FP32 reference on held-out data."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.config import Config, Gate
from pipeline.console import info, progress
from pipeline.data import Feed, heldout_batches
from pipeline.evaluate.metrics import Agreement, ErrorAccumulator, ErrorStats, Share, gate_failures
from pipeline.schema import saved

Infer = Callable[[Feed], list[np.ndarray]]


@dataclass(frozen=True)
class AccuracyRow:
    """One artifact's output against FP32 (saved in quantize.json and compare.json, ``pipeline.results``)."""

    artifact: str
    output: str
    stats: ErrorStats = saved(inline=True)
    agreement: float | None = saved(key="top1_agreement")  # with FP32 on decisive rows (classifier outputs)
    metric: float | None = saved()  # task metric of this artifact (first output), e.g. top-1 %
    reference_metric: float | None = saved(key="fp32_metric")
    failures: tuple[str, ...] = ()
    batch: int | None = saved(omitted=True)  # compare's rows: the batch size it ran at


class Scorer:
    """Per artifact and output: error statistics, top-1 agreement with the reference and the
    task metric, folded batch by batch, so memory is one batch's outputs whatever the data size."""

    def __init__(self, cfg: Config, artifacts: Iterable[str]) -> None:
        self.cfg = cfg
        self.metric_on = cfg.evaluation is not None and cfg.evaluation.metric == "top1"
        outputs = range(len(cfg.outputs))
        self.errors = {a: [ErrorAccumulator() for _ in outputs] for a in artifacts}
        self.agreement = {a: [Agreement() for _ in outputs] for a in self.errors}
        self.metric = {a: Share() for a in self.errors}
        self.reference_metric = Share()

    def update(self, ref: list[np.ndarray], outputs: Mapping[str, list[np.ndarray]], labels: np.ndarray | None) -> None:
        """One batch: the reference's outputs and each artifact's, in the config's output order."""
        scored = self.metric_on and labels is not None
        if scored:
            self.reference_metric.add(np.argmax(ref[0], axis=-1) == labels)
        for artifact, got in outputs.items():
            for i, stream in enumerate(self.errors[artifact]):
                stream.update(got[i], ref[i])
                if ref[i].ndim == 2:  # classifier outputs
                    self.agreement[artifact][i].update(got[i], ref[i])
            if scored:
                self.metric[artifact].add(np.argmax(got[0], axis=-1) == labels)

    def rows(self, gates: Mapping[str, Gate | None], batch: int | None = None) -> list[AccuracyRow]:
        """Rows with the gates' verdicts (``gates`` by artifact; None or absent: no gate)."""
        ref_metric = _percent(self.reference_metric)
        rows = []
        for artifact, streams in self.errors.items():
            gate = gates.get(artifact)
            for i, spec in enumerate(self.cfg.outputs):
                stats = streams[i].result()
                agreeing = self.agreement[artifact][i]
                agreement = agreeing.result()
                metric = _percent(self.metric[artifact]) if i == 0 else None
                failures = (
                    gate_failures(stats, gate, agreement, metric, ref_metric, agreeing.decisive)
                    if gate is not None
                    else []
                )
                reference = ref_metric if i == 0 else None
                rows.append(
                    AccuracyRow(artifact, spec.name, stats, agreement, metric, reference, tuple(failures), batch)
                )
        return rows


def note_calibration_rows(cfg: Config) -> None:
    """Said once per stage that judges accuracy, when the config has no held-out data: the gates (and
    the budget) then score the very rows the ranges were fitted on, which flatters the 8-bit graphs."""
    if cfg.evaluation is not None:
        return
    judged = "the accuracy gates and [accuracy.budget]" if cfg.accuracy.budget is not None else "the accuracy gates"
    info(
        f"{cfg.name}: no [evaluation] in {cfg.path}: {judged} score the calibration rows themselves, the "
        f"rows the ranges were fitted on; add [evaluation] with held-out data to judge unseen rows"
    )


def failures_line(failed: Sequence[AccuracyRow]) -> str:
    """Every failing artifact and output with its figures, one line: ``A, output 'o': why; and for B, ...``
    (a batch size named when the row has one)."""
    parts = []
    for row in failed:
        at = f" at batch {row.batch}" if row.batch is not None else ""
        parts.append(f"{row.artifact}, output {row.output!r}{at}: {'; '.join(row.failures)}")
    return "; and for ".join(parts)


def _percent(share: Share) -> float | None:
    return None if share.value is None else 100.0 * share.value


def evaluate(
    cfg: Config, reference: Infer, artifacts: Mapping[str, Infer], gates: Mapping[str, Gate], batch_size: int
) -> list[AccuracyRow]:
    """Run every artifact and the reference over the held-out set; per-output stats and gates."""
    scorer = Scorer(cfg, artifacts)
    for feed, labels in progress(heldout_batches(cfg, batch_size), f"accuracy at batch {batch_size}"):
        scorer.update(reference(feed), {name: infer(feed) for name, infer in artifacts.items()}, labels)
    return scorer.rows(gates)


def accuracy_table(rows: Sequence[AccuracyRow]) -> tuple[list[str], list[list[object]]]:
    """Headers and rows for ``console.table``, as quantize and compare print them and the report
    shows them; a batch column when the rows carry one."""
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
