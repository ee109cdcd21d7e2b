"""``trtpipe report``: engines/NAME/reports/report.md and its charts, from saved results only."""

from __future__ import annotations

from pipeline.console import info
from pipeline.stages import bench, build, compare, quantize
from pipeline.stages.base import Stage, StageRun


def run(r: StageRun):
    from pipeline.evaluate.report import write_report

    with r.writing() as written:
        written.paths = write_report(r.cfg, r.out)
    info(f"{r.cfg.name}: wrote {', '.join(map(str, written.paths))}")
    return written.paths[0]


def _reads(cfg, out):
    return [
        (build.STAGE, out.build_record),
        (bench.STAGE, out.result("bench")),
        (compare.STAGE, out.result("compare")),
        (quantize.STAGE, out.result("quantize")),
    ]


STAGE = Stage("report", ("name", "quantize", "verdict"), run, reads=_reads)
