"""Model configs: one TOML file per model, loaded into frozen dataclasses.

Loading validates everything up front. Unknown keys, missing keys and wrong
types raise ``PipelineError`` naming the file, the dotted key and what was
expected, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import PipelineError

# A shape: the size of each [[axes]] axis (the batch axis aside), by name in the config's order.
Shape = Mapping[str, int]
DTYPES = ("float32", "float16", "int64", "int32", "uint8", "int8", "bool")
BATCH_AXIS = "batch"
# Stable ranges take hundreds to thousands of rows; beyond this an endless data callable would only
# run for hours (10**20 rows: forever).
MAX_CALIBRATION_SAMPLES = 1 << 20
# Held-out rows compare and quantize's gate read at most: an endless [evaluation] stream would never end.
MAX_HELDOUT_SAMPLES = 1 << 20
# A profile's largest batch or axis size: Triton's max_batch_size is an int32, and TensorRT profiles
# this large are no real deployment.
MAX_PROFILE = 1 << 16
# A model's name names folders, a Triton model and files in them: with room for what is derived from it.
MAX_NAME = 100
# Bench: what a person would wait for.
MAX_WARMUP, MAX_ITERATIONS, MAX_MIN_SECONDS = 10_000, 1_000_000, 3600.0
# Quantize's per-region speed search on the CPU graph: what a person would wait for inside quantize.
MAX_SPEED_SEARCH_SECONDS = 600.0


@dataclass(frozen=True)
class ModelSection:
    """The model: a PyTorch builder (``source``, its ``args`` and ``weights``) or an ONNX file (``onnx``)."""

    source: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    onnx: str | None = None

    def __post_init__(self) -> None:
        if (self.source is None) == (self.onnx is None):
            raise ValueError(
                "needs either source = 'file.py:callable' (a PyTorch module) or onnx = 'model.onnx', not both"
            )
        if self.onnx is not None and (self.args or self.weights is not None):
            raise ValueError("args and weights belong to a PyTorch source; an ONNX file holds its weights")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        for dim in self.shape:
            if isinstance(dim, int) and dim < 1:
                raise ValueError(f"shape {list(self.shape)} has a non-positive dimension")

    @property
    def batch_axis(self) -> int | None:
        return self.shape.index(BATCH_AXIS) if BATCH_AXIS in self.shape else None

    def concrete_shape(self, batch: int, sizes: Mapping[str, int] | None = None) -> tuple[int, ...]:
        """The shape with the batch axis set and each named axis at its size in ``sizes``."""
        out = []
        for dim in self.shape:
            if dim == BATCH_AXIS:
                out.append(batch)
            elif isinstance(dim, str):
                if sizes is None or dim not in sizes:
                    raise PipelineError(
                        f"input {self.name!r}: axis {dim!r} is dynamic; give it a size in an [[axes]] "
                        f"entry or make it static to run at a fixed shape"
                    )
                out.append(sizes[dim])
            else:
                out.append(dim)
        return tuple(out)


@dataclass(frozen=True)
class BatchProfile:
    """A TensorRT optimization profile over the batch axis."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"needs 1 <= min <= opt <= max, got min={self.min} opt={self.opt} max={self.max}")
        if self.max > MAX_PROFILE:
            raise ValueError(f"max {self.max} is more than a profile can serve (at most {MAX_PROFILE})")


@dataclass(frozen=True)
class AxisRange(BatchProfile):
    """Range of a named dynamic axis other than the batch axis (e.g. sequence length)."""

    name: str


def shape_label(shape: Shape) -> str:
    """``seq=16`` (``seq=16,width=32``): a shape as tables, charts and messages name it; "" for none."""
    return ",".join(f"{name}={size}" for name, size in shape.items())


@dataclass(frozen=True)
class ExportSection:
    opset: int = 19
    # Dtype of the FP16 graph's inputs and outputs; float32 keeps the I/O
    # contract of the reference graph and casts at the edges.
    io_dtype: Literal["float32", "float16"] = "float32"
    # TensorRT warns that LayerNorm overflows in FP16 and recommends FP32.
    keep_fp32: tuple[str, ...] = ("LayerNormalization",)
    # Each must fit a [batch] profile; unset (None): PARITY_BATCHES moved into the profiles.
    parity_batches: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        import onnx  # here, not at the top: `trtpipe --help` stays light

        newest = onnx.defs.onnx_opset_version()
        if not 19 <= self.opset <= newest:
            raise ValueError(
                f"opset {self.opset} is out of range: FP16 Q/DQ scales need opset >= 19, and this onnx "
                f"knows opsets up to {newest}"
            )


