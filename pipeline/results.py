"""What the stages measured, as types: results/quantize.json, build.json, results/compare.json and
results/bench.json, each one frozen dataclass below with the rows it holds.

Every file is written by ``save`` and read by ``load`` through ``pipeline.schema``, and carries its
type's ``version``: a file of another version, a missing key or a wrong type is one line naming the
file and the stage that writes it again, and ``trtpipe engines`` re-runs that stage (``problem``).
The stages write these; report, deploy and gpu-check read them, never the dicts. The rows that
measuring code builds live here too (latency, engine layers, layer errors, the budget's choices,
SmoothQuant's edits), so the modules that measure import their types, not the other way round.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pipeline.errors import PipelineError
from pipeline.evaluate.accuracy import AccuracyRow
from pipeline.evaluate.metrics import Score
from pipeline.fileio import write_json
from pipeline.layout import Layout
from pipeline.placement import Skipped
from pipeline.schema import Malformed, decode, encode, saved
from pipeline.targets.base import ENGINE, ONNXRUNTIME

if TYPE_CHECKING:
    from pipeline.calibration.cache import Ranges

# --- bench -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    median_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    iqr_ms: float  # spread: a second run's median should land within it
    runs: int


@dataclass(frozen=True)
class BenchRow:
    artifact: str
    precision: str
    batch: int
    latency: Latency = saved(inline=True)
    # Measured over inferences enqueued back to back (TensorRT, CUDA events); None: batch / median.
    items_per_s: float | None = saved(omitted=True)
    shape: str | None = saved(omitted=True)  # with [[axes]]: the shape timed (seq=16)

    @property
    def throughput(self) -> float:
        if self.items_per_s is not None:
            return self.items_per_s
        return self.batch / (self.latency.median_ms / 1e3)

    def derived(self) -> dict[str, float]:
        return {"throughput_items_per_s": self.throughput}


# --- build -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSummary:
    """One TensorRT engine's layers, counted from the engine inspector."""

    layers: int
    compute_layers: int
    int8_compute_layers: int
    reformat_layers: int
    unfused_qdq_layers: int
    detailed: bool  # False when the engine was built without DETAILED profiling verbosity
    quantized_layers: int = 0  # Conv/Gemm/MatMul nodes the Q/DQ graph quantizes
    int8_quantized_layers: int = 0  # of those, how many the engine runs INT8
    by_onnx_node: bool = False  # counted through layer metadata (else by compute layers, for old engines)
    warning: str | None = saved(omitted=True)  # the Q/DQ engine's coverage falls short (``coverage_warning``)
    undetermined: str | None = saved(omitted=True)  # why the inspector's output cannot tell which run INT8

    @property
    def int8_coverage(self) -> float:
        """Share of Conv/GEMM/MatMul layers running INT8, quantized or not."""
        return self.int8_compute_layers / self.compute_layers if self.compute_layers else 0.0

    @property
    def quantized_coverage(self) -> float | None:
        """Share of the graph's quantized layers that run INT8: what the 90% rule is about. None where it
        cannot be determined (``undetermined`` says why): never a 0 that reads as "no INT8"."""
        if self.undetermined is not None:
            return None
        if not self.quantized_layers:
            return 0.0
        return min(self.int8_quantized_layers / self.quantized_layers, 1.0)

    def coverage_text(self) -> str:
        """``17/18 quantized layers INT8 (94%)``, or ``INT8 coverage undetermined: why``."""
        if self.quantized_coverage is None:
            return f"INT8 coverage undetermined: {self.undetermined}"
        return (
            f"{self.int8_quantized_layers}/{self.quantized_layers} quantized layers INT8 "
            f"({self.quantized_coverage:.0%})"
        )

    def derived(self) -> dict[str, float]:
        return {"int8_coverage": self.int8_coverage, "quantized_coverage": self.quantized_coverage}


@dataclass(frozen=True)
class Engines:
    """The TensorRT engines build made: their folder and manifest (relative to the project, as records
    name files) and each engine's layer summary by precision."""

    dir: str
    manifest: str
    layers: dict[str, LayerSummary]


# --- quantize --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerError:
    """How much relative error one layer of a quantized graph adds (``attribution.worst_layers``)."""

    node: str
    op_type: str
    input_error: float  # relative L2 error of its worst activation input
    output_error: float
    added: float  # output_error - input_error: the error this layer adds
    reason: str
    output: str | None = saved(omitted=True)  # the graph output it was measured for (its row, if selected)

    def __str__(self) -> str:
        return (
            f"{self.op_type} {self.node}: adds {self.added:.4f} relative error "
            f"({self.input_error:.4f} in, {self.output_error:.4f} out): {self.reason}"
        )


