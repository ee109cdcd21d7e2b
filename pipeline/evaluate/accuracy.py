"""Accuracy of deployable artifacts against the FP32 reference on held-out data."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import Config, Gate, shape_label
from pipeline.console import info, progress
from pipeline.data import Feed, heldout_batches, shape_of
from pipeline.errors import PipelineError
from pipeline.evaluate.metrics import (
    Agreement,
    ErrorAccumulator,
    ErrorStats,
    MetricStream,
    TaskMetric,
    gate_failures,
    task_metric,
)
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
    metric_name: str | None = saved(omitted=True)  # what ``metric`` is, as tables head it ("top-1 %")
    shape: str | None = saved(omitted=True)  # with [[axes]]: the shape of the rows scored (seq=16)


class _Sums:
    """Running sums per artifact and output: one shape's, or (with no outputs) the task metric over
    every shape."""

    def __init__(self, artifacts: Iterable[str], outputs: int, task: TaskMetric | None) -> None:
        self.errors = {a: [ErrorAccumulator() for _ in range(outputs)] for a in artifacts}
        self.agreement = {a: [Agreement() for _ in range(outputs)] for a in self.errors}
        self.metric: dict[str, MetricStream] = {} if task is None else {a: task.stream() for a in self.errors}
        self.reference_metric = None if task is None else task.stream()


class Scorer:
    """Per artifact and output: error statistics, top-1 agreement with the reference and the
    task metric, folded batch by batch, so memory is one batch's outputs whatever the data size.

    With [[axes]], each shape (sequence length) is scored on its own and gated on its own, so the
    worst one decides: error at a length calibration saw little of does not hide in an average.
    ``[accuracy] shapes`` names the shapes scored; rows of other shapes are left out."""

    def __init__(self, cfg: Config, artifacts: Iterable[str]) -> None:
        self.cfg = cfg
        self.task = task_metric(cfg)
        self.artifacts = tuple(artifacts)
        self.wanted = None if cfg.accuracy.shapes is None else [shape_label(s) for s in cfg.accuracy.shapes]
        self.by_shape: dict[str, _Sums] = {}
        self.overall = _Sums(self.artifacts, 0, self.task)
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
        sums = self.by_shape.setdefault(shape, _Sums(self.artifacts, len(self.cfg.outputs), self.task))
        scored = self.task is not None and labels is not None
        if scored:
            for kept in (sums, self.overall):
                kept.reference_metric.update(ref[0], labels)
        for artifact, got in outputs.items():
            for i, stream in enumerate(sums.errors[artifact]):
                stream.update(got[i], ref[i])
                if ref[i].ndim == 2:  # classifier outputs
                    sums.agreement[artifact][i].update(got[i], ref[i])
            if scored:
                for kept in (sums, self.overall):
                    kept.metric[artifact].update(got[0], labels)

    def reference_value(self) -> float | None:
        """FP32's task metric over every shape scored so far (None: no metric or no labels)."""
        return None if self.overall.reference_metric is None else self.overall.reference_metric.value

    def metric(self, artifact: str) -> float | None:
        """An artifact's task metric over every shape scored (None: no metric or no labels)."""
        return self.overall.metric[artifact].value if artifact in self.overall.metric else None

    def rows(self, gates: Mapping[str, Gate | None], batch: int | None = None) -> list[AccuracyRow]:
        """Rows with the gates' verdicts (``gates`` by artifact; None or absent: no gate), one set per shape."""
        missing = [s for s in self.wanted or () if s not in self.by_shape]
        if missing:
            seen = ", ".join(sorted(self.skipped | set(self.by_shape))) or "none"
            raise PipelineError(
                f"{self.cfg.path}: accuracy.shapes names {missing[0]}, but no held-out row has that shape "
                f"(the held-out rows come at {seen}); add such rows or drop it from accuracy.shapes"
            )
        name = None if self.task is None else self.task.name
        rows = []
        for shape, sums in self.by_shape.items():
            ref_metric = None if sums.reference_metric is None else sums.reference_metric.value
            for artifact, streams in sums.errors.items():
                gate = gates.get(artifact)
                for i, spec in enumerate(self.cfg.outputs):
                    stats = streams[i].result()
                    agreeing = sums.agreement[artifact][i]
                    agreement = agreeing.result()
                    metric = sums.metric[artifact].value if i == 0 and self.task is not None else None
                    failures = (
                        gate_failures(stats, gate, agreement, metric, ref_metric, self.task, agreeing.decisive)
                        if gate is not None
                        else []
                    )
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
                            name,
                            shape or None,
                        )
                    )
        return sorted(rows, key=lambda r: self.artifacts.index(r.artifact)) if len(self.by_shape) > 1 else rows


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
    (a batch size and shape named when the row has them)."""
    parts = []
    for row in failed:
        at = f" at batch {row.batch}" if row.batch is not None else ""
        at += f" at {row.shape}" if row.shape is not None else ""
        parts.append(f"{row.artifact}, output {row.output!r}{at}: {'; '.join(row.failures)}")
    return "; and for ".join(parts)


def evaluate(
    cfg: Config, reference: Infer, artifacts: Mapping[str, Infer], gates: Mapping[str, Gate], batch_size: int
) -> list[AccuracyRow]:
    """Run every artifact and the reference over the held-out set; per-output stats and gates."""
    scorer = Scorer(cfg, artifacts)
    for feed, labels in progress(heldout_batches(cfg, batch_size), f"accuracy at batch {batch_size}"):
        scorer.update(reference(feed), {name: infer(feed) for name, infer in artifacts.items()}, labels, feed)
    return scorer.rows(gates)


def evaluate_in_turn(
    cfg: Config,
    reference: Callable[[], Infer],
    artifacts: Mapping[str, Callable[[], Infer]],
    gates: Mapping[str, Gate],
    batch_size: int,
    folder: Path,
) -> list[AccuracyRow]:
    """``evaluate``'s rows, with one graph in memory at a time: the reference (``reference()`` loads
    it) runs over the held-out set first, each batch's inputs, labels and outputs kept in a file in
    ``folder``; then each artifact (``artifacts[name]()``) is scored against those files. Each graph
    is dropped before the next is loaded."""
    kept, infer = [], reference()
    for i, (feed, labels) in enumerate(
        progress(heldout_batches(cfg, batch_size), f"accuracy at batch {batch_size}: FP32")
    ):
        kept.append(_keep_batch(folder / f"batch{i}.npz", feed, labels, infer(feed)))
    del infer
    rows: list[AccuracyRow] = []
    for name, load in artifacts.items():
        infer, scorer = load(), Scorer(cfg, [name])
        for path in progress(kept, f"accuracy at batch {batch_size}: {name}"):
            feed, labels, ref = _kept_batch(path)
            scorer.update(ref, {name: infer(feed)}, labels, feed)
        del infer  # its session goes before the next is made
        rows += scorer.rows({name: gates[name]})
    return rows


def _keep_batch(path: Path, feed: Feed, labels: np.ndarray | None, outputs: list[np.ndarray]) -> Path:
    arrays = {f"input {k}": v for k, v in feed.items()} | {f"output {i}": v for i, v in enumerate(outputs)}
    np.savez(path, **arrays, **({} if labels is None else {"labels": labels}))
    return path


def _kept_batch(path: Path) -> tuple[Feed, np.ndarray | None, list[np.ndarray]]:
    with np.load(path, allow_pickle=False) as kept:
        feed = {k.removeprefix("input "): kept[k] for k in kept.files if k.startswith("input ")}
        count = sum(k.startswith("output ") for k in kept.files)
        return feed, kept["labels"] if "labels" in kept.files else None, [kept[f"output {i}"] for i in range(count)]


def accuracy_table(rows: Sequence[AccuracyRow]) -> tuple[list[str], list[list[object]]]:
    """Headers and rows for ``console.table``, as quantize and compare print them and the report
    shows them; a batch column when the rows carry one; the metric's columns headed by its name."""
    with_batch = any(r.batch is not None for r in rows)
    metric = next((r.metric_name for r in rows if r.metric_name is not None), "top-1 %")
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
        metric,
        f"FP32 {metric}",
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
            _figure(r.metric),
            _figure(r.reference_metric),
            "FAIL: " + "; ".join(r.failures) if r.failures else "ok",
        ]
        for r in rows
    ]
    return headers, body


def _figure(value: float | None) -> str:
    """A metric's figure: two decimals for percentages and dB, four significant digits when small (MSE)."""
    if value is None:
        return "-"
    return f"{value:.2f}" if abs(value) >= 1 or value == 0 else f"{value:.4g}"