# An image's width times height at most: a small file that would decode to gigabytes is refused
# before it is decoded. A 64-megapixel photograph fits.
MAX_IMAGE_PIXELS = 1 << 26
MAX_IMAGE_SIDE = 4096  # [calibration.image] size: a model input, not a photograph
CHANNELS = {"RGB": 3, "BGR": 3, "L": 1}
RESIZE_MODES = ("resize", "center-crop", "letterbox")


@dataclass(frozen=True)
class ImageSection:
    """``[calibration.image]``: how image files become the model's one input, for calibration and for
    held-out image folders alike. ``size`` is [height, width]; ``resize`` stretches to it,
    ``center-crop`` scales the shorter side to cover it and cuts the middle, ``letterbox`` scales the
    longer side to fit and pads with black. Float dtypes take pixels / 255, then (x - mean) / std per
    channel; uint8 takes the pixels as they are."""

    size: tuple[int, ...]
    resize: Literal["resize", "center-crop", "letterbox"] = "resize"
    channels: Literal["RGB", "BGR", "L"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: Literal["float32", "float16", "uint8"] = "float32"
    mean: tuple[float, ...] | None = None  # one per channel; unset: 0
    std: tuple[float, ...] | None = None  # one per channel; unset: 1

    def __post_init__(self) -> None:
        if len(self.size) != 2 or not all(1 <= side <= MAX_IMAGE_SIDE for side in self.size):
            raise ValueError(f"size {list(self.size)} must be [height, width], each 1 to {MAX_IMAGE_SIDE}")
        count = CHANNELS[self.channels]
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) != count:
                raise ValueError(f"{key} {list(value)} needs {count} value(s), one per {self.channels} channel")
            if value is not None and self.dtype == "uint8":
                raise ValueError(f"{key} needs a float dtype; uint8 takes the pixels as they are")
        if self.std is not None and not all(s > 0 for s in self.std):
            raise ValueError(f"std {list(self.std)} must be positive")

    def shape(self) -> tuple[int, int, int]:
        """One image's (C, H, W) or (H, W, C), as ``layout`` says."""
        height, width = self.size
        count = CHANNELS[self.channels]
        return (count, height, width) if self.layout == "NCHW" else (height, width, count)


@dataclass(frozen=True)
class CalibrationSection:
    source: str
    samples: int = 512
    batch_size: int = 32
    method: str = "auto"  # a name in pipeline.calibration.methods.REGISTRY, or auto: per tensor, one of them
    percentile: float = 99.99
    # Histogram bins over (0, R], R the power-of-two ceiling of |x|max: fine enough that
    # entropy/MSE can pick thresholds down to R/64.
    bins: int = 8192
    args: dict[str, Any] = field(default_factory=dict)
    image: ImageSection | None = None

    def __post_init__(self) -> None:
        known = _registry("pipeline.calibration.methods").choices()
        if self.method not in known:
            raise ValueError(f"method {self.method!r} is not one of {', '.join(known)}")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile {self.percentile} must be in (50, 100]")
        if self.samples < 1 or self.batch_size < 1:
            raise ValueError("samples and batch_size must be positive")
        if self.samples > MAX_CALIBRATION_SAMPLES:
            raise ValueError(
                f"samples {self.samples} is more than calibration needs (at most {MAX_CALIBRATION_SAMPLES}; "
                f"a few hundred rows give stable ranges)"
            )
        if not 128 <= self.bins <= 1 << 16 or self.bins & (self.bins - 1):
            raise ValueError(f"bins {self.bins} must be a power of two between 128 and 65536")


BUILTIN_METRICS = {"top1": True, "top5": True, "mse": False, "psnr": True}  # name: higher is better
CLASS_METRICS = ("top1", "top5")  # labels are one class index per row


