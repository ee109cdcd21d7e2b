"""``make gpu-check``: what a GPU user runs first. Every stage on the example models, then three checks.

For each config: export, quantize, build TensorRT engines, compare, bench, report. Then:

* **coverage**: the w8a8 engine runs at least 90% of the graph's quantized Conv/Gemm/MatMul
  layers in INT8 (counted from the engine inspector, Myelin-fused layers included);
* **accuracy**: every engine passes its compare gate against FP32;
* **speed**: at each ``[bench] gpu_batches`` size w8a8 beats FP16, or the report's verdict
  explains from the engine's layers why it does not.

The result goes to ``engines/gpu-check.json``; the exit status is 0 only when every check passed.

    trtpipe gpu-check -c models/resnet_digits.toml -c models/vit_digits.toml
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline.config import load_config
from pipeline.console import info
from pipeline.errors import PipelineError
from pipeline.fileio import write_json
from pipeline.layout import Layout
from pipeline.results import CompareResult, load_if_saved
from pipeline.targets.base import ENGINE
from pipeline.targets.tensorrt.target import ARTIFACT

MIN_COVERAGE = 0.90
_UNEXPLAINED = "no layer or op profile saved to explain it"


def check_model(config_path: Path, root: Path) -> dict[str, Any]:
    from pipeline import stages
    from pipeline.evaluate.report import verdict

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
    layers = engines.layers[ARTIFACT]
    coverage = layers.quantized_coverage
    lines = verdict(bench, load_if_saved(CompareResult, out, cfg.path), record)
    speed = {}
    for batch, line in zip(bench.batches, lines, strict=True):
        speedup = bench.speedup[batch]
        faster = speedup > 1.0
        speed[str(batch)] = {
            "speedup": speedup,
            "faster": faster,
            "verdict": line,
            "ok": faster or (_UNEXPLAINED not in line and "no faster" in line),
        }
    result = {
        "model": cfg.name,
        "engines": engines.dir,
        "coverage": {
            "int8_quantized_layers": layers.int8_quantized_layers,
            "quantized_layers": layers.quantized_layers,
            "share": coverage,
            "ok": coverage >= MIN_COVERAGE,
        },
        "accuracy": {"ok": accuracy_error is None, "error": accuracy_error},
        "speed": speed,
    }
    result["passed"] = result["coverage"]["ok"] and result["accuracy"]["ok"] and all(s["ok"] for s in speed.values())
    return result


def gpu_check(config_paths: list[Path], root: Path | None = None) -> dict[str, Any]:
    from pipeline.targets.tensorrt.probe import probe

    root = Path(root) if root is not None else Path.cwd()
    cap = probe()
    if not cap.available:
        raise PipelineError(f"gpu-check: {cap.reason}")
    models = [check_model(Path(p), root) for p in config_paths]
    result = {
        "passed": all(m["passed"] for m in models),
        "tensorrt_version": cap.trt_version,
        "gpu": cap.gpu_name,
        "compute_capability": cap.compute_capability,
        "cuda_runtime": cap.cuda_runtime,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "models": models,
    }
    path = Layout("gpu-check", root).gpu_check
    write_json(path, result)
    for m in models:
        c = m["coverage"]
        info(
            f"gpu-check {m['model']}: {'PASS' if m['passed'] else 'FAIL'}: INT8 {c['int8_quantized_layers']}/"
            f"{c['quantized_layers']} quantized layers ({c['share']:.0%}), accuracy "
            f"{'ok' if m['accuracy']['ok'] else 'FAILED'}, "
            + ", ".join(f"b{b} {s['speedup']:.2f}x{'' if s['ok'] else ' unexplained'}" for b, s in m["speed"].items())
        )
    info(f"gpu-check: {'passed' if result['passed'] else 'FAILED'}; details in {path}")
    return result
