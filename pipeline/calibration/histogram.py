"""Streaming per-tensor statistics: the histogram every range method reads by default (``methods/``).

The histogram of non-zero ``|x|`` covers ``(0, R]`` with ``R`` a power of two. When a
batch exceeds ``R``, ``R`` doubles and adjacent bins are summed: exact, because
the bin edges of the coarser histogram are edges of the finer one. The final
``R`` is the power-of-two ceiling of the global abs-max whatever the batch
order, so the counts are exact sums and the result does not depend on order
(unlike ONNX Runtime's range grown from the first batch, which ModelOpt's
streaming patch inherits). Memory is ``bins`` counters per tensor, whatever the
number of samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pipeline.calibration.methods.base import Settings

# Bump when the statistics or a registered method's arithmetic change: caches record it and are rebuilt
# on a mismatch (a method added or removed makes them stale on its own: cache.load_ranges).
STATS_VERSION = 6
CHUNK = 1 << 20  # values binned at a time


@dataclass
class TensorStats:
    bins: int
    min: float = math.inf
    max: float = -math.inf
    count: int = 0
    zeros: int = 0  # exact zeros (ReLU's spike): any scale represents them, so they stay out of the histogram
    range: float = 0.0  # R; 0 until the first non-zero value
    hist: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.hist is None:
            self.hist = np.zeros(self.bins, dtype=np.int64)

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32).ravel()
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN/Inf propagate into min/max
            raise ValueError("tensor holds NaN or Inf values")
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        self.count += x.size
        amax = max(-lo, hi)
        if amax == 0.0:
            self.zeros += x.size
            return
        self._grow_to(amax)
        # ceil(|x| * bins / R): exact zeros land alone in index 0, (k w, (k+1) w] in k + 1.
        # bins / R is a power of two, so the product is exact and merging bins stays exact.
        # In chunks: the temporaries (4 + 8 bytes a value) stay small beside a large tensor.
        for start in range(0, x.size, CHUNK):
            a = np.abs(x[start : start + CHUNK])
            a *= self.bins / self.range
            np.ceil(a, out=a)
            counts = np.bincount(a.astype(np.intp), minlength=self.bins + 1)  # intp: no conversion inside
            self.zeros += int(counts[0])
            self.hist += counts[1 : self.bins + 1]

    def _grow_to(self, amax: float) -> None:
        target = 2.0 ** math.ceil(math.log2(amax))  # the top edge is inclusive: R may equal amax
        if self.range == 0.0:
            self.range = target
            return
        while self.range < target:
            self.hist = np.concatenate([self.hist.reshape(-1, 2).sum(axis=1), np.zeros(self.bins // 2, np.int64)])
            self.range *= 2.0

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max)) if self.count else 0.0

    @classmethod
    def for_settings(cls, settings: Settings) -> TensorStats:
        return cls(settings.bins)