@dataclass(frozen=True)
class EvaluationSection:
    """Held-out data: a callable yielding ``(feed, labels)`` batches, or a folder (.npz files with a
    ``labels`` array, or images in one subfolder per class). ``metric`` is a built-in name or a user
    callable ``file.py:fn`` (``fn(outputs, labels) -> float``), which declares ``higher_is_better``."""

    source: str
    metric: str = "top1"
    higher_is_better: bool | None = None
    labels: str = "labels"  # a folder of .npz: the array holding the labels
    peak: float = 1.0  # psnr: the largest value a target holds (1.0 for images in [0, 1])
    args: dict[str, Any] = field(default_factory=dict)
    # At most this many held-out rows are read (compare, quantize's gate): a stream may be endless.
    samples: int = 10_000

    def __post_init__(self) -> None:
        if not 1 <= self.samples <= MAX_HELDOUT_SAMPLES:
            raise ValueError(f"samples {self.samples} must be between 1 and {MAX_HELDOUT_SAMPLES}")
        builtin = BUILTIN_METRICS.get(self.metric)
        if builtin is None and ":" not in self.metric:
            raise ValueError(
                f"metric {self.metric!r} is not one of {', '.join(BUILTIN_METRICS)} nor a callable 'file.py:fn'"
            )
        if builtin is None and self.higher_is_better is None:
            raise ValueError(f"metric {self.metric!r} needs higher_is_better = true or false")
        if builtin is not None and self.higher_is_better not in (None, builtin):
            raise ValueError(
                f"metric {self.metric!r} is {'higher' if builtin else 'lower'} is better; drop higher_is_better"
            )
        if not (math.isfinite(self.peak) and self.peak > 0):
            raise ValueError(f"peak {self.peak} must be a positive number")

    @property
    def better_higher(self) -> bool:
        """Whether a larger figure of the metric is better."""
        return BUILTIN_METRICS.get(self.metric, bool(self.higher_is_better))


def _registry(package: str):
    """A registry (``pipeline.targets``, ``pipeline.calibration.methods``), for the names a config may
    use. By name, not an import statement: what a config's names are checked against is not code any
    stage's outputs depend on (``pipeline.codehash`` follows import statements)."""
    return importlib.import_module(package)


@dataclass(frozen=True)
class QuantizeSection:
    # Names in pipeline.targets.REGISTRY; tensorrt: model.w8a8.onnx on the FP16 graph; tensorrt-fp8:
    # model.fp8.onnx (FP8 E4M3) on the FP16 graph; onnxruntime-cpu: model.w8a8-cpu.onnx on the FP32 graph.
    targets: tuple[str, ...] = ("tensorrt", "onnxruntime-cpu")
    exclude_nodes: tuple[str, ...] = ()
    exclude_patterns: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    # Channels (Conv) or K/N (GEMM) below this stay FP16: too small to gain.
    min_channels: int = 16
    # tensorrt-fp8: Conv in FP8 too, where TensorRT has FP8 convolution (pipeline/targets/tensorrt_fp8/
    # placement.py); off: FP8 on MatMul/Gemm only, Conv in FP16.
    fp8_conv: bool = False
    # SmoothQuant's migration strength alpha in (0, 1] for LayerNorm -> MatMul/Gemm (see
    # pipeline/calibration/smooth.py), "auto" to pick it per LayerNorm by the readers' int8 error;
    # unset: off.
    smoothquant: float | Literal["auto"] | None = None
    # The CPU graph keeps Q/DQ only in the regions ONNX Runtime times faster with them, searched for
    # about this long (pipeline/targets/onnxruntime_cpu/regions.py); 0: every region keeps its Q/DQ.
    speed_search_seconds: float = 30.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.speed_search_seconds <= MAX_SPEED_SEARCH_SECONDS:  # NaN too
            raise ValueError(
                f"speed_search_seconds {self.speed_search_seconds} must be 0 (off) to {MAX_SPEED_SEARCH_SECONDS:g}"
            )
        known = list(_registry("pipeline.targets").REGISTRY)
        unknown = [t for t in self.targets if t not in known]
        if unknown or not self.targets:
            raise ValueError(f"targets {list(self.targets)} must be a non-empty subset of {known}")
        for pattern in self.exclude_patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"exclude_patterns: {pattern!r} is not a valid regex ({exc})") from None
        if isinstance(self.smoothquant, float) and not 0.0 < self.smoothquant <= 1.0:
            raise ValueError(f'smoothquant = {self.smoothquant:g}: alpha must be in (0, 1], or "auto"')


