"""The stages, in the order they run, each one module declaring a ``Stage`` (``pipeline.stages.base``).

A new stage is one module here and one entry in ``ORDER`` (docs/extending.md). ``run`` runs one
stage; ``engines`` runs every stage whose record is missing or stale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.console import info
from pipeline.layout import Layout
from pipeline.stages import bench, build, calibrate, compare, export, quantize, report
from pipeline.stages.base import Stage
from pipeline.stages.commands import deploy, sensitivity

ORDER: tuple[Stage, ...] = (
    export.STAGE,
    calibrate.STAGE,
    quantize.STAGE,
    build.STAGE,
    compare.STAGE,
    bench.STAGE,
    report.STAGE,
)
STAGES: dict[str, Stage] = {s.name: s for s in ORDER}
NAMES: tuple[str, ...] = tuple(STAGES)

__all__ = ["NAMES", "ORDER", "STAGES", "Stage", "deploy", "engines", "run", "sensitivity"]


def run(name: str, cfg: Config, root: Path | str | None = None, **options: Any) -> Any:
    """Run the stage called ``name`` (its options as keywords, e.g. ``force=True``) and return its result."""
    return STAGES[name](cfg, root, **options)


def engines(cfg: Config, root: Path | str | None = None, until: str = "report") -> list[str]:
    """Every stage up to ``until`` whose record is missing or whose inputs changed since it ran (config
    sections, weights, model source, data, code, earlier stages' files); returns the stages run."""
    from pipeline import records

    out = Layout.of(cfg, root)
    ran = []
    for stage in ORDER[: NAMES.index(until) + 1]:
        reason = records.rerun_reason(cfg, out, stage)
        if reason is None:
            info(f"{cfg.name}: {stage.name} is up to date")
            _recorded_gate(cfg, out, stage)
            continue
        info(f"{cfg.name}: {stage.name}: {reason}")
        stage(cfg, root)
        ran.append(stage.name)
    return ran


def _recorded_gate(cfg: Config, out: Layout, stage: Stage) -> None:
    """A compare whose gate failed, or a quantize that kept its graphs aside for it, stays a failure on
    every run, not only the one that measured it."""
    from pipeline import records, targets
    from pipeline.errors import PipelineError

    record = records.load_record(out, stage.name)
    if record is None or record.passed:
        return
    if stage is compare.STAGE:
        raise PipelineError(
            f"{cfg.name}: an accuracy gate failed when compare ran (rows in {out.result('compare')}); "
            f"fix the model or the gates in [accuracy] of {cfg.path}"
        )
    aside = [t.artifact for t in targets.configured(cfg) if out.key(out.failed_graph(t.artifact)) in record.outputs]
    if stage is quantize.STAGE and aside:
        raise PipelineError(
            f"{cfg.name}: an accuracy gate failed when quantize ran ({out.failed_graph(aside[0])} kept aside, "
            f"rows in {out.result('quantize')}); fix the gates in [accuracy] of {cfg.path} or quantize --force"
        )
