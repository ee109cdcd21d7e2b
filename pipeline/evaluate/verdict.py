"""Which precision to deploy, and why: the one rule the report, gpu-check and deploy share.

The 8-bit artifact is worth its accuracy cost only within its accuracy gate and at least
``[verdict] min_speedup`` times as fast as its float baseline (``MIN_SPEEDUP``, 1.05, unless the
config sets another). The report states the rule at every batch size benched; the largest batch
decides for the model as a whole, as it is what a busy server with dynamic batching runs: gpu-check's
speed check fails below it, and deploy's default precision follows it.

Where the 8-bit artifact is too slow, the causes found come with the verdict, likeliest first: from
the TensorRT engine's layers (INT8 coverage of the quantized layers, Q/DQ layers left unfused,
reformat layers), else from the FP32 graph's time per op type where bench profiled it on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import targets
from pipeline.config import VerdictSection
from pipeline.evaluate.profile import INT8_OPS
from pipeline.results import BenchResult, BuildResult, CompareResult

MIN_SPEEDUP = VerdictSection.min_speedup  # 1.05: below it, w8a8 is not worth its accuracy cost
NO_CAUSE = "no layer or op profile saved to explain it"


def name(artifact: str) -> str:
    """How people see an artifact: a target's 8-bit graph by its precision (w8a8, fp8), the float
    ones FP32 and FP16."""
    return {t.artifact: t.precision for t in targets.everything()}.get(artifact, artifact.upper())


def ms(value: float) -> str:
    return (
        f"{value:.0f}"
        if value >= 100
        else f"{value:.1f}"
        if value >= 10
        else f"{value:.2f}"
        if value >= 1
        else f"{value:.3f}"
    )


@dataclass(frozen=True)
class BatchVerdict:
    batch: int
    quantized: str  # the 8-bit artifact judged at this batch: the fastest within its gate
    speedup: float  # baseline latency over that 8-bit artifact's
    deploy: str  # the artifact to deploy at this batch: that 8-bit one or its baseline
    line: str  # the verdict for people, with the evidence


@dataclass(frozen=True)
class Verdict:
    baseline: str
    min_speedup: float
    gate_ok: bool  # an 8-bit artifact passed its accuracy gate (or compare has not run)
    batches: tuple[BatchVerdict, ...]  # in bench's order
    causes: tuple[str, ...]  # why the judged 8-bit artifact may be no faster, likeliest first

    @property
    def quantized(self) -> str:
        """The 8-bit artifact judged at the largest batch."""
        return self.overall.quantized

    @property
    def overall(self) -> BatchVerdict:
        """The verdict at the largest batch benched: the model's."""
        return max(self.batches, key=lambda v: v.batch)

    @property
    def fast_enough(self) -> bool:
        return self.overall.speedup >= self.min_speedup

    @property
    def deploy(self) -> str:
        return self.overall.deploy

    def lines(self) -> list[str]:
        return [v.line for v in self.batches]

    def speed(self) -> str:
        """The speed check in one line: the measured ratio against the threshold, and the causes found."""
        v = self.overall
        said = (
            f"{name(v.quantized)} is {v.speedup:.2f}x {name(self.baseline)} at batch {v.batch} "
            f"({'at least' if self.fast_enough else 'below'} {self.min_speedup:.2f}x, [verdict] min_speedup)"
        )
        return said if self.fast_enough else f"{said}; likeliest causes: {'; '.join(self.causes)}"