@dataclass(frozen=True)
class KeptLayer:
    """A layer ``[accuracy.budget]`` keeps in FP16, and the sensitivity figures it was chosen by."""

    node: str
    op_type: str
    recovers: float  # centered cosine its fallback alone recovers (sensitivity)
    recovers_metric: float  # of the task metric (its own units), 0 without labels
    alone_centered_cosine: float  # with only it quantized

    def reason(self) -> str:
        points = f", {self.recovers_metric:+.4g} of the metric" if self.recovers_metric else ""
        return (
            f"in FP16 alone it recovers {self.recovers:+.5f} centered cosine{points}; "
            f"quantized alone the output reaches {self.alone_centered_cosine:.5f}"
        )

    def derived(self) -> dict[str, str]:
        return {"reason": self.reason()}


@dataclass(frozen=True)
class BudgetResult:
    """The graph ``[accuracy.budget]`` chose for one target (``budget.fit``)."""

    graph: str
    weighted: int = saved(key="weighted_layers")  # Conv/ConvTranspose/Gemm/MatMul nodes in the graph
    quantized: int = saved(key="int8_before")  # of them quantized without a budget
    cap: int = saved()
    before: Score = saved()
    after: Score = saved()
    reference_metric: float | None = saved(key="fp32_metric")
    kept: tuple[KeptLayer, ...] = saved(key="kept_fp16")
    evaluations: int = saved()  # graphs scored by the loop (sensitivity's not counted)
    seconds: float = saved()  # the loop's, sensitivity's included
    missed: str | None = saved(omitted=True)  # quantize --force: why the closest graph, written, misses it

    @property
    def int8_after(self) -> int:
        return self.quantized - len(self.kept)

    def coverage(self) -> str:
        return (
            f"INT8 {self.quantized}/{self.weighted} ({100 * self.quantized / self.weighted:.0f}%) -> "
            f"{self.int8_after}/{self.weighted} ({100 * self.int8_after / self.weighted:.0f}%)"
        )

    def derived(self) -> dict[str, int]:
        return {"int8_after": self.int8_after}


@dataclass(frozen=True)
class Smoothed:
    """What smoothing did to one LayerNorm output."""

    norm: str
    tensor: str
    readers: tuple[str, ...]
    alpha: float | None  # None: auto left this one unsmoothed
    scale_min: float
    scale_max: float
    # Widest channel's max|x| over the median channel's, before and after: what per-tensor int8 pays.
    outlier_ratio_before: float
    outlier_ratio_after: float


@dataclass(frozen=True)
class Smoothing:
    """What ``[quantize] smoothquant`` did: its setting, each LayerNorm output smoothed, each one it
    could not smooth (node, reason), and how far the smoothed FP32 graph's outputs moved."""

    alpha: float | str  # the setting: a number, or "auto"
    layers: tuple[Smoothed, ...]
    skipped: tuple[tuple[str, str], ...]
    fp32_max_rel_diff: float


@dataclass(frozen=True)
class RegionSpeed:
    """One region of the CPU graph in quantize's speed search: its weighted layers, whether it keeps
    its Q/DQ (None: not measured, the time budget spent, so it keeps them) and how much faster its
    Q/DQ made the graph, median and quartiles over interleaved rounds (None: not measured)."""

    region: str
    layers: tuple[str, ...]
    kept: bool | None
    speedup: float | None
    speedup_q25: float | None
    speedup_q75: float | None


@dataclass(frozen=True)
class SpeedSearch:
    """The CPU graph's per-region speed search (``targets/onnxruntime_cpu/regions.py``) at ``batch``:
    each region's decision, the graph quantized everywhere against the regions' choice where some
    went float (``whole``: kept, the whole graph keeps its Q/DQ), and the graph it chose against FP32
    (median and quartiles over rounds)."""

    batch: int
    budget_seconds: float
    seconds: float
    regions: tuple[RegionSpeed, ...]
    speedup: float  # FP32 time over the chosen graph's
    speedup_q25: float
    speedup_q75: float
    whole: RegionSpeed | None = saved(omitted=True)

    @property
    def kept(self) -> tuple[RegionSpeed, ...]:
        if self.whole is not None and self.whole.kept:
            return self.regions
        return tuple(r for r in self.regions if r.kept is not False)

    def derived(self) -> dict[str, int]:
        return {"regions_kept": len(self.kept)}


