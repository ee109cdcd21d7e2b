"""The versioned calibration cache ``calib/NAME/ranges.json``.

It records the hash of the graph it was computed on and the settings that
shape the statistics; a cache whose graph, settings or tensor set differ is
stale and gets rebuilt. Thresholds of every method are stored, ``auto``'s
choice with its reason too, so switching ``calibration.method`` needs no new
pass over the data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from pipeline.config import CALIBRATION_METHODS, RANGE_METHODS
from pipeline.errors import PipelineError
from pipeline.fileio import write_json

CACHE_VERSION = 2
T = TypeVar("T")


@dataclass(frozen=True)
class AutoChoice:
    """Which range ``auto`` took for a tensor, and why."""

    method: str  # one of RANGE_METHODS
    reason: str
    # Relative error of the consuming layers' outputs under each method's range, summed over
    # those layers; empty where no weighted layer reads the tensor (chosen by its own error).
    errors: dict[str, float]

    def __post_init__(self) -> None:
        if self.method not in RANGE_METHODS:
            raise ValueError(f"auto chose {self.method!r}, not one of {', '.join(RANGE_METHODS)}")
        if not self.errors:
            return
        if set(self.errors) != set(RANGE_METHODS) or not all(map(math.isfinite, self.errors.values())):
            raise ValueError(f"auto errors must be finite, one per method, got {sorted(self.errors)}")
        if self.errors[self.method] > 2 * min(self.errors.values()):
            raise ValueError(f"auto chose {self.method!r} but another method has a smaller error")

    def to_json(self) -> dict:
        return {"method": self.method, "reason": self.reason, "errors": self.errors}


@dataclass(frozen=True)
class TensorRange:
    min: float
    max: float
    amax: dict[str, float]  # per method: max, percentile, entropy, mse, and auto (one of the four)
    auto: AutoChoice

    def __post_init__(self) -> None:
        if set(self.amax) != set(CALIBRATION_METHODS):
            raise ValueError(f"amax must have one value per method ({', '.join(CALIBRATION_METHODS)})")
        if self.amax["auto"] != self.amax[self.auto.method]:
            raise ValueError(f"amax['auto'] is not the range of the method auto chose ({self.auto.method})")


@dataclass(frozen=True)
class Ranges:
    graph_sha256: str
    settings: dict[str, object]  # bins, percentile, samples, source
    tensors: dict[str, TensorRange]

    def amax(self, tensor: str, method: str) -> float:
        return self.tensors[tensor].amax[method]

    def to_json(self) -> dict:
        return {
            "version": CACHE_VERSION,
            "graph_sha256": self.graph_sha256,
            "settings": self.settings,
            "tensors": {
                k: {"min": v.min, "max": v.max, "amax": v.amax, "auto": v.auto.to_json()}
                for k, v in sorted(self.tensors.items())
            },
        }

    def save(self, path: Path) -> None:
        write_json(path, self.to_json())

    def stale_reason(self, graph_sha256: str, settings: dict[str, object], tensors: set[str]) -> str | None:
        return stale_reason(self, graph_sha256, settings, tensors)


class Cached(Protocol):
    """A calibration cache: what it was computed on and for which tensors."""

    graph_sha256: str
    settings: dict[str, object]
    tensors: Mapping[str, object]


def stale_reason(cached: Cached, graph_sha256: str, settings: dict[str, object], tensors: Iterable[str]) -> str | None:
    """Why ``cached`` does not hold the statistics of ``tensors`` of graph ``graph_sha256`` under
    ``settings``, or None when it does."""
    if cached.graph_sha256 != graph_sha256:
        return "the FP32 graph changed since calibration"
    if cached.settings != settings:
        changed = sorted(k for k in set(settings) | set(cached.settings) if settings.get(k) != cached.settings.get(k))
        return f"calibration settings changed ({', '.join(changed)})"
    missing = set(tensors) - set(cached.tensors)
    if missing:
        return f"{len(missing)} tensor(s) have no statistics yet (e.g. {sorted(missing)[0]!r})"
    return None


class InvalidCache(PipelineError):
    """A cache that cannot be trusted: calibrate rebuilds it, quantize refuses it."""


REBUILD = "run trtpipe calibrate --force to rebuild it"


def load_ranges(path: Path, names: set[str] | None = None) -> Ranges | None:
    """The cache at ``path``, or None if there is none. Anything that cannot be trusted (unreadable,
    another version, a missing key, a range that is not finite and positive, a tensor not among
    ``names``, the graph's) raises ``InvalidCache`` naming the file, the tensor and the fix."""

    def parse(raw: dict) -> Ranges:
        _check_header(path, raw)
        tensors = {name: _tensor_range(path, name, t) for name, t in raw["tensors"].items()}
        unknown = sorted(set(tensors) - names) if names is not None else []
        if unknown:
            raise InvalidCache(f"{path}: tensor {unknown[0]!r} is not in the FP32 graph; {REBUILD}")
        return Ranges(raw["graph_sha256"], dict(raw["settings"]), tensors)

    return read_cache(path, CACHE_VERSION, parse, "calibration cache")


def read_cache(path: Path, version: int, parse: Callable[[dict], T], what: str) -> T | None:
    """``parse`` of the JSON cache at ``path``, None if there is none; a cache that is unreadable,
    of another ``version`` or does not parse raises ``InvalidCache`` naming it and the fix."""
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidCache(f"{path}: {what} is not readable JSON ({exc}); {REBUILD}") from None
    if not isinstance(raw, dict) or raw.get("version") != version:
        found = raw.get("version") if isinstance(raw, dict) else type(raw).__name__
        raise InvalidCache(f"{path}: {what} version {found!r}, this trtpipe reads {version}; {REBUILD}")
    try:
        return parse(raw)
    except KeyError as exc:
        raise InvalidCache(f"{path}: {what} has no key {exc}; {REBUILD}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise InvalidCache(f"{path}: {what} is corrupt ({exc}); {REBUILD}") from None


def _check_header(path: Path, raw: dict) -> None:
    for key, kind in (("graph_sha256", str), ("settings", dict), ("tensors", dict)):
        if not isinstance(raw.get(key), kind):
            raise InvalidCache(f"{path}: calibration cache has no {key!r} ({kind.__name__}); {REBUILD}")


def _tensor_range(path: Path, name: str, raw: object) -> TensorRange:
    try:
        auto = raw["auto"]  # type: ignore[index]
        errors = {k: float(v) for k, v in auto["errors"].items()}
        choice = AutoChoice(str(auto["method"]), str(auto["reason"]), errors)
        amax = {k: float(v) for k, v in raw["amax"].items()}  # type: ignore[index]
        found = TensorRange(float(raw["min"]), float(raw["max"]), amax, choice)  # type: ignore[index]
        _check_numbers(found)
    except KeyError as exc:
        raise InvalidCache(f"{path}: tensor {name!r} has no key {exc}; {REBUILD}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise InvalidCache(f"{path}: tensor {name!r}: {exc}; {REBUILD}") from None
    return found


def _check_numbers(r: TensorRange) -> None:
    """Finite, min <= max, and each amax positive up to the observed abs-max (0 only for a tensor
    that was always 0), as the calibrator writes them."""
    if not (math.isfinite(r.min) and math.isfinite(r.max) and r.min <= r.max):
        raise ValueError(f"min {r.min} and max {r.max} are not a finite range")
    absmax = max(-r.min, r.max)
    for method, amax in r.amax.items():
        if not (math.isfinite(amax) and (0.0 < amax <= absmax * (1 + 1e-6) or amax == absmax == 0.0)):
            raise ValueError(f"amax[{method!r}] = {amax} is not in (0, {absmax:g}], the observed abs-max")
