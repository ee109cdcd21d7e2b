"""``percentile``: the top edge of the histogram bin where ``[calibration] percentile`` of the non-zero |x| lie."""

from __future__ import annotations

import numpy as np

from pipeline.calibration.histogram import TensorStats
from pipeline.calibration.methods.base import RangeMethod, Settings


def amax(stats: TensorStats, settings: Settings) -> float:
    return percentile_amax(stats.hist, stats.range, settings.percentile)


def percentile_amax(hist: np.ndarray, rng: float, percentile: float) -> float:
    cdf = np.cumsum(hist) / hist.sum()
    i = int(np.searchsorted(cdf, percentile / 100.0))
    return (min(i, len(hist) - 1) + 1) * rng / len(hist)


METHOD = RangeMethod(amax)