def decide(
    bench: BenchResult, compare: CompareResult | None, build: BuildResult, min_speedup: float = MIN_SPEEDUP
) -> Verdict:
    """The verdict at each batch size bench timed, and the model's at the largest: the fastest 8-bit
    artifact within its accuracy gate where it gains ``min_speedup``, else the baseline and why."""
    m = bench.medians()
    base, timed = bench.baseline, bench.all_quantized
    failed = {
        q
        for q in timed
        if compare is not None and any(r.failures for r in compare.rows if r.artifact.startswith(q + " "))
    }
    passing = [q for q in timed if q not in failed]
    largest = max(bench.batches)
    judged = max(passing, key=lambda q: m[base][largest] / m[q][largest], default=bench.quantized)
    causes = slow_causes(bench, build, judged)
    found = []
    at = f" at {bench.shape}" if bench.shape else ""  # with [[axes]]: the shape these medians are at
    for b in bench.batches:
        speedup = {q: m[base][b] / m[q][b] for q in timed}
        best = max(passing, key=speedup.__getitem__, default=None)
        rest = "".join(f"; {name(q)} {speedup[q]:.2f}x" for q in passing if q != best)
        rest += "".join(f"; {name(q)} fails its accuracy gate" for q in timed if q in failed)
        if best is None:
            who = " and ".join(name(q) for q in timed)
            fail = "fails its accuracy gate" if len(timed) == 1 else "fail their accuracy gates"
            found.append(
                BatchVerdict(
                    b,
                    bench.quantized,
                    speedup[bench.quantized],
                    base,
                    f"batch {b}{at}: deploy {name(base)}: {who} {fail} (see the table)",
                )
            )
        elif speedup[best] >= min_speedup:
            line = (
                f"batch {b}{at}: deploy {name(best)}: {speedup[best]:.2f}x faster ({ms(m[best][b])} vs "
                f"{ms(m[base][b])} ms) and within its accuracy gate{rest}"
            )
            found.append(BatchVerdict(b, best, speedup[best], best, line))
        else:
            line = (
                f"batch {b}{at}: deploy {name(base)}: {name(best)} is no faster ({speedup[best]:.2f}x, below "
                f"{min_speedup:.2f}x); {'; '.join(slow_causes(bench, build, best))}{rest}"
            )
            found.append(BatchVerdict(b, best, speedup[best], base, line))
    return Verdict(base, min_speedup, bool(passing), tuple(found), causes)


def slow_causes(bench: BenchResult, build: BuildResult, quantized: str) -> tuple[str, ...]:
    """Why the 8-bit artifact ``quantized`` may be no faster, likeliest first: its engine's layers where
    it is an engine, else the FP32 graph's time per op type where bench profiled it."""
    if build.engines is not None and quantized in build.engines.layers:
        from pipeline.targets.tensorrt.layers import COVERAGE_WARNING as MIN_COVERAGE

        layers = build.engines.layers[quantized]
        causes = []
        coverage = layers.quantized_coverage
        if coverage is None:
            causes.append(layers.coverage_text())
        elif layers.quantized_layers and coverage < MIN_COVERAGE:
            causes.append(
                f"only {layers.int8_quantized_layers} of {layers.quantized_layers} quantized layers run INT8 "
                f"({coverage:.0%})"
            )
        if layers.unfused_qdq_layers:
            causes.append(f"{layers.unfused_qdq_layers} unfused Q/DQ layers in the engine")
        if layers.reformat_layers:
            causes.append(f"{layers.reformat_layers} reformat layers in the engine")
        causes.append(
            f"{layers.int8_compute_layers} of {layers.compute_layers} Conv/GEMM/MatMul layers in INT8"
            + ("" if len(causes) else ", no reformat or unfused Q/DQ layer: INT8 kernels gain little at this size")
        )
        return tuple(causes)
    share = bench.fp32_op_time_share
    if share:
        int8 = sum(v for k, v in share.items() if k in INT8_OPS)
        rest = sorted(((k, v) for k, v in share.items() if k not in INT8_OPS), key=lambda kv: -kv[1])
        others = ", ".join(f"{k} {v:.0%}" for k, v in rest[:3])
        return (
            f"Conv/MatMul/Gemm are only {int8:.0%} of FP32 time at batch {bench.profiled_batch} "
            f"(the largest of the rest: {others}); INT8 speeds up only that share",
        )
    return (NO_CAUSE,)


def deploy_precision(verdict: Verdict) -> str:
    """The precision ``trtpipe deploy`` chooses by default: the 8-bit one (``QUANTIZED``, ``FP8``) where
    the verdict deploys it, else its baseline (``FP16``, or ``FP32`` on a CPU), never a slower artifact."""
    overall = verdict.overall
    return name(overall.quantized) if overall.deploy == overall.quantized else overall.deploy
