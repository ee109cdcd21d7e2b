"""Quantization against its peers, side by side in one run.

    python -m benchmarks.quant_peers [--modelopt-python .modeloptvenv/bin/python]
        [--nncf-python .nncfvenv/bin/python] [--tools KEY,...] [--fp8-table] CONFIG...

For each model, on the same FP32 graph and the same calibration samples in the same batches
(``[calibration] samples`` and ``batch_size``), each quantizer in its own child process:

* trtpipe (the config's ``method``): calibration, then the TensorRT-target graph (``w8a8``, on the
  FP16 graph), the TensorRT FP8 graph (``fp8``, calibrated for the ``tensorrt-fp8`` target alone,
  so auto judges ranges by FP8's error) or the ONNX Runtime CPU graph (``w8a8-cpu``); one process each;
* NVIDIA ModelOpt's ONNX PTQ (``modelopt.onnx.quantization.quantize``, FP16 high precision: int8
  with calibration ``max`` and ``entropy``, and ``quantize_mode="fp8"`` at its defaults), run by
  ``benchmarks.modelopt_ptq`` in ModelOpt's own environment (its onnxruntime-gpu cannot live beside
  our onnxruntime);
* ONNX Runtime's ``quantize_static`` (QDQ, per-channel int8 weights): S8S8 MinMax, S8S8 Entropy,
  U8S8 MinMax;
* Intel NNCF's ``nncf.quantize`` at its defaults, run by ``benchmarks.nncf_ptq`` in NNCF's own
  environment; its QDQ graph is judged as an ONNX Runtime CPU graph.

Each child reports its own peak RSS (VmHWM, imports included: ``os.wait4`` would report at least
this process's RSS, see ``benchmarks.modelopt_ptq.own_peak_mb``); its calibration and
quantization seconds from its own clock, imports and data loading excluded. Then, per graph:
rule violations (``pipeline.targets.rules`` for the runtime the graph is for), Q/DQ coverage,
8-bit-weight share (int8, or FP8 in the FP8 graphs), file size, error against FP32 on the held-out data (sessions from
``pipeline.ortsession``: TensorRT-target Q/DQ graphs, ours and ModelOpt's, run as written, with no
graph optimizations; the CPU graphs fully optimized, as they deploy) and ONNX Runtime CPU latency
of the CPU graphs, timed round-robin. A model of the trained set (``benchmarks.trained.tasks``)
also gets its task metric on every graph and on FP32. One table per model, then who wins.

``--fp8-table`` runs our FP8 graph and ModelOpt's FP8 mode only (``modelopt-fp8``; where its default
entropy calibration fails, ``modelopt-fp8-max`` in its place) and prints one table across the
configs: each model's errors, our graph's rule violations and FP8 weight share, and whether ours
is done (at or below ModelOpt's error where ModelOpt made a graph, 0 violations, FP8 weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.calib_memory import peak_of
from benchmarks.modelopt_ptq import own_peak_mb
from benchmarks.trained.tasks import TASKS
from benchmarks.zoo.graphstats import graph_stats
from pipeline import ortsession, records
from pipeline.config import Config, load_config
from pipeline.console import table
from pipeline.data import calibration_batches, concat, rebatch, sample_inputs
from pipeline.evaluate.accuracy import evaluate
from pipeline.evaluate.timing import measure_interleaved
from pipeline.layout import Layout
from pipeline.stages import STAGES

REPO = Path(__file__).resolve().parent.parent
ROUNDS, PER_ROUND = 8, 5
LATENCY_BATCH = 64  # unless the config's [bench] cpu_batches says otherwise


@dataclass(frozen=True)
class Tool:
    label: str
    target: str  # the target whose quantization rules apply: "tensorrt", "tensorrt-fp8" or "onnxruntime-cpu"
    modelopt: bool = False
    nncf: bool = False  # run in NNCF's environment

    @property
    def calibrates_apart(self) -> bool:
        """Its calibration is timed apart from writing the graph (ModelOpt and NNCF do both in one call)."""
        return not (self.modelopt or self.nncf)


TOOLS = {
    "ours-w8a8": Tool("trtpipe w8a8", "tensorrt"),
    "modelopt-max": Tool("ModelOpt int8 max", "tensorrt", modelopt=True),
    "modelopt-entropy": Tool("ModelOpt int8 entropy", "tensorrt", modelopt=True),
    "ours-fp8": Tool("trtpipe fp8", "tensorrt-fp8"),
    "ours-fp8-conv": Tool("trtpipe fp8 + conv", "tensorrt-fp8"),  # [quantize] fp8_conv = true
    "modelopt-fp8": Tool("ModelOpt fp8", "tensorrt-fp8", modelopt=True),
    "modelopt-fp8-max": Tool("ModelOpt fp8 max", "tensorrt-fp8", modelopt=True),  # calibration_method="max"
    "ours-cpu": Tool("trtpipe w8a8-cpu", "onnxruntime-cpu"),
    "ort-u8s8-minmax": Tool("quantize_static U8S8 MinMax", "onnxruntime-cpu"),
    "ort-s8s8-minmax": Tool("quantize_static S8S8 MinMax", "onnxruntime-cpu"),
    "ort-s8s8-entropy": Tool("quantize_static S8S8 Entropy", "onnxruntime-cpu"),
    "nncf": Tool("NNCF int8 (defaults)", "onnxruntime-cpu", nncf=True),
}
CHILD_TOOLS = [k for k, t in TOOLS.items() if t.calibrates_apart]


def child(tool: str, config: str, work: Path) -> None:
    """One calibration and quantization in this process; writes work/result.json."""
    import onnx  # noqa: F401  imported before timing, for every tool
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static  # noqa: F401

    from pipeline import onnxutil, stages, targets
    from pipeline.calibration import smooth
    from pipeline.calibration.inputs import smoothed
    from pipeline.graphview import GraphView
    from pipeline.targets.base import QuantizationInputs
    from pipeline.targets.onnxruntime_cpu.quantize import OrtCpuQdqFromOnnx

    cfg = load_config(config)
    if tool.startswith("ours-fp8"):  # as configured for FP8 alone: auto judges each range by FP8's error
        fp8 = dataclasses.replace(cfg.quantize, targets=(TOOLS[tool].target,), fp8_conv=tool.endswith("-conv"))
        cfg = dataclasses.replace(cfg, quantize=fp8)
    graphs = Layout.of(cfg, work)
    next(iter(calibration_batches(cfg, samples=1)))  # load the data source before timing, for every tool
    baseline = own_peak_mb()
    start = time.perf_counter()
    if tool.startswith("ours"):
        ranges = stages.run("calibrate", cfg, root=work, force=True).ranges
        calib_s = time.perf_counter() - start
        # As the quantize stage does: with [quantize] smoothquant, the smoothed graphs (maxima cached).
        fp32, edits, _ = smoothed(cfg, graphs, onnxutil.load(graphs.graph("fp32")))
        view = GraphView(fp32)
        method = cfg.calibration.method
        if TOOLS[tool].target != "onnxruntime-cpu":  # a TensorRT target's graph, on the FP16 graph
            fp16 = smooth.apply(onnxutil.load(graphs.graph("fp16")), edits)
            target = targets.get(TOOLS[tool].target)
            inputs = QuantizationInputs(fp32, fp16, view, ranges, method, cfg.quantize)
            out, model = graphs.graph(target.artifact), target.quantize(inputs)
        else:
            out, model = graphs.graph("w8a8-cpu"), OrtCpuQdqFromOnnx(ranges, method, cfg.quantize)(fp32, view)
        onnxutil.save(model, out)
    else:
        calib_s, out = _quantize_static(tool, cfg, graphs.graph("fp32"), work, start)
    record = {"calib_s": calib_s, "total_s": time.perf_counter() - start, "baseline_rss_mb": baseline}
    record["peak_rss_mb"] = own_peak_mb()
    (work / "result.json").write_text(json.dumps({**record, "graph": str(out)}))


def _quantize_static(tool: str, cfg: Config, fp32: Path, work: Path, start: float) -> tuple[float, Path]:
    """ONNX Runtime's calibration step as quantize_static runs it, then quantize_static from its cache."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        create_calibrator,
        quantize_static,
    )
    from onnxruntime.quantization.calibrate import save_tensors_data

    from pipeline.targets.onnxruntime_cpu.quantize import OP_TYPES

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            # Same samples, regrouped into equal batches: ORT's histogram calibrators fail on
            # ragged batches (onnxruntime#18792), ours take any batch size.
            self.it = rebatch(calibration_batches(cfg), cfg, cfg.calibration.batch_size)

        def get_next(self):
            return next(self.it, None)

    method = CalibrationMethod.Entropy if tool.endswith("entropy") else CalibrationMethod.MinMax
    activations = QuantType.QUInt8 if "u8s8" in tool else QuantType.QInt8
    cache = work / "ort-cache.json"
    with tempfile.TemporaryDirectory() as tmp:
        calibrator = create_calibrator(
            fp32, list(OP_TYPES), augmented_model_path=f"{tmp}/aug.onnx", calibrate_method=method
        )
        calibrator.collect_data(Reader())
        save_tensors_data(calibrator.compute_data(), cache)
        del calibrator
    calib_s = time.perf_counter() - start
    out = work / f"{tool}.onnx"
    quantize_static(
        fp32,
        out,
        None,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(OP_TYPES),
        per_channel=True,
        activation_type=activations,
        weight_type=QuantType.QInt8,
        calibrate_method=method,
        calibration_cache_path=cache,
    )
    return calib_s, out


