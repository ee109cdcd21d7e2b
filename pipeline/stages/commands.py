"""Commands that are not recorded stages: per-layer sensitivity (read-only on the stages' files, its
table for the report) and deploy (a copy of measured bytes outside the project)."""

from __future__ import annotations

from pathlib import Path

from pipeline import targets
from pipeline.config import Config
from pipeline.console import info
from pipeline.layout import Layout
from pipeline.targets.base import QUANTIZED


def sensitivity(cfg: Config, root: Path | str | None = None, names: tuple[str, ...] = ()) -> dict:
    """Per-layer sensitivity of each quantized graph into results/sensitivity.json (the report draws it)."""
    from pipeline import records
    from pipeline.calibration.inputs import quantization_inputs
    from pipeline.console import table
    from pipeline.evaluate import sensitivity as sens
    from pipeline.evaluate.variants import held_out
    from pipeline.stages import calibrate, quantize
    from pipeline.targets.base import FP32

    out = Layout.of(cfg, root)
    records.verify(cfg, out, quantize.STAGE)  # the graphs and ranges quantize would read, as their stages wrote them
    inp = quantization_inputs(cfg, out, calibrate.STAGE)  # the graphs quantize makes
    chosen = [t for t in targets.configured(cfg) if not names or t.name in names]
    heldout = held_out(cfg, out.graph(FP32), cfg.accuracy.sensitivity_rows)
    tables = {}
    for t in chosen:
        tables[t.artifact] = found = sens.measure(t.sensitivity(inp), heldout)
        info(
            f"{cfg.name}: {t.artifact}: {len(found.layers)} layers on {found.rows} held-out rows in "
            f"{found.seconds:.1f} s; all INT8: centered cosine {found.quantized.centered_cosine:.5f}; "
            f"most sensitive first:"
        )
        info(table(*sens.table_rows(found)))
    sens.save(tables, out.sensitivity)
    info(f"{cfg.name}: wrote {out.sensitivity}")
    return tables


def deploy(
    cfg: Config,
    to: Path | str,
    precision: str | None = None,
    fmt: str = "triton",
    force: bool = False,
    root: Path | str | None = None,
    replace: bool = False,
) -> Path:
    """Copy the chosen engine (or graph) with its manifest into a Triton repository or a plain folder.
    ``precision`` None: the one the report's verdict chooses at the largest batch benched."""
    from pipeline.deployment.checks import check_destination, select
    from pipeline.deployment.repository import write_plain, write_triton

    out, to = Layout.of(cfg, root), Path(to)
    check_destination(out, to)  # every check before anything is written
    chosen = select(cfg, out, *_precision(cfg, out, precision), force)
    if chosen.gate_failures:
        info(
            f"WARNING: deploying {chosen.artifact.label} despite its failed accuracy gate (--force); "
            f"the manifest records it"
        )
    path = write_triton(cfg, out, chosen, to, replace) if fmt == "triton" else write_plain(cfg, chosen, to, replace)
    info(f"{cfg.name}: deployed {chosen.artifact.label} ({chosen.device}) to {path}")
    return path


def _precision(cfg: Config, out: Layout, asked: str | None) -> tuple[str, str | None]:
    """What to deploy: ``asked`` (``--precision``), warning where it contradicts the verdict; else what
    the verdict chooses (``verdict.deploy_precision``); without bench results, ``QUANTIZED``. And the
    verdict's line for the manifest (None without bench results)."""
    from pipeline.evaluate.verdict import decide, deploy_precision
    from pipeline.results import BenchResult, BuildResult, CompareResult, load, load_if_saved

    bench = load_if_saved(BenchResult, out, cfg.path)
    if bench is None:
        if asked is None:
            info(f"{cfg.name}: no bench results, so no speed verdict: deploying {QUANTIZED}; run trtpipe bench first")
        return asked or QUANTIZED, None
    verdict = decide(
        bench, load_if_saved(CompareResult, out, cfg.path), load(BuildResult, out, cfg.path), cfg.verdict.min_speedup
    )
    chosen = deploy_precision(verdict)
    if asked is None:
        info(f"{cfg.name}: deploying {chosen}, as the verdict at the largest batch says: {verdict.overall.line}")
        return chosen, verdict.overall.line
    if asked != chosen:
        info(f"WARNING: deploying {asked} as --precision asks, against the verdict: {verdict.overall.line}")
    return asked, verdict.overall.line
