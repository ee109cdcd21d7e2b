"""``trtpipe report``: the latency chart in our users' style, the accuracy table and a verdict.

Reads only saved results (``pipeline.results``: bench, compare, build and quantize), so ``make report``
rewrites the report without running any model.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config
from pipeline.console import table
from pipeline.evaluate.accuracy import accuracy_table
from pipeline.evaluate.colours import BASELINE_COLOUR, QUANTIZED_COLOURS, W8A8_COLOUR
from pipeline.evaluate.verdict import MIN_SPEEDUP, decide, deploy_precision
from pipeline.evaluate.verdict import ms as _ms
from pipeline.evaluate.verdict import name as _name
from pipeline.fileio import atomic_path, write_text
from pipeline.layout import Layout
from pipeline.results import (
    BenchResult,
    BuildResult,
    CompareResult,
    QuantizeResult,
    RegionSpeed,
    Smoothing,
    SpeedSearch,
    load,
    load_if_saved,
)

WHISKERS = {"elinewidth": 0.8, "capsize": 2, "ecolor": "#444444"}


def _colour(artifact: str) -> str:
    return QUANTIZED_COLOURS.get(_name(artifact), W8A8_COLOUR)


def _cell(shape: str | None, batch: int) -> str:
    """A chart's or table's label of one (shape, batch) bench timed."""
    return str(batch) if shape is None else f"{batch}\n{shape}"


def _medians(bench: BenchResult) -> dict[str, dict[tuple[str | None, int], float]]:
    """Median ms of the first run, by artifact name and (shape, batch)."""
    found: dict[str, dict[tuple[str | None, int], float]] = {}
    for row in bench.runs[0]:
        found.setdefault(row.precision, {})[(row.shape, row.batch)] = row.latency.median_ms
    return found


def _whiskers(bench: BenchResult, artifact: str) -> list[list[float]]:
    """The spread of an artifact's timings around each median, as matplotlib's ``yerr``: down to the
    fastest run, up to the 90th percentile."""
    by = {(r.shape, r.batch): r.latency for r in bench.runs[0] if r.precision == artifact}
    cells = [by[c] for c in bench.cells()]
    return [[t.median_ms - t.min_ms for t in cells], [t.p90_ms - t.median_ms for t in cells]]


def latency_chart(bench: BenchResult, path: Path, model: str, min_speedup: float = MIN_SPEEDUP) -> None:
    """Grouped bars per batch size (and shape, with [[axes]]): baseline light grey, w8a8 dark red, FP8
    dark blue, value labels, each 8-bit artifact's speedup above it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = _medians(bench)
    batches = bench.cells()
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
            yerr=_whiskers(bench, base),
            error_kw=WHISKERS,
            color=BASELINE_COLOUR,
            edgecolor="#9e9e9e",
            label=_name(base),
        ),
        *(
            ax.bar(
                x + offset(i),
                [m[q][b] for b in batches],
                width,
                yerr=_whiskers(bench, q),
                error_kw=WHISKERS,
                color=_colour(q),
                label=_name(q),
            )
            for i, q in enumerate(quantized, 1)
        ),
    ]
    for group in bars:
        ax.bar_label(group, labels=[_ms(v) for v in group.datavalues], padding=2, fontsize=8)
    top = max(r.latency.p90_ms for r in bench.runs[0])
    for i, b in enumerate(batches):
        for j, q in enumerate(quantized, 1):
            speedup = m[base][b] / m[q][b]
            ax.text(
                x[i] if len(quantized) == 1 else x[i] + offset(j),
                top * 1.13,
                f"{speedup:.2f}x",
                ha="center",
                fontsize=9 if len(quantized) == 1 else 8,
                color=_colour(q) if speedup >= min_speedup else "#555555",
                fontweight="bold",
            )
    ax.set_ylim(0, top * 1.25)
    ax.set_xticks(x, [_cell(*b) for b in batches])
    ax.set_xlabel("batch size" if bench.shapes is None else "batch size, shape")
    ax.set_ylabel("latency (ms): median, whiskers min to p90")
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


def _speedup_cell(r: RegionSpeed) -> str:
    return "not timed" if r.speedup is None else f"{r.speedup:.2f}x ({r.speedup_q25:.2f}-{r.speedup_q75:.2f})"


