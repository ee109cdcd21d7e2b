"""``trtpipe compare``: every deployable artifact against the FP32 graph, through Polygraphy's Comparator."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.artifacts import Artifacts
from pipeline.config import Config
from pipeline.console import info
from pipeline.data import heldout_batches
from pipeline.evaluate.accuracy import AccuracyRow, score_outputs
from pipeline.fileio import atomic_path
from pipeline.runners import Artifact, artifacts, reference_runner, runner_for


def compare(cfg: Config, out: Artifacts) -> list[AccuracyRow]:
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    found = artifacts(cfg, out)
    rows: list[AccuracyRow] = []
    for batch in cfg.accuracy.batches:
        feeds, labels = [], []
        for feed, lab in heldout_batches(cfg, batch):
            feeds.append(feed)
            if lab is not None:
                labels.append(lab)
        info(f"{cfg.name}: comparing {len(found)} artifact(s) with FP32 at batch {batch} ({len(feeds)} batches)")
        runners = [reference_runner(out)] + [runner_for(a, profile=_profile(cfg, a, batch)) for a in found]
        with G_LOGGER.verbosity(G_LOGGER.WARNING):  # its per-iteration lines would drown the table
            results = Comparator.run(runners, data_loader=feeds)
            with atomic_path(out.results_dir / f"polygraphy-b{batch}.json") as tmp:
                results.save(str(tmp))
        outputs = {name: _stack(iterations, cfg) for name, iterations in results.items()}
        ref = outputs[runners[0].name]
        y = np.concatenate(labels) if labels else None
        for artifact, runner in zip(found, runners[1:], strict=True):
            gate = cfg.accuracy.gate(artifact.name)
            rows.extend(score_outputs(cfg, artifact.label, outputs[runner.name], ref, y, gate, batch))
    return rows


def _profile(cfg: Config, artifact: Artifact, batch: int) -> int:
    if artifact.backend != "tensorrt":
        return 0
    from pipeline.build.profiles import profile_index_for

    return profile_index_for(cfg, batch)


def _stack(iterations, cfg: Config) -> list[np.ndarray]:
    return [np.concatenate([np.asarray(it[spec.name], dtype=np.float32) for it in iterations]) for spec in cfg.outputs]


def results_path(out: Artifacts) -> Path:
    return out.results_dir / "compare.json"