def modelopt_data(cfg: Config, folder: Path) -> tuple[Path, str]:
    """Every calibration sample per input in one .npz, and one calibration step's shapes
    (``name:BxD1x...``): ModelOpt splits the arrays into batches of that shape itself."""
    batches = list(rebatch(calibration_batches(cfg), cfg, cfg.calibration.batch_size))
    whole = concat(batches, cfg)
    path = folder / "calibration.npz"
    np.savez(path, **whole)
    step = ",".join(
        f"{name}:" + "x".join(str(d) for d in (cfg.calibration.batch_size, *value.shape[1:]))
        for name, value in whole.items()
    )
    return path, step


def run_tool(
    key: str, config: str, src: Layout, root: Path, data: tuple[Path, str], python: str, nncf_python: str = ""
) -> dict:
    """One tool in its own process, from a fresh copy of the graphs; its record with peak RSS."""
    cfg = load_config(config)
    work = root / key
    dst = Layout(cfg.name, work)
    dst.onnx_dir.mkdir(parents=True)
    for precision in ("fp32", "fp16"):
        shutil.copy(src.graph(precision), dst.graph(precision))
    # Calibrate checks the graphs against export's record. The copy lives in another folder, where the
    # model's source is no longer inside the project: the checked originals are recorded for it anew.
    records.verify_stage(cfg, src, STAGES["export"])
    records.finish(cfg, dst, STAGES["export"], [dst.graph("fp32"), dst.graph("fp16")])
    config_path = str(Path(config).resolve())
    if TOOLS[key].modelopt:
        out = work / f"{key}.onnx"
        method = key.removeprefix("modelopt-")
        cmd = [python, "-m", "benchmarks.modelopt_ptq", str(dst.graph("fp32")), str(data[0]), data[1], method]
        cmd += [str(out), str(work / "result.json")]
    elif TOOLS[key].nncf:
        out = work / f"{key}.onnx"
        cmd = [nncf_python, "-m", "benchmarks.nncf_ptq", str(dst.graph("fp32")), str(data[0]), data[1]]
        cmd += [str(out), str(work / "result.json")]
    else:
        cmd = [sys.executable, "-m", "benchmarks.quant_peers", "--child", key, "--work", str(work), config_path]
    try:
        _, wall_s = peak_of(cmd, REPO)  # its wait4 peak would carry this process's RSS: see own_peak_mb
    except SystemExit as failed:  # a peer failing on a model is a result: its row says why
        if key.startswith("ours"):
            raise
        reason = str(failed).strip().splitlines()[-1]
        print(f"  {cfg.name}: {key} failed: {reason}", file=sys.stderr, flush=True)
        return {"failed": reason}
    record = json.loads((work / "result.json").read_text())
    if not TOOLS[key].calibrates_apart:
        record = {**record, "calib_s": None, "graph": str(out)}  # one call: calibration is not timed apart
    return {**record, "wall_s": wall_s}


