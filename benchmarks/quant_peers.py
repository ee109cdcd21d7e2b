"""Quantization against its peers, side by side in one run.

    python -m benchmarks.quant_peers models/resnet_digits.toml models/vit_digits.toml

For each model: our calibration (the config's method, 256, 512 and 2048 samples) and ONNX
Runtime's ``quantize_static`` (QDQ, U8S8 per-channel, MinMax and Entropy) on
the same calibration data and the same FP32 graph. Each calibration runs in a
child process so its peak memory (max RSS) is its own, ``--repeat`` times
round-robin across tools (median time reported). Then accuracy of every
resulting graph against FP32 on the held-out split, and ONNX Runtime CPU
latency at batch 64 on one thread. Sessions come from ``pipeline.ortsession``:
the CPU graphs (ours and quantize_static's) fully optimized, a TensorRT-target
Q/DQ graph (FP16 scales, as ModelOpt writes) run as written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline import ortsession
from pipeline.artifacts import Artifacts
from pipeline.config import load_config
from pipeline.console import table
from pipeline.data import calibration_batches, rebatch, sample_inputs
from pipeline.evaluate.accuracy import evaluate
from pipeline.evaluate.timing import measure_interleaved

ROUNDS, PER_ROUND = 10, 10


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def child(args: argparse.Namespace) -> None:
    """One calibration and quantization in this process; prints a JSON line with times and memory."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        create_calibrator,
        quantize_static,
    )
    from onnxruntime.quantization.calibrate import save_tensors_data

    from pipeline import onnxutil, stages
    from pipeline.calibrate import cache, calibrator, histogram  # noqa: F401  imported before timing, like ORT's
    from pipeline.quantize import placement  # noqa: F401
    from pipeline.quantize.ort_cpu import OP_TYPES, OrtCpuQdqFromOnnx

    cfg = load_config(args.config)
    cfg = dataclasses.replace(cfg, calibration=dataclasses.replace(cfg.calibration, samples=args.samples))
    work = Path(args.work)
    fp32_path = Artifacts.of(cfg, work).graph("fp32")
    next(iter(calibration_batches(cfg, samples=1)))  # load the data source before timing, for every tool
    baseline = _rss_mb()
    start = time.perf_counter()
    if args.tool == "ours":
        ranges = stages.calibrate(cfg, root=work, force=True)
        calib_s = time.perf_counter() - start
        graph = OrtCpuQdqFromOnnx(ranges, cfg.calibration.method, cfg.quantize)(onnx.load(str(fp32_path)))
        out = Artifacts.of(cfg, work).graph("w8a8-cpu")
        onnxutil.save(graph, out)
    else:

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                # Same samples, regrouped into equal batches: ORT's histogram calibrators fail on
                # ragged batches (onnxruntime#18792), ours take any batch size.
                self.it = rebatch(calibration_batches(cfg), cfg, cfg.calibration.batch_size)

            def get_next(self):
                return next(self.it, None)

        method = CalibrationMethod.MinMax if args.tool == "ort-minmax" else CalibrationMethod.Entropy
        cache = work / "ort-cache.json"
        with tempfile.TemporaryDirectory() as tmp:  # ORT's calibration step, as quantize_static runs it
            calibrator = create_calibrator(
                fp32_path, list(OP_TYPES), augmented_model_path=f"{tmp}/aug.onnx", calibrate_method=method
            )
            calibrator.collect_data(Reader())
            save_tensors_data(calibrator.compute_data(), cache)
            del calibrator
        calib_s = time.perf_counter() - start
        out = work / f"ort-{args.tool}.onnx"
        quantize_static(
            fp32_path,
            out,
            None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(OP_TYPES),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
            calibration_cache_path=cache,
        )
    total_s = time.perf_counter() - start
    print(
        json.dumps(
            {
                "calib_s": calib_s,
                "total_s": total_s,
                "peak_rss_mb": _rss_mb(),
                "baseline_rss_mb": baseline,
                "graph": str(out),
            }
        )
    )


def run_child(config: str, tool: str, samples: int, work: Path) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.quant_peers",
        "--child",
        tool,
        "--samples",
        str(samples),
        "--work",
        str(work),
        config,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{tool} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def figures(name: str, results: dict, latency: dict, fp32_ms: float) -> list[str]:
    """The issue's "done when" figures, each beside its peer from the same run."""
    ours = {n: results[("ours", n)] for n in (256, 512, 2048)}
    growth = ours[2048]["peak_rss_mb"] / ours[256]["peak_rss_mb"] - 1
    lines = [f"{name}: calibration peak RSS 256 -> 2048 samples {100 * growth:+.1f}% (needs < +10%)"]
    for n in (512, 2048):
        peer = results[("ort-entropy", n)]
        ratio = peer["calib_s"] / ours[n]["calib_s"]
        worst = peer["calib_range"][0] / ours[n]["calib_range"][1]  # our slowest run against its fastest
        lines.append(
            f"{name}: calibration at {n} samples {ratio:.1f}x faster than quantize_static Entropy "
            f"(median of runs; {worst:.1f}x our slowest against its fastest) (needs 3x)"
        )
    ours = latency[("ours", 512)]
    peers = ", ".join(
        f"{latency[(t, 512)].median_ms / ours.median_ms:.2f}x {t} (IQR {latency[(t, 512)].iqr_ms:.2f} ms)"
        for t in ("ort-minmax", "ort-entropy")
    )
    lines.append(
        f"{name}: w8a8-cpu {fp32_ms / ours.median_ms:.2f}x FP32 (needs 2x); vs quantize_static U8S8 "
        f"{peers}, ours {ours.median_ms:.2f} ms (IQR {ours.iqr_ms:.2f}) (needs >= 1x)"
    )
    return lines


