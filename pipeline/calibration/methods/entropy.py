"""``entropy``: TensorRT's entropy calibrator's threshold, the one minimising the KL divergence between
the histogram of |x| and its 128-level int8 quantization."""

from __future__ import annotations

import numpy as np

from pipeline.calibration.histogram import TensorStats
from pipeline.calibration.methods.base import RangeMethod, Settings

QUANT_LEVELS = 128  # int8 symmetric: 127 positive steps plus zero, TensorRT's entropy calibrator's 128 bins


def amax(stats: TensorStats, settings: Settings) -> float:
    return entropy_amax(stats.hist, stats.range)


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


METHOD = RangeMethod(amax)
