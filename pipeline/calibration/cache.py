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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from pipeline.calibration import methods
from pipeline.errors import PipelineError
from pipeline.fileio import write_json

CACHE_VERSION = 3
T = TypeVar("T")


@dataclass(frozen=True)
class AutoChoice:
    """Which range ``auto`` took for a tensor, and why."""

    method: str  # a registered range method: the range taken
    reason: str  # why the tensor's own choice (``local``) is what it is
    # Relative error of the consuming layers' outputs under each method's range, summed over
    # those layers; empty where no weighted layer reads the tensor (chosen by its own error).
    errors: dict[str, float]
    # The tensor's own choice where the whole-graph check put one method on every tensor instead.
    local: str | None = None

    def __post_init__(self) -> None:
        known = methods.names()
        for method in (self.method, self.local or self.method):
            if method not in known:
                raise ValueError(f"auto chose {method!r}, not one of {', '.join(known)}")
        if not self.errors:
            return
        if set(self.errors) != set(known) or not all(map(math.isfinite, self.errors.values())):
            raise ValueError(f"auto errors must be finite, one per method, got {sorted(self.errors)}")
        if self.errors[self.local or self.method] > 2 * min(self.errors.values()):
            raise ValueError(f"auto chose {self.local or self.method!r} but another method has a smaller error")

    def to_json(self) -> dict:
        return {"method": self.method, "local": self.local, "reason": self.reason, "errors": self.errors}


