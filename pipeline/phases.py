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


@dataclass
class _Open:
    name: str
    start: float
    inner: float = 0.0  # seconds of the phases timed inside this one


@dataclass
class Collected:
    """The phases timed so far, in the order they first started (a phase run twice adds up)."""

    seconds: dict[str, float] = field(default_factory=dict)
    open: list[_Open] = field(default_factory=list)

    def phases(self) -> tuple[PhaseTime, ...]:
        return tuple(PhaseTime(name, round(s, 3)) for name, s in self.seconds.items())


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
    collected.seconds.setdefault(name, 0.0)  # listed in the order the phases started
    frame = _Open(name, time.perf_counter())
    collected.open.append(frame)
    try:
        yield
    finally:
        collected.open.pop()
        elapsed = time.perf_counter() - frame.start
        collected.seconds[name] = collected.seconds.get(name, 0.0) + elapsed - frame.inner
        if collected.open:
            collected.open[-1].inner += elapsed


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
    """One line: each phase's seconds, slowest first, and their sum."""
    total = sum(p.seconds for p in phases)
    parts = ", ".join(f"{p.name} {p.seconds:.2f} s" for p in sorted(phases, key=lambda p: -p.seconds))
    return f"{total:.2f} s: {parts}" if phases else "no phase timed"
