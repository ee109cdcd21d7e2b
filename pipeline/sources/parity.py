"""Parity of the exported graphs with their source (PyTorch), on real inputs at several batch sizes and,
with [[axes]], at every axis' min, opt and max (a graph can be right at one length and wrong at another:
a size torch.export specialized, a position table cut short)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import ortsession
from pipeline.config import Config, shape_label
from pipeline.console import info, table
from pipeline.data import Feed, sample_inputs
from pipeline.errors import PipelineError
from pipeline.evaluate.metrics import ErrorStats, error_stats, gate_failures


@dataclass(frozen=True)
class ParityRow:
    precision: str
    batch: int
    shape: str  # with [[axes]]: seq=16; "" without
    output: str
    stats: ErrorStats
    failures: tuple[str, ...]


def check_parity(
    cfg: Config, reference: Callable[[Feed], list[np.ndarray]], graphs: dict[str, Path], kind: str = "PyTorch module"
) -> list[ParityRow]:
    """Compare each graph (``{precision: path}``) with the source's ``reference`` outputs; raise
    listing every failure."""
    rows = []
    sessions = {p: ortsession.session(path, cpu_only=True) for p, path in graphs.items()}
    for batch in cfg.export.parity_batches:
        for shape in cfg.profile_shapes():
            feed = sample_inputs(cfg, batch, shape)
            refs = reference(feed)
            for precision, sess in sessions.items():
                outs = ortsession.run(sess, feed)
                for spec, out, ref in zip(cfg.outputs, outs, refs, strict=True):
                    stats = error_stats(out, ref)
                    failures = tuple(gate_failures(stats, cfg.accuracy.gate(precision)))
                    rows.append(ParityRow(precision, batch, shape_label(shape), spec.name, stats, failures))
    bad = [r for r in rows if r.failures]
    if bad:
        detail = "; ".join(
            f"{r.precision} batch {r.batch}{' ' + r.shape if r.shape else ''} {r.output!r}: {', '.join(r.failures)}"
            for r in bad
        )
        info(format_parity(rows))
        raise PipelineError(
            f"{cfg.name}: ONNX Runtime disagrees with the source ({kind}): {detail}{_overflows(cfg, graphs, bad)}"
        )
    return rows


def _overflows(cfg: Config, graphs: dict[str, Path], bad: list[ParityRow]) -> str:
    """Where a failing FP16 graph overflows: the nodes making inf or NaN from finite inputs, with the fix."""
    from pipeline import onnxutil
    from pipeline.fp16 import overflow_origins
    from pipeline.targets.base import FP16

    batches = sorted({r.batch for r in bad if r.precision == FP16})
    if not batches or FP16 not in graphs:
        return ""
    found = overflow_origins(onnxutil.load(graphs[FP16]), cfg, sample_inputs(cfg, batches[-1]))
    if not found:
        return ""
    return (
        f"; the FP16 graph overflows FP16's range (inf or NaN from finite inputs) at {', '.join(found)}: keep "
        f'those op types in FP32 with export.keep_fp32, or at a graph output set export.io_dtype = "float32"'
    )


def format_parity(rows: list[ParityRow]) -> str:
    shaped = any(r.shape for r in rows)
    return table(
        [
            "graph",
            "batch",
            *(["shape"] if shaped else []),
            "output",
            "max abs",
            "rel error",
            "cosine",
            "centered cos",
            "ok",
        ],
        [
            [
                r.precision,
                r.batch,
                *([r.shape] if shaped else []),
                r.output,
                r.stats.max_abs,
                r.stats.rel_error,
                f"{r.stats.cosine:.7f}",
                f"{r.stats.centered_cosine:.7f}",
                "FAIL: " + "; ".join(r.failures) if r.failures else "ok",
            ]
            for r in rows
        ],
    )