def quantized_layers(path: Path) -> tuple[int, int]:
    """Quantized layers with a constant weight (activation input and weight both dequantized, the
    weight from an initializer, directly or through a QuantizeLinear), and how many of them store
    it in 8 bits (int8, or FP8 E4M3); a fake-quantized float weight (QuantizeLinear ->
    DequantizeLinear) does not count."""
    import onnx
    from onnx import TensorProto

    graph = onnx.load(str(path)).graph
    dtype = {i.name: i.data_type for i in graph.initializer}
    made_by = {o: n for n in graph.node for o in n.output}
    dq = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    layers = [
        n
        for n in graph.node
        if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and n.input[0] in dq and n.input[1] in dq
    ]
    stored = [dq[n.input[1]].input[0] for n in layers]
    stored = [made_by[t].input[0] if t in made_by and made_by[t].op_type == "QuantizeLinear" else t for t in stored]
    weighted = [t for t in stored if t in dtype]
    return len(weighted), sum(1 for t in weighted if dtype[t] in (TensorProto.INT8, TensorProto.FLOAT8E4M3FN))


def rule_breakdown(path: Path, target: str) -> str:
    """Violations counted per rule, e.g. ``22 per-channel-on-constants``."""
    import onnx

    from pipeline import targets

    counts: dict[str, int] = {}
    for v in targets.get(target).violations(onnx.load(str(path))):
        counts[v.rule] = counts.get(v.rule, 0) + 1
    return ", ".join(f"{n} {rule}" for rule, n in sorted(counts.items())) or "0"


def _exported(cfg: Config, config: str) -> Layout:
    src = Layout.of(cfg)
    for path in (src.graph("fp32"), src.graph("fp16"), src.record("export")):
        if not path.is_file():
            raise SystemExit(f"{path} missing: run `trtpipe engines -c {config} --until export` first")
    return src


