"""``RangesFromOnnx``: stream calibration batches through the FP32 graph on ONNX Runtime.

Only the tensors that will be quantized are added as graph outputs (one per set
of tensors holding the same values), and their statistics are updated run by run
while ONNX Runtime runs the next one, so peak memory is two runs' captured tensors
plus fixed-size histograms, whatever the number of samples. How many samples a run
takes, and whether the tensors are captured in several passes, is ``memory.capture_plan``'s
call; the statistics are exact sums, so neither changes the ranges. Then ``auto.AutoRanges``
chooses each tensor's ``auto`` range on the first rows it kept from the stream.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx

from pipeline import onnxutil, ortsession
from pipeline.calibration.auto import AutoRanges, Measured
from pipeline.calibration.cache import Ranges, TensorRange
from pipeline.calibration.methods.base import Collected, Settings
from pipeline.console import progress
from pipeline.data import Feed
from pipeline.errors import PipelineError
from pipeline.fileio import at_once, temp_prefix
from pipeline.graphview import GraphView
from pipeline.phases import timed

STATISTICS = "statistics pass"  # the phase streaming the calibration data through the graph


class RangesFromOnnx:
    def __init__(self, tensors: Iterable[str], bins: int, percentile: float) -> None:
        self.tensors = sorted(set(tensors))
        self.settings = Settings(bins, percentile)

    def __call__(
        self,
        fp32: onnx.ModelProto | Path,
        batches: Iterable[Feed],
        total_batches: int | None = None,
        settings: dict[str, object] | None = None,
        view: GraphView | None = None,
        graph_sha256: str | None = None,
        groups: Sequence[Sequence[str]] = (),
        auto: AutoRanges | None = None,
    ) -> Ranges:
        """``fp32`` is the graph or its file; given its file, ``view`` and ``graph_sha256``, no copy
        of its weights is held here (ONNX Runtime holds its own).

        ``groups`` splits the measured tensors (``value_sources``) into passes over the data,
        each capturing one group; one pass captures all of them by default. ``auto`` keeps the
        first rows as they stream and then chooses each tensor's ``auto`` range.
        """
        auto = auto or AutoRanges()
        batches = auto.tap(batches)
        with tempfile.TemporaryDirectory(prefix="trtpipe.calib.") as tmp:
            path, view, graph_sha256 = _graph_file(fp32, view, graph_sha256, Path(tmp))
            with timed("graph load"):
                weights = _weights(fp32, path, view, Path(tmp))
            source = value_sources(view, self.tensors)
            holders: dict[str, list[str]] = {}
            for tensor, src in sorted(source.items()):
                holders.setdefault(src, []).append(tensor)
            kept = auto.start(view, self.tensors, Path(tmp) / "auto")
            groups = _groups(groups, set(holders), kept)
            found: dict[str, Measured] = {}
            replay = _Replay(Path(tmp) / "runs")
            with timed("capture session"):
                passes = _Passes.of(path, weights, Path(tmp)) if len(groups) > 1 else None
            for i, group in enumerate(groups):
                runs = auto.hold(batches if len(groups) == 1 else replay.play() if i else replay.record(batches))
                label = "calibrating" + (f" (pass {i + 1}/{len(groups)})" if len(groups) > 1 else "")
                with timed("capture session"):
                    outputs = new_outputs(view, group)
                    session = passes.session(group, outputs) if passes else capture_session(path, outputs, Path(tmp))
                keep = lambda run, names, values: auto.keep(run, names, values, view)  # noqa: E731
                # Each pass's statistics are made when it starts and reduced to ranges when it ends:
                # one group's histograms are held at a time.
                measured = {n: Collected(self.settings) for n in group if n in holders}
                try:
                    with timed(STATISTICS):
                        fold(session, measured, progress(runs, label, length=total_batches), keep, also=group)
                except NonFinite as exc:
                    raise _made_by_the_model(exc.tensors, view) from None
                del session  # one pass's session alive at a time
                with timed("range methods"):
                    found.update({src: _measured(s, holders[src]) for src, s in measured.items()})
                del measured
            with timed("whole-graph check"):
                auto.reference(path, _cores())
            choices = auto(view, found, weights, Path(tmp))
            del weights  # the whole-graph check reads the simulations auto wrote
            with timed("whole-graph check"):
                choices, whole = auto.check(found, choices, _cores())
        ranges = {}
        for name in self.tensors:
            m, choice = found[source[name]], choices[source[name]]
            ranges[name] = TensorRange(m.min, m.max, {**m.amax, "auto": m.amax[choice.method]}, choice)
        return Ranges(graph_sha256, dict(settings or {}), ranges, whole)


class Folding(Protocol):
    """Statistics of one tensor, folded run by run (``methods.base.Collected``, ``channels.ChannelStats``)."""

    def update(self, x: np.ndarray) -> None: ...


def fold(
    sess,
    stats: Mapping[str, Folding],
    runs: Iterable[Feed],
    keep: Callable[[int, list[str], list], None] | None = None,
    also: Iterable[str] = (),
) -> None:
    """Run ``sess`` on each of ``runs`` and fold its outputs named in ``stats`` into them; with
    ``keep``, those and the outputs named in ``also`` go to it with the run's number."""
    extra = set(also) if keep else set()
    wanted = [o.name for o in sess.get_outputs() if o.name in stats or o.name in extra]

    def run(feed: Feed) -> list:
        return sess.run(wanted, ortsession.feed_for(sess, feed)) if wanted else []  # [] means "all"

    def done(number: int, values: list) -> None:
        _update(stats, wanted, values)
        if keep:
            keep(number, wanted, values)

    # ONNX Runtime (which releases the GIL) runs k+1 while this thread folds k into the
    # statistics: two runs' outputs alive at most.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="trtpipe-calib") as pool:
        pending = None
        for number, feed in enumerate(runs):
            nxt = pool.submit(run, feed)
            if pending is not None:
                done(pending[0], pending[1].result())
            pending = (number, nxt)
        if pending is not None:
            done(pending[0], pending[1].result())


