"""Per-channel max|x| of the tensors SmoothQuant smooths, streamed from the calibration data.

The histogram pass keeps per-tensor statistics; SmoothQuant's scale needs each channel's
(the last axis: a LayerNorm output's features). Only the tensors to smooth are captured,
runs are sized by ``memory.capture_plan`` and folded as they stream (``calibrator.fold``), so
memory is one running maximum per channel plus two runs' captures, whatever the sample count.
The first ``ALPHA_ROWS`` rows are kept to judge each alpha of ``smooth.ALPHA_GRID`` by the
readers' output error (``errors``), which ``smoothquant = "auto"`` picks from. Cached in
``calib/NAME/channels.json`` under the hash of the FP32 graph they were measured on.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.calibration.auto import dequantized_weight, fake_quant
from pipeline.calibration.cache import read_cache, stale_reason
from pipeline.calibration.calibrator import capture_session, fold, new_outputs
from pipeline.calibration.smooth import ALPHA_GRID, OFF, Target, scales, weight_absmax
from pipeline.console import progress
from pipeline.data import Feed
from pipeline.errors import PipelineError
from pipeline.fileio import write_json
from pipeline.graphview import GraphView

CHANNELS_VERSION = 1
ALPHA_ROWS = 8  # rows each alpha is judged on (held in memory while the maxima stream)


@dataclass
class ChannelStats:
    """Running max|x| per channel (last axis), and the first ``rows`` rows (first axis) as they came."""

    rows: int = ALPHA_ROWS
    absmax: np.ndarray | None = None
    kept: list[np.ndarray] = field(default_factory=list)
    count: int = 0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32)
        if x.size == 0:
            return
        m = np.abs(x.reshape(-1, x.shape[-1])).max(axis=0)
        if not np.all(np.isfinite(m)):
            raise ValueError("tensor holds NaN or Inf values")
        self.absmax = m if self.absmax is None else np.maximum(self.absmax, m)
        if self.count < self.rows:
            take = x[: self.rows - self.count].copy()  # a copy: a view would keep the whole run alive
            self.kept.append(take)
            self.count += len(take)


@dataclass(frozen=True)
class ChannelRecord:
    absmax: tuple[float, ...]
    errors: dict[str, float]  # per alpha of ALPHA_GRID and OFF: the readers' output error

    def __post_init__(self) -> None:
        if not self.absmax or not all(math.isfinite(v) and v >= 0 for v in self.absmax):
            raise ValueError("absmax must be finite and non-negative, one per channel")
        keys = {OFF, *map(str, ALPHA_GRID)}
        if set(self.errors) != keys or not all(math.isfinite(v) for v in self.errors.values()):
            raise ValueError(f"errors must be finite, one per alpha ({', '.join(sorted(keys))})")


@dataclass(frozen=True)
class ChannelMaxima:
    graph_sha256: str  # the FP32 graph as exported, before smoothing
    settings: dict[str, object]
    tensors: dict[str, ChannelRecord]

    def to_json(self) -> dict:
        return {
            "version": CHANNELS_VERSION,
            "graph_sha256": self.graph_sha256,
            "settings": self.settings,
            "tensors": {k: {"absmax": list(v.absmax), "errors": v.errors} for k, v in sorted(self.tensors.items())},
        }

    def save(self, path: Path) -> None:
        write_json(path, self.to_json())

    def stale_reason(self, graph_sha256: str, settings: dict[str, object], tensors: Iterable[str]) -> str | None:
        return stale_reason(self, graph_sha256, settings, tensors)


def load_channel_maxima(path: Path) -> ChannelMaxima | None:
    """The cache at ``path``, or None if there is none; one that cannot be trusted raises ``InvalidCache``."""

    def parse(raw: dict) -> ChannelMaxima:
        tensors = {
            name: ChannelRecord(tuple(float(v) for v in t["absmax"]), {k: float(e) for k, e in t["errors"].items()})
            for name, t in raw["tensors"].items()
        }
        return ChannelMaxima(str(raw["graph_sha256"]), dict(raw["settings"]), tensors)

    return read_cache(path, CHANNELS_VERSION, parse, "per-channel calibration cache")


def measure_channels(
    fp32: Path,
    view: GraphView,
    found: Sequence[Target],
    runs: Callable[[], Iterable[Feed]],
    groups: Sequence[Sequence[str]],
    total: int | None = None,
) -> dict[str, ChannelRecord]:
    """Per-channel max|x| of each target's tensor over ``runs()`` (called once per capture group:
    the same data each time), and each alpha's error on the first rows."""
    stats = {t.tensor: ChannelStats() for t in found}
    with tempfile.TemporaryDirectory(prefix="trtpipe.channels.") as tmp:
        for i, group in enumerate(groups):
            label = "per-channel maxima" + (f" (pass {i + 1}/{len(groups)})" if len(groups) > 1 else "")
            session = capture_session(fp32, new_outputs(view, group), Path(tmp), arena=False)
            fold(session, {n: stats[n] for n in group}, progress(runs(), label, length=total))
            del session  # one pass's session alive at a time
    out = {}
    for t in found:
        s = stats[t.tensor]
        if s.absmax is None:
            raise PipelineError(f"tensor {t.tensor!r} was empty in every calibration batch: nothing to smooth by")
        absmax = tuple(float(v) for v in s.absmax)
        # Rows as channel vectors: kept runs of different sequence lengths join as positions.
        kept = np.concatenate([k.reshape(-1, k.shape[-1]) for k in s.kept])
        out[t.tensor] = ChannelRecord(absmax, errors(t, view, kept, s.absmax))
    return out


def errors(target: Target, view: GraphView, x: np.ndarray, x_absmax: np.ndarray) -> dict[str, float]:
    """Per alpha of ALPHA_GRID (and OFF), the readers' summed ||y_q - y||^2 / ||y||^2 on the rows
    ``x`` (channels last), with the smoothed activation int8 over its max range and the smoothed
    weights int8 per output channel, as the TensorRT graph quantizes them."""
    x = x.reshape(-1, x.shape[-1]).astype(np.float32)
    weights = [np.moveaxis(view.array(r.weight), r.axis, 0).astype(np.float32) for r in target.readers]  # [K, N]
    refs = [x @ w for w in weights]
    w_absmax = weight_absmax(view, target)
    out = {}
    for alpha in (OFF, *ALPHA_GRID):
        s = (np.ones(x.shape[-1]) if alpha == OFF else scales(x_absmax, w_absmax, alpha)).astype(np.float32)
        xq = fake_quant(x / s, float(np.max(x_absmax / s)))
        total = 0.0
        for w, ref in zip(weights, refs, strict=True):
            yq = xq @ dequantized_weight(w * s[:, None], 1)
            total += float(np.sum((yq - ref) ** 2) / max(float(np.sum(ref**2)), 1e-30))
        out[str(alpha)] = total
    return out


def best_alpha(errors_by_alpha: Mapping[str, float]) -> float | None:
    """The alpha with the least error; None when leaving the tensor unsmoothed is best."""
    key = min(errors_by_alpha, key=lambda k: (errors_by_alpha[k], k != OFF))
    return None if key == OFF else float(key)