@dataclass(frozen=True)
class Gate:
    """Accuracy gate for one precision, against the FP32 reference (see pipeline/evaluate/metrics.py):
    ``min_cosine`` and ``max_rel_error`` are judged centered (or raw, ``centered = false``),
    ``min_top1_agreement`` on decisive rows only. ``max_abs`` is in the output's own units (off by default)."""

    min_cosine: float = 0.99
    max_rel_error: float | None = None
    # True: judge how outputs vary between inputs (centered cosine, error of the spread), what
    # quantization can lose. False: judge the raw output (cosine, error of the norm), as rounding
    # error scales with the values: the parity of the FP32 and FP16 graphs.
    centered: bool = True
    max_abs: float | None = None
    min_top1_agreement: float | None = None
    max_metric_drop: float | None = None

    def __post_init__(self) -> None:
        if not -1.0 <= self.min_cosine <= 1.0:
            raise ValueError(f"min_cosine {self.min_cosine} must be in [-1, 1]")
        if self.min_top1_agreement is not None and not 0.0 <= self.min_top1_agreement <= 1.0:
            raise ValueError(f"min_top1_agreement {self.min_top1_agreement} must be in [0, 1]")
        for key in ("max_rel_error", "max_abs", "max_metric_drop"):
            value = getattr(self, key)
            if value is not None and not value >= 0.0:  # NaN too
                raise ValueError(f"{key} {value} must be 0 or more")


@dataclass(frozen=True)
class Budget:
    """``[accuracy.budget]``: quantize keeps the fewest layers in FP16 that bring each w8a8 graph within
    it, against FP32 on held-out data. ``min_cosine`` is judged centered, as the gates judge it;
    ``max_metric_drop`` in the metric's units (top-1 points, dB, ...). At most ``max_fp16_layers``
    (when set) and at most ``max_fp16_share`` of the quantized layers may fall back."""

    min_cosine: float | None = None
    max_metric_drop: float | None = None
    max_fp16_layers: int | None = None
    max_fp16_share: float = 0.25

    def __post_init__(self) -> None:
        if self.min_cosine is None and self.max_metric_drop is None:
            raise ValueError("needs min_cosine, max_metric_drop or both")
        if self.min_cosine is not None and not 0.0 < self.min_cosine <= 1.0:
            raise ValueError(f"min_cosine {self.min_cosine} must be in (0, 1]")
        if self.max_metric_drop is not None and self.max_metric_drop < 0:
            raise ValueError(f"max_metric_drop {self.max_metric_drop} must be 0 or more (in the metric's units)")
        if self.max_fp16_layers is not None and self.max_fp16_layers < 0:
            raise ValueError(f"max_fp16_layers {self.max_fp16_layers} must be 0 or more")
        if not 0.0 < self.max_fp16_share <= 1.0:
            raise ValueError(f"max_fp16_share {self.max_fp16_share} must be in (0, 1]")

    def cap(self, layers: int) -> int:
        """How many of ``layers`` quantized layers may fall back to FP16."""
        by_share = math.ceil(self.max_fp16_share * layers - 1e-9)  # rounded up: a small net may keep one
        return by_share if self.max_fp16_layers is None else min(by_share, self.max_fp16_layers)


# int8 on every GEMM: a cosine of 0.99 is ~14% error of the spread; top-1 may move 1 point.
QUANTIZED_GATE = Gate(min_cosine=0.99, min_top1_agreement=0.97, max_metric_drop=1.0)

# Batch sizes used when a config sets none, each moved into the [batch] profiles.
PARITY_BATCHES = (1, 7)
ACCURACY_BATCHES = (1, 64)
BENCH_GPU_BATCHES = (128, 256, 512, 1024)
BENCH_CPU_BATCHES = (1, 16, 64)


