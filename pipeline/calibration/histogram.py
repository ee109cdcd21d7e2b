"""Streaming per-tensor statistics and the four range methods.

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

import numpy as np

from pipeline.config import RANGE_METHODS

# Bump when the statistics change: caches record it and are rebuilt on a mismatch.
STATS_VERSION = 6
CHUNK = 1 << 20  # values binned at a time
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

    # --- thresholds ----------------------------------------------------------

    def thresholds(self, percentile: float) -> dict[str, float]:
        """amax per method, each capped at the observed abs-max."""
        if self.count == 0 or self.absmax == 0.0:
            return dict.fromkeys(RANGE_METHODS, 0.0)
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


def entropy_amax(hist: np.ndarray, rng: float, max_candidates: int = 256) -> float:
    """TensorRT-style KL-divergence threshold search over the histogram of ``|x|``.

    For each candidate threshold (kept bins ``i``), the reference P folds the
    clipped tail into the last kept bin and Q is the kept bins merged into 128
    levels and spread back over P's non-empty bins; the threshold minimising
    KL(P||Q) wins. Candidates are scored all at once from prefix sums, first on
    a coarse grid of ``max_candidates``, then bin by bin around the best coarse ones.
    """
    h = hist.astype(np.float64)
    nbins = len(h)
    nonzero = np.nonzero(h)[0]
    last = int(nonzero[-1]) + 1 if len(nonzero) else QUANT_LEVELS
    if last <= QUANT_LEVELS:
        return last * rng / nbins
    kl = _KlScorer(h)
    clipped_share = 1.0 - kl.cum[1:] / kl.total  # share above bin k when bins [0, k] are kept
    first = max(QUANT_LEVELS, int(np.argmax(clipped_share <= MAX_CLIPPED)) + 1)
    stride = max(1, (last - first) // max_candidates)
    coarse = np.unique(np.append(np.arange(first, last + 1, stride), last))
    # KL has local minima: refine bin by bin around the three best coarse candidates.
    leaders = coarse[np.argsort(kl(coarse))[:3]]
    fine = np.unique(np.concatenate([np.arange(max(first, c - stride), min(last, c + stride) + 1) for c in leaders]))
    best = int(fine[int(np.argmin(kl(fine)))])
    return (best + 0.5) * rng / nbins


class _KlScorer:
    """KL(P||Q) for many candidate bin counts ``i`` at once, from prefix sums of the histogram.

    KL = (sum p log p - sum_j T_j log(S_j / N_j)) / P - log P + log Q, where level j
    holds S_j counts over N_j non-empty bins and T_j adds the clipped tail to the last level.
    """

    def __init__(self, h: np.ndarray) -> None:
        self.h = h
        self.total = h.sum()
        self.cum = np.concatenate([[0.0], np.cumsum(h)])  # cum[k] = sum(h[:k])
        self.cum_nz = np.concatenate([[0.0], np.cumsum(h > 0)])
        hlogh = np.zeros_like(h)
        hlogh[h > 0] = h[h > 0] * np.log(h[h > 0])
        self.cum_hlogh = np.concatenate([[0.0], np.cumsum(hlogh)])

    def __call__(self, i: np.ndarray) -> np.ndarray:
        h, cum = self.h, self.cum
        tail = self.total - cum[i]
        p_last = h[i - 1] + tail
        sum_plogp = self.cum_hlogh[i - 1] + p_last * np.log(np.maximum(p_last, 1e-300))
        edges = (np.arange(QUANT_LEVELS + 1)[None, :] * i[:, None]) // QUANT_LEVELS  # (C, 129), last column i
        level_sum = np.diff(cum[edges], axis=1)  # S_j
        level_nz = np.diff(self.cum_nz[edges], axis=1)  # N_j
        level_nz[:, -1] += (h[i - 1] == 0) & (tail > 0)  # the folded tail makes the last bin non-empty
        level_p = level_sum.copy()
        level_p[:, -1] += tail  # T_j
        impossible = ((level_p > 0) & (level_sum <= 0)).any(axis=1)  # P has mass where Q has none
        # Levels without mass add 0 (T_j = 0); the impossible ones are set to infinity below.
        ratio = np.maximum(level_sum, 1e-300) / np.maximum(level_nz, 1.0)
        sum_plogq = (level_p * np.log(ratio)).sum(axis=1)
        kl = (sum_plogp - sum_plogq) / self.total - np.log(self.total) + np.log(cum[i])
        kl[impossible] = np.inf
        return kl


def mse_amax(hist: np.ndarray, rng: float) -> float:
    """Threshold minimising the expected squared error of int8 quantization.

    For threshold t (step s = t/127): rounding noise s^2/12 for each value kept,
    plus (x - t)^2 for each value clipped, all candidates at once from prefix sums.
    """
    nbins = len(hist)
    nonzero = np.nonzero(hist)[0]
    if len(nonzero) == 0:
        return 0.0
    last = int(nonzero[-1]) + 1
    width = rng / nbins
    c = hist[:last].astype(np.float64)
    x = (np.arange(last) + 0.5) * width
    n_in = np.cumsum(c)  # values at or below bin k
    above = lambda v: np.concatenate([np.cumsum(v[::-1])[::-1][1:], [0.0]])  # noqa: E731  sum over bins > k
    t = (np.arange(last) + 1) * width  # threshold at the top edge of bin k
    clip = above(c * x * x) - 2 * t * above(c * x) + t * t * above(c)
    err = n_in * (t / 127.0) ** 2 / 12.0 + clip
    return float(t[int(np.argmin(err))])
