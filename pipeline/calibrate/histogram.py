"""Streaming per-tensor statistics and the four range methods.

The histogram of ``|x|`` covers ``[0, R)`` with ``R`` a power of two. When a
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

import numpy as np

# Bump when the statistics change: caches record it and are rebuilt on a mismatch.
STATS_VERSION = 2
QUANT_LEVELS = 128  # int8 symmetric: 127 positive steps plus zero, TensorRT's entropy calibrator's 128 bins


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
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        self.count += x.size
        a = np.abs(x)
        nonzero = a[a > 0.0]
        self.zeros += a.size - nonzero.size
        if nonzero.size == 0:
            return
        a = nonzero
        self._grow_to(float(a.max()))
        idx = np.minimum((a * (self.bins / self.range)).astype(np.int64), self.bins - 1)
        self.hist += np.bincount(idx, minlength=self.bins)

    def _grow_to(self, amax: float) -> None:
        target = 2.0 ** math.ceil(math.log2(amax))
        if target <= amax:  # the top edge is exclusive
            target *= 2.0
        if self.range == 0.0:
            self.range = target
            return
        while self.range < target:
            self.hist = np.concatenate([self.hist.reshape(-1, 2).sum(axis=1), np.zeros(self.bins // 2, np.int64)])
            self.range *= 2.0

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max)) if self.count else 0.0

    # --- thresholds ----------------------------------------------------------

    def thresholds(self, percentile: float) -> dict[str, float]:
        """amax per method, each capped at the observed abs-max."""
        if self.count == 0 or self.absmax == 0.0:
            return dict.fromkeys(("max", "percentile", "entropy", "mse"), 0.0)
        return {
            "max": self.absmax,
            "percentile": min(self.absmax, percentile_amax(self.hist, self.range, percentile)),
            "entropy": min(self.absmax, entropy_amax(self.hist, self.range)),
            "mse": min(self.absmax, mse_amax(self.hist, self.range)),
        }


def percentile_amax(hist: np.ndarray, rng: float, percentile: float) -> float:
    cdf = np.cumsum(hist) / hist.sum()
    i = int(np.searchsorted(cdf, percentile / 100.0))
    return (min(i, len(hist) - 1) + 1) * rng / len(hist)


# KL compares the shapes of P and Q only, so a threshold that clips most of a
# tensor (a few discrete input levels, say) can still score KL ~ 0. Thresholds
# that saturate more than this share of the non-zero values are not considered.
MAX_CLIPPED = 0.01


def entropy_amax(hist: np.ndarray, rng: float, max_candidates: int = 512) -> float:
    """TensorRT-style KL-divergence threshold search over the histogram of ``|x|``.

    For each candidate threshold (kept bins ``i``), the reference P folds the
    clipped tail into the last kept bin and Q is P merged into 128 levels and
    spread back over the non-empty bins; the threshold minimising KL(P||Q) wins.
    """
    hist = hist.astype(np.float64)
    nbins = len(hist)
    nonzero = np.nonzero(hist)[0]
    last = int(nonzero[-1]) + 1 if len(nonzero) else QUANT_LEVELS
    if last <= QUANT_LEVELS:
        return last * rng / nbins
    clipped_share = 1.0 - np.cumsum(hist) / hist.sum()  # share above bin i (0-based i+1 kept)
    first = max(QUANT_LEVELS, int(np.argmax(clipped_share <= MAX_CLIPPED)) + 1)
    stride = max(1, (last - first) // max_candidates)
    candidates = np.arange(first, last + 1, stride)
    if candidates[-1] != last:
        candidates = np.append(candidates, last)
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = sum(hist[i:])
    best_kl, best_i = math.inf, last
    for i in candidates:
        p = hist[:i].copy()
        p[i - 1] += tail[i]
        # Merge i bins into 128 levels (boundaries as in TensorRT's calibrator), spread back uniformly.
        edges = (np.arange(QUANT_LEVELS) * i) // QUANT_LEVELS
        present = p > 0
        level_sum = np.add.reduceat(hist[:i], edges)
        level_nonzero = np.add.reduceat(present.astype(np.float64), edges)
        level_of_bin = np.repeat(np.arange(QUANT_LEVELS), np.diff(np.append(edges, i)))
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(present, level_sum[level_of_bin] / level_nonzero[level_of_bin], 0.0)
        kl = _kl(p, q)
        if kl < best_kl:
            best_kl, best_i = kl, int(i)
    return (best_i + 0.5) * rng / nbins


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p_sum, q_sum = p.sum(), q.sum()
    if p_sum == 0 or q_sum == 0:
        return math.inf
    p = p / p_sum
    q = q / q_sum
    mask = p > 0
    if np.any(q[mask] == 0):
        return math.inf
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def mse_amax(hist: np.ndarray, rng: float, max_candidates: int = 512) -> float:
    """Threshold minimising the expected squared error of int8 fake-quantization.

    Evaluated for all candidates at once on the bin centres: rounding error
    inside the range, clipping error outside it.
    """
    nbins = len(hist)
    nonzero = np.nonzero(hist)[0]
    if len(nonzero) == 0:
        return 0.0
    last = int(nonzero[-1]) + 1
    lo = max(1, last // 64)
    candidates = np.unique(np.linspace(lo, last, num=min(max_candidates, last - lo + 1)).astype(np.int64))
    t = candidates * (rng / nbins)
    centres = (np.arange(last) + 0.5) * (rng / nbins)
    counts = hist[:last].astype(np.float64)
    err = np.empty(len(t))
    for start in range(0, len(t), 64):  # 64 candidates at a time keeps temporaries small
        step = (t[start : start + 64] / 127.0)[:, None]
        q = np.clip(np.round(centres[None, :] / step), 0, 127) * step
        err[start : start + 64] = ((q - centres[None, :]) ** 2) @ counts
    return float(t[int(np.argmin(err))])
