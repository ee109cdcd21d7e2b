"""One record per zoo model from its stage runs, saved results and written graphs; one Markdown table
rendered from the saved records."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from benchmarks.zoo.driver import INFERENCE, STAGES, StageRun
from benchmarks.zoo.graphstats import GraphStats, graph_stats

# The graph each quantization target writes, and the runtime whose rules it is checked against.
GRAPHS = {"w8a8": ("model.w8a8.onnx", "tensorrt"), "w8a8-cpu": ("model.w8a8-cpu.onnx", "onnxruntime-cpu")}


@dataclass(frozen=True)
class Accuracy:
    cosine: float  # lowest over batch sizes, first output
    centered_cosine: float  # lowest over batch sizes, first output
    rel_error: float  # highest over batch sizes, first output (of the output's spread)
    source: str  # "compare" or "quantize" (when compare did not run)
    worst_layer: str | None  # quantize's attribution when the graph missed its cosine: the layer adding most


@dataclass(frozen=True)
class ModelRow:
    name: str
    runs: tuple[StageRun, ...]
    graphs: dict[str, GraphStats]
    accuracy: dict[str, Accuracy]
    speedup: tuple[int, float] | None  # (largest CPU batch, w8a8-cpu vs FP32)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "stages": [r.as_dict() for r in self.runs],
            "graphs": {k: v.as_dict() for k, v in self.graphs.items()},
            "accuracy": {k: v.__dict__ for k, v in self.accuracy.items()},
            "speedup": None if self.speedup is None else {"batch": self.speedup[0], "w8a8_cpu": self.speedup[1]},
        }


def model_row(name: str, runs: list[StageRun], root: Path) -> ModelRow:
    model_dir = root / "engines" / name
    graphs = {
        label: graph_stats(model_dir / "onnx" / file, target)
        for label, (file, target) in GRAPHS.items()
        if (model_dir / "onnx" / file).is_file()
    }
    return ModelRow(name, tuple(runs), graphs, _accuracy(model_dir / "results"), _speedup(model_dir / "results"))


def _accuracy(results: Path) -> dict[str, Accuracy]:
    """From compare.json (every batch size); else from quantize.json's held-out check. The worst
    layers come from quantize.json either way."""
    quantize = json.loads((results / "quantize.json").read_text()) if (results / "quantize.json").is_file() else {}
    worst = quantize.get("worst_layers", {})
    if (results / "compare.json").is_file():
        return _worst(json.loads((results / "compare.json").read_text())["rows"], "compare", worst)
    return _worst(quantize.get("accuracy", []), "quantize", worst)


def _worst(rows: list[dict], source: str, layers: dict[str, list[dict]]) -> dict[str, Accuracy]:
    out = {}
    for artifact in GRAPHS:
        # compare labels artifacts "w8a8 (ONNX Runtime)"; quantize uses the bare name
        mine = [r for r in rows if r["artifact"].split(" ")[0] == artifact]
        if not mine:
            continue
        first = [r for r in mine if r["output"] == mine[0]["output"]]
        top = layers.get(artifact, [])
        out[artifact] = Accuracy(
            min(r["cosine"] for r in first),
            min(r["centered_cosine"] for r in first),
            max(r["rel_error"] for r in first),
            source,
            _culprit(top[0]) if top else None,
        )
    return out


def _culprit(layer: dict) -> str:
    on = f" on {layer['output']}" if layer.get("output") else ""
    return f"{layer['op_type']} {layer['node']} (+{layer['added']:.3f}{on}): {layer['reason']}"


def _speedup(results: Path) -> tuple[int, float] | None:
    path = results / "bench.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("quantized") != "w8a8-cpu" or not data["speedup"]:
        return None
    batch = max(data["speedup"], key=int)
    return int(batch), float(data["speedup"][batch])


def merge(saved: list[dict], new: dict, order: tuple[str, ...]) -> list[dict]:
    """``saved`` records with ``new`` put in by name (a run of some models keeps the others' rows)."""
    records = {r["name"]: r for r in saved}
    records[new["name"]] = new
    rank = {name: i for i, name in enumerate(order)}
    return sorted(records.values(), key=lambda r: (rank.get(r["name"], len(rank)), r["name"]))


def markdown(records: list[dict]) -> str:
    """The table from saved records (``ModelRow.as_dict()``), then every failure's one line."""
    head = [
        "model",
        *STAGES,
        "rule violations",
        "Q/DQ coverage",
        "int8 weights",
        "w8a8 cosine / centered",
        "w8a8 rel err",
        "w8a8-cpu cosine / centered",
        "w8a8-cpu rel err",
        "cpu / trt rel err",
        "w8a8-cpu speedup",
        "calibrate s",
        "calibrate peak RSS MB",
        "FP32 inference peak RSS MB",
        "calibrate / inference",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in records]
    failures = [
        f"- {r['name']} {s['stage']}: {s['error']}" for r in records for s in r["stages"] if s["status"] == "FAIL"
    ]
    culprits = [
        f"- {r['name']} {artifact}: {acc['worst_layer']}"
        for r in records
        for artifact, acc in r["accuracy"].items()
        if acc.get("worst_layer")
    ]
    return (
        "\n".join(
            [
                *lines,
                "",
                LEGEND,
                *(
                    ["", "Where a w8a8 graph missed its cosine, the layer adding the most error:", "", *culprits]
                    if culprits
                    else []
                ),
                *(["", "Failures:", "", *failures] if failures else []),
            ]
        )
        + "\n"
    )


CULPRITS = "Where a w8a8 graph missed its cosine, the layer adding the most error (quantize's attribution):"
LEGEND = (
    "Stage cells: `gate` = quantize's accuracy gate missed (its graphs written anyway with --force, "
    "so the later stages still measure them). "
    "Pairs are `w8a8 / w8a8-cpu` (TensorRT Q/DQ graph / ONNX Runtime CPU graph). Rule violations: "
    "the runtime's quantization rules broken in the written graph. Q/DQ coverage: Conv/Gemm/MatMul "
    "nodes fed by a DequantizeLinear over all of them. int8 weights: int8 elements over all weight "
    "elements (initializers of rank >= 2). Cosine and centered cosine (lowest) and relative error "
    "(highest, of the output's spread) of the first output against FP32 over compare's batch sizes "
    "(from quantize's check when compare did not run, marked q). cpu / trt rel err: the w8a8-cpu graph's "
    "relative error over the w8a8 graph's, in bold past 1.5x (the CPU graph's float rules aim to stay "
    "within it; docs/benchmarks/zoo.md says why where a row does not). Speedup: w8a8-cpu vs FP32 on ONNX "
    "Runtime CPU at the largest bench batch. "
    "Calibrate: wall time and peak RSS of the calibrate stage's process, start-up included; FP32 "
    "inference: peak RSS of a process running the FP32 graph on ONNX Runtime over the same calibration "
    "batches (benchmarks/calib_memory.py), the memory rule's yardstick (calibrate at most 1.5x)."
)


def _cells(r: dict) -> list[str]:
    stages = {s["stage"]: s for s in r["stages"]}
    calib = stages["calibrate"]
    measured = calib["status"] != "skip"
    speedup = r["speedup"]
    return [
        r["name"],
        *({"ok": "ok", "gate failed": "gate", "FAIL": "**FAIL**", "skip": "-"}[stages[s]["status"]] for s in STAGES),
        _pair(r, lambda g: str(g["violations"])),
        _pair(r, lambda g: f"{g['quantized_nodes']}/{g['compute_nodes']}"),
        _pair(r, lambda g: f"{100 * g['int8_weight_share']:.1f}%"),
        *_accuracy_cells(r["accuracy"].get("w8a8")),
        *_accuracy_cells(r["accuracy"].get("w8a8-cpu")),
        _error_ratio(r["accuracy"].get("w8a8-cpu"), r["accuracy"].get("w8a8")),
        "-" if speedup is None else f"{speedup['w8a8_cpu']:.2f}x (b{speedup['batch']})",
        f"{calib['seconds']:.1f}" if measured else "-",
        f"{calib['peak_rss_mb']:.0f}" if measured else "-",
        *_inference_cells(stages.get(INFERENCE), calib if measured else None),
    ]


# The CPU graph's relative error may be this many times the TensorRT graph's before a row is flagged.
CPU_ERROR_ALLOWANCE = 1.5


def _error_ratio(cpu: dict | None, trt: dict | None) -> str:
    """The CPU graph's relative error over the TensorRT graph's, in bold past ``CPU_ERROR_ALLOWANCE``."""
    if cpu is None or trt is None or not trt["rel_error"] > 0:
        return "-"
    ratio = cpu["rel_error"] / trt["rel_error"]
    return f"**{ratio:.2f}x**" if ratio > CPU_ERROR_ALLOWANCE else f"{ratio:.2f}x"


def _inference_cells(infer: dict | None, calib: dict | None) -> list[str]:
    if infer is None or infer["status"] != "ok":
        return ["-", "-"]
    ratio = f"{calib['peak_rss_mb'] / infer['peak_rss_mb']:.2f}x" if calib and calib["status"] == "ok" else "-"
    return [f"{infer['peak_rss_mb']:.0f}", ratio]


def _pair(r: dict, fmt) -> str:
    return " / ".join(fmt(r["graphs"][k]) if k in r["graphs"] else "-" for k in GRAPHS)


def _accuracy_cells(acc: dict | None) -> list[str]:
    if acc is None:
        return ["-", "-"]
    mark = " q" if acc["source"] == "quantize" else ""
    return [f"{acc['cosine']:.4f} / {acc['centered_cosine']:.4f}{mark}", f"{acc['rel_error']:.3g}{mark}"]