class NonFinite(ValueError):
    """Measured tensors held NaN or an infinity in one run."""

    def __init__(self, tensors: list[str]) -> None:
        super().__init__(f"tensors {tensors} became NaN/Inf during calibration")
        self.tensors = tensors


def _update(stats: Mapping[str, Folding], names: list[str], values: list) -> None:
    bad = []
    for name, value in zip(names, values, strict=True):
        if name not in stats:
            continue  # captured for auto only
        try:
            stats[name].update(value)
        except ValueError:
            bad.append(name)
    if bad:
        raise NonFinite(bad)


def _made_by_the_model(tensors: list[str], view: GraphView) -> PipelineError:
    """One line: the first tensor in the graph's order that held NaN or an infinity, the node that
    computed it, and that it is the model's doing (the data was checked finite as it streamed in); an
    additive mask into a Softmax is never measured (``masks``)."""
    order = {o: i for i, n in enumerate(view.nodes) for o in n.output}
    tensor = min(tensors, key=lambda t: order.get(t, -1))
    node = view.producer.get(tensor)
    made = f"{node.op_type} node {node.name!r}" if node is not None else "a graph input"
    return PipelineError(
        f"tensor {tensor!r}, made by {made}, holds NaN or an infinity during calibration: the model computes it "
        f"(its inputs were finite), and a quantized tensor needs a finite range; exclude the nodes reading it "
        f"([quantize] exclude_nodes) or fix the model"
    )


def _groups(groups: Sequence[Sequence[str]], stats: set[str], kept: set[str]) -> list[list[str]]:
    """The passes over the data: ``groups`` (one pass capturing everything by default), which must
    split the measured tensors ``stats``; what auto keeps that no group captures is one more pass."""
    groups = [list(g) for g in groups] or [sorted(set(stats) | kept)]
    covered = {n for g in groups for n in g}
    if sorted(n for g in groups for n in g if n in stats) != sorted(stats) or not covered <= set(stats) | kept:
        raise ValueError("groups must split the measured tensors (value_sources) exactly")
    rest = sorted(kept - covered)
    return groups + [rest] if rest else groups


def _measured(stats: Collected, holders: list[str]) -> Measured:
    histogram = stats.histogram
    extremes = (histogram.min, histogram.max) if histogram.count else (0.0, 0.0)
    return Measured(*extremes, stats.ranges(), tuple(holders))


def _graph_file(
    fp32: onnx.ModelProto | Path, view: GraphView | None, graph_sha256: str | None, tmp: Path
) -> tuple[Path, GraphView, str]:
    """The graph's file (``fp32`` itself, or ``fp32`` saved into ``tmp``), its view and its hash."""
    if isinstance(fp32, Path) and view is not None and graph_sha256 is not None:
        return fp32, view, graph_sha256
    if isinstance(fp32, Path):
        model, file_sha256 = onnxutil.load_hashed(fp32, "FP32 graph")  # as calibrate knows the exported graph
        path = fp32
    else:
        model, file_sha256 = fp32, onnxutil.graph_hash(fp32)
        with at_once():  # scratch, read back at once
            path = onnxutil.save(model, tmp / "fp32.onnx")
    return path, view or GraphView(model), graph_sha256 or file_sha256


def _weights(fp32: onnx.ModelProto | Path, path: Path, view: GraphView, tmp: Path) -> GraphView:
    """``view`` reading its weights: an in-memory graph's (the smoothed one) its own; a file's from a
    copy of them in ``tmp``, a tensor at a time. Read before any session, while little else is held
    (the whole-graph check later keeps FP32's outputs on its rows); the simulations auto writes to
    ``tmp`` name them there."""
    if isinstance(fp32, onnx.ModelProto):
        return view.with_weights(fp32)
    return view.with_weights(onnxutil.weights_to_file(onnxutil.load(path, "FP32 graph"), tmp / "weights.onnx"), tmp)


