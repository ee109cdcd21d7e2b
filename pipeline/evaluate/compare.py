"""``trtpipe compare``: every deployable artifact against the FP32 graph, through Polygraphy's Comparator.

The Comparator streams: all runners are active at once and each held-out batch's outputs
are folded into running statistics before the next batch, so memory is one batch's outputs
per runner, whatever the size of the held-out set. Only the statistics are saved
(``compare.json``), not the outputs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import numpy as np

from pipeline.config import Config
from pipeline.console import info, progress
from pipeline.data import Feed, heldout_batches
from pipeline.evaluate.accuracy import AccuracyRow, Scorer
from pipeline.layout import Layout
from pipeline.runners import Artifact, artifacts, reference_runner, runner_for
from pipeline.targets.base import ENGINE


def compare(cfg: Config, out: Layout) -> list[AccuracyRow]:
    found = artifacts(cfg, out)
    rows: list[AccuracyRow] = []
    for batch in cfg.accuracy.batches:
        info(f"{cfg.name}: comparing {len(found)} artifact(s) with FP32 at batch {batch}")
        rows.extend(_compare_at(cfg, out, found, batch))
    return rows


def _compare_at(cfg: Config, out: Layout, found: list[Artifact], batch: int) -> list[AccuracyRow]:
    # Polygraphy first imports torch inside a bare `except:` (is_importable, on every array check): a
    # Ctrl-C during that import was swallowed, then hung or crashed. Imported here, it raises as usual.
    import torch  # noqa: F401
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    # All runners are active at once: without ONNX Runtime's arenas each holds only its weights between runs.
    reference = reference_runner(out, arena=False)
    runners = {a.label: runner_for(a, profile=_profile(cfg, a, batch), arena=False) for a in found}
    scorer = Scorer(cfg, runners)
    labels: deque[tuple[np.ndarray | None, Feed]] = deque()
    with G_LOGGER.verbosity(G_LOGGER.WARNING):  # its per-iteration lines would drown the progress bar
        stream = Comparator.run([reference, *runners.values()], data_loader=_feeds(cfg, batch, labels), streaming=True)
        for results in progress(stream, f"compare at batch {batch}"):
            ref = _outputs(results, reference.name, cfg)
            got = {label: _outputs(results, runner.name, cfg) for label, runner in runners.items()}
            scorer.update(ref, got, *labels.popleft())
    gates = {a.label: cfg.accuracy.gate(a.name) for a in found}
    return scorer.rows(gates, batch)


def _feeds(cfg: Config, batch: int, labels: deque) -> Iterator[Feed]:
    """Held-out feeds for the Comparator; their labels (and the feeds, for their shape) queue up in order
    beside them."""
    for feed, lab in heldout_batches(cfg, batch):
        labels.append((lab, feed))
        yield feed


def _outputs(results, runner: str, cfg: Config) -> list[np.ndarray]:
    """One streamed iteration's outputs of ``runner``, in the config's order (FP16 outputs as float32)."""
    iteration = results[runner][0]
    return [np.asarray(iteration[spec.name], dtype=np.float32) for spec in cfg.outputs]


def _profile(cfg: Config, artifact: Artifact, batch: int) -> int:
    if artifact.backend != ENGINE:
        return 0
    from pipeline.targets.tensorrt.profiles import profile_index_for

    return profile_index_for(cfg, batch)
