"""Plain w8a8 against w8a8 under ``[accuracy.budget] min_cosine = 0.99``, both graphs.

    python -m benchmarks.budget [--rows N] [--root DIR] [--max-fp16-share S] [--smoothquant A] [CONFIG ...]

For each model: export and calibrate (cached in ``--root``), then per w8a8 graph the budget loop
(``pipeline.evaluate.budget.fit``: the per-layer sensitivity only when the fully quantized graph
misses, then the shortest prefix of the ranking that meets the budget, pruned): INT8 coverage,
cosine, centered cosine and relative error against FP32 before and after, on the same held-out
rows, beside the FP16 graph's centered cosine. ``--smoothquant A``: the same on the graph smoothed
at alpha A (w8a8 + SmoothQuant, and under the budget). Without configs it
runs the two examples (scored on their held-out split, top-1 too) and a MobileNetV2-style CNN with
random weights built here in plain torch (depthwise blocks, the kind int8 hurts most; 64x64 inputs
so it runs in minutes on 2 cores; no labels, so it is scored on its first calibration rows).
"""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
import time
from pathlib import Path

import numpy as np

from pipeline import stages
from pipeline.calibration.inputs import quantization_inputs
from pipeline.config import Budget, load_config
from pipeline.console import table
from pipeline.errors import PipelineError
from pipeline.evaluate import budget, sensitivity
from pipeline.evaluate.variants import VariantRunner, held_out
from pipeline.layout import Layout
from pipeline.stages import STAGES

BUDGET = Budget(min_cosine=0.99)
EXAMPLES = ("models/resnet_digits.toml", "models/vit_digits.toml")


def mobilenet_v2_style(width: int = 16, blocks: int = 8, classes: int = 100, seed: int = 0, spread: float = 1.5):
    """Stem, ``blocks`` inverted residuals (1x1 expand x4, 3x3 depthwise, 1x1 project, ReLU6, BatchNorm
    with statistics warmed on the benchmark's images), pooling and a linear head. The depthwise
    convolutions' BatchNorm scales are log-normal (``spread``): channel ranges a hundred times apart,
    as in trained MobileNets, where per-tensor int8 activations are known to fail (Nagel et al.,
    Data-Free Quantization, 2019)."""
    import torch
    from torch import nn

    def bn_act(c, act=True):
        return [nn.BatchNorm2d(c), *([nn.ReLU6()] if act else [])]

    class Block(nn.Module):
        def __init__(self, c: int, stride: int) -> None:
            super().__init__()
            e = 4 * c
            self.body = nn.Sequential(
                nn.Conv2d(c, e, 1, bias=False), *bn_act(e),
                nn.Conv2d(e, e, 3, stride, 1, groups=e, bias=False), *bn_act(e),
                nn.Conv2d(e, c, 1, bias=False), *bn_act(c, act=False),
            )  # fmt: skip
            self.residual = stride == 1

        def forward(self, x):
            y = self.body(x)
            return x + y if self.residual else y

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, width, 3, 2, 1, bias=False),
        *bn_act(width),
        *[Block(width, 2 if i in (2, 5) else 1) for i in range(blocks)],
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, classes),
    )
    depthwise_bn = [m.body[4] for m in net if isinstance(m, Block)]
    with torch.no_grad():
        for bn in depthwise_bn:
            bn.weight.copy_(torch.exp(spread * torch.randn_like(bn.weight)))
    net.train()
    with torch.no_grad():  # BatchNorm statistics from the benchmark's own images, as a trained net has
        for feed in images(256, 64):
            net(torch.from_numpy(feed["image"]))
    return net.eval()


def images(samples: int, batch_size: int, size: int = 64):
    """Smooth random images (sums of low-frequency waves), seeded by row: calibration and held-out alike."""
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    for start in range(0, samples, batch_size):
        rows = []
        for i in range(start, min(start + batch_size, samples)):
            rng = np.random.default_rng(i)
            f = rng.uniform(0.5, 4.0, (3, 2, 3))
            p = rng.uniform(0, 2 * np.pi, (3, 3))
            rows.append(
                sum(np.sin(2 * np.pi * (f[c, 0, k] * xx + f[c, 1, k] * yy) + p[c, k]) for k in range(3))
                for c in range(3)
            )
        yield {"image": np.asarray([np.stack(list(r)) for r in rows], np.float32)}


CNN_CONFIG = textwrap.dedent(
    """\
    name = "mobilenet_v2_style"
    [model]
    source = "benchmarks.budget:mobilenet_v2_style"
    [[inputs]]
    name = "image"
    shape = ["batch", 3, 64, 64]
    [[outputs]]
    name = "logits"
    shape = ["batch", 100]
    [batch]
    min = 1
    opt = 16
    max = 64
    [calibration]
    source = "benchmarks.budget:images"
    samples = 256
    batch_size = 32
    """
)


