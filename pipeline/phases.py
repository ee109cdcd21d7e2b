"""How long each phase of a stage took, wherever in the call tree it runs.

A stage opens ``collecting()``; code anywhere below wraps a phase in ``timed(name)``. A phase
inside another is taken out of the outer one's time, so the phases add up to the stage's time
and a slow phase shows under its own name. Outside ``collecting()``, ``timed`` records nothing.
"""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

from pipeline.results import PhaseTime

T = TypeVar("T")


def _readings() -> tuple[float, float, float]:
    """Wall seconds; CPU seconds of every thread of this process (ONNX Runtime's included), which a
    shared machine does not inflate as it does the wall seconds; and the process's peak RSS so far
    in MB (Linux reports KiB), which only grows."""
    return time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


Readings = tuple[float, float, float]
NONE: Readings = (0.0, 0.0, 0.0)


def _plus(a: Readings, b: Readings, sign: float = 1.0) -> Readings:
    return (a[0] + sign * b[0], a[1] + sign * b[1], a[2] + sign * b[2])


@dataclass
class _Open:
    name: str
    start: Readings
    inner: Readings = NONE  # what the phases timed inside this one took


@dataclass
class Collected:
    """The phases timed so far, in the order they first started (a phase run twice adds up): wall
    seconds, CPU seconds and MB the peak RSS grew by, each in the phase's own time."""

    totals: dict[str, Readings] = field(default_factory=dict)
    open: list[_Open] = field(default_factory=list)

    def phases(self) -> tuple[PhaseTime, ...]:
        return tuple(
            PhaseTime(name, round(wall, 3), round(cpu, 3), round(grew, 1))
            for name, (wall, cpu, grew) in self.totals.items()
        )

    @property
    def seconds(self) -> dict[str, float]:
        return {name: wall for name, (wall, _, _) in self.totals.items()}


_current: ContextVar[Collected | None] = ContextVar("trtpipe_phases", default=None)


@contextlib.contextmanager
def collecting() -> Iterator[Collected]:
    collected = Collected()
    token = _current.set(collected)
    try:
        yield collected
    finally:
        _current.reset(token)


@contextlib.contextmanager
def timed(name: str) -> Iterator[None]:
    collected = _current.get()
    if collected is None:
        yield
        return
    collected.totals.setdefault(name, NONE)  # listed in the order the phases started
    frame = _Open(name, _readings())
    collected.open.append(frame)
    try:
        yield
    finally:
        collected.open.pop()
        took = _plus(_readings(), frame.start, -1.0)
        collected.totals[name] = _plus(collected.totals[name], _plus(took, frame.inner, -1.0))
        if collected.open:
            collected.open[-1].inner = _plus(collected.open[-1].inner, took)


def timed_each(name: str, items: Iterable[T]) -> Iterator[T]:
    """``items``, the time spent making each one timed as ``name`` (the user's data source, read
    while a phase streams it, shown apart from that phase)."""
    found = iter(items)
    while True:
        with timed(name):
            item = next(found, _END)
        if item is _END:
            return
        yield item


_END = object()


def describe(phases: tuple[PhaseTime, ...]) -> str:
    """One line: each phase's wall seconds (CPU seconds in brackets), slowest first, their sums, and
    the phase in which the peak RSS grew the most."""
    if not phases:
        return "no phase timed"
    wall, cpu = sum(p.seconds for p in phases), sum(p.cpu_seconds for p in phases)
    ordered = sorted(phases, key=lambda p: -p.seconds)
    parts = ", ".join(f"{p.name} {p.seconds:.2f} s ({p.cpu_seconds:.2f})" for p in ordered)
    grew = max(phases, key=lambda p: p.peak_growth_mb)
    return f"{wall:.2f} s ({cpu:.2f} s CPU): {parts}; peak RSS grew most in {grew.name} (+{grew.peak_growth_mb:.0f} MB)"