def bench_model(
    config: str, threads: int, python: str, nncf_python: str, tools: list[str]
) -> tuple[str, list[str], list[list[str]]]:
    cfg = load_config(config)
    src = _exported(cfg, config)
    batch = cfg.nearest_batch(max(cfg.bench.cpu_batches or (LATENCY_BATCH,)))
    with tempfile.TemporaryDirectory(prefix="trtpipe.peers.") as tmp:
        root = Path(tmp)
        data = modelopt_data(cfg, root)
        results = {}
        for key in tools:
            print(f"  {cfg.name}: {key} ...", file=sys.stderr, flush=True)
            results[key] = run_tool(key, config, src, root, data, python, nncf_python)
        scores = _scores(cfg, src, results, threads, batch)
    return (*_report(cfg, results, scores, batch, threads), fp8_rows(cfg.name, results, scores))


FP8_HEADERS = ["model", "quantizer", "rule violations", "Q/DQ coverage", "FP8 weights (layers)", "rel error"]
FP8_HEADERS += ["centered cos", "vs better ModelOpt fp8"]


def fp8_rows(name: str, results: dict, scores: dict) -> list[list[str]]:
    """The model's FP8 graphs as rows of the one table across models: each of ours also as a ratio to
    the error of the better ModelOpt FP8 graph that ran (below 1: ours is closer to FP32)."""
    rows = []
    ran = [scores[k]["accuracy"].stats.rel_error for k in MODELOPT_FP8 if k in results and "failed" not in results[k]]
    peer = min(ran, default=None)
    for key in ("ours-fp8", "ours-fp8-conv", *MODELOPT_FP8):
        if key not in results:
            continue
        if "failed" in results[key]:
            rows.append([name, TOOLS[key].label, "failed: " + results[key]["failed"][:60], *["-"] * 5])
            continue
        s, a = scores[key], scores[key]["accuracy"]
        layers, fp8_layers = s["layers"]
        ratio = "-" if peer is None or key in MODELOPT_FP8 else f"{a.stats.rel_error / peer:.2f}"
        rows.append(
            [
                name,
                TOOLS[key].label,
                s["violations"],
                f"{100 * s['coverage']:.0f}%",
                f"{100 * s['int8_share']:.0f}% ({fp8_layers}/{layers})",
                f"{a.stats.rel_error:.4f}",
                f"{a.stats.centered_cosine:.5f}",
                ratio,
            ]
        )
    return rows


FP8_TABLE_HEADERS = ["model", "trtpipe fp8 rel error", "ModelOpt fp8 rel error", "rule violations (ours)"]
FP8_TABLE_HEADERS += ["FP8 weights (ours: elements, layers)", "done"]


def fp8_table_row(config: str, threads: int, python: str) -> list[str]:
    """One model's row of the FP8 table: our FP8 graph against ModelOpt's FP8 mode, whose max
    calibration stands in where its default (entropy) fails."""
    cfg = load_config(config)
    src = _exported(cfg, config)
    with tempfile.TemporaryDirectory(prefix="trtpipe.fp8.") as tmp:
        root = Path(tmp)
        data = modelopt_data(cfg, root)
        results = {}
        for key in ("ours-fp8", "modelopt-fp8", "modelopt-fp8-max"):
            if key == "modelopt-fp8-max" and "failed" not in results["modelopt-fp8"]:
                break
            print(f"  {cfg.name}: {key} ...", file=sys.stderr, flush=True)
            results[key] = run_tool(key, config, src, root, data, python)
        scores = _scores(cfg, src, results, threads, None)
    return fp8_table_cells(cfg.name, results, scores)


def fp8_table_cells(name: str, results: dict, scores: dict) -> list[str]:
    """The row: ModelOpt's error (or why it has none), and "done" where ours has 0 rule violations,
    FP8 weights on every quantized layer and an error at or below ModelOpt's graph's (a ModelOpt
    that failed leaves no comparison, said so)."""
    ours, error = scores["ours-fp8"], scores["ours-fp8"]["accuracy"].stats.rel_error
    layers, fp8_layers = ours["layers"]
    ran = [k for k in MODELOPT_FP8 if k in results and "failed" not in results[k]]
    failed = "; ".join(
        f"{TOOLS[k].label} failed: {results[k]['failed'][:70]}" for k in results if "failed" in results[k]
    )
    clean = ours["violations"] == "0" and layers == fp8_layers
    if ran:
        peer = scores[ran[0]]["accuracy"].stats.rel_error
        theirs = f"{peer:.4f}" + ("" if ran[0] == "modelopt-fp8" else f" (max calibration; {failed})")
        done = "yes" if clean and error <= peer else "NO"
        done += f" ({error / peer:.2f}x)"
    else:
        theirs = failed
        done = ("yes" if clean else "NO") + " (no ModelOpt graph to compare)"
    weights = f"{100 * ours['int8_share']:.0f}%, {fp8_layers}/{layers}"
    return [name, f"{error:.4f}", theirs, ours["violations"], weights, done]


