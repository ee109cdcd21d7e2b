"""``trtpipe compare``: every deployable artifact against the FP32 graph, through Polygraphy's Comparator."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.artifacts import Artifacts
from pipeline.config import Config
from pipeline.data import heldout_batches
from pipeline.evaluate.metrics import ErrorStats, error_stats, gate_failures, top1, top1_agreement
from pipeline.fileio import atomic_path
from pipeline.runners import Artifact, artifacts, reference_runner, runner_for


@dataclass(frozen=True)
class CompareRow:
    artifact: str
    batch: int
    output: str
    stats: ErrorStats
    agreement: float | None
    metric: float | None
    fp32_metric: float | None
    failures: tuple[str, ...]

    def as_dict(self) -> dict:
        return {
            "artifact": self.artifact,
            "batch": self.batch,
            "output": self.output,
            **self.stats.as_dict(),
            "top1_agreement": self.agreement,
            "metric": self.metric,
            "fp32_metric": self.fp32_metric,
            "failures": list(self.failures),
        }


def compare(cfg: Config, out: Artifacts) -> list[CompareRow]:
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    found = artifacts(cfg, out)
    rows: list[CompareRow] = []
    for batch in cfg.accuracy.batches:
        feeds, labels = [], []
        for feed, lab in heldout_batches(cfg, batch):
            feeds.append(feed)
            if lab is not None:
                labels.append(lab)
        runners = [reference_runner(out)] + [runner_for(a, profile=_profile(cfg, a, batch)) for a in found]
        with G_LOGGER.verbosity(G_LOGGER.WARNING):  # its per-iteration lines would drown the table
            results = Comparator.run(runners, data_loader=feeds)
            with atomic_path(out.results_dir / f"polygraphy-b{batch}.json") as tmp:
                results.save(str(tmp))
        outputs = {name: _stack(iterations, cfg) for name, iterations in results.items()}
        ref = outputs[runners[0].name]
        y = np.concatenate(labels) if labels else None
        metric_on = cfg.evaluation is not None and cfg.evaluation.metric == "top1" and y is not None
        fp32_metric = top1(ref[0], y) if metric_on else None
        for artifact, runner in zip(found, runners[1:], strict=True):
            got = outputs[runner.name]
            gate = getattr(cfg.accuracy, artifact.gate_key)
            for i, spec in enumerate(cfg.outputs):
                stats = error_stats(got[i], ref[i])
                agreement = top1_agreement(got[i], ref[i]) if ref[i].ndim == 2 else None
                metric = top1(got[i], y) if metric_on and i == 0 else None
                failures = gate_failures(stats, gate, agreement)
                if (
                    gate.max_metric_drop is not None
                    and metric is not None
                    and fp32_metric - metric > gate.max_metric_drop
                ):
                    failures.append(f"top-1 {metric:.2f}% is {fp32_metric - metric:.2f} points under FP32")
                rows.append(
                    CompareRow(
                        artifact.label,
                        batch,
                        spec.name,
                        stats,
                        agreement,
                        metric,
                        fp32_metric if i == 0 else None,
                        tuple(failures),
                    )
                )
    return rows


def _profile(cfg: Config, artifact: Artifact, batch: int) -> int:
    if artifact.backend != "tensorrt":
        return 0
    from pipeline.build.profiles import profile_index_for

    return profile_index_for(cfg, batch)


def _stack(iterations, cfg: Config) -> list[np.ndarray]:
    return [np.concatenate([np.asarray(it[spec.name], dtype=np.float32) for it in iterations]) for spec in cfg.outputs]


def compare_table(rows: list[CompareRow]) -> tuple[list[str], list[list[object]]]:
    headers = [
        "artifact",
        "batch",
        "output",
        "max abs",
        "mean abs",
        "max rel",
        "mean rel",
        "cosine",
        "top-1 agree",
        "top-1 %",
        "FP32 top-1 %",
        "gate",
    ]
    body = [
        [
            r.artifact,
            r.batch,
            r.output,
            r.stats.max_abs,
            r.stats.mean_abs,
            r.stats.max_rel,
            r.stats.mean_rel,
            f"{r.stats.cosine:.5f}",
            "-" if r.agreement is None else f"{100 * r.agreement:.2f}%",
            "-" if r.metric is None else f"{r.metric:.2f}",
            "-" if r.fp32_metric is None else f"{r.fp32_metric:.2f}",
            "FAIL" if r.failures else "ok",
        ]
        for r in rows
    ]
    return headers, body


def results_path(out: Artifacts) -> Path:
    return out.results_dir / "compare.json"
