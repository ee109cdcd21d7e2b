"""``trtpipe bench``: latency across batch sizes for the first configured target that runs on this
machine as it deploys, its 8-bit artifact against its float baseline."""

from __future__ import annotations

from pipeline.config import shape_label
from pipeline.console import info
from pipeline.results import BenchResult
from pipeline.stages.base import Stage, StageRun
from pipeline.stages.build import artifact_reads


def run(r: StageRun, repeat: int = 1) -> BenchResult:
    from pipeline import results
    from pipeline.console import table
    from pipeline.evaluate import bench as bench_mod
    from pipeline.fileio import write_text

    cfg, out = r.cfg, r.out
    plan = bench_mod.plan_bench(cfg, out)
    runs = bench_mod.bench(cfg, out, plan, repeat)
    rows = runs[0]
    shapes = tuple(shape_label(s) for s in cfg.bench.shapes) if cfg.axes else None
    speedup = bench_mod.speedups(rows, plan, shapes[-1] if shapes else None)
    base = {(row.shape, row.batch): row.latency.median_ms for row in rows if row.precision == plan.baseline.name}
    share, profiled = None, None
    if plan.baseline.cpu:
        from pipeline.data import sample_inputs
        from pipeline.evaluate.profile import op_time_share

        # Evidence for the report: INT8 only speeds up the Conv/MatMul/Gemm share of FP32 time.
        profiled = max(plan.batches)
        deciding = cfg.bench.shapes[-1] if cfg.axes else None
        share = op_time_share(plan.baseline.path, sample_inputs(cfg, profiled, deciding), plan.threads)
    result = BenchResult(
        plan.backend,
        plan.runtime,
        plan.includes,
        plan.baseline.name,
        plan.quantized.name,
        tuple(plan.batches),
        plan.threads,
        cfg.bench.warmup,
        cfg.bench.iterations,
        cfg.bench.min_seconds,
        tuple(tuple(run) for run in runs),
        speedup,
        tuple(bench_mod.consistency(runs)),
        share,
        profiled,
        tuple(a.name for a in plan.others) or None,
        shapes,
    )
    with r.writing() as written:  # the two files come as a set
        results.save(result, out)
        write_text(out.bench_csv, bench_mod.to_csv([row for run in runs for row in run]))
        written.paths = [BenchResult.path(out), out.bench_csv]
    info(
        f"{cfg.name}: latency, {plan.includes}; after {cfg.bench.warmup} warm-up runs, at least "
        f"{cfg.bench.iterations} timed runs and {cfg.bench.min_seconds:g} s per artifact and batch"
    )
    info(
        table(
            ["artifact", "batch", *(["shape"] if shapes else []), "median ms", "p90 ms", "p99 ms", "IQR ms"]
            + ["items/s", "speedup"],
            [
                [
                    row.artifact,
                    row.batch,
                    *([row.shape] if shapes else []),
                    row.latency.median_ms,
                    row.latency.p90_ms,
                    row.latency.p99_ms,
                    row.latency.iqr_ms,
                    f"{row.throughput:.0f}",
                    f"{base[(row.shape, row.batch)] / row.latency.median_ms:.2f}x"
                    if row.precision != plan.baseline.name
                    else "",
                ]
                for row in rows
            ],
        )
    )
    for line in result.consistency:
        info(f"  repeat check: {line}")
    return result


STAGE = Stage("bench", ("batch", "axes", "quantize", "bench"), run, reads=artifact_reads, result=BenchResult)