def _scores(cfg: Config, src: Layout, results: dict, threads: int, batch: int | None) -> dict:
    """Per tool: graph figures, accuracy against FP32, CPU latency (CPU graphs; none timed without
    ``batch``)."""
    scores: dict[str, dict] = {}
    results = {k: r for k, r in results.items() if "failed" not in r}
    for key, r in results.items():
        path = Path(r["graph"])
        stats = graph_stats(path, TOOLS[key].target)
        layers, int8_layers = quantized_layers(path)
        scores[key] = {
            "violations": rule_breakdown(path, TOOLS[key].target) if stats.violations else "0",
            "coverage": stats.coverage,
            "int8_share": stats.int8_weight_share,
            "layers": (layers, int8_layers),
            "mb": path.stat().st_size / 2**20,
        }
    ref = ortsession.session(src.graph("fp32"), threads=threads, cpu_only=True, arena=False)
    sessions = {
        k: ortsession.session(r["graph"], threads=threads, cpu_only=True, arena=False) for k, r in results.items()
    }
    task = TASKS.get(cfg.name)
    outputs: dict[str, list[list[np.ndarray]]] = {k: [] for k in ("fp32", *sessions)}

    def infer(key: str, sess):
        def run(feed):
            got = ortsession.run(sess, feed)
            if task is not None:  # kept for the task metric, which needs every held-out row
                outputs[key].append(got)
            return got

        return run

    rows = evaluate(
        cfg,
        infer("fp32", ref),
        {k: infer(k, s) for k, s in sessions.items()},
        {},
        cfg.nearest_batch(cfg.calibration.batch_size),
    )
    first = {r.artifact: r for r in rows if r.output == cfg.outputs[0].name}
    for key in results:
        scores[key]["accuracy"] = first[key]
    scores["fp32"] = {"top1": rows[0].reference_metric}
    if task is not None:
        joined = {k: [np.concatenate(parts) for parts in zip(*batches, strict=True)] for k, batches in outputs.items()}
        draws = np.random.default_rng(0).integers(0, len(joined["fp32"][0]), (TASK_DRAWS, len(joined["fp32"][0])))
        for key, got in joined.items():
            scores[key]["task"] = task.score(got, joined["fp32"])
            scores[key]["task_draws"] = task.resampled(got, joined["fp32"], draws)  # the same rows for every graph
    if batch is None:
        return scores
    feed = sample_inputs(cfg, batch)
    cpu = {"fp32": ref, **{k: s for k, s in sessions.items() if TOOLS[k].target == "onnxruntime-cpu"}}
    feeds = {k: ortsession.feed_for(s, feed) for k, s in cpu.items()}
    latency = measure_interleaved(
        {k: (lambda s=s, f=feeds[k]: s.run(None, f)) for k, s in cpu.items()},
        warmup=2,
        rounds=ROUNDS,
        per_round=PER_ROUND,
    )
    for key, lat in latency.items():
        scores.setdefault(key, {})["latency"] = lat
    return scores


def _report(cfg: Config, results: dict, scores: dict, batch: int, threads: int) -> tuple[str, list[str]]:
    fp32_ms = scores["fp32"]["latency"].median_ms
    top1 = scores["fp32"]["top1"]
    task = TASKS.get(cfg.name)
    rows = [["FP32 (reference)", *["-"] * 8, _pct(top1), *["-"] * 4]]
    rows[0] += [f"{fp32_ms:.2f}", "1.00x"] + ([_task(scores["fp32"], task)] if task else [])
    for key, tool in ((k, t) for k, t in TOOLS.items() if k in results):
        label = tool.label + ("" if not key.startswith("ours") else f" ({cfg.calibration.method})")
        target = {"tensorrt": "TensorRT", "tensorrt-fp8": "TensorRT FP8"}.get(tool.target, "ORT CPU")
        if "failed" in results[key]:
            rows.append([label, target, "failed: " + results[key]["failed"][:80], *["-"] * (13 + bool(task))])
            continue
        s, r, a = scores[key], results[key], scores[key]["accuracy"]
        layers, int8_layers = s["layers"]
        lat = s.get("latency")
        rows.append(
            [
                label,
                target,
                s["violations"],
                f"{100 * s['coverage']:.0f}%",
                f"{100 * s['int8_share']:.0f}% ({int8_layers}/{layers})",
                f"{s['mb']:.2f}",
                f"{a.stats.rel_error:.4f}",
                f"{a.stats.cosine:.5f}",
                f"{a.stats.centered_cosine:.5f}",
                _pct(a.metric),
                "-" if a.agreement is None else f"{100 * a.agreement:.1f}%",
                "-" if r["calib_s"] is None else f"{r['calib_s']:.2f}",
                f"{r['total_s']:.2f}",
                f"{r['peak_rss_mb']:.0f}",
            ]
        )
        rows[-1] += ["-", "-"] if lat is None else [f"{lat.median_ms:.2f}", f"{fp32_ms / lat.median_ms:.2f}x"]
        rows[-1] += [_task(s, task)] if task else []
    headers = ["quantizer", "for", "rule violations", "Q/DQ coverage", "8-bit weights (layers)", "file MB"]
    headers += ["rel error", "cosine", "centered cos", "top-1 %", "top-1 agree", "calibrate s"]
    headers += ["calib+quant s", "peak RSS MB", f"ORT CPU ms (b{batch}, {threads} thr)", "vs FP32"]
    headers += [task.metric] if task else []
    lines = verdicts(cfg.name, results, scores)
    lines.append(f"{cfg.name}: issue 22: " + "; ".join(done_when(figures(results, scores), task)))
    return f"{cfg.name}\n" + table(headers, rows), lines