def _speed_search_lines(found: SpeedSearch | None, min_speedup: float) -> list[str]:
    """The CPU graph's per-region speed search: each region's decision with its measured speedup, and
    the graph quantized everywhere against their choice where it was timed."""
    if found is None:
        return []
    verdict = "recommended" if found.speedup >= min_speedup else f"NOT recommended (below {min_speedup:.2f}x)"
    rows = [
        [
            f"`{r.region}`",
            len(r.layers),
            _speedup_cell(r),
            "float" if r.kept is False else "Q/DQ kept" if r.kept else "Q/DQ kept (not timed)",
        ]
        for r in found.regions
    ]
    whole = found.whole
    if whole is not None:  # quantized everywhere against the regions' choice, timed at the end
        decision = "Q/DQ everywhere: chosen" if whole.kept else "the regions' choice stays"
        rows.append([f"{whole.region}", len(whole.layers), _speedup_cell(whole), decision])
    return [
        "",
        "### The CPU graph's speed search",
        "",
        f"{len(found.kept)} of {len(found.regions)} regions keep their Q/DQ, timed at batch {found.batch} in "
        f"{found.seconds:.1f} s (`[quantize] speed_search_seconds` = {found.budget_seconds:g}); the chosen graph "
        f"ran {found.speedup:.2f}x FP32 ({found.speedup_q25:.2f}-{found.speedup_q75:.2f} over rounds): {verdict}.",
        "",
        table(["region", "weighted layers", "INT8 vs float (quartiles)", "decision"], rows),
    ]


def write_report(cfg: Config, out: Layout) -> list[Path]:
    """The report, then the charts it shows: every file written."""
    model = cfg.name
    bench = load(BenchResult, out, cfg.path)
    compare = load_if_saved(CompareResult, out, cfg.path)  # the report says to run compare
    build = load(BuildResult, out, cfg.path)
    quant = load_if_saved(QuantizeResult, out, cfg.path)
    latency_chart(bench, out.chart("latency"), model, cfg.verdict.min_speedup)
    verdict = decide(bench, compare, build, cfg.verdict.min_speedup)

    m = _medians(bench)
    base, quantized = bench.baseline, bench.all_quantized
    rate = {(r.precision, (r.shape, r.batch)): f"{r.throughput:.0f}" for r in bench.runs[0]}
    shaped = bench.shapes is not None
    lat_rows = [
        [
            c[1],
            *([c[0]] if shaped else []),
            _ms(m[base][c]),
            rate[(base, c)],
            *(v for q in quantized for v in (_ms(m[q][c]), rate[(q, c)], f"{m[base][c] / m[q][c]:.2f}x")),
        ]
        for c in bench.cells()
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
        "(p90, p99, IQR) are in `results/bench.json` and `results/bench.csv`.",
        "",
        table(
            [
                "batch",
                *(["shape"] if shaped else []),
                f"{_name(base)} ms",
                f"{_name(base)} items/s",
                *(h for n in names for h in (f"{n} ms", f"{n} items/s", f"{n} speedup")),
            ],
            lat_rows,
        ),
        "",
        "## Verdict",
        "",
        f"An 8-bit artifact is worth deploying where it is within its accuracy gate and at least "
        f"{verdict.min_speedup:.2f}x as fast as {_name(base)} (`[verdict] min_speedup`); the largest batch "
        + (f"at {bench.shape} (the last of `[bench] shapes`) " if bench.shape else "")
        + "decides for the model: "
        f"**{_name(verdict.deploy)}**. `trtpipe deploy` deploys {deploy_precision(verdict)} unless `--precision` "
        f"says otherwise.",
        "",
        *[f"- {line}" for line in verdict.lines()],
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
            [
                p,
                s.coverage_text() if s.quantized_layers else "-",
                s.int8_compute_layers,
                s.compute_layers,
                s.reformat_layers,
                s.unfused_qdq_layers,
                s.warning or "",
            ]
            for p, s in build.engines.layers.items()
        ]
        parts.append(f"Engines in `{build.engines.dir}` (manifest: `{build.engines.manifest}`).")
        header = ["engine", "quantized layers", "8-bit Conv/GEMM/MatMul", "of", "reformat layers", "unfused Q/DQ"]
        parts += ["", table([*header, "warning"], rows)]
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
        parts += _speed_search_lines(quant.speed_search, cfg.verdict.min_speedup)
    section, charts = _sensitivity_section(out, model, quant)
    write_text(out.report, "\n".join(parts + section) + "\n")
    return [out.report, out.chart("latency"), *charts]