@dataclass(frozen=True)
class AccuracySection:
    # Held-out batch sizes compare runs every artifact at; each must fit a [batch] profile.
    # Unset (None): ACCURACY_BATCHES moved into the profiles.
    batches: tuple[int, ...] | None = None
    # With [[axes]]: the shapes (axis -> size) whose held-out rows compare scores, each on its own and the
    # worst gating. Unset (None): every shape the held-out rows come in.
    shapes: tuple[dict[str, int], ...] | None = None
    # ONNX Runtime against PyTorch, both FP32: only summation order differs.
    fp32: Gate = Gate(min_cosine=0.99999, max_rel_error=1e-3, centered=False)
    # FP16 keeps ~3 decimal digits per op; over 50+ layers the output drifts ~1-2% of its norm
    # (ResNet-50: cosine 0.9998, 5% of a random net's small spread). A broken conversion (an
    # overflow, a mistyped tensor) is far beyond.
    fp16: Gate = Gate(min_cosine=0.999, max_rel_error=0.05, centered=False)
    # Each quantization target's artifact by name (``[accuracy.w8a8]``, ``[accuracy.w8a8-cpu]``); one a
    # config leaves out has QUANTIZED_GATE.
    gates: dict[str, Gate] = field(default_factory=dict)
    budget: Budget | None = None
    # Held-out rows per-layer sensitivity and the budget loop score each candidate graph on.
    sensitivity_rows: int = 64

    def __post_init__(self) -> None:
        if self.sensitivity_rows < 1:
            raise ValueError(f"sensitivity_rows {self.sensitivity_rows} must be 1 or more")

    def gate(self, artifact: str) -> Gate:
        """The gate of an artifact: ``fp32``, ``fp16`` or a target's (``w8a8``, ``w8a8-cpu``, ...)."""
        if artifact in ("fp32", "fp16"):
            return getattr(self, artifact)
        return self.gates.get(artifact, QUANTIZED_GATE)


@dataclass(frozen=True)
class BenchSection:
    # Each must fit a [batch] profile; unset (None): BENCH_*_BATCHES moved into the profiles.
    gpu_batches: tuple[int, ...] | None = None
    cpu_batches: tuple[int, ...] | None = None
    warmup: int = 5
    iterations: int = 20  # at least this many timed runs ...
    min_seconds: float = 1.0  # ... and at least this long per artifact and batch size
    threads: int = 1
    cuda_graph: bool = False  # TensorRT: each timed inference a CUDA graph launch (trtexec --useCudaGraph)
    # With [[axes]]: the shapes (axis -> size) bench times at, the last one giving the speedup the verdict
    # reads. Unset (None): every axis at its min, then opt, then max.
    shapes: tuple[dict[str, int], ...] | None = None

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.iterations < 1 or self.threads < 1 or not self.min_seconds >= 0.0:
            raise ValueError("warmup and min_seconds must be 0 or more, iterations and threads 1 or more")
        if not math.isfinite(self.min_seconds):  # each artifact and batch would be timed forever
            raise ValueError(f"min_seconds {self.min_seconds} must be a finite number of seconds")
        for key, value, most in (
            ("warmup", self.warmup, MAX_WARMUP),
            ("iterations", self.iterations, MAX_ITERATIONS),
            ("min_seconds", self.min_seconds, MAX_MIN_SECONDS),
            ("threads", self.threads, os.cpu_count() or 1),
        ):
            if value > most:
                raise ValueError(f"{key} {value} is more than bench can use (at most {most:g} here)")


@dataclass(frozen=True)
class VerdictSection:
    # w8a8 is worth deploying only where it is at least this many times as fast as its baseline; at
    # the largest batch benched this decides for the model (report, gpu-check's speed check, deploy).
    min_speedup: float = 1.05

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_speedup) and self.min_speedup > 0.0):
            raise ValueError(f"min_speedup {self.min_speedup} must be a positive number (1.05: w8a8 5% faster)")


@dataclass(frozen=True)
class BuildSection:
    workspace_mib: int = 4096
    optimization_level: int = 3
    # TF32 for Conv/GEMM/MatMul layers the graph computes in FP32. Unset: on, unless [export] keep_fp32
    # keeps such an op type in FP32, which asks for FP32's precision, not only its range.
    tf32: bool | None = None

    def __post_init__(self) -> None:
        if self.workspace_mib < 1:
            raise ValueError(f"workspace_mib {self.workspace_mib} must be 1 or more (TensorRT's workspace pool limit)")
        if not 0 <= self.optimization_level <= 5:
            raise ValueError("optimization_level must be 0..5 (TensorRT's builder_optimization_level)")