@dataclass(frozen=True)
class WholeGraphCheck:
    """auto's per-tensor ranges against each single method on every tensor, judged by the simulated
    graphs' output (``wholegraph``): per candidate, the estimated squared output error relative to
    each output's spread, summed over outputs and both targets, over all calibration samples."""

    chosen: str  # "auto" (the per-tensor ranges kept) or the method every tensor took
    estimates: dict[str, float]  # per candidate: "auto" and each registered method
    standard_errors: dict[str, float]  # per method: of its estimate's difference to auto's
    rows: int  # first calibration rows checked, standing for the samples that are not extremes
    extremes: int  # samples checked for holding tensors' largest values
    samples: int  # calibration samples the estimate is over
    # FP8 activation scales are multiplied by ``fp8_scale``, the factor in [1, 2) of ``fp8_estimates``
    # (factor -> the kept ranges' estimate with it) estimated lowest; empty where no FP8 graph is checked.
    fp8_scale: float = 1.0
    fp8_estimates: dict[float, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_fp8()
        candidates = set(methods.choices())
        if self.chosen not in candidates or set(self.estimates) != candidates:
            raise ValueError(f"whole-graph check chose {self.chosen!r} among {sorted(self.estimates)}")
        if set(self.standard_errors) != set(methods.names()):
            raise ValueError(
                f"whole-graph check needs one standard error per method, got {sorted(self.standard_errors)}"
            )
        if not all(math.isfinite(v) and v >= 0 for v in (*self.estimates.values(), *self.standard_errors.values())):
            raise ValueError("whole-graph check estimates and standard errors must be finite and non-negative")
        if min(self.rows, self.extremes) < 0 or self.rows + self.extremes > self.samples:
            raise ValueError(f"whole-graph check on {self.rows} + {self.extremes} rows of {self.samples} samples")

    def _check_fp8(self) -> None:
        found = self.fp8_estimates
        if not found:
            if self.fp8_scale != 1.0:
                raise ValueError(f"whole-graph check's FP8 scale factor {self.fp8_scale} without its estimates")
            return
        if not all(1.0 <= f < 2.0 and math.isfinite(e) and e >= 0 for f, e in found.items()):
            raise ValueError(f"whole-graph check's FP8 scale factors must lie in [1, 2), got {sorted(found)}")
        if found.get(self.fp8_scale) != min(found.values()):
            raise ValueError(f"whole-graph check's FP8 scale factor {self.fp8_scale} is not the one estimated lowest")

    def to_json(self) -> dict:
        return {
            "chosen": self.chosen,
            "estimates": self.estimates,
            "standard_errors": self.standard_errors,
            "rows": self.rows,
            "extremes": self.extremes,
            "samples": self.samples,
            "fp8_scale": self.fp8_scale,
            "fp8_estimates": {repr(f): e for f, e in self.fp8_estimates.items()},
        }


@dataclass(frozen=True)
class TensorRange:
    min: float
    max: float
    amax: dict[str, float]  # per registered method, and auto (one of them)
    auto: AutoChoice

    def __post_init__(self) -> None:
        if set(self.amax) != set(methods.choices()):
            raise ValueError(f"amax must have one value per method ({', '.join(methods.choices())})")
        if self.amax["auto"] != self.amax[self.auto.method]:
            raise ValueError(f"amax['auto'] is not the range of the method auto chose ({self.auto.method})")


@dataclass(frozen=True)
class Ranges:
    graph_sha256: str
    settings: dict[str, object]  # bins, percentile, samples, source
    tensors: dict[str, TensorRange]
    whole_graph: WholeGraphCheck | None = None  # None where auto's whole-graph check did not run

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
            "whole_graph": None if self.whole_graph is None else self.whole_graph.to_json(),
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


CODE_SETTING = "code"  # a cache's settings key: the version of the code that made it (pipeline.codehash)


def stale_reason(cached: Cached, graph_sha256: str, settings: dict[str, object], tensors: Iterable[str]) -> str | None:
    """Why ``cached`` does not hold the statistics of ``tensors`` of graph ``graph_sha256`` under
    ``settings``, or None when it does."""
    if cached.graph_sha256 != graph_sha256:
        return "the FP32 graph changed since calibration"
    if cached.settings != settings:
        changed = sorted(k for k in set(settings) | set(cached.settings) if settings.get(k) != cached.settings.get(k))
        if changed == [CODE_SETTING]:
            return "the pipeline's calibration code changed since"
        return f"calibration settings changed ({', '.join(changed)})"
    missing = set(tensors) - set(cached.tensors)
    if missing:
        return f"{len(missing)} tensor(s) have no statistics yet (e.g. {sorted(missing)[0]!r})"
    return None


class InvalidCache(PipelineError):
    """A cache that cannot be trusted: calibrate rebuilds it, quantize refuses it."""


class OtherMethods(InvalidCache):
    """A cache of other range methods than the registered ones: sound but stale, calibrated anew by
    calibrate and quantize alike. Its message is the reason."""


REBUILD = "run trtpipe calibrate --force to rebuild it"


def load_ranges(path: Path, names: set[str] | None = None) -> Ranges | None:
    """The cache at ``path``, or None if there is none. Anything that cannot be trusted (unreadable,
    another version, a missing key, a range that is not finite and positive, a tensor not among
    ``names``, the graph's) raises ``InvalidCache`` naming the file, the tensor and the fix; one whose
    ranges are of other methods than the registered ones raises ``OtherMethods``."""

    def parse(raw: dict) -> Ranges:
        _check_header(path, raw)
        changed = _methods_changed(raw["tensors"])
        if changed:
            raise OtherMethods(changed)
        tensors = {name: _tensor_range(path, name, t) for name, t in raw["tensors"].items()}
        unknown = sorted(set(tensors) - names) if names is not None else []
        if unknown:
            raise InvalidCache(f"{path}: tensor {unknown[0]!r} is not in the FP32 graph; {REBUILD}")
        whole = raw["whole_graph"]
        return Ranges(raw["graph_sha256"], dict(raw["settings"]), tensors, None if whole is None else _whole(whole))

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


def _whole(raw: dict) -> WholeGraphCheck:
    floats = lambda d: {str(k): float(v) for k, v in d.items()}  # noqa: E731
    counts = [raw[k] for k in ("rows", "extremes", "samples")]
    if not all(isinstance(c, int) for c in counts):
        raise ValueError(f"whole-graph check's rows, extremes and samples must be integers, got {counts}")
    fp8 = {float(f): float(e) for f, e in raw.get("fp8_estimates", {}).items()}  # none in caches made before FP8's
    return WholeGraphCheck(
        str(raw["chosen"]),
        floats(raw["estimates"]),
        floats(raw["standard_errors"]),
        *counts,
        float(raw.get("fp8_scale", 1.0)),
        fp8,
    )


def _methods_changed(tensors: dict) -> str | None:
    """How the range methods of a cache's tensors differ from the registered ones, or None."""
    first = next(iter(tensors.values()), None)
    if not isinstance(first, dict) or not isinstance(first.get("amax"), dict):
        return None  # no tensor, or a corrupt one: parsing says which
    held, known = set(first["amax"]) - {methods.AUTO}, methods.names()
    changes = [f"{m} added" for m in known if m not in held] + [f"{m} removed" for m in sorted(held - set(known))]
    return f"range methods changed ({', '.join(changes)})" if changes else None


def _check_header(path: Path, raw: dict) -> None:
    for key, kind in (("graph_sha256", str), ("settings", dict), ("tensors", dict)):
        if not isinstance(raw.get(key), kind):
            raise InvalidCache(f"{path}: calibration cache has no {key!r} ({kind.__name__}); {REBUILD}")


def _tensor_range(path: Path, name: str, raw: object) -> TensorRange:
    try:
        auto = raw["auto"]  # type: ignore[index]
        errors = {k: float(v) for k, v in auto["errors"].items()}
        local = None if auto["local"] is None else str(auto["local"])
        choice = AutoChoice(str(auto["method"]), str(auto["reason"]), errors, local)
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
