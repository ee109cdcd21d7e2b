"""Per-layer sensitivity of a w8a8 graph: how far the model's output moves from FP32 when only one
layer is quantized, and when only that layer is left in FP16 (float on the CPU graph).

Each variant is the graph quantize itself writes with that layer in ``[quantize] exclude_nodes``
(or with every other layer there), so the figures are those of a graph quantize can make, Q/DQ
moved at residual Adds, pooling and Concats included. ``VariantRunner`` scores them on held-out
rows, running only what changed where the graphs run as written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx

from pipeline.console import progress
from pipeline.errors import PipelineError
from pipeline.evaluate.variants import HeldOut, Score, VariantRunner
from pipeline.graphview import GraphView
from pipeline.placement import WEIGHTED
from pipeline.targets.base import QuantizationInputs

SENSITIVITY_VERSION = 1


@dataclass(frozen=True)
class Target:
    """The layers one w8a8 graph quantizes and how to make it with some of them in FP16."""

    graph: str  # the quantized graph's artifact name
    layers: tuple[tuple[str, str], ...]  # (node, op type) of the weighted layers it quantizes
    make: Callable[[tuple[str, ...]], onnx.ModelProto]  # the graph with these nodes also excluded
    alone: Callable[[str], onnx.ModelProto]  # the graph with only this layer quantized
    unquantized: Callable[[], onnx.ModelProto]  # the graph with nothing quantized (FP16 graph, or FP32)

    def with_fp16(self, kept: frozenset[str] | set[str]) -> onnx.ModelProto:
        return self.make(tuple(sorted(kept)))


def targets_for(artifacts: tuple[str, ...], inputs: QuantizationInputs) -> dict[str, Target]:
    """The sensitivity targets of the quantized graphs named ``artifacts`` (each a target's artifact)."""
    from pipeline import targets

    return {t.artifact: t.sensitivity(inputs) for t in targets.everything() if t.artifact in artifacts}


def weighted_layers(view: GraphView) -> int:
    return sum(n.op_type in WEIGHTED for n in view.nodes)


@dataclass(frozen=True)
class LayerSensitivity:
    node: str
    op_type: str
    alone: Score  # only this layer quantized
    fallback: Score  # every layer quantized but this one

    def as_dict(self) -> dict:
        return {
            "node": self.node,
            "op_type": self.op_type,
            "alone": self.alone.as_dict(),
            "fallback": self.fallback.as_dict(),
        }


@dataclass(frozen=True)
class Sensitivity:
    """One graph's table: its layers with both scores, and the two ends (nothing, everything quantized)."""

    graph: str
    rows: int
    seconds: float
    reference_metric: float | None  # FP32's task metric on the same rows
    unquantized: Score
    quantized: Score
    layers: tuple[LayerSensitivity, ...]
    higher_is_better: bool = True  # the task metric's direction

    def _better(self, a: float | None, b: float | None) -> float:
        """How much better metric ``a`` is than ``b`` (0 where either is unknown: no labels)."""
        if a is None or b is None:
            return 0.0
        return a - b if self.higher_is_better else b - a

    def gain(self, layer: LayerSensitivity) -> tuple[float, float]:
        """What leaving ``layer`` in FP16 recovers: the task metric (0 without labels), then centered cosine."""
        metric = self._better(layer.fallback.metric, self.quantized.metric)
        return metric, layer.fallback.centered_cosine - self.quantized.centered_cosine

    def cost(self, layer: LayerSensitivity) -> tuple[float, float]:
        """What quantizing ``layer`` costs: lost alone plus recovered by its fallback, in the task metric
        (0 without labels), then in centered cosine. Both: the fallback's gain is the true marginal cost
        but small against the rest's noise on a net with many similar layers; the loss alone is clean."""
        metric = self._better(self.unquantized.metric, layer.alone.metric)
        gain_metric, gain_cosine = self.gain(layer)
        alone_cosine = self.unquantized.centered_cosine - layer.alone.centered_cosine
        return metric + gain_metric, alone_cosine + gain_cosine

    def ranked(self) -> list[LayerSensitivity]:
        """Most sensitive first (see ``cost``)."""
        return sorted(self.layers, key=self.cost, reverse=True)

    def as_dict(self) -> dict:
        return {
            "graph": self.graph,
            "rows": self.rows,
            "seconds": self.seconds,
            "reference_metric": self.reference_metric,
            "unquantized": self.unquantized.as_dict(),
            "quantized": self.quantized.as_dict(),
            "layers": [s.as_dict() for s in self.layers],
            "higher_is_better": self.higher_is_better,
        }

    @classmethod
    def from_dict(cls, raw: dict) -> Sensitivity:
        return cls(
            str(raw["graph"]),
            int(raw["rows"]),
            float(raw["seconds"]),
            None if raw["reference_metric"] is None else float(raw["reference_metric"]),
            Score.from_dict(raw["unquantized"]),
            Score.from_dict(raw["quantized"]),
            tuple(
                LayerSensitivity(
                    str(s["node"]), str(s["op_type"]), Score.from_dict(s["alone"]), Score.from_dict(s["fallback"])
                )
                for s in raw["layers"]
            ),
            bool(raw.get("higher_is_better", True)),  # tables saved before metrics had a direction: top-1
        )


def measure(target: Target, heldout: HeldOut) -> Sensitivity:
    """Both scores for every layer of ``target``, on ``heldout``."""
    start = time.perf_counter()
    full = target.with_fp16(frozenset())
    names = [n for n, _ in target.layers]
    base = target.unquantized()
    quantized, unquantized = VariantRunner(full, heldout).scores([full, base])
    fallback = _scores(VariantRunner(full, heldout), [lambda n=n: target.with_fp16({n}) for n in names], target, "FP16")
    alone = _scores(VariantRunner(base, heldout), [lambda n=n: target.alone(n) for n in names], target, "alone")
    layers = tuple(LayerSensitivity(n, op, a, f) for (n, op), a, f in zip(target.layers, alone, fallback, strict=True))
    seconds = time.perf_counter() - start
    higher = heldout.task is None or heldout.task.higher_is_better
    reference = heldout.reference_metric()
    return Sensitivity(target.graph, heldout.rows, seconds, reference, unquantized, quantized, layers, higher)


def _scores(
    runner: VariantRunner, makers: list[Callable[[], onnx.ModelProto]], target: Target, what: str
) -> list[Score]:
    """Scores of the graphs ``makers`` make, each made when its chunk is scored (``VariantRunner.chunk``)."""
    found: list[Score] = []
    chunks = range(0, len(makers), runner.chunk)
    for start in progress(chunks, f"{target.graph}: each layer {what}", length=len(chunks)):
        found += runner.scores(makers[start : start + runner.chunk])
    return found


def save(tables: dict[str, Sensitivity], path: Path) -> None:
    from pipeline.fileio import write_json

    write_json(path, {"version": SENSITIVITY_VERSION, "graphs": {g: t.as_dict() for g, t in tables.items()}})


def load(path: Path) -> dict[str, Sensitivity] | None:
    """The saved tables, or None when there are none; a file of another version or shape is an error."""
    from pipeline.fileio import read_json

    raw = read_json(path)
    if raw is None:
        return None
    try:
        if raw["version"] != SENSITIVITY_VERSION:
            raise ValueError(f"version {raw['version']}, expected {SENSITIVITY_VERSION}")
        return {str(g): Sensitivity.from_dict(t) for g, t in raw["graphs"].items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise PipelineError(f"{path}: not a sensitivity table ({exc}); run trtpipe sensitivity again") from None


TOP = 12  # layers the printed table and the chart show


def table_rows(table: Sensitivity, top: int = TOP) -> tuple[list[str], list[list[object]]]:
    labels = table.reference_metric is not None
    headers = ["layer", "op", "alone: centered cos", "alone: rel err", "FP16: centered cos", "FP16: rel err"]
    headers += ["alone: metric", "FP16: metric"] if labels else []
    rows = []
    for s in table.ranked()[:top]:
        row: list[object] = [s.node, s.op_type, f"{s.alone.centered_cosine:.5f}", s.alone.rel_error]
        row += [f"{s.fallback.centered_cosine:.5f}", s.fallback.rel_error]
        if labels:
            row += [_pct(s.alone.metric), _pct(s.fallback.metric)]
        rows.append(row)
    return headers, rows


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def chart(tables: dict[str, Sensitivity], path: Path, model: str, top: int = TOP) -> None:
    """Per graph, horizontal bars for its most sensitive layers: the error of the output (1 - centered
    cosine) with only that layer quantized, and what leaving only that layer in FP16 recovers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from pipeline.evaluate.colours import BASELINE_COLOUR, W8A8_COLOUR
    from pipeline.fileio import atomic_path

    fig, axes = plt.subplots(len(tables), 1, figsize=(8.0, 1.2 + 0.32 * top * len(tables)), dpi=120, squeeze=False)
    for ax, (graph, table) in zip(axes[:, 0], tables.items(), strict=True):
        ranked = table.ranked()[:top][::-1]
        y = np.arange(len(ranked))
        alone = [1.0 - s.alone.centered_cosine for s in ranked]
        recovered = [table.gain(s)[1] for s in ranked]
        ax.barh(y + 0.2, alone, 0.4, color=W8A8_COLOUR, label="only this layer INT8: 1 - centered cosine")
        ax.barh(
            y - 0.2,
            recovered,
            0.4,
            color=BASELINE_COLOUR,
            edgecolor="#9e9e9e",
            label="only this layer FP16: cosine recovered",
        )
        ax.set_yticks(y, [f"{s.op_type} {s.node}"[-40:] for s in ranked], fontsize=7)
        ax.set_title(
            f"{model} {graph}: all INT8 centered cosine {table.quantized.centered_cosine:.4f} "
            f"({table.rows} held-out rows)",
            fontsize=9,
        )
        ax.spines[["top", "right"]].set_visible(False)
        ax.legend(frameon=False, fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
