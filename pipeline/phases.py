"""How long each phase of a stage took, wherever in the call tree it runs.

A stage opens ``collecting()``; code anywhere below wraps a phase in ``timed(name)``. A phase
inside another is taken out of the outer one's time, so the phases add up to the stage's time
and a slow phase shows under its own name. Outside ``collecting()``, ``timed`` records nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

from pipeline.results import PhaseTime

T = TypeVar("T")


def _clocks() -> tuple[float, float]:
    """Wall seconds, and CPU seconds of every thread of this process (ONNX Runtime's included): on a
    shared machine the CPU seconds say what a phase costs, the wall seconds what it took."""
    return time.perf_counter(), time.process_time()


@dataclass
class _Open:
    name: str
    start: tuple[float, float]
    inner: tuple[float, float] = (0.0, 0.0)  # wall and CPU seconds of the phases timed inside this one


@dataclass
class Collected:
    """The phases timed so far, in the order they first started (a phase run twice adds up)."""

    seconds: dict[str, tuple[float, float]] = field(default_factory=dict)  # wall, CPU
    open: list[_Open] = field(default_factory=list)

    def phases(self) -> tuple[PhaseTime, ...]:
        return tuple(PhaseTime(name, round(wall, 3), round(cpu, 3)) for name, (wall, cpu) in self.seconds.items())


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
    collected.seconds.setdefault(name, (0.0, 0.0))  # listed in the order the phases started
    frame = _Open(name, _clocks())
    collected.open.append(frame)
    try:
        yield
    finally:
        collected.open.pop()
        elapsed = tuple(now - then for now, then in zip(_clocks(), frame.start, strict=True))
        wall, cpu = collected.seconds[name]
        collected.seconds[name] = (wall + elapsed[0] - frame.inner[0], cpu + elapsed[1] - frame.inner[1])
        if collected.open:
            outer = collected.open[-1]
            outer.inner = (outer.inner[0] + elapsed[0], outer.inner[1] + elapsed[1])


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
    """One line: each phase's wall seconds (CPU seconds in brackets), slowest first, and their sums."""
    wall, cpu = sum(p.seconds for p in phases), sum(p.cpu_seconds for p in phases)
    ordered = sorted(phases, key=lambda p: -p.seconds)
    parts = ", ".join(f"{p.name} {p.seconds:.2f} s ({p.cpu_seconds:.2f})" for p in ordered)
    return f"{wall:.2f} s ({cpu:.2f} s CPU): {parts}" if phases else "no phase timed"