@dataclass(frozen=True)
class Config:
    name: str
    model: ModelSection
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batch: tuple[BatchProfile, ...]
    calibration: CalibrationSection
    axes: tuple[AxisRange, ...] = ()
    export: ExportSection = ExportSection()
    evaluation: EvaluationSection | None = None
    quantize: QuantizeSection = QuantizeSection()
    accuracy: AccuracySection = AccuracySection()
    bench: BenchSection = BenchSection()
    verdict: VerdictSection = VerdictSection()
    build: BuildSection = BuildSection()
    # Set by the loader, not by the file.
    path: Path = Path(".")

    def __post_init__(self) -> None:
        # One safe path component: it names folders under engines/ and calib/ (".." would escape them).
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", self.name):
            raise ValueError(
                f"name {self.name!r} may hold only letters, digits, '_', '.', '-', and must not start with '.' or '-'"
            )
        if len(self.name) > MAX_NAME:
            raise ValueError(f"name is {len(self.name)} characters; at most {MAX_NAME}")
        if not self.inputs:
            raise ValueError("needs at least one [[inputs]] entry")
        if not self.outputs:
            raise ValueError("needs at least one [[outputs]] entry")
        if not self.batch:
            raise ValueError("needs at least one [batch] profile")
        self._check_axes()
        names = [t.name for t in (*self.inputs, *self.outputs)]
        if len(set(names)) != len(names):
            raise ValueError(f"input and output names must be unique, got {names}")
        self._check_image()
        budget = self.accuracy.budget
        if budget is not None and budget.max_metric_drop is not None and self.evaluation is None:
            raise ValueError(
                "key 'accuracy.budget.max_metric_drop' needs labelled held-out data: add [evaluation] "
                "or budget by min_cosine"
            )
        # Frozen: the batch sizes left unset are filled in once, here, from the profiles.
        parity = self._fit("export.parity_batches", self.export.parity_batches, PARITY_BATCHES)
        object.__setattr__(self, "export", dataclasses.replace(self.export, parity_batches=parity))
        accuracy = self._fit("accuracy.batches", self.accuracy.batches, ACCURACY_BATCHES)
        object.__setattr__(self, "accuracy", dataclasses.replace(self.accuracy, batches=accuracy))
        gpu = self._fit("bench.gpu_batches", self.bench.gpu_batches, BENCH_GPU_BATCHES)
        cpu = self._fit("bench.cpu_batches", self.bench.cpu_batches, BENCH_CPU_BATCHES)
        object.__setattr__(self, "bench", dataclasses.replace(self.bench, gpu_batches=gpu, cpu_batches=cpu))
        bench_shapes = self._fit_shapes("bench.shapes", self.bench.shapes)
        if self.axes and bench_shapes is None:
            bench_shapes = self.profile_shapes()
        object.__setattr__(self, "bench", dataclasses.replace(self.bench, shapes=bench_shapes))
        accuracy_shapes = self._fit_shapes("accuracy.shapes", self.accuracy.shapes)
        object.__setattr__(self, "accuracy", dataclasses.replace(self.accuracy, shapes=accuracy_shapes))

    def _check_axes(self) -> None:
        """Each [[axes]] entry names a dynamic axis of some input, once; each such axis has one."""
        names = [a.name for a in self.axes]
        used = {d for spec in self.inputs for d in spec.shape if isinstance(d, str) and d != BATCH_AXIS}
        for name in names:
            if name == BATCH_AXIS:
                raise ValueError("[[axes]] name 'batch' is the batch axis: its range is the [batch] profile")
            if names.count(name) > 1:
                raise ValueError(f"[[axes]] name {name!r} is given twice; one range per axis")
            if name not in used:
                raise ValueError(f"[[axes]] name {name!r} is no axis of any input; name it in an input's shape")
        missing = sorted(used - set(names))
        if missing:
            raise ValueError(
                f"input axis {missing[0]!r} is dynamic but has no range; add [[axes]] with "
                f"name = {missing[0]!r}, min, opt, max (or make it static)"
            )

    def profile_shapes(self) -> tuple[dict[str, int], ...]:
        """Every axis at its min, at its opt, at its max (one shape, {}, without [[axes]])."""
        shapes: list[dict[str, int]] = []
        for which in ("min", "opt", "max"):
            shape = {a.name: getattr(a, which) for a in self.axes}
            if shape not in shapes:
                shapes.append(shape)
        return tuple(shapes)

    def _fit_shapes(self, key: str, shapes: tuple[dict[str, int], ...] | None) -> tuple[dict[str, int], ...] | None:
        """Shapes as given, each naming every [[axes]] axis at a size inside its range, in [[axes]] order."""
        if shapes is None:
            return None
        if not self.axes:
            raise ValueError(f"key '{key}' needs [[axes]]: without dynamic axes a model runs at one shape")
        if not shapes:
            raise ValueError(
                f"key '{key}' needs one or more shapes, like {{ {self.axes[0].name} = {self.axes[0].opt} }}"
            )
        fitted = []
        for i, shape in enumerate(shapes):
            names = [a.name for a in self.axes]
            if sorted(shape) != sorted(names):
                raise ValueError(
                    f"key '{key}[{i}]' = {shape}: give a size for each axis of [[axes]] ({', '.join(names)})"
                )
            for axis in self.axes:
                size = shape[axis.name]
                if type(size) is not int or not axis.min <= size <= axis.max:
                    raise ValueError(
                        f"key '{key}[{i}]' = {shape}: {axis.name} {size!r} is outside its [[axes]] range "
                        f"[{axis.min}, {axis.max}]; widen the range or pick a size inside it"
                    )
            fitted.append({name: shape[name] for name in names})
        return tuple(fitted)

    def _check_image(self) -> None:
        """Images feed one input of rank 4 whose dtype and static dims the preprocessing makes."""
        image = self.calibration.image
        if image is None:
            return
        if len(self.inputs) != 1:
            raise ValueError("key 'calibration.image' feeds one input; a model of several takes .npz files")
        spec = self.inputs[0]
        if spec.dtype != image.dtype:
            raise ValueError(f"key 'calibration.image.dtype' = {image.dtype!r}, input {spec.name!r} is {spec.dtype}")
        if len(spec.shape) != 4 or spec.batch_axis != 0:
            raise ValueError(f"key 'calibration.image' needs input {spec.name!r} shaped [batch, ...] of rank 4")
        made = image.shape()
        for axis, (want, got) in enumerate(zip(spec.shape[1:], made, strict=True), start=1):
            if isinstance(want, int) and want != got:
                raise ValueError(
                    f"key 'calibration.image' makes {image.layout} images {list(made)}, input {spec.name!r} "
                    f"is {list(spec.shape)} (axis {axis}); set size, channels or layout to match"
                )

    def nearest_batch(self, batch: int) -> int:
        """``batch`` if a [batch] profile holds it, else the profile bound nearest to it."""
        return min((min(max(batch, p.min), p.max) for p in self.batch), key=lambda b: (abs(b - batch), b))

    def _fit(self, key: str, batches: tuple[int, ...] | None, defaults: tuple[int, ...]) -> tuple[int, ...]:
        """Set batch sizes must fit a profile (a deployed engine serves no other); unset ones are
        the defaults moved into the profiles."""
        if batches is None:
            return tuple(sorted({self.nearest_batch(b) for b in defaults}))
        if not batches:
            raise ValueError(f"key '{key}' needs one or more batch sizes")
        outside = [b for b in batches if self.nearest_batch(b) != b]
        if outside:
            profiles = ", ".join(f"[{p.min}, {p.max}]" for p in self.batch)
            raise ValueError(
                f"key '{key}' = {list(batches)}: batch {outside[0]} is outside every [batch] profile "
                f"({profiles}); widen a profile or drop that batch size"
            )
        return batches

    @property
    def root(self) -> Path:
        """Folder the config lives in: relative paths in it resolve from here."""
        return self.path.parent

    def resolve(self, relative: str) -> Path:
        p = Path(relative).expanduser()
        return p if p.is_absolute() else (self.root / p)