def capture_session(fp32: Path, outputs: list[onnx.ValueInfoProto], tmp: Path, arena: bool = True):
    """A session on ``fp32`` with ``outputs`` added, from a file copy: weights are never parsed here."""
    # External weights are found relative to the graph file: a graph that has them is copied beside itself.
    folder = fp32.parent if (fp32.parent / (fp32.name + ".data")).exists() else tmp
    fd, name = tempfile.mkstemp(dir=folder, prefix=temp_prefix(fp32.name), suffix=".calib.onnx")
    os.close(fd)
    try:
        onnxutil.copy_with_outputs(fp32, Path(name), outputs)
        # One core folds histograms; ONNX Runtime gets the others (measured: on 2 cores, one
        # ORT thread beside the histograms beats two ORT threads competing with them).
        return ortsession.session(name, threads=max(1, _cores() - 1), spin=False, arena=arena)
    finally:
        os.unlink(name)


class _Passes:
    """The graph each pass over the data runs: cut after the nodes its group's tensors need, so a
    pass capturing the first layers does not run the rest of the graph (ONNX Runtime runs every
    node whatever a run fetches). The weights are written once, beside the graph, and each pass's
    graph refers to them; a captured tensor is computed by the same nodes on the same inputs."""

    def __init__(self, base: onnx.ModelProto, folder: Path) -> None:
        self.base = base  # the graph, its weights external (in folder)
        self.folder = folder

    @classmethod
    def of(cls, fp32: Path, view: GraphView, tmp: Path) -> _Passes | None:
        """None for a graph with subgraphs (If, Loop, Scan): what a subgraph reads is not cut here. A
        view whose weights are in a file already (``_weights``) gives its graph: not written again."""
        if any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in view.nodes for a in n.attribute
        ):
            return None
        if view.weights_folder is not None:
            return cls(view.model, view.weights_folder)
        folder = tmp / "passes"
        folder.mkdir()
        model = onnxutil.load(fp32, "FP32 graph")  # held alone: no session is alive between passes
        onnx.save(model, str(folder / "graph.onnx"), save_as_external_data=True, location="graph.onnx.data")
        del model
        return cls(onnx.load(str(folder / "graph.onnx"), load_external_data=False), folder)

    def session(self, group: Sequence[str], new: list[onnx.ValueInfoProto]):
        """A session computing the tensors of ``group`` (``new``: those that are no graph output)."""
        path = self.folder / "pass.onnx"
        outputs = [o for o in self.base.graph.output if o.name in set(group)] + new
        onnx.save(needed_for(self.base, group, outputs), str(path))
        try:
            return ortsession.session(path, threads=max(1, _cores() - 1), spin=False)
        finally:
            path.unlink()


def needed_for(model: onnx.ModelProto, tensors: Sequence[str], outputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
    """``model`` with only the nodes (and initializers) ``tensors`` depend on, ``outputs`` its outputs
    (every graph input kept: a run's feed is the same for every pass)."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    needed, todo = set(), list(tensors)
    while todo:
        node = producer.get(todo.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            todo.extend(t for t in node.input if t)
    nodes = [n for n in graph.node if id(n) in needed]
    used = {t for n in nodes for t in n.input}
    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    del cut.graph.node[:], cut.graph.output[:], cut.graph.initializer[:]
    cut.graph.node.extend(nodes)
    cut.graph.output.extend(outputs)
    cut.graph.initializer.extend(i for i in graph.initializer if i.name in used)
    return cut


class _Replay:
    """Runs written to disk as the first pass streams them, so later passes see exactly the same data."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0

    def record(self, runs: Iterable[Feed]) -> Iterator[Feed]:
        self.folder.mkdir(exist_ok=True)
        for feed in runs:
            np.savez(self.folder / f"{self.count}.npz", **feed)
            self.count += 1
            yield feed

    def play(self) -> Iterator[Feed]:
        for i in range(self.count):
            with np.load(self.folder / f"{i}.npz") as npz:
                yield {name: npz[name] for name in npz.files}


# Ops that only move values: the output holds exactly the input's values, so it has the
# input's statistics and needs no histogram of its own.
VALUE_PRESERVING = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity")


def value_sources(view: GraphView, tensors: Iterable[str]) -> dict[str, str]:
    """For each tensor, the tensor its statistics are measured on: itself, or the input of
    the chain of value-preserving ops that produced it."""
    sources = {}
    for tensor in tensors:
        src = tensor
        node = view.producer.get(src)
        while node is not None and node.op_type in VALUE_PRESERVING and not view.is_const(node.input[0]):
            src = node.input[0]
            node = view.producer.get(src)
        sources[tensor] = src
    return sources


def new_outputs(view: GraphView, tensors: Iterable[str]) -> list[onnx.ValueInfoProto]:
    """Value infos (types from shape inference) of ``tensors`` that are not graph outputs yet."""
    missing = [name for name in tensors if name not in view.value_infos]
    if missing:
        raise PipelineError(f"tensor {missing[0]!r} is not in the graph; the calibration plan is out of date")
    return [view.value_infos[name] for name in tensors if name not in view.outputs]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def batches_needed(samples: int, batch_size: int) -> int:
    return math.ceil(samples / batch_size)
