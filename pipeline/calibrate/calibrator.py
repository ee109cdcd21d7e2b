"""``RangesFromOnnx``: stream calibration batches through the FP32 graph on ONNX Runtime.

Only the tensors that will be quantized are added as graph outputs (one per set
of tensors holding the same values), and their statistics are updated batch by
batch while ONNX Runtime runs the next batch, so peak memory is two batches'
activations plus fixed-size histograms, whatever the number of samples.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import onnx

from pipeline import onnxutil, ortsession
from pipeline.calibrate.cache import Ranges, TensorRange
from pipeline.calibrate.histogram import TensorStats
from pipeline.console import progress
from pipeline.data import Feed
from pipeline.errors import PipelineError
from pipeline.quantize.placement import GraphView


class RangesFromOnnx:
    def __init__(self, tensors: Iterable[str], bins: int, percentile: float) -> None:
        self.tensors = sorted(set(tensors))
        self.bins = bins
        self.percentile = percentile

    def __call__(
        self,
        fp32: onnx.ModelProto,
        batches: Iterable[Feed],
        total_batches: int | None = None,
        settings: dict[str, object] | None = None,
        view: GraphView | None = None,
        graph_sha256: str | None = None,
    ) -> Ranges:
        """``view`` and ``graph_sha256`` of ``fp32``, when the caller has them, spare recomputing them."""
        view = GraphView.of(view or fp32)
        source = value_sources(view, self.tensors)
        stats = {name: TensorStats(self.bins) for name in sorted(set(source.values()))}
        with tempfile.TemporaryDirectory(prefix="trtpipe.calib.") as tmp:
            path = Path(tmp) / "augmented.onnx"
            onnxutil.save(augmented(fp32, list(stats), view), path)
            # One core folds histograms; ONNX Runtime gets the others (measured: on 2 cores, one
            # ORT thread beside the histograms beats two ORT threads competing with them).
            sess = ortsession.session(path, threads=max(1, _cores() - 1), spin=False)
            wanted = [o.name for o in sess.get_outputs() if o.name in stats]

            def run(feed: Feed) -> list:
                return sess.run(wanted, ortsession.feed_for(sess, feed)) if wanted else []  # [] means "all"

            # ONNX Runtime (which releases the GIL) runs batch k+1 while this thread folds batch k
            # into the histograms: two batches of activations alive at most.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="trtpipe-calib") as pool:
                pending = None
                for feed in progress(batches, "calibrating", length=total_batches):
                    nxt = pool.submit(run, feed)
                    if pending is not None:
                        self._update(stats, wanted, pending.result())
                    pending = nxt
                if pending is not None:
                    self._update(stats, wanted, pending.result())
        found = {
            name: TensorRange(s.min if s.count else 0.0, s.max if s.count else 0.0, s.thresholds(self.percentile))
            for name, s in stats.items()
        }
        ranges = {name: found[source[name]] for name in self.tensors}
        return Ranges(graph_sha256 or onnxutil.graph_hash(fp32), dict(settings or {}), ranges)

    @staticmethod
    def _update(stats: dict[str, TensorStats], names: list[str], values: list) -> None:
        for name, value in zip(names, values, strict=True):
            try:
                stats[name].update(value)
            except ValueError:
                raise PipelineError(
                    f"tensor {name!r} became NaN/Inf during calibration; check the input data's scale"
                ) from None


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


def augmented(model: onnx.ModelProto, tensors: list[str], view: GraphView | None = None) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs ``tensors`` (types from shape inference)."""
    known = GraphView.of(view or model).value_infos
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    for name in tensors:
        if name in present:
            continue
        if name not in known:
            raise PipelineError(f"tensor {name!r} is not in the graph; the calibration plan is out of date")
        out.graph.output.append(known[name])
    return out


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def batches_needed(samples: int, batch_size: int) -> int:
    return math.ceil(samples / batch_size)
