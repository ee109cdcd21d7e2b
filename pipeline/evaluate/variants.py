"""Outputs of many variants of one quantized graph on the same held-out rows, scored against FP32.

A variant differs from its base graph in a few layers' Q/DQ (one layer left in FP16, one layer
alone quantized). When the graphs run as written (the TensorRT-target graphs: no ONNX Runtime
rewrites, see ``ortsession.options``), every node of the variant that is identical to the base's
node of the same name and reads only unchanged tensors computes the base's values. So a variant
runs only its changed nodes and what they feed, reading the tensors at that boundary from one run
of the base: on average about half the graph. Graphs ONNX Runtime optimizes (the CPU w8a8 graph)
fuse across that boundary differently, so they run whole.

Not bit-exact: ONNX Runtime's FP16 MatMul can differ by one FP16 step between a session of the
whole graph and one of the region on the same inputs, and a Q/DQ downstream turns that into a
whole int8 step now and then. Each figure is still that of the graph's own numbers within FP16
rounding; the budget loop scores the graphs it keeps whole (``delta=False``), so the figure it
reports is the written graph's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import onnx

from pipeline import ortsession
from pipeline.config import Config, Gate
from pipeline.data import Feed
from pipeline.evaluate.accuracy import Scorer
from pipeline.evaluate.metrics import Score, TaskMetric, task_metric
from pipeline.onnxutil import infer_shapes_lean

CHUNK = 8  # variants whose boundary tensors one base run captures: memory is a batch of their boundaries


@dataclass(frozen=True)
class HeldOut:
    """The held-out rows every variant is scored on, with the FP32 graph's outputs on them."""

    cfg: Config
    batches: tuple[tuple[Feed, np.ndarray | None], ...]
    reference: tuple[tuple[np.ndarray, ...], ...]

    @property
    def rows(self) -> int:
        return sum(len(r[0]) for r in self.reference)

    def scorer(self, names: Sequence[str]) -> Scorer:
        return Scorer(self.cfg, names)

    @cached_property
    def task(self) -> TaskMetric | None:
        """``[evaluation] metric``: what the scores' metric is and which way is better."""
        return task_metric(self.cfg)

    def reference_metric(self) -> float | None:
        """FP32's task metric on these rows, or None without labels."""
        scorer = self.scorer([])
        for (feed, labels), ref in zip(self.batches, self.reference, strict=True):
            scorer.update(list(ref), {}, labels, feed)
        return scorer.reference_value()


def held_out(cfg: Config, fp32: onnx.ModelProto | str, rows: int) -> HeldOut:
    """The first ``rows`` held-out rows, at the batch calibration ran, and the FP32 graph's outputs."""
    from pipeline.data import batch_size_of, heldout_batches, slice_rows

    batch = cfg.nearest_batch(min(cfg.calibration.batch_size, rows))
    ref = ortsession.session(fp32, cpu_only=True, arena=False)
    batches, outputs, seen = [], [], 0
    for feed, labels in heldout_batches(cfg, batch):
        n = min(batch_size_of(feed, cfg), rows - seen)
        if n < batch_size_of(feed, cfg):
            feed, labels = slice_rows(feed, cfg, 0, n), None if labels is None else labels[:n]
        batches.append((feed, labels))
        outputs.append(tuple(ortsession.run(ref, feed)))
        seen += n
        if seen >= rows:
            break
    return HeldOut(cfg, tuple(batches), tuple(outputs))


def score_of(scorer: Scorer, name: str, gate: Gate | None = None) -> Score:
    """The worst output's (and shape's) figures, the task metric over every row, and ``gate``'s
    failures on any output and shape (None when it passes or is not asked)."""
    rows = [r for r in scorer.rows({name: gate}) if r.artifact == name]
    failures = tuple(f for r in rows for f in r.failures)
    return Score(
        min(r.stats.cosine for r in rows),
        min(r.stats.centered_cosine for r in rows),
        max(r.stats.rel_error for r in rows),
        scorer.metric(name),
        failures or None,
    )


@dataclass(frozen=True)
class _Region:
    model: onnx.ModelProto | None  # the changed nodes as a graph; None: the variant computes the base's outputs
    boundary: tuple[str, ...]  # base tensors it reads
    from_base: tuple[str, ...]  # graph outputs it leaves unchanged


