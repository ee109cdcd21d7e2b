"""Latency measurement: warm-up, repeated timed runs, percentiles."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from pipeline.results import Latency


def measure(
    fn: Callable[[], object], warmup: int, iterations: int, min_seconds: float = 0.0, max_iterations: int = 5000
) -> Latency:
    """Time ``fn`` with ``perf_counter`` after ``warmup`` untimed calls.

    Runs at least ``iterations`` times and at least ``min_seconds`` (up to
    ``max_iterations``), so fast cases get enough samples for stable percentiles.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_iterations and (len(times) < iterations or time.perf_counter() - started < min_seconds):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return latency_stats(np.asarray(times))


def measure_interleaved(
    fns: dict[str, Callable[[], object]], warmup: int, rounds: int, per_round: int
) -> dict[str, Latency]:
    """Time several candidates round-robin, so drift (turbo, other load) hits them all alike."""
    samples = interleaved_rounds(fns, warmup, rounds, per_round)
    return {name: latency_stats(times.ravel()) for name, times in samples.items()}


def interleaved_rounds(
    fns: dict[str, Callable[[], object]], warmup: int, rounds: int, per_round: int
) -> dict[str, np.ndarray]:
    """Each candidate's timings in ms, ``rounds`` x ``per_round``, taken round-robin: a round's
    candidates ran side by side, so their ratio within one round is free of slow drift."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[list[float]]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times = []
            for _ in range(per_round):
                start = time.perf_counter()
                fn()
                times.append((time.perf_counter() - start) * 1e3)
            samples[name].append(times)
    return {name: np.asarray(times) for name, times in samples.items()}


def latency_stats(times: np.ndarray) -> Latency:
    """Percentiles of timings in ms."""
    q25, q50, q75, q90, q99 = np.percentile(times, [25, 50, 75, 90, 99])
    return Latency(float(q50), float(q90), float(q99), float(times.min()), float(q75 - q25), len(times))