# --- loading -----------------------------------------------------------------


def load_config(path: str | Path) -> Config:
    """The config in the TOML file at ``path``, validated; relative paths in it resolve from its folder."""
    path = Path(path)
    if path.exists() and not path.is_dir() and not path.is_file():  # a FIFO would block the read forever
        raise PipelineError(f"{path}: not a regular file (a FIFO, socket or device); give the model's .toml file")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise PipelineError(f"{path}: is a folder; give the model's .toml file") from None
    except UnicodeDecodeError as exc:
        raise PipelineError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise PipelineError(f"{path}: not valid TOML ({exc})") from None
    return config_from_dict(raw, path)


def config_from_dict(raw: dict[str, Any], path: str | Path = "config.toml") -> Config:
    """A config from a dict shaped as the TOML file is (``{"name": ..., "model": {...}, "inputs": [...]}``),
    validated as a file is; ``path`` stands for the file it would be, so relative paths in it resolve
    from ``path``'s folder (the working folder by default) and errors name it."""
    path = Path(path)
    raw = dict(raw)
    if isinstance(raw.get("batch"), dict):
        raw["batch"] = [raw["batch"]]  # one [batch] table is one profile
    if isinstance(raw.get("accuracy"), dict):
        raw["accuracy"] = _with_gates(raw["accuracy"], str(path))
    cfg = _build(Config, raw, str(path), "")
    return dataclasses.replace(cfg, path=path.resolve())