def run(
    config: Path, root: Path, rows: int, graphs: tuple[str, ...], within: Budget, smoothquant: float | None = None
) -> list[list[object]]:
    cfg = load_config(config)
    # Plain w8a8 against the budget, or with ``smoothquant`` (an alpha) w8a8 + SmoothQuant against it.
    cfg = dataclasses.replace(
        cfg,
        accuracy=dataclasses.replace(cfg.accuracy, sensitivity_rows=rows),
        quantize=dataclasses.replace(cfg.quantize, smoothquant=smoothquant),
    )
    out = Layout.of(cfg, root)
    stages.run("export", cfg, root)  # always: a cached graph could be of an older model
    inp = quantization_inputs(cfg, out, STAGES["calibrate"])
    view = inp.view
    data = held_out(cfg, out.graph("fp32"), rows)
    targets = sensitivity.targets_for(graphs, inp)
    label = "" if smoothquant is None else f" + SmoothQuant {smoothquant}"
    found = []
    for name, target in targets.items():
        start = time.perf_counter()
        unquantized = VariantRunner(target.unquantized, data, delta=False).scores([target.unquantized])[0]
        try:
            fit, _, tab = budget.fit(target, within, data, sensitivity.weighted_layers(view), str(config))
        except PipelineError as exc:  # a budget out of reach is a result here, printed as such
            closest = str(exc).split("closest: ")[-1].split(";")[0]
            row = [cfg.name, name + label, "-", "-", "-", "-", "-", f"{unquantized.centered_cosine:.5f}"]
            found.append([*row, "-", f"{time.perf_counter() - start:.1f}", f"not met: {closest}"])
            continue
        b, a = fit.before, fit.after
        found.append(
            [
                cfg.name,
                name + label,
                f"{fit.quantized}/{fit.weighted} -> {fit.quantized - len(fit.kept)}/{fit.weighted}",
                f"{b.cosine:.5f} -> {a.cosine:.5f}",
                f"{b.centered_cosine:.5f} -> {a.centered_cosine:.5f}",
                f"{b.rel_error:.4f} -> {a.rel_error:.4f}",
                _top1(b, a, fit.reference_metric),
                f"{unquantized.centered_cosine:.5f}",
                "not needed" if tab is None else f"{tab.seconds:.1f} ({len(tab.layers)} layers)",
                f"{time.perf_counter() - start:.1f} ({fit.evaluations} graphs)",
                ", ".join(k.node for k in fit.kept) or "-",
            ]
        )
        print(table(HEADERS, found[-1:]), flush=True)
    return found


def _top1(before, after, fp32: float | None) -> str:
    if fp32 is None or before.metric is None or after.metric is None:
        return "-"
    return f"{before.metric:.2f} -> {after.metric:.2f} ({fp32:.2f})"


HEADERS = [
    "model",
    "graph",
    "INT8 layers",
    "cosine",
    "centered cosine",
    "rel error",
    "top-1 % (FP32)",
    "FP16 centered cosine",
    "sensitivity s",
    "sensitivity + budget s",
    "kept FP16",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", type=Path)
    parser.add_argument("--rows", type=int, default=64, help="held-out rows per graph scored (default 64)")
    parser.add_argument(
        "--target", dest="graphs", action="append", choices=["w8a8", "w8a8-cpu"], help="only these graphs"
    )
    parser.add_argument("--max-fp16-share", type=float, default=BUDGET.max_fp16_share, help="the budget's cap")
    parser.add_argument("--smoothquant", type=float, help="w8a8 + SmoothQuant at this alpha against the budget")
    parser.add_argument("--root", type=Path, default=Path("engines/bench-budget"), help="where graphs are cached")
    args = parser.parse_args()
    configs = list(args.configs)
    if not configs:
        args.root.mkdir(parents=True, exist_ok=True)
        cnn = args.root / "mobilenet_v2_style.toml"
        cnn.write_text(CNN_CONFIG)
        configs = [*map(Path, EXAMPLES), cnn]
    rows = []
    cap = dataclasses.replace(BUDGET, max_fp16_share=args.max_fp16_share)
    for config in configs:
        graphs = tuple(args.graphs or ("w8a8", "w8a8-cpu"))
        rows += run(config, args.root.resolve(), args.rows, graphs, cap, args.smoothquant)
    print(f"\nbudget: min_cosine = {cap.min_cosine} (centered), at most {cap.max_fp16_share:.0%} of layers FP16;")
    print(f"{args.rows} held-out rows per graph, before -> after\n")
    print(table(HEADERS, rows))


if __name__ == "__main__":
    main()
