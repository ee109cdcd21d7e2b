"""``trtpipe report``: the latency chart in our users' style, the accuracy table and a verdict.

Reads only saved results (``pipeline.results``: bench, compare, build and quantize), so ``make report``
rewrites the report without running any model.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import targets
from pipeline.config import Config
from pipeline.console import table
from pipeline.evaluate.accuracy import accuracy_table
from pipeline.evaluate.colours import BASELINE_COLOUR, QUANTIZED_COLOURS, W8A8_COLOUR
from pipeline.evaluate.profile import INT8_OPS
from pipeline.fileio import atomic_path, write_text
from pipeline.layout import Layout
from pipeline.results import BenchResult, BuildResult, CompareResult, QuantizeResult, Smoothing, load, load_if_saved
from pipeline.targets.base import FP8

MIN_GAIN = 1.05  # below this, an 8-bit artifact is not worth its accuracy cost


def _name(artifact: str) -> str:
    """How the report names an artifact: a target's 8-bit graph by its precision (w8a8, fp8), the float
    ones FP32 and FP16."""
    return {t.artifact: t.precision for t in targets.everything()}.get(artifact, artifact.upper())


def _colour(artifact: str) -> str:
    return QUANTIZED_COLOURS.get(_name(artifact), W8A8_COLOUR)


def latency_chart(bench: BenchResult, path: Path, model: str) -> None:
    """Grouped bars per batch size: baseline light grey, w8a8 dark red, FP8 dark blue, value labels,
    each 8-bit artifact's speedup above it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = bench.medians()
    batches = bench.batches
    base, quantized = bench.baseline, bench.all_quantized
    x = np.arange(len(batches))
    width = 0.76 / (1 + len(quantized))
    fig, ax = plt.subplots(figsize=(max(6.0, (1.0 + 0.6 * len(quantized)) * len(batches) + 2), 4.2), dpi=120)
    offset = lambda i: (i - len(quantized) / 2) * width  # noqa: E731  bar i of a group, the baseline first
    bars = [
        ax.bar(
            x + offset(0),
            [m[base][b] for b in batches],
            width,
            color=BASELINE_COLOUR,
            edgecolor="#9e9e9e",
            label=_name(base),
        ),
        *(
            ax.bar(x + offset(i), [m[q][b] for b in batches], width, color=_colour(q), label=_name(q))
            for i, q in enumerate(quantized, 1)
        ),
    ]
    for group in bars:
        ax.bar_label(group, labels=[_ms(v) for v in group.datavalues], padding=2, fontsize=8)
    top = max(max(m[a].values()) for a in (base, *quantized))
    for i, b in enumerate(batches):
        for j, q in enumerate(quantized, 1):
            speedup = m[base][b] / m[q][b]
            ax.text(
                x[i] if len(quantized) == 1 else x[i] + offset(j),
                top * 1.13,
                f"{speedup:.2f}x",
                ha="center",
                fontsize=9 if len(quantized) == 1 else 8,
                color=_colour(q) if speedup >= MIN_GAIN else "#555555",
                fontweight="bold",
            )
    ax.set_ylim(0, top * 1.25)
    ax.set_xticks(x, [str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel("latency (ms, median)")
    ax.set_title(
        f"{model}: {_name(base)} vs {' vs '.join(map(_name, quantized))}, {bench.runtime}"
        + (f", {bench.threads} thread(s)" if bench.threads else ""),
        fontsize=10,
    )
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _ms(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def verdict(bench: BenchResult, compare: CompareResult | None, build: BuildResult) -> list[str]:
    """Which precision to deploy at each batch size, and the evidence: the fastest 8-bit artifact
    within its accuracy gate where it gains MIN_GAIN, else the baseline and why."""
    m = bench.medians()
    base = bench.baseline
    failed = {
        q
        for q in bench.all_quantized
        if compare is not None and any(r.failures for r in compare.rows if r.artifact.startswith(q + " "))
    }
    passing = [q for q in bench.all_quantized if q not in failed]
    lines = []
    for b in bench.batches:
        speedup = {q: m[base][b] / m[q][b] for q in bench.all_quantized}
        best = max(passing, key=speedup.__getitem__, default=None)
        rest = "".join(f"; {_name(q)} {speedup[q]:.2f}x" for q in passing if q != best)
        rest += "".join(f"; {_name(q)} fails its accuracy gate" for q in bench.all_quantized if q in failed)
        if best is None:
            who = " and ".join(_name(q) for q in bench.all_quantized)
            fail = "fails its accuracy gate" if len(failed) == 1 else "fail their accuracy gates"
            lines.append(f"batch {b}: deploy {_name(base)}: {who} {fail} (see the table)")
        elif speedup[best] >= MIN_GAIN:
            lines.append(
                f"batch {b}: deploy {_name(best)}: {speedup[best]:.2f}x faster ({_ms(m[best][b])} vs "
                f"{_ms(m[base][b])} ms) and within its accuracy gate{rest}"
            )
        else:
            lines.append(
                f"batch {b}: deploy {_name(base)}: {_name(best)} is no faster ({speedup[best]:.2f}x); "
                f"{_slow_evidence(bench, build, best)}{rest}"
            )
    return lines


def _slow_evidence(bench: BenchResult, build: BuildResult, quantized: str) -> str:
    """Why the 8-bit artifact is no faster: its engine's layers where it is an engine, else the FP32
    graph's time per op type where bench profiled it."""
    if build.engines is not None and quantized in build.engines.layers:
        layers = build.engines.layers[quantized]
        return (
            f"{layers.reformat_layers} reformat layers and {layers.unfused_qdq_layers} "
            f"unfused Q/DQ layers in the engine, {layers.int8_compute_layers} of "
            f"{layers.compute_layers} Conv/GEMM/MatMul layers in {'FP8' if _name(quantized) == FP8 else 'INT8'}"
        )
    share = bench.fp32_op_time_share
    if share:
        int8 = sum(v for k, v in share.items() if k in INT8_OPS)
        rest = sorted(((k, v) for k, v in share.items() if k not in INT8_OPS), key=lambda kv: -kv[1])
        others = ", ".join(f"{k} {v:.0%}" for k, v in rest[:3])
        return (
            f"Conv/MatMul/Gemm are only {int8:.0%} of FP32 time at batch {bench.profiled_batch} "
            f"(the largest of the rest: {others}); INT8 speeds up only that share"
        )
    return "no layer or op profile saved to explain it"


def _smoothing_lines(smoothing: Smoothing | None) -> list[str]:
    """What SmoothQuant did, from quantize's result: per LayerNorm output, alpha and the widest
    channel's max over the median channel's, before and after."""
    if smoothing is None:
        return []
    lines = ["", f"SmoothQuant (`[quantize] smoothquant = {smoothing.alpha}`):", ""]
    lines += [
        f"- `{d.tensor}` ({d.norm} -> {', '.join(d.readers)}): "
        + (
            "left alone (auto)"
            if d.alpha is None
            else f"alpha {d.alpha:g}, widest channel {d.outlier_ratio_before:.1f}x the median -> "
            f"{d.outlier_ratio_after:.1f}x"
        )
        for d in smoothing.layers
    ]
    lines += [f"- not smoothed: {norm}: {reason}" for norm, reason in smoothing.skipped]
    return lines


def _sensitivity_section(out: Layout, model: str, quant: QuantizeResult | None) -> tuple[list[str], list[Path]]:
    """The budget's choices (quantize.json) and the per-layer sensitivity table and chart, when
    saved; and the chart drawn, if any."""
    from pipeline.evaluate import sensitivity

    parts = []
    for graph, fit in (quant.budget if quant is not None else {}).items():
        parts += [
            "",
            f"### {graph} under [accuracy.budget]",
            "",
            f"INT8 layers {fit.quantized} -> {fit.int8_after} of {fit.weighted}; "
            f"centered cosine {fit.before.centered_cosine:.5f} -> {fit.after.centered_cosine:.5f}, "
            f"relative error {fit.before.rel_error:.4g} -> {fit.after.rel_error:.4g}.",
        ]
        parts += [f"- kept FP16: {k.op_type} `{k.node}`: {k.reason()}" for k in fit.kept]
    tables = sensitivity.load(out.sensitivity)
    if not tables:
        return parts, []
    sensitivity.chart(tables, out.chart("sensitivity"), model)
    parts += ["", "## Per-layer sensitivity", "", f"![sensitivity]({out.chart('sensitivity').name})"]
    for graph, t in tables.items():
        parts += [
            "",
            f"{graph}: {len(t.layers)} layers on {t.rows} held-out rows ({t.seconds:.1f} s); all INT8: centered cosine "
            f"{t.quantized.centered_cosine:.5f}, none: {t.unquantized.centered_cosine:.5f}. Most sensitive first "
            f"(all layers in `{out.sensitivity.name}`):",
            "",
            table(*sensitivity.table_rows(t)),
        ]
    return parts, [out.chart("sensitivity")]


def write_report(cfg: Config, out: Layout) -> list[Path]:
    """The report, then the charts it shows: every file written."""
    model = cfg.name
    bench = load(BenchResult, out, cfg.path)
    compare = load_if_saved(CompareResult, out, cfg.path)  # the report says to run compare
    build = load(BuildResult, out, cfg.path)
    quant = load_if_saved(QuantizeResult, out, cfg.path)
    latency_chart(bench, out.chart("latency"), model)

    m = bench.medians()
    base, quantized = bench.baseline, bench.all_quantized
    lat_rows = [
        [b, _ms(m[base][b]), *(c for q in quantized for c in (_ms(m[q][b]), f"{m[base][b] / m[q][b]:.2f}x"))]
        for b in bench.batches
    ]
    names = [_name(q) for q in quantized]
    parts = [
        f"# {model}: {_name(base)} vs {' vs '.join(names)} on {bench.runtime}",
        "",
        f"![latency]({out.chart('latency').name})",
        "",
        "## Latency",
        "",
        f"What a timing includes: {bench.includes}. Median of at least {bench.min_iterations} runs and "
        f"{bench.min_seconds} s per cell after {bench.warmup} warm-up runs; the full percentiles "
        "(p90, p99, IQR) and throughput are in `results/bench.json` and `results/bench.csv`.",
        "",
        table(["batch", f"{_name(base)} ms", *(h for n in names for h in (f"{n} ms", f"{n} speedup"))], lat_rows),
        "",
        "## Verdict",
        "",
        *[f"- {line}" for line in verdict(bench, compare, build)],
        "",
        "## Accuracy against FP32 (held-out data)",
        "",
    ]
    if compare is None:
        parts.append("No compare results yet: run `trtpipe compare`.")
    else:
        parts.append(table(*accuracy_table(compare.rows)))
    parts += ["", "## Engines and 8-bit layer coverage", ""]
    if build.engines is not None:
        rows = [
            [p, s.int8_compute_layers, s.compute_layers, s.reformat_layers, s.unfused_qdq_layers, s.warning or ""]
            for p, s in build.engines.layers.items()
        ]
        parts.append(f"Engines in `{build.engines.dir}` (manifest: `{build.engines.manifest}`).")
        parts += [
            "",
            table(["engine", "8-bit Conv/GEMM/MatMul", "of", "reformat layers", "unfused Q/DQ", "warning"], rows),
        ]
    else:
        parts.append(f"No TensorRT engines on this machine: {build.reason}. The figures above are ONNX Runtime's.")
    if quant is not None:
        parts += [
            "",
            "## Quantization",
            "",
            f"Calibration method `{quant.method}`; {quant.int8_layers} layers quantized for TensorRT.",
        ]
        parts += [f"- kept FP16: {s.op_type} `{s.node}`: {s.reason}" for s in quant.skipped]
        parts += _smoothing_lines(quant.smoothquant)
    section, charts = _sensitivity_section(out, model, quant)
    write_text(out.report, "\n".join(parts + section) + "\n")
    return [out.report, out.chart("latency"), *charts]