class VariantRunner:
    """Scores variants of ``base`` on ``heldout``; see the module docstring for what runs."""

    def __init__(self, base: onnx.ModelProto, heldout: HeldOut, delta: bool = True, gate: Gate | None = None) -> None:
        self.base = base
        self.heldout = heldout
        self.gate = gate  # each score says what this gate makes of it
        self.delta = delta and ortsession.runs_as_written(base)
        self.outputs = [o.name for o in base.graph.output]
        if self.delta:
            self.nodes = {n.name: n.SerializeToString() for n in base.graph.node}
            self.inits = {i.name: i.SerializeToString() for i in base.graph.initializer}
            lean = infer_shapes_lean(base)
            self.types = {v.name: v for v in (*lean.graph.value_info, *lean.graph.input, *lean.graph.output)}

    @property
    def chunk(self) -> int:
        """Variants scored in one pass over the held-out rows: those whose regions share a base run; a
        variant that runs whole is scored alone (each would hold a whole graph and its session)."""
        return CHUNK if self.delta else 1

    def scores(self, variants: Sequence[onnx.ModelProto | Callable[[], onnx.ModelProto]]) -> list[Score]:
        """Each variant's score; a variant given as its maker is made when its chunk is scored, and
        only its region is kept (the whole variant where it runs whole)."""
        found: list[Score] = []
        for start in range(0, len(variants), self.chunk):
            found += self._chunk(variants[start : start + self.chunk])
        return found

    def _chunk(self, variants: Sequence[onnx.ModelProto | Callable[[], onnx.ModelProto]]) -> list[Score]:
        regions = [self._region(v if isinstance(v, onnx.ModelProto) else v()) for v in variants]
        capture = sorted({t for r in regions for t in (*r.boundary, *r.from_base)} - self._inputs())
        base = ortsession.session(self._with_outputs(capture), cpu_only=True, arena=False) if capture else None
        # Without arenas: a chunk's sessions are alive together, and each arena would keep its peak.
        sessions = [
            None if r.model is None else ortsession.session(r.model, cpu_only=True, arena=False) for r in regions
        ]
        names = [str(i) for i in range(len(variants))]
        scorer = self.heldout.scorer(names)
        for (feed, labels), ref in zip(self.heldout.batches, self.heldout.reference, strict=True):
            values = dict(feed)
            if base is not None:
                values.update(zip(capture, base.run(capture, ortsession.feed_for(base, feed)), strict=True))
            got = {name: self._outputs(r, s, values) for name, r, s in zip(names, regions, sessions, strict=True)}
            scorer.update(list(ref), got, labels, feed)
        return [score_of(scorer, n, self.gate) for n in names]

    def _inputs(self) -> set[str]:
        return {i.name for i in self.base.graph.input}

    def _outputs(self, region: _Region, sess, values: dict[str, np.ndarray]) -> list[np.ndarray]:
        mine = {}
        if sess is not None:
            names = [o.name for o in sess.get_outputs()]
            feed = {i.name: values[i.name] for i in sess.get_inputs()}
            mine = dict(zip(names, sess.run(names, ortsession.feed_for(sess, feed)), strict=True))
        return [_float(mine[o] if o in mine else values[o]) for o in self.outputs]

    def _region(self, variant: onnx.ModelProto) -> _Region:
        if not self.delta:
            return _Region(variant, (), ())
        inits = {i.name: i for i in variant.graph.initializer}
        dirty = {n for n, i in inits.items() if self.inits.get(n) != i.SerializeToString()}
        nodes = []
        for node in variant.graph.node:
            if self.nodes.get(node.name) != node.SerializeToString() or any(t in dirty for t in node.input):
                nodes.append(node)
                dirty.update(node.output)
        changed = [o for o in self.outputs if o in dirty]
        if not nodes:
            return _Region(None, (), tuple(self.outputs))
        boundary = sorted({t for n in nodes for t in n.input if t and t not in dirty and t not in inits})
        used = {t for n in nodes for t in n.input}
        graph = onnx.helper.make_graph(
            nodes,
            "region",
            [self.types[t] for t in boundary],
            [self.types.get(o) or onnx.helper.make_empty_tensor_value_info(o) for o in changed],
            [i for n, i in inits.items() if n in used],
        )
        model = onnx.helper.make_model(graph, opset_imports=variant.opset_import, ir_version=variant.ir_version)
        model.metadata_props.extend(variant.metadata_props)  # runs as written, like the variant
        return _Region(model, tuple(boundary), tuple(o for o in self.outputs if o not in dirty))

    def _with_outputs(self, tensors: list[str]) -> onnx.ModelProto:
        extra = onnx.ModelProto()
        extra.CopyFrom(self.base)
        have = {o.name for o in extra.graph.output}
        extra.graph.output.extend(self.types[t] for t in tensors if t not in have)
        return extra


def _float(value: np.ndarray) -> np.ndarray:
    value = np.asarray(value)
    return value.astype(np.float32) if value.dtype == np.float16 else value
