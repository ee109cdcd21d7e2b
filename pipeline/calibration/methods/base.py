"""What a range method is: a tensor's amax, a function of the statistics the calibration pass folded.

Every method reads one statistic class. The histogram (``TensorStats``) is the default and is always
collected: its extremes cap every method's range. A method that needs another statistic (per
channel, say) declares its class, and the pass folds one of each declared class per tensor beside
the histogram (``Collected``), run by run, as it folds the histogram.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from pipeline.calibration import methods
from pipeline.calibration.histogram import TensorStats


@dataclass(frozen=True)
class Settings:
    """The [calibration] keys statistics and methods read; both are in the cache's settings, so
    changing one calibrates anew."""

    bins: int  # the histogram's
    percentile: float  # the percentile method's


class Statistic(Protocol):
    """Statistics of one tensor, made from the settings and folded run by run (``TensorStats``)."""

    @classmethod
    def for_settings(cls, settings: Settings) -> Statistic: ...

    def update(self, x: np.ndarray) -> None: ...


@dataclass(frozen=True)
class RangeMethod:
    """One range method: ``amax(statistic, settings)`` from the one statistic of class ``statistic``
    folded over every calibration run of a tensor. It may exceed the observed abs-max: the range
    taken is capped there."""

    amax: Callable[[Any, Settings], float]
    statistic: type = field(default=TensorStats)


class Collected:
    """What the calibration pass folds for one tensor: the histogram, and one of each other statistic
    class a registered method reads."""

    def __init__(self, settings: Settings) -> None:
        kinds = dict.fromkeys([TensorStats, *(methods.get(name).statistic for name in methods.names())])
        self.settings = settings
        self.by_kind: dict[type, Statistic] = {kind: kind.for_settings(settings) for kind in kinds}

    @property
    def histogram(self) -> TensorStats:
        return self.by_kind[TensorStats]  # type: ignore[return-value]

    def update(self, x: np.ndarray) -> None:
        for stat in self.by_kind.values():
            stat.update(x)

    def ranges(self) -> dict[str, float]:
        return ranges(self.by_kind, self.settings)


def ranges(by_kind: Mapping[type, Any], settings: Settings) -> dict[str, float]:
    """amax per registered method, each capped at the observed abs-max; 0 for every method where the
    tensor was never seen or only ever 0."""
    histogram = by_kind[TensorStats]
    if histogram.count == 0 or histogram.absmax == 0.0:
        return dict.fromkeys(methods.names(), 0.0)
    found = {}
    for name in methods.names():
        method = methods.get(name)
        found[name] = min(histogram.absmax, method.amax(by_kind[method.statistic], settings))
    return found


def thresholds(histogram: TensorStats, percentile: float) -> dict[str, float]:
    """amax per registered method from a histogram alone, each capped at the observed abs-max."""
    return ranges({TensorStats: histogram}, Settings(histogram.bins, percentile))