def _task(score: dict, task) -> str:
    return f"{score['task']:.{task.digits}f}" if "task" in score else "-"


@dataclass(frozen=True)
class Figures:
    """One graph's figures the issue's done-when lines compare."""

    rel_error: float
    total_s: float  # calibration and quantization
    cpu_ms: float | None = None  # ONNX Runtime CPU latency (the CPU graphs)
    task: float | None = None
    task_draws: np.ndarray | None = None  # the task metric over held-out rows drawn with replacement


TASK_DRAWS = 400  # resamplings of the held-out rows behind a task metric's noise
NOISE_SE = 2.0  # a task metric this many standard errors of the paired difference worse is worse


def figures(results: dict, scores: dict) -> dict[str, Figures]:
    """The graphs that were made (a failed peer, or one ``--tools`` left out, is absent)."""
    out = {}
    for key in results:
        if "failed" in results[key]:
            continue
        lat = scores[key].get("latency")
        out[key] = Figures(
            scores[key]["accuracy"].stats.rel_error,
            results[key]["total_s"],
            None if lat is None else lat.median_ms,
            scores[key].get("task"),
            scores[key].get("task_draws"),
        )
    return out


NNCF_MIN_SPEED = 0.9  # NNCF's graph counts as a CPU peer only at this fraction of our CPU graph's speed or more
CALIBRATION_SPEEDUP = 3.0  # the issue asks our calibrate + quantize to be this much faster than the fastest peer


def cpu_peers(found: dict[str, Figures]) -> tuple[list[str], str]:
    """The ORT-runnable peers our CPU graph is judged against: quantize_static's, and NNCF's where
    its graph runs at NNCF_MIN_SPEED of ours or faster; and a note on NNCF."""
    peers = [k for k in QUANTIZE_STATIC if k in found]
    if "nncf" not in found:
        return peers, "NNCF failed"
    if "ours-cpu" not in found:
        return peers, "NNCF not compared: no CPU graph of ours"
    ours, theirs = found["ours-cpu"].cpu_ms, found["nncf"].cpu_ms
    speed = ours / theirs  # NNCF's speed as a fraction of ours
    if speed >= NNCF_MIN_SPEED:
        return [*peers, "nncf"], f"NNCF counted ({speed:.2f}x our CPU speed)"
    return peers, f"NNCF left out ({speed:.2f}x our CPU speed < {NNCF_MIN_SPEED})"


def done_when(found: dict[str, Figures], task) -> list[str]:
    """Issue 22's questions, each answered yes or NO with the figures: our TensorRT graph's error
    against the best ModelOpt int8 graph's, our CPU graph's against the best ORT-runnable peer's,
    the task metric against the same peers, and our calibration time against the fastest int8
    peer's (an FP8 graph is another job: ModelOpt's FP8 quantizes no Conv and may quantize nothing)."""
    cpu, nncf_note = cpu_peers(found)
    lines = []
    for ours, peers, what in (
        ("ours-w8a8", MODELOPT, "best ModelOpt int8"),
        ("ours-cpu", cpu, f"best ORT-runnable peer ({nncf_note})"),
    ):
        lines += _compared(found, ours, [p for p in peers if p in found], what, task)
    peers = [k for k in (*MODELOPT, *QUANTIZE_STATIC, "nncf") if k in found]  # the int8 peers
    for ours in ("ours-w8a8", "ours-cpu"):
        if ours in found and peers:
            lines.append(_speedup(found, ours, min(peers, key=lambda p: found[p].total_s)))
    return lines


