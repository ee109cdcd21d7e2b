"""``max``: the observed abs-max. Clips nothing; every other value is rounded as coarsely as the largest needs."""

from __future__ import annotations

from pipeline.calibration.histogram import TensorStats
from pipeline.calibration.methods.base import RangeMethod, Settings


def amax(stats: TensorStats, settings: Settings) -> float:
    return stats.absmax


METHOD = RangeMethod(amax)
