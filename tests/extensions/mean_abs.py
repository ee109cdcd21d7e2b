"""A range method reading a statistic of its own, not the histogram: four times the mean |x|.
Registered as ``"mean-abs": "tests.extensions.mean_abs:METHOD"``."""

from __future__ import annotations

import numpy as np

from pipeline.calibration.methods.base import RangeMethod, Settings


class MeanAbs:
    """The sum and the count of |x| over every calibration run of one tensor."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    @classmethod
    def for_settings(cls, settings: Settings) -> MeanAbs:
        return cls()

    def update(self, x: np.ndarray) -> None:
        self.total += float(np.abs(np.asarray(x, np.float64)).sum())
        self.count += np.size(x)


def amax(stats: MeanAbs, settings: Settings) -> float:
    return 4.0 * stats.total / stats.count  # the calibration pass caps it at the observed abs-max


METHOD = RangeMethod(amax, statistic=MeanAbs)