def _compared(found: dict[str, Figures], ours: str, peers: list[str], what: str, task) -> list[str]:
    if ours not in found or not peers:
        return [f"{ours} error <= {what}: n/a (no graph to compare)"]
    best = min(peers, key=lambda p: found[p].rel_error)
    mine, theirs = found[ours].rel_error, found[best].rel_error
    lines = [
        f"{ours} error <= {what}: {'yes' if mine <= theirs else 'NO'} ({mine:.4f} vs {TOOLS[best].label} {theirs:.4f})"
    ]
    scored = [p for p in peers if found[p].task is not None]
    if task is not None and found[ours].task is not None and scored:
        top = (min if task.lower_is_better else max)(scored, key=lambda p: found[p].task)
        verdict = _task_verdict(found[ours], found[top], task)
        shown = f"{found[ours].task:.{task.digits}f} vs {TOOLS[top].label} {found[top].task:.{task.digits}f}"
        lines.append(f"{ours} {task.metric} no worse than the same peers: {verdict} ({shown})")
    return lines


def _task_verdict(ours: Figures, peer: Figures, task) -> str:
    """yes when ours is at least as good; else whether it is worse beyond the noise of the rows
    scored: NOISE_SE standard errors of the paired difference over the same resampled rows."""
    if task.better(ours.task, peer.task):
        return "yes"
    if ours.task_draws is None or peer.task_draws is None:
        return "NO"
    se = float(np.std(ours.task_draws - peer.task_draws))
    worse = abs(ours.task - peer.task)
    within = worse <= NOISE_SE * se
    verdict = "yes, within noise" if within else "NO"
    noise = f"{NOISE_SE:g} SE of the paired difference: {NOISE_SE * se:.{task.digits}f}"
    return f"{verdict} (worse by {worse:.{task.digits}f}; {noise})"


