"""``trtpipe bench``: latency of each deployable artifact across batch sizes.

What a timing includes:
* TensorRT, as trtexec times (``targets.tensorrt.timing``): ``execute_async_v3`` calls
  enqueued back to back on one stream, each between two CUDA events; latency is each
  inference's GPU time between its events, throughput the items over the span from the
  first event to the last; optionally each inference is a CUDA graph launch
  (``[bench] cuda_graph``). Inputs and outputs stay in device memory; the profile,
  shapes and tensor addresses are set once before timing. No host copies and no
  Polygraphy per-call work (its ``infer`` checks inputs against the engine's
  metadata and sets up outputs on every call).
* ONNX Runtime: host arrays in and out, explicit intra-op threads, timed on the host
  with ``perf_counter``; on the CPU EP there is no copy to speak of, on the CUDA EP the
  host<->device copies are in.

The pair benched is what deploys on this machine: the first configured target
whose artifact runs here as it deploys (``Target.bench_pair``). On a CPU-only
machine that is the FP32 graph (baseline) and the ONNX Runtime CPU w8a8 graph;
the FP16 graph and the TensorRT-target Q/DQ graph only simulate TensorRT's
numbers on a CPU, so their CPU latency would mislead.
"""

from __future__ import annotations

import csv
import dataclasses
import io

from onnxruntime.capi.onnxruntime_pybind11_state import Fail, RuntimeException

from pipeline import ortsession, targets
from pipeline.config import Config, Shape, shape_label
from pipeline.console import progress
from pipeline.data import sample_inputs
from pipeline.errors import PipelineError
from pipeline.evaluate.timing import latency_stats, measure
from pipeline.layout import Layout
from pipeline.results import BenchRow
from pipeline.runners import Artifact, artifacts
from pipeline.schema import encode
from pipeline.targets.base import ENGINE, BenchPair

BenchPlan = BenchPair


def plan_bench(cfg: Config, out: Layout) -> BenchPlan:
    """The pair of the first configured target that runs on this machine as it deploys, with the 8-bit
    artifacts of the later ones that run on the same runtime against the same baseline (w8a8 and FP8
    on TensorRT, against one FP16 engine)."""
    found = {a.name: a for a in artifacts(cfg, out)}
    chosen = targets.configured(cfg)
    for i, target in enumerate(chosen):
        pair = target.bench_pair(cfg, out, found)
        if pair is not None:
            later = (t.bench_pair(cfg, out, found) for t in chosen[i + 1 :])
            alike = [
                p.quantized for p in later if p is not None and (p.backend, p.baseline) == (pair.backend, pair.baseline)
            ]
            return dataclasses.replace(pair, others=tuple(alike))
    raise PipelineError(
        f"{cfg.path}: no target in [quantize] targets ({', '.join(cfg.quantize.targets)}) runs on this machine as "
        f"it deploys; add one that does (on a CPU: onnxruntime-cpu) and re-run quantize"
    )


def time_one(cfg: Config, artifact: Artifact, batch: int, threads: int | None, shape: Shape | None = None) -> BenchRow:
    """One artifact at one batch size (and ``shape``, with [[axes]]): a TensorRT engine with CUDA events
    over inferences enqueued back to back (``targets.tensorrt.timing``), an ONNX graph on ONNX Runtime
    with the host clock. A failure (CUDA out of memory at a large batch) is one line naming the artifact
    and the batch."""
    feed = sample_inputs(cfg, batch, shape)
    label = shape_label(shape or {}) or None
    at = f"batch {batch}" + (f" {label}" if label else "")
    b = cfg.bench
    if artifact.backend == ENGINE:
        from pipeline.runners import engine_to_run
        from pipeline.targets.tensorrt.profiles import profile_index_for
        from pipeline.targets.tensorrt.timing import time_engine

        try:
            timed = time_engine(
                engine_to_run(artifact),
                profile_index_for(cfg, batch),
                feed,
                b.warmup,
                b.iterations,
                b.min_seconds,
                cuda_graph=b.cuda_graph,
            )
        except PipelineError as exc:
            raise PipelineError(f"bench {artifact.label} at {at}: {exc}") from None
        latency = latency_stats(timed.latencies_ms)
        return BenchRow(artifact.label, artifact.name, batch, latency, timed.items_per_s, label)
    sess = ortsession.session_for(artifact.path, artifact.cpu, threads)
    inputs = ortsession.feed_for(sess, feed)
    try:
        latency = measure(lambda: sess.run(None, inputs), b.warmup, b.iterations, b.min_seconds)
    except (Fail, RuntimeException) as exc:  # e.g. the CUDA EP out of memory
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PipelineError(f"bench {artifact.label} at {at}: {artifact.path}: {first}") from None
    return BenchRow(artifact.label, artifact.name, batch, latency, shape=label)


def bench(cfg: Config, out: Layout, plan: BenchPlan, repeat: int = 1) -> list[list[BenchRow]]:
    """``repeat`` full runs; each run times every (artifact, batch, shape) after warm-up."""
    runs = []
    shapes = cfg.bench.shapes if cfg.axes else (None,)
    jobs = [(a, b, s) for s in shapes for b in plan.batches for a in plan.timed]
    for r in range(repeat):
        label = f"bench {cfg.name}" + (f" (run {r + 1}/{repeat})" if repeat > 1 else "")
        runs.append([time_one(cfg, a, b, plan.threads, s) for a, b, s in progress(jobs, label)])
    return runs


def consistency(runs: list[list[BenchRow]]) -> list[str]:
    """For repeated runs: does each median fall inside the other run's interquartile spread?"""
    if len(runs) < 2:
        return []
    lines = []
    for a, b in zip(runs[0], runs[1], strict=True):
        spread = max(a.latency.iqr_ms, b.latency.iqr_ms)
        delta = abs(a.latency.median_ms - b.latency.median_ms)
        verdict = "within" if delta <= spread else "OUTSIDE"
        lines.append(
            f"{a.artifact} batch {a.batch}{' ' + a.shape if a.shape else ''}: "
            f"medians {a.latency.median_ms:.3f} / {b.latency.median_ms:.3f} ms, "
            f"difference {delta:.3f} ms {verdict} the spread (IQR {spread:.3f} ms)"
        )
    return lines


def to_csv(rows: list[BenchRow]) -> str:
    buf = io.StringIO()
    fields = list(encode(rows[0])) if rows else []
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in encode(row).items()})
    return buf.getvalue()


def speedups(rows: list[BenchRow], plan: BenchPlan, shape: str | None = None) -> dict[int, float]:
    """The quantized artifact's speedup by batch, at ``shape`` (None: a model without [[axes]])."""
    by = {(r.precision, r.batch): r.latency.median_ms for r in rows if r.shape == shape}
    return {
        b: by[(plan.baseline.name, b)] / by[(plan.quantized.name, b)]
        for b in plan.batches
        if (plan.baseline.name, b) in by and (plan.quantized.name, b) in by
    }
