"""Speed-aware INT8 on the CPU: the graph's regions keep Q/DQ only where ONNX Runtime runs them faster.

ONNX Runtime's CPU kernels gain from INT8 only where a Conv or MatMul is big enough for its integer
kernel to beat the float one by more than the requantizations around it cost. A small-channel CNN
(MTCNN's nets, PReLU between its Convs) or a block of float ops between Q/DQ (GELU, BatchNorm, Sub)
can run slower quantized than in float, and the whole graph with it. So quantize times the graph
region by region and keeps each region's Q/DQ only where that measures a gain beyond noise.

A region is a span of the graph that one tensor enters and one leaves (``regions``): where the
graph narrows to a single live activation, as between a ResNet's or a transformer's blocks and
between the layers of a plain CNN. Such a span's Q/DQ can go without touching another span's:
only its input edge changes (its producer's output Q/DQ stays, read past by the float span).
Spans without a weighted layer join the span before them, and where there are more spans than
the time budget can measure, neighbours merge into equal shares of the weighted layers.

The search is greedy, in graph order, like ModelOpt's TensorRT autotuner's region by region
search (there on a GPU, over Q/DQ schemes; here on the CPU, over Q/DQ or none): each region's two
graphs, the others as decided so far, are timed interleaved round by round at the bench batch.
A region alone can gain too little to count while all of them together gain more (MTCNN ONet's
layers), so where some regions went float the graph quantized everywhere is timed at the end
beside the chosen one and FP32, and kept instead if it is the faster by the same margin.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from pipeline.console import info
from pipeline.graphview import GraphView
from pipeline.onnxutil import read_back, save_weights_beside
from pipeline.ortsession import release_shared_arena
from pipeline.results import RegionSpeed, SpeedSearch

# A region keeps its Q/DQ only if it runs this much faster with them (median over rounds) and
# faster in three rounds out of four: below that, a timing is noise on a shared machine.
MIN_GAIN = 1.03
ROUNDS = 7
MAX_PER_ROUND = 50
# How long one comparison should time, at most: a graph's time per region, not the budget's share.
MAX_COMPARISON_SECONDS = 1.5
WHOLE_GRAPH = "the whole graph"


@dataclass(frozen=True)
class Region:
    layers: tuple[str, ...]  # the weighted layers it holds, in graph order

    @property
    def name(self) -> str:
        return self.layers[0] if len(self.layers) == 1 else f"{self.layers[0]} .. {self.layers[-1]}"


def regions(view: GraphView, layers: tuple[str, ...], most: int) -> tuple[Region, ...]:
    """The spans of ``view`` between single live activations that hold some of ``layers`` (the
    weighted layers the graph quantizes), at most ``most`` of them (neighbours merged)."""
    nodes = view.nodes
    wanted = set(layers)
    varying = view.input_dependent()
    last_read: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for t in node.input:
            if t in varying:
                last_read[t] = i
    for t in view.outputs:
        last_read[t] = len(nodes)
    live = {t for t in view.inputs if t in varying and t in last_read}
    spans: list[list[str]] = [[]]
    for i, node in enumerate(nodes):
        if node.name in wanted:
            spans[-1].append(node.name)
        live.update(t for t in node.output if t in varying and last_read.get(t, -1) > i)
        live = {t for t in live if last_read[t] > i}
        if len(live) == 1 and spans[-1]:
            spans.append([])
    spans = [s for s in spans if s]
    return tuple(Region(tuple(s)) for s in _merged(spans, most))


def _merged(spans: list[list[str]], most: int) -> list[list[str]]:
    """``spans`` in at most ``most`` groups of neighbours, each about an equal share of the layers."""
    if len(spans) <= most:
        return spans
    total = sum(len(s) for s in spans)
    groups: list[list[str]] = [[]]
    done = 0
    for span in spans:
        if groups[-1] and done >= total * len(groups) / most:
            groups.append([])
        groups[-1].extend(span)
        done += len(span)
    return groups


def keeps_qdq(float_ms: np.ndarray, quantized_ms: np.ndarray) -> tuple[bool, float, float, float]:
    """Whether a region keeps its Q/DQ, from its two graphs' timings (rounds x runs, taken
    interleaved); and the speedup its Q/DQ give, median and quartiles over the rounds."""
    ratios = np.median(float_ms, axis=1) / np.median(quantized_ms, axis=1)
    q25, median, q75 = (float(v) for v in np.percentile(ratios, [25, 50, 75]))
    return bool(median >= MIN_GAIN and q25 > 1.0), median, q25, q75


def search(
    make: Callable[[tuple[str, ...]], onnx.ModelProto],
    view: GraphView,
    layers: tuple[str, ...],
    runner: Callable[[Path], Callable[[], object]],
    fp32: Callable[[], Callable[[], object]],
    seconds: float,
    batch: int,
    label: str,
    made: tuple[Path, float] | None = None,
) -> tuple[onnx.ModelProto, SpeedSearch]:
    """The graph whose regions keep Q/DQ only where they measured a gain, and what was measured.
    ``make(float_layers)`` makes the graph with those weighted layers (and their epilogues) float;
    ``made``, where given, is the file of ``make(())`` made already (its weights beside it: no graph
    held in memory) and the seconds making it took;
    ``runner(file)`` one inference of a graph file at the bench batch (each graph made is written with
    its weights moved out of memory: only its session holds them while it is timed); ``fp32()`` makes
    one of the FP32 graph's, at the end, when no region's candidate session is alive."""
    with tempfile.TemporaryDirectory(prefix="trtpipe.search.") as tmp:
        return _search(make, view, layers, runner, fp32, seconds, batch, label, made, Path(tmp))


def _search(
    make, view, layers, runner, fp32, seconds, batch, label, made, tmp: Path
) -> tuple[onnx.ModelProto, SpeedSearch]:
    started = time.perf_counter()
    if made is None:
        made = save_weights_beside(make(()), tmp / "graph0.onnx"), 0.0
    current = everywhere = made[0]
    made_in = made[1]
    # One graph made and loaded: what each region costs beside timing.
    making = time.perf_counter() - started + made_in
    one = _once(runner(current))
    # The last timing (FP32, the chosen graph and the one quantized everywhere) counts as two comparisons.
    most = max(1, int(seconds / (making + MAX_COMPARISON_SECONDS)) - 2)
    found = regions(view, layers, most)
    share = float(np.clip(seconds / (len(found) + 2) - making, 0.1, MAX_COMPARISON_SECONDS))
    per_round = int(np.clip(share / (2 * ROUNDS * one), 1, MAX_PER_ROUND))
    info(
        f"{label}: searching {len(found)} region(s) for the ones INT8 speeds up at batch {batch} "
        f"(up to {seconds:g} s, [quantize] speed_search_seconds)"
    )
    # What one region's comparison costs, and what the last timing will: a region that would run
    # past the budget is not started (one run of a large model at the bench batch can take seconds).
    comparison = making + 2 * ROUNDS * per_round * one
    last = making + 3 * ROUNDS * per_round * one
    floats: tuple[str, ...] = ()
    measured: list[RegionSpeed] = []
    for i, region in enumerate(found):
        if time.perf_counter() - started + comparison + last > seconds:
            measured += [RegionSpeed(r.name, r.layers, None, None, None, None) for r in found[i:]]
            info(f"  {len(found) - i} region(s) not measured, time budget spent: they keep their Q/DQ")
            break
        # No session is alive while a graph is made (ONNX Runtime's quantizer reads every FP32 weight):
        # a dropped session's weights and activations, free in the shared arena, go back first.
        release_shared_arena()
        candidate = save_weights_beside(make(floats + region.layers), tmp / f"graph{i + 1}.onnx")
        run_candidate, run_current = runner(candidate), runner(current)
        samples = _timed({"float": run_candidate, "int8": run_current}, per_round)
        kept, speedup, q25, q75 = keeps_qdq(samples["float"], samples["int8"])
        measured.append(RegionSpeed(region.name, region.layers, kept, speedup, q25, q75))
        what = "keeps Q/DQ" if kept else "float"
        info(f"  [{i + 1}/{len(found)}] {region.name}: INT8 {speedup:.2f}x float ({q25:.2f}-{q75:.2f}): {what}")
        if not kept:
            floats, current = floats + region.layers, candidate
        del candidate, run_candidate, run_current  # sessions dropped before the next graph is made
    release_shared_arena()
    run_current = runner(current)
    if not floats:
        final = _timed({"fp32": fp32(), "int8": run_current}, per_round)
        del run_current  # its session goes before the chosen graph is read back
        _, speedup, q25, q75 = keeps_qdq(final["fp32"], final["int8"])
        elapsed = time.perf_counter() - started
        return read_back(current), SpeedSearch(batch, seconds, elapsed, tuple(measured), speedup, q25, q75)
    final = _timed({"fp32": fp32(), "chosen": run_current, "everywhere": runner(everywhere)}, per_round)
    del run_current
    whole = RegionSpeed(WHOLE_GRAPH, layers, *keeps_qdq(final["chosen"], final["everywhere"]))
    what = "quantized everywhere instead" if whole.kept else "the regions' choice stays"
    info(
        f"  the graph quantized everywhere: INT8 {whole.speedup:.2f}x the regions' choice "
        f"({whole.speedup_q25:.2f}-{whole.speedup_q75:.2f}): {what}"
    )
    if whole.kept:
        current = everywhere
    _, speedup, q25, q75 = keeps_qdq(final["fp32"], final["everywhere" if whole.kept else "chosen"])
    elapsed = time.perf_counter() - started
    return read_back(current), SpeedSearch(batch, seconds, elapsed, tuple(measured), speedup, q25, q75, whole)


def _once(fn: Callable[[], object]) -> float:
    """One run's time in seconds, after a warm-up run."""
    fn()
    start = time.perf_counter()
    fn()
    return max(time.perf_counter() - start, 1e-6)


def _timed(fns: dict[str, Callable[[], object]], per_round: int) -> dict[str, np.ndarray]:
    from pipeline.evaluate.timing import interleaved_rounds

    return interleaved_rounds(fns, 1, ROUNDS, per_round)