def _speedup(found: dict[str, Figures], ours: str, fastest: str) -> str:
    ratio = found[fastest].total_s / found[ours].total_s
    verdict = "yes" if ratio >= CALIBRATION_SPEEDUP else f"NO, {CALIBRATION_SPEEDUP / ratio:.1f}x short"
    return (
        f"{ours} calibrate+quantize >= {CALIBRATION_SPEEDUP:g}x faster than the fastest int8 peer: {verdict} "
        f"({found[ours].total_s:.2f} s vs {TOOLS[fastest].label} {found[fastest].total_s:.2f} s: {ratio:.2f}x)"
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


MODELOPT = ("modelopt-max", "modelopt-entropy")
MODELOPT_FP8 = ("modelopt-fp8", "modelopt-fp8-max")
OURS = ("ours-w8a8", "ours-fp8", "ours-fp8-conv", "ours-cpu")
QUANTIZE_STATIC = ("ort-u8s8-minmax", "ort-s8s8-minmax", "ort-s8s8-entropy")


def verdicts(name: str, results: dict, scores: dict) -> list[str]:
    """Who wins, and the issue's "done when" figures, each against its peers from the same run
    (a peer that failed on the model is left out, and said so); with ``--tools``, the comparisons
    among the tools that were run."""
    err = {k: scores[k]["accuracy"].stats.rel_error for k in results if "failed" not in results[k]}
    timed = [k for k in TOOLS if "latency" in scores.get(k, {})]  # the CPU graphs run
    fastest = min(timed, key=lambda k: scores[k]["latency"].median_ms, default=None)
    cpu = f"; fastest: {TOOLS[fastest].label}" if fastest else ""
    graphs = [
        ("TensorRT graph", "ours-w8a8", MODELOPT, ""),
        ("TensorRT FP8 graph", "ours-fp8", MODELOPT_FP8, ""),
        ("TensorRT FP8 graph, Conv too", "ours-fp8-conv", MODELOPT_FP8, ""),
        ("CPU graph", "ours-cpu", QUANTIZE_STATIC, cpu),
    ]
    lines = [
        f"{name}: {what}: {_winner(err, results, ours, peers)}{more}"
        for what, ours, peers, more in graphs
        if ours in results
    ]
    accuracy = [
        ("w8a8 rel error <= better ModelOpt", "ours-w8a8", MODELOPT),
        ("fp8 rel error <= better ModelOpt fp8", "ours-fp8", MODELOPT_FP8),
        ("fp8 + conv rel error <= better ModelOpt fp8", "ours-fp8-conv", MODELOPT_FP8),
        ("w8a8-cpu rel error <= U8S8 MinMax", "ours-cpu", ("ort-u8s8-minmax",)),
    ]
    speed = [
        ("calib+quant faster than ModelOpt entropy", "modelopt-entropy", "total_s"),
        ("calibration faster than quantize_static Entropy", "ort-s8s8-entropy", "calib_s"),
    ]
    ours = [k for k in OURS if k in results]
    verdict = [(what, _yes(err, k, peers)) for what, k, peers in accuracy if k in results and set(peers) & set(results)]
    verdict += [
        ("0 violations", "yes" if all(scores[k]["violations"] == "0" for k in ours) else "NO"),
        ("8-bit weights on every quantized layer", "yes" if all(_all_8bit(scores[k]) for k in ours) else "NO"),
    ]
    verdict += [
        (what, _speed(results["ours-w8a8"], results[peer], key))
        for what, peer, key in speed
        if "ours-w8a8" in results and peer in results
    ]
    lines.append(f"{name}: done-when: " + "; ".join(f"{what}: {v}" for what, v in verdict))
    return lines


def _winner(err: dict[str, float], results: dict, ours: str, peers: tuple[str, ...]) -> str:
    peers = tuple(p for p in peers if p in results)  # those run (--tools)
    ran = [p for p in peers if p in err]
    failed = [TOOLS[p].label for p in peers if p not in err]
    note = f" ({', '.join(failed)} failed)" if failed else ""
    if not ran:
        return f"trtpipe {err[ours]:.4f}, no peer ran{note}"
    best = min(ran, key=err.__getitem__)
    who = "trtpipe" if err[ours] <= err[best] else TOOLS[best].label
    return (
        f"{who} wins on error (trtpipe {err[ours]:.4f}, best peer {TOOLS[best].label} {err[best]:.4f}, "
        f"ratio {err[ours] / err[best]:.2f}){note}"
    )


def _yes(err: dict[str, float], ours: str, peers: tuple[str, ...]) -> str:
    ran = [p for p in peers if p in err]
    if not ran:
        return "n/a (peer failed)"
    return "yes" if err[ours] <= min(err[p] for p in ran) else "NO"


def _speed(ours: dict, peer: dict, key: str) -> str:
    if "failed" in peer:
        return "n/a (peer failed)"
    ratio = peer[key] / ours[key]
    return f"{'yes' if ratio > 1 else 'NO'} ({ratio:.1f}x)"


def _all_8bit(score: dict) -> bool:
    layers, int8_layers = score["layers"]
    return layers == int8_layers


def _tool_list(value: str) -> list[str]:
    keys = value.split(",")
    unknown = [k for k in keys if k not in TOOLS]
    if unknown:
        raise argparse.ArgumentTypeError(f"{unknown[0]!r} is not one of {', '.join(TOOLS)}")
    return [k for k in TOOLS if k in keys]


def fp8_table(configs: list[str], threads: int, python: str) -> None:
    rows = []
    for config in configs:
        rows.append(fp8_table_row(config, threads, python))
        print(" | ".join(rows[-1]), flush=True)  # each model as it ends: the run is long
    print(
        "\nFP8 (E4M3) against ModelOpt's FP8 mode: relative error vs FP32 on ONNX Runtime "
        f"{__import__('onnxruntime').__version__}'s CPU EP, graph optimizations off\n" + table(FP8_TABLE_HEADERS, rows)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tools", type=_tool_list, default=list(TOOLS), help="run only these, comma-separated")
    parser.add_argument("--modelopt-python", default=str(REPO / ".modeloptvenv" / "bin" / "python"))
    parser.add_argument("--nncf-python", default=str(REPO / ".nncfvenv" / "bin" / "python"))
    parser.add_argument("--fp8-table", action="store_true", help="our FP8 and ModelOpt's only, one table")
    parser.add_argument("--child", choices=CHILD_TOOLS, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.configs[0], Path(args.work))
        return
    if not Path(args.modelopt_python).is_file():
        raise SystemExit(f"{args.modelopt_python} not found: `make bench-quant` sets up ModelOpt's environment first")
    if args.fp8_table:
        fp8_table(args.configs, args.threads, args.modelopt_python)
        return
    if not Path(args.nncf_python).is_file():
        raise SystemExit(f"{args.nncf_python} not found: `make bench-quant` sets up NNCF's environment first")
    tables, lines, fp8 = [], [], []
    for config in args.configs:
        model_table, model_lines, model_fp8 = bench_model(
            config, args.threads, args.modelopt_python, args.nncf_python, args.tools
        )
        print(model_table + "\n" + "\n".join(model_lines) + "\n", flush=True)
        tables.append(model_table)
        lines.extend(model_lines)
        fp8.extend(model_fp8)
    print("\n".join(lines))
    if fp8:
        print("\nFP8 across the models (ONNX Runtime CPU, graph optimizations off)\n" + table(FP8_HEADERS, fp8))
    print(
        f"\nLatency: median of {ROUNDS * PER_ROUND} runs per CPU graph, timed round-robin after warm-up, "
        f"ONNX Runtime {__import__('onnxruntime').__version__} CPU EP. Peak RSS: each tool's own process "
        "(VmHWM), imports included. calibrate s / calib+quant s: the tool's own clock, imports and data "
        "loading excluded; ModelOpt and NNCF calibrate and quantize in one call."
    )


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
