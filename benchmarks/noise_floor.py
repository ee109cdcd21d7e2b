"""How far a model's own FP32 outputs move when its inputs carry noise as small as int8's rounding of them.

    python -m benchmarks.noise_floor CONFIG [--rows N] [--levels 0.25 0.5 1]

Each float input's int8 step is its largest |value| over the rows / 127, the step a per-tensor int8
quantizer of that input rounds to. Gaussian noise of ``level`` steps (its standard deviation) is
added to every float input, the same draw scaled for every level, and the FP32 graph's outputs on
the noisy rows are scored against its outputs on the clean ones with the measures quantize's gate
uses (centered cosine, relative error of the output's spread). An 8-bit graph can hardly come closer
to FP32 than FP32 itself comes under noise of its own input's rounding: where this floor is already
below a gate, no choice of layers to quantize meets it. Reads the config's calibration rows and its
FP32 graph (run export first); writes nothing.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx

INT8_LEVELS = 127  # a symmetric int8 quantizer's steps either side of zero
LEVELS = (0.25, 0.5, 1.0)
MAX_ROWS = 4096


def int8_steps(feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Each float input's per-tensor int8 step over all ``feeds``: its largest |value| / 127."""
    names = [name for name, value in feeds[0].items() if np.issubdtype(value.dtype, np.floating)]
    return {name: max(float(np.abs(feed[name]).max()) for feed in feeds) / INT8_LEVELS for name in names}


def noise_floor(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], levels: Iterable[float], seed: int = 0):
    """``[(level, shape, [ErrorStats per output])]``: the outputs on ``feeds`` with ``level`` int8 steps of
    noise against the outputs on ``feeds`` as they are, for each shape the feeds come in (the first
    input's, less the batch: the measures compare positions within a row, so shapes are kept apart)."""
    from pipeline import ortsession
    from pipeline.evaluate.metrics import ErrorAccumulator

    session = ortsession.session(model, cpu_only=True)
    steps = int8_steps(feeds)
    clean = [ortsession.run(session, feed) for feed in feeds]
    draws = np.random.default_rng(seed)
    noise = [{name: draws.standard_normal(feed[name].shape) for name in steps} for feed in feeds]
    shapes = ["x".join(map(str, next(iter(feed.values())).shape[1:])) for feed in feeds]
    found = []
    for level in levels:
        sums = {shape: [ErrorAccumulator() for _ in clean[0]] for shape in dict.fromkeys(shapes)}
        for feed, unit, reference, shape in zip(feeds, noise, clean, shapes, strict=True):
            noisy = {
                name: (value + level * steps[name] * unit[name]).astype(value.dtype) if name in steps else value
                for name, value in feed.items()
            }
            for total, out, ref in zip(sums[shape], ortsession.run(session, noisy), reference, strict=True):
                total.update(out, ref)
        found += [(level, shape, [total.result() for total in totals]) for shape, totals in sums.items()]
    return found


def main() -> None:
    from pipeline.config import load_config
    from pipeline.data import calibration_batches
    from pipeline.layout import Layout
    from pipeline.targets.base import FP32

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--rows", type=int, default=64, help=f"calibration rows to read (1..{MAX_ROWS})")
    parser.add_argument("--levels", type=float, nargs="+", default=LEVELS, help="noise in int8 steps (std)")
    args = parser.parse_args()
    if not 0 < args.rows <= MAX_ROWS or not all(0 <= level <= INT8_LEVELS for level in args.levels):
        parser.error(f"--rows 1..{MAX_ROWS}, --levels 0..{INT8_LEVELS}")
    cfg = load_config(args.config)
    graph = Layout.of(cfg).graph(FP32)
    if not graph.is_file():
        parser.error(f"{graph}: no FP32 graph; run trtpipe export -c {args.config} first")
    feeds = list(calibration_batches(cfg, args.rows))
    rows = sum(len(next(iter(feed.values()))) for feed in feeds)
    steps = ", ".join(f"{name} {step:.4g}" for name, step in int8_steps(feeds).items())
    print(f"{cfg.name}: FP32 against itself with input noise, {rows} calibration rows; int8 step: {steps}")
    print("| noise (int8 steps) | input shape | output | centered cosine | relative error |")
    print("|---|---|---|---|---|")
    for level, shape, stats in noise_floor(onnx.load(str(graph)), feeds, args.levels):
        for spec, found in zip(cfg.outputs, stats, strict=True):
            print(f"| {level:g} | {shape} | {spec.name} | {found.centered_cosine:.4f} | {found.rel_error:.4f} |")


if __name__ == "__main__":
    main()