@dataclass(frozen=True)
class PhaseTime:
    """What one phase of a stage took (``pipeline.phases``), phases timed inside it not counted: wall
    seconds, CPU seconds of the whole process (all its threads), and how much its peak RSS grew."""

    name: str
    seconds: float
    cpu_seconds: float
    peak_growth_mb: float  # MB the process's peak RSS grew by in the phase: which phase sets the peak


@dataclass(frozen=True)
class CalibrateResult:
    """What ``trtpipe calibrate`` returns (its files are the cache and its record): the ranges,
    whether a fresh cache was reused, and where its time went."""

    ranges: Ranges
    reused: bool
    phases: tuple[PhaseTime, ...]


# --- the four files --------------------------------------------------------------------------------

R = TypeVar("R", bound="Result")


@dataclass(frozen=True)
class Result:
    """One stage's saved result: one file of one version."""

    VERSION: ClassVar[int] = 1
    STAGE: ClassVar[str]

    @classmethod
    def path(cls, out: Layout) -> Path:
        return out.result(cls.STAGE)


@dataclass(frozen=True)
class QuantizeResult(Result):
    STAGE: ClassVar[str] = "quantize"

    method: str
    passed: bool  # every graph met its accuracy gate
    accuracy: tuple[AccuracyRow, ...]  # each graph against FP32 on ONNX Runtime (CPU), held-out data
    skipped: tuple[Skipped, ...]  # the layers the first target with a placement report keeps float
    int8_layers: int  # and the layers it quantizes
    smoothquant: Smoothing | None  # None: [quantize] smoothquant unset
    worst_layers: dict[str, tuple[LayerError, ...]]  # by graph
    budget: dict[str, BudgetResult]  # by graph, under [accuracy.budget]
    # The CPU graph's speed search (None: off, or no CPU graph) and whether that graph is recommended:
    # at least [verdict] min_speedup times as fast as FP32 in quantize's own timing.
    speed_search: SpeedSearch | None = saved(omitted=True)
    cpu_recommended: bool | None = saved(omitted=True)
    phases: tuple[PhaseTime, ...] = ()  # where quantize's time went, a calibration it ran included

    VERSION: ClassVar[int] = 2  # 2: phases, the CPU graph's speed search


@dataclass(frozen=True)
class BuildResult(Result):
    """Engines built (``backend`` ENGINE, ``engines``), or TensorRT skipped (ONNXRUNTIME, ``reason``):
    compare and bench then run the graphs on ONNX Runtime's ``providers``."""

    STAGE: ClassVar[str] = "build"

    backend: str
    providers: tuple[str, ...]  # ONNX Runtime's execution providers on the machine that built
    engines: Engines | None = saved(inline=True, omitted=True)
    reason: str | None = saved(omitted=True)  # why TensorRT was not used

    def __post_init__(self) -> None:
        if self.backend not in (ENGINE, ONNXRUNTIME):
            raise ValueError(f"backend {self.backend!r}, expected {ENGINE!r} or {ONNXRUNTIME!r}")
        built, skipped = self.engines is not None, self.reason is not None
        if built != (self.backend == ENGINE) or skipped == (self.backend == ENGINE):
            raise ValueError(
                f"backend {self.backend!r} with{'' if built else 'out'} engines and with{'' if skipped else 'out'} "
                f"a reason; engines are built ({ENGINE!r}), or TensorRT was skipped for a reason ({ONNXRUNTIME!r})"
            )

    @classmethod
    def path(cls, out: Layout) -> Path:
        return out.build_record


@dataclass(frozen=True)
class CompareResult(Result):
    STAGE: ClassVar[str] = "compare"

    rows: tuple[AccuracyRow, ...]
    passed: bool


