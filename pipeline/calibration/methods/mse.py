"""``mse``: the threshold minimising the expected squared error of int8 quantization (rounding plus clipping)."""

from __future__ import annotations

import numpy as np

from pipeline.calibration.histogram import TensorStats
from pipeline.calibration.methods.base import RangeMethod, Settings


def amax(stats: TensorStats, settings: Settings) -> float:
    return mse_amax(stats.hist, stats.range)


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


METHOD = RangeMethod(amax)