def bench_model(config: str, batch: int, threads: int, repeat: int) -> tuple[list[list[object]], list[str]]:
    cfg = load_config(config)
    src = Artifacts.of(cfg)
    if not src.graph("fp32").is_file():
        raise SystemExit(f"{src.graph('fp32')} missing: run `make engines` (or trtpipe export) first")
    rows = []
    with tempfile.TemporaryDirectory(prefix="trtpipe.bench.") as tmp:
        results = {}
        runs = [
            ("ours", 256),
            ("ours", 512),
            ("ours", 2048),
            ("ort-minmax", 512),
            ("ort-entropy", 512),
            ("ort-entropy", 2048),
        ]
        each: dict[tuple[str, int], list[dict]] = {key: [] for key in runs}
        for rep in range(repeat):  # round-robin, so drift on a shared machine touches every tool alike
            for tool, samples in runs:
                work = Path(tmp) / f"{tool}-{samples}-{rep}"
                dst = Artifacts(cfg.name, work)
                dst.onnx_dir.mkdir(parents=True)
                for p in ("fp32", "fp16"):
                    shutil.copy(src.graph(p), dst.graph(p))
                each[(tool, samples)].append(run_child(config, tool, samples, work))
        for key, done in each.items():
            results[key] = {
                "calib_s": statistics.median(r["calib_s"] for r in done),
                "calib_range": (min(r["calib_s"] for r in done), max(r["calib_s"] for r in done)),
                "total_s": statistics.median(r["total_s"] for r in done),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in done),
                "growth_mb": max(r["peak_rss_mb"] - r["baseline_rss_mb"] for r in done),
                "graph": done[-1]["graph"],
            }

        feed = sample_inputs(cfg, batch)
        ref = ortsession.session(src.graph("fp32"), threads=threads, cpu_only=True)
        sessions = {key: ortsession.session(r["graph"], threads=threads, cpu_only=True) for key, r in results.items()}
        timed = {"fp32": ref, **sessions}
        latency = measure_interleaved(
            {k: (lambda s=s: s.run(None, feed)) for k, s in timed.items()},
            warmup=cfg.bench.warmup,
            rounds=ROUNDS,
            per_round=PER_ROUND,
        )
        fp32_lat = latency["fp32"]
        acc = evaluate(
            cfg,
            lambda f: ortsession.run(ref, f),
            {f"{k[0]}@{k[1]}": (lambda f, s=s: ortsession.run(s, f)) for k, s in sessions.items()},
            {},
            cfg.nearest_batch(batch),
        )
        acc_by = {r.artifact: r for r in acc}
        fp32_top1 = acc[0].reference_metric
        rows.append(
            [
                cfg.name,
                "FP32 (reference)",
                "-",
                "-",
                "-",
                "-",
                "-",
                f"{fp32_top1:.2f}",
                "-",
                "-",
                f"{fp32_lat.median_ms:.2f}",
                "1.00x",
            ]
        )
        names = {
            "ours": f"trtpipe ({cfg.calibration.method})",
            "ort-minmax": "ORT quantize_static MinMax",
            "ort-entropy": "ORT quantize_static Entropy",
        }
        for key in runs:
            r = results[key]
            a = acc_by[f"{key[0]}@{key[1]}"]
            lat = latency[key]
            rows.append(
                [
                    cfg.name,
                    names[key[0]],
                    key[1],
                    f"{r['calib_s']:.2f}",
                    f"{r['total_s']:.2f}",
                    f"{r['peak_rss_mb']:.0f}",
                    f"{r['growth_mb']:.0f}",
                    f"{a.metric:.2f}",
                    "-" if a.agreement is None else f"{100 * a.agreement:.2f}%",
                    f"{a.stats.cosine:.5f}",
                    f"{lat.median_ms:.2f}",
                    f"{fp32_lat.median_ms / lat.median_ms:.2f}x",
                ]
            )
    return rows, figures(cfg.name, results, latency, fp32_lat.median_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="calibration runs per tool and sample count (median)")
    parser.add_argument("--child", choices=["ours", "ort-minmax", "ort-entropy"])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--work")
    args = parser.parse_args()
    if args.child:
        args.tool, args.config = args.child, args.configs[0]
        child(args)
        return
    rows, lines = [], []
    for config in args.configs:
        model_rows, model_lines = bench_model(config, args.batch, args.threads, args.repeat)
        rows.extend(model_rows)
        lines.extend(model_lines)
    headers = [
        "model",
        "quantizer",
        "calib samples",
        "calibrate s",
        "calibrate+quantize s",
        "peak RSS MB",
        "RSS growth MB",
        "top-1 %",
        "top-1 agree",
        "cosine",
        f"ORT CPU ms (b{args.batch}, {args.threads} thr)",
        "speedup vs FP32",
    ]
    print(table(headers, rows))
    print(
        f"\nLatency: median of {ROUNDS * PER_ROUND} runs per graph, timed round-robin across graphs after "
        f"warm-up, ONNX Runtime {__import__('onnxruntime').__version__} "
        f"CPU EP, batch {args.batch}, {args.threads} thread(s), host arrays in and out. Peak RSS is each "
        "calibration process's max resident set (imports included); growth is peak minus RSS before calibration."
    )
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