@dataclass(frozen=True)
class BenchResult(Result):
    """Latency of the bench pair (``targets.base.BenchPair``) at each batch size, per run."""

    STAGE: ClassVar[str] = "bench"

    backend: str  # how it was timed: tensorrt, onnxruntime-cuda or onnxruntime-cpu (BenchPair.backend)
    runtime: str  # the same for people: "TensorRT", "ONNX Runtime CUDA", "ONNX Runtime CPU"
    includes: str  # what a timing includes
    baseline: str  # the float artifact
    quantized: str  # the 8-bit one
    batches: tuple[int, ...]
    threads: int | None
    warmup: int
    min_iterations: int
    min_seconds: float
    runs: tuple[tuple[BenchRow, ...], ...]
    speedup: dict[int, float]  # by batch, of the first run
    consistency: tuple[str, ...]  # of repeated runs
    # On a CPU: the share of FP32 time per op type at ``profiled_batch`` (what INT8 can speed up).
    fp32_op_time_share: dict[str, float] | None = saved(omitted=True)
    profiled_batch: int | None = saved(omitted=True)
    others: tuple[str, ...] | None = saved(omitted=True)  # more 8-bit artifacts timed beside ``quantized``
    # With [[axes]]: the shapes timed, in [bench] shapes order; ``speedup`` and ``medians`` are at the last.
    shapes: tuple[str, ...] | None = saved(omitted=True)

    @property
    def all_quantized(self) -> tuple[str, ...]:
        """Every 8-bit artifact timed: ``quantized``, then ``others``."""
        return (self.quantized, *(self.others or ()))

    @property
    def shape(self) -> str | None:
        """The shape the verdict reads: the last one timed (None without [[axes]])."""
        return self.shapes[-1] if self.shapes else None

    def cells(self) -> list[tuple[str | None, int]]:
        """Every (shape, batch) timed, shape by shape."""
        return [(shape, batch) for shape in self.shapes or (None,) for batch in self.batches]

    def medians(self, shape: str | None = None) -> dict[str, dict[int, float]]:
        """Median ms of the first run, by artifact name and batch, at ``shape`` (default: ``self.shape``)."""
        shape = self.shape if shape is None else shape
        found: dict[str, dict[int, float]] = {}
        for row in self.runs[0]:
            if row.shape == shape:
                found.setdefault(row.precision, {})[row.batch] = row.latency.median_ms
        return found


def save(result: Result, out: Layout) -> None:
    """Write ``result`` to its file under ``out``, with its version."""
    write_json(result.path(out), {"version": result.VERSION, **encode(result)})


def load(kind: type[R], out: Layout, config: Path | None = None) -> R:
    """The ``kind`` saved under ``out``; missing, unreadable, of another version or not of ``kind``'s
    shape: one line naming the file and the stage to run (``-c config`` where given)."""
    path = kind.path(out)
    try:
        return _read(kind, path)
    except FileNotFoundError:
        if not out.record("export").parent.is_dir():  # nothing ran here: perhaps another folder than the project
            raise PipelineError(
                f"{out.key(path)}: no saved {kind.STAGE}; run trtpipe {kind.STAGE} first (in {out.root.absolute()}: "
                f"trtpipe runs from the project's folder, where its engines/ is)"
            ) from None
        raise PipelineError(f"{out.key(path)}: no saved {kind.STAGE}; run trtpipe {kind.STAGE} first") from None
    except Malformed as exc:
        command = f"trtpipe {kind.STAGE}" + (f" -c {config}" if config is not None else "")
        raise PipelineError(f"{out.key(path)}: {exc}; re-run {command}") from None


def load_if_saved(kind: type[R], out: Layout, config: Path | None = None) -> R | None:
    """``load``, or None where nothing is saved yet."""
    return load(kind, out, config) if kind.path(out).is_file() else None


def problem(kind: type[R], out: Layout) -> str | None:
    """Why the ``kind`` file under ``out`` is none this trtpipe reads (unreadable, another version,
    another shape), or None when it is one or is missing."""
    try:
        _read(kind, kind.path(out))
    except FileNotFoundError:
        return None
    except Malformed as exc:
        return str(exc)
    return None


def _read(kind: type[R], path: Path) -> R:
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:  # truncated by a kill or a full disk
        raise Malformed(f"not readable JSON ({exc})") from None
    return _parse(kind, raw)


def _parse(kind: type[R], raw: Any) -> R:
    if not isinstance(raw, dict):
        raise Malformed(f"not a {kind.STAGE} result (a {type(raw).__name__})")
    if "version" not in raw:
        raise Malformed("written by an older trtpipe (no version)")
    version = raw["version"]
    if version != kind.VERSION:
        age = "an older" if isinstance(version, int) and version < kind.VERSION else "a newer"
        raise Malformed(f"written by {age} trtpipe (version {version!r}; this one reads {kind.VERSION})")
    try:
        return decode(kind, raw)
    except Malformed as exc:
        raise Malformed(f"not a {kind.STAGE} result this trtpipe reads ({exc})") from None