def _with_gates(accuracy: dict, file: str) -> dict:
    """``[accuracy]`` with each quantized artifact's gate table (``[accuracy.w8a8-cpu]``, also spelled
    ``w8a8_cpu``) moved under ``gates``, built from QUANTIZED_GATE's values."""
    artifacts = {t.artifact: t.artifact for t in _registry("pipeline.targets").everything()}
    artifacts |= {a.replace("-", "_"): a for a in list(artifacts)}
    fields = {f.name for f in dataclasses.fields(AccuracySection)} - {"gates"}
    gates = {}
    for key in [k for k in accuracy if k not in fields]:
        if key not in artifacts:
            expected = ", ".join(sorted(fields | set(artifacts)))
            raise PipelineError(f"{file}: unknown key 'accuracy.{key}' (expected one of: {expected})")
        gates[artifacts[key]] = _build(Gate, accuracy[key], file, f"accuracy.{key}.", base=QUANTIZED_GATE)
    return {**{k: v for k, v in accuracy.items() if k in fields}, "gates": gates}


def _build(cls: type, raw: Any, file: str, prefix: str, base: Any = None) -> Any:
    """``cls`` from a TOML table; keys the table leaves out come from ``base`` (the field's default
    instance: ``[accuracy.fp16] min_cosine = ...`` keeps the fp16 gate's other defaults), else from
    the class."""
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise PipelineError(f"{file}: {where} should be a table, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "path" or cls is not Config}
    for key in raw:
        if key not in fields:
            raise PipelineError(f"{file}: unknown key '{prefix}{key}' (expected one of: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        if name in raw and dataclasses.is_dataclass(f.default):
            kwargs[name] = _build(hints[name], raw[name], file, f"{prefix}{name}.", base=f.default)
        elif name in raw:
            kwargs[name] = _convert(hints[name], raw[name], file, f"{prefix}{name}")
        elif base is not None:
            kwargs[name] = getattr(base, name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise PipelineError(f"{file}: missing key '{prefix}{name}' ({_describe(hints[name])})")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise PipelineError(f"{file}: {where + ': ' if prefix else ''}{exc}") from None


def _convert(tp: Any, value: Any, file: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = PipelineError(f"{file}: key '{key}' should be {_describe(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, file, key + ".")
    if origin in (typing.Union, types.UnionType):
        tables = [a for a in args if dataclasses.is_dataclass(a)]
        if len(tables) == 1 and all(a is type(None) for a in args if a is not tables[0]):
            return _build(tables[0], value, file, key + ".")  # an optional table: its own errors, not "should be"
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, file, key)
            except PipelineError:
                continue
        raise bad
    if origin is Literal:
        if value in args:
            return value
        raise bad
    if origin is tuple:
        if not isinstance(value, list):
            raise bad
        item = args[0]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(item, v, file, f"{key}[{i}]") for i, v in enumerate(value))
        raise bad  # fixed-length tuples are not used in configs
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        if args and args[1] is Gate:  # [accuracy] gates, built by _with_gates
            return {k: v if isinstance(v, Gate) else _build(Gate, v, file, f"{key}.{k}.") for k, v in value.items()}
        return dict(value)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if tp is int or tp is str or tp is bool:
        if type(value) is tp:
            return value
        raise bad
    if tp is Path:
        return Path(value)
    raise TypeError(f"config field type {tp!r} is not supported by the loader")


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return "a table"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        inner = args[0]
        return "an array of tables" if dataclasses.is_dataclass(inner) else f"an array of {_describe(inner)}"
    if origin is dict:
        return "a table"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))
