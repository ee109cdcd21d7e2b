"""SmoothQuant against plain w8a8, side by side in one run.

    python -m benchmarks.smoothquant models/vit_outliers_digits.toml models/vit_digits.toml

For each model, in a temporary working folder: export, then calibrate and quantize once per
variant: plain w8a8 (``smoothquant`` unset), SmoothQuant at the config's alpha (0.5 where it sets
none) and SmoothQuant ``auto``. Each graph runs on ONNX Runtime's CPU against the exported FP32
graph over the held-out split, at the batch quantize evaluates at: FP16, the TensorRT-target
``w8a8`` graph (run as written, see ``pipeline/ortsession.py``) and the ONNX Runtime ``w8a8-cpu``
graph. INT8 coverage is counted in each written graph: the Conv/Gemm/MatMul layers whose every
non-constant input and weight comes through a DequantizeLinear, over all of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import onnx

from pipeline import onnxutil, ortsession, stages
from pipeline.config import Config, load_config
from pipeline.console import table
from pipeline.evaluate.accuracy import evaluate
from pipeline.layout import Layout
from pipeline.placement import WEIGHTED

DEFAULT_ALPHA = 0.5


def int8_coverage(model: onnx.ModelProto) -> tuple[int, int]:
    """(weighted layers running INT8, weighted layers): INT8 means every input but a bias is dequantized."""
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    layers = [n for n in model.graph.node if n.op_type in WEIGHTED]
    return sum(all(t in dequantized for t in n.input[:2] if t) for n in layers), len(layers)


def variants(cfg: Config) -> list[tuple[str, float | str | None]]:
    alpha = cfg.quantize.smoothquant if isinstance(cfg.quantize.smoothquant, float) else DEFAULT_ALPHA
    return [("plain", None), (f"SmoothQuant {alpha:g}", alpha), ("SmoothQuant auto", "auto")]


def measure(cfg: Config, root: Path) -> list[list[object]]:
    """The table's rows for one model, made in ``root``."""
    out = Layout.of(cfg, root)
    stages.run("export", cfg, root)
    batch = cfg.nearest_batch(cfg.calibration.batch_size)
    ref = ortsession.session_for(out.graph("fp32"), True, arena=False)
    fp16 = ortsession.session_for(out.graph("fp16"), True, arena=False)
    (row,) = evaluate(cfg, lambda f: ortsession.run(ref, f), {"fp16": lambda f: ortsession.run(fp16, f)}, {}, batch)
    fp32_top1 = row.reference_metric
    rows = [
        [cfg.name, "fp32", "-", fp32_top1, 1.0, 0.0, "-", "-"],
        [cfg.name, "fp16", "-", row.metric, row.stats.centered_cosine, row.stats.rel_error, "-", "-"],
    ]
    for label, setting in variants(cfg):
        variant = dataclasses.replace(cfg, quantize=dataclasses.replace(cfg.quantize, smoothquant=setting))
        summary = stages.run("quantize", variant, root, force=True)  # a variant that misses its gate is measured too
        smoothing = summary.smoothquant
        parity = f"{smoothing.fp32_max_rel_diff:.1e}" if smoothing is not None else "-"
        for r in summary.accuracy:
            int8, layers = int8_coverage(onnxutil.load(out.graph(r.artifact)))
            coverage = f"{int8}/{layers} ({100 * int8 / layers:.0f}%)"
            rows.append(
                [cfg.name, r.artifact, label, r.metric, r.stats.centered_cosine, r.stats.rel_error, coverage, parity]
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    rows = []
    for path in args.configs:
        cfg = load_config(path)
        with tempfile.TemporaryDirectory(prefix="trtpipe.bench-smooth.") as tmp:
            rows.extend(measure(cfg, Path(tmp)))
    headers = ["model", "graph", "variant", "top-1 %", "centered cos", "rel error", "INT8 layers", "FP32 moved"]
    print(
        "Held-out split, ONNX Runtime CPU, against the FP32 graph. 'FP32 moved': max |smoothed FP32 - FP32| "
        "over the output's range (8 held-out rows)."
    )
    print(table(headers, rows))


if __name__ == "__main__":
    main()
