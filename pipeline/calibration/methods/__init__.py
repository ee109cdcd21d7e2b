"""The range methods, by the name ``[calibration] method`` gives them.

A method is one module here (``absmax.py``, ``entropy.py``, ...) and one line below (``"name":
"module:attr"``, the attribute a ``base.RangeMethod``). The calibration pass computes every registered
method's range of every tensor, and calib/NAME/ranges.json keeps them all (switching method needs no
new pass over the data); ``auto`` and its whole-graph check score every one, and a config names one
of them or ``auto``. Registry order breaks auto's ties (the first listed wins). Loaded on first use:
reading a config imports no method (docs/extending.md).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.calibration.methods.base import RangeMethod

AUTO = "auto"  # per tensor, the registered method whose range its readers' outputs favour (calibration/auto.py)

REGISTRY: dict[str, str] = {
    "max": "pipeline.calibration.methods.absmax:METHOD",
    "percentile": "pipeline.calibration.methods.percentile:METHOD",
    "entropy": "pipeline.calibration.methods.entropy:METHOD",
    "mse": "pipeline.calibration.methods.mse:METHOD",
}


def names() -> tuple[str, ...]:
    """The registered range methods, in registry order."""
    return tuple(REGISTRY)


def choices() -> tuple[str, ...]:
    """What ``[calibration] method`` may name: ``auto`` or a registered method."""
    return (AUTO, *REGISTRY)


def get(name: str) -> RangeMethod:
    """The method registered as ``name``."""
    module, _, attr = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attr)
