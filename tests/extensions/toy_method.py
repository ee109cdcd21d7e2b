"""A range method reading the histogram: half the observed abs-max (a tensor's other values no
finer, its largest half clipped; a toy, not advice). Registered as ``"toy": "tests.extensions.toy_method:METHOD"``."""

from __future__ import annotations

from pipeline.calibration.histogram import TensorStats
from pipeline.calibration.methods.base import RangeMethod, Settings


def amax(stats: TensorStats, settings: Settings) -> float:
    return stats.absmax / 2


METHOD = RangeMethod(amax)
