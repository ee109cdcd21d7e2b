"""``make gpu-check``: what a GPU user runs first. Every stage on the example models, then three checks.

For each config: export, quantize, build TensorRT engines, compare, bench, report. Then:

* **coverage**: each 8-bit engine (w8a8, and fp8 where ``tensorrt-fp8`` is configured) runs at
  least 90% of its graph's quantized Conv/Gemm/MatMul layers in its 8-bit type (counted from the
  engine inspector, fused Myelin regions included);
* **accuracy**: every engine passes its compare gate against FP32;
* **speed**: at the largest ``[bench] gpu_batches`` size the fastest 8-bit engine within its gate is
  at least ``[verdict] min_speedup`` (1.05) times as fast as FP16: the report's verdict
  (``pipeline.evaluate.verdict``), whose rule this is, choosing among FP16, w8a8 and fp8. Below it the
  check fails, naming the measured ratio and the likeliest causes the engine shows. Each batch's
  median latency of every engine is kept beside its verdict, side by side as in the report.

``engines/gpu-check.json`` is written again as each model finishes, so a model that fails (a build
error, CUDA out of memory) neither hides the models checked before it nor stops the ones after it;
the exit status is 0 only when every model was checked and passed.

    trtpipe gpu-check -c models/resnet_digits.toml -c models/vit_digits.toml
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path
from typing import Any

from pipeline.config import load_config
from pipeline.console import info
from pipeline.errors import PipelineError
from pipeline.fileio import write_json
from pipeline.layout import Layout
from pipeline.results import CompareResult, LayerSummary, load_if_saved
from pipeline.targets.base import ENGINE
from pipeline.targets.tensorrt.layers import COVERAGE_WARNING as MIN_COVERAGE


def check_model(config_path: Path, root: Path) -> dict[str, Any]:
    from pipeline import stages, targets
    from pipeline.evaluate.verdict import decide, name

    cfg = load_config(config_path)
    out = Layout.of(cfg, root)
    stages.run("export", cfg, root)
    stages.run("quantize", cfg, root)
    record = stages.run("build", cfg, root, backend=ENGINE)
    try:
        stages.run("compare", cfg, root)
        accuracy_error = None
    except PipelineError as exc:  # the gate failed; results are saved, the report still gets written
        accuracy_error = str(exc)
    bench = stages.run("bench", cfg, root)
    stages.run("report", cfg, root)

    engines = record.engines  # never None: build --backend tensorrt builds them or fails
    eight_bit = [t.artifact for t in targets.configured(cfg) if t.builds_engine and t.artifact in engines.layers]
    coverage = {name(a): _coverage(engines.layers[a]) for a in eight_bit}
    verdict = decide(bench, load_if_saved(CompareResult, out, cfg.path), record, cfg.verdict.min_speedup)
    overall = verdict.overall
    medians = bench.medians()
    result = {
        "model": cfg.name,
        "config": str(config_path),
        "engines": engines.dir,
        "coverage": {
            "ok": all(c["ok"] for c in coverage.values()),
            "check": "; ".join(f"{p} {c['check']}" for p, c in coverage.items()),
            "by_precision": coverage,
        },
        "accuracy": {"ok": accuracy_error is None, "error": accuracy_error},
        "speed": {
            "batch": overall.batch,
            "speedup": overall.speedup,
            "min_speedup": verdict.min_speedup,
            "ok": verdict.fast_enough,
            "check": verdict.speed(),
            "causes": [] if verdict.fast_enough else list(verdict.causes),
            "by_batch": {
                str(v.batch): {
                    "ms": {name(a): medians[a][v.batch] for a in (bench.baseline, *bench.all_quantized)},
                    "speedup": v.speedup,
                    "verdict": v.line,
                }
                for v in verdict.batches
            },
        },
        "deploy": verdict.deploy,  # what the verdict deploys (trtpipe deploy's default)
    }
    result["passed"] = result["coverage"]["ok"] and result["accuracy"]["ok"] and result["speed"]["ok"]
    return result


def _coverage(layers: LayerSummary) -> dict[str, Any]:
    """One 8-bit engine's coverage check: the share of its quantized layers the engine runs 8-bit."""
    share = layers.quantized_coverage
    return {
        "quantized_layers": layers.quantized_layers,
        "int8_quantized_layers": layers.int8_quantized_layers,  # in the engine's 8-bit type: INT8, or FP8
        "share": share,  # None: undetermined, which fails the check
        "undetermined": layers.undetermined,
        "ok": share is not None and share >= MIN_COVERAGE,
        "check": layers.coverage_text(),
    }


def _failed(config_path: Path, exc: Exception) -> dict[str, Any]:
    """A model that could not be checked: its one-line error (and, for a bug, the traceback)."""
    if isinstance(exc, PipelineError):
        return {"config": str(config_path), "passed": False, "error": str(exc)}
    trace = traceback.format_exception(exc)
    print("".join(trace), file=sys.stderr, end="")  # a bug keeps its traceback
    return {
        "config": str(config_path),
        "passed": False,
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": "".join(trace).splitlines(),
    }


def _summary(m: dict[str, Any]) -> str:
    if "error" in m:
        return f"gpu-check {m['config']}: FAIL: {m['error']}"
    short = ", ".join(p for p, c in m["coverage"]["by_precision"].items() if not c["ok"] and c["share"] is not None)
    return (
        f"gpu-check {m['model']}: {'PASS' if m['passed'] else 'FAIL'}: {m['coverage']['check']}"
        f"{f' ({short} < {MIN_COVERAGE:.0%})' if short else ''}, accuracy "
        f"{'ok' if m['accuracy']['ok'] else 'FAILED'}, speed {'ok' if m['speed']['ok'] else 'FAILED'}: "
        f"{m['speed']['check']}"
    )


def gpu_check(config_paths: list[Path], root: Path | None = None) -> dict[str, Any]:
    from pipeline.targets.tensorrt.probe import probe

    root = Path(root) if root is not None else Path.cwd()
    cap = probe()
    if not cap.available:
        raise PipelineError(f"gpu-check: {cap.reason}")
    models: list[dict[str, Any]] = []
    result = {
        "passed": False,
        "complete": False,  # every config checked
        "tensorrt_version": cap.trt_version,
        "gpu": cap.gpu_name,
        "compute_capability": cap.compute_capability,
        "cuda_runtime": cap.cuda_runtime,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "models": models,
    }
    path = Layout("gpu-check", root).gpu_check
    for config_path in config_paths:
        try:
            found = check_model(Path(config_path), root)
        except Exception as exc:  # recorded per model; the others are still checked
            found = _failed(Path(config_path), exc)
        models.append(found)
        result["complete"] = len(models) == len(config_paths)
        result["passed"] = result["complete"] and all(m["passed"] for m in models)
        write_json(path, result)
        info(_summary(found))
    info(f"gpu-check: {'passed' if result['passed'] else 'FAILED'}; details in {path}")
    return result
