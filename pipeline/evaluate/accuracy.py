"""Accuracy of deployable artifacts against the FP32 reference on held-out data."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.config import Config, Gate, shape_label
from pipeline.console import progress
from pipeline.data import Feed, heldout_batches, shape_of
from pipeline.errors import PipelineError
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
    shape: str | None = saved(omitted=True)  # with [[axes]]: the shape of the rows scored (seq=16)


class _Sums:
    """One shape's running sums, per artifact and output."""

    def __init__(self, artifacts: Iterable[str], outputs: int) -> None:
        self.errors = {a: [ErrorAccumulator() for _ in range(outputs)] for a in artifacts}
        self.agreement = {a: [Agreement() for _ in range(outputs)] for a in self.errors}
        self.metric = {a: Share() for a in self.errors}
        self.reference_metric = Share()


class Scorer:
    """Per artifact and output: error statistics, top-1 agreement with the reference and the
    task metric, folded batch by batch, so memory is one batch's outputs whatever the data size.

    With [[axes]], each shape (sequence length) is scored on its own and gated on its own, so the
    worst one decides: error at a length calibration saw little of does not hide in an average.
    ``[accuracy] shapes`` names the shapes scored; rows of other shapes are left out."""

    def __init__(self, cfg: Config, artifacts: Iterable[str]) -> None:
        self.cfg = cfg
        self.metric_on = cfg.evaluation is not None and cfg.evaluation.metric == "top1"
        self.artifacts = tuple(artifacts)
        self.wanted = None if cfg.accuracy.shapes is None else [shape_label(s) for s in cfg.accuracy.shapes]
        self.by_shape: dict[str, _Sums] = {}
        self.skipped: set[str] = set()

    def update(
        self,
        ref: list[np.ndarray],
        outputs: Mapping[str, list[np.ndarray]],
        labels: np.ndarray | None,
        feed: Feed | None = None,
    ) -> None:
        """One batch: the reference's outputs and each artifact's, in the config's output order;
        ``feed``, the batch's inputs, tells its shape (None: a model without [[axes]])."""
        shape = "" if feed is None else shape_label(shape_of(feed, self.cfg))
        if self.wanted is not None and shape not in self.wanted:
            self.skipped.add(shape)
            return
        sums = self.by_shape.setdefault(shape, _Sums(self.artifacts, len(self.cfg.outputs)))
        scored = self.metric_on and labels is not None
        if scored:
            sums.reference_metric.add(np.argmax(ref[0], axis=-1) == labels)
        for artifact, got in outputs.items():
            for i, stream in enumerate(sums.errors[artifact]):
                stream.update(got[i], ref[i])
                if ref[i].ndim == 2:  # classifier outputs
                    sums.agreement[artifact][i].update(got[i], ref[i])
            if scored:
                sums.metric[artifact].add(np.argmax(got[0], axis=-1) == labels)

    @property
    def reference_metric(self) -> Share:
        """FP32's top-1 hits over every shape scored."""
        return _total(s.reference_metric for s in self.by_shape.values())

    def metric(self, artifact: str) -> float | None:
        """An artifact's top-1 % over every shape scored."""
        return _percent(_total(s.metric[artifact] for s in self.by_shape.values()))

    def rows(self, gates: Mapping[str, Gate | None], batch: int | None = None) -> list[AccuracyRow]:
        """Rows with the gates' verdicts (``gates`` by artifact; None or absent: no gate), one set per shape."""
        missing = [s for s in self.wanted or () if s not in self.by_shape]
        if missing:
            seen = ", ".join(sorted(self.skipped | set(self.by_shape))) or "none"
            raise PipelineError(
                f"{self.cfg.path}: accuracy.shapes names {missing[0]}, but no held-out row has that shape "
                f"(the held-out rows come at {seen}); add such rows or drop it from accuracy.shapes"
            )
        rows = []
        for shape, sums in self.by_shape.items():
            ref_metric = _percent(sums.reference_metric)
            for artifact, streams in sums.errors.items():
                gate = gates.get(artifact)
                for i, spec in enumerate(self.cfg.outputs):
                    stats = streams[i].result()
                    agreement = sums.agreement[artifact][i].result()
                    metric = _percent(sums.metric[artifact]) if i == 0 else None
                    failures = gate_failures(stats, gate, agreement, metric, ref_metric) if gate is not None else []
                    reference = ref_metric if i == 0 else None
                    rows.append(
                        AccuracyRow(
                            artifact,
                            spec.name,
                            stats,
                            agreement,
                            metric,
                            reference,
                            tuple(failures),
                            batch,
                            shape or None,
                        )
                    )
        return sorted(rows, key=lambda r: self.artifacts.index(r.artifact)) if len(self.by_shape) > 1 else rows


def _total(shares: Iterable[Share]) -> Share:
    total = Share()
    for share in shares:
        total.hits += share.hits
        total.total += share.total
    return total


def _percent(share: Share) -> float | None:
    return None if share.value is None else 100.0 * share.value


def evaluate(
    cfg: Config, reference: Infer, artifacts: Mapping[str, Infer], gates: Mapping[str, Gate], batch_size: int
) -> list[AccuracyRow]:
    """Run every artifact and the reference over the held-out set; per-output stats and gates."""
    scorer = Scorer(cfg, artifacts)
    for feed, labels in progress(heldout_batches(cfg, batch_size), f"accuracy at batch {batch_size}"):
        scorer.update(reference(feed), {name: infer(feed) for name, infer in artifacts.items()}, labels, feed)
    return scorer.rows(gates)


def accuracy_table(rows: Sequence[AccuracyRow]) -> tuple[list[str], list[list[object]]]:
    """Headers and rows for ``console.table``, as quantize and compare print them and the report
    shows them; a batch column when the rows carry one."""
    with_batch = any(r.batch is not None for r in rows)
    with_shape = any(r.shape is not None for r in rows)
    headers = [
        "artifact",
        *(["batch"] if with_batch else []),
        *(["shape"] if with_shape else []),
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
            *([r.shape or "-"] if with_shape else []),
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
