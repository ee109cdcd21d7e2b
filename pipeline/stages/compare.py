"""``trtpipe compare``: every deployable artifact against the FP32 graph on held-out data, gated by [accuracy]."""

from __future__ import annotations

from pipeline.console import info
from pipeline.results import CompareResult
from pipeline.stages.base import Stage, StageRun, user_metric
from pipeline.stages.build import artifact_reads


def run(r: StageRun) -> list:
    from pipeline import results
    from pipeline.console import table
    from pipeline.errors import PipelineError
    from pipeline.evaluate.accuracy import accuracy_table, failures_line, note_calibration_rows
    from pipeline.evaluate.compare import compare as run_compare

    cfg, out = r.cfg, r.out
    note_calibration_rows(cfg)
    rows = run_compare(cfg, out)
    passed = not any(row.failures for row in rows)
    with r.writing() as written:
        results.save(CompareResult(tuple(rows), passed), out)
        written.paths, written.passed = [CompareResult.path(out)], passed  # deploy gates the bytes it names
    info(f"{cfg.name}: every artifact against the FP32 graph (ONNX Runtime CPU), held-out data")
    info(table(*accuracy_table(rows)))
    failed = [row for row in rows if row.failures]
    if failed:
        raise PipelineError(
            f"{cfg.name}: accuracy gate failed for {failures_line(failed)} (gates in [accuracy] of {cfg.path})"
        )
    return rows


def _data(cfg):
    if cfg.evaluation is None:
        return [("calibration data", cfg.calibration.source)]
    return [("held-out data", cfg.evaluation.source), *user_metric(cfg)]


STAGE = Stage(
    "compare",
    ("batch", "axes", "quantize", "accuracy", "evaluation"),
    run,
    reads=artifact_reads,
    data=_data,
    result=CompareResult,
)
