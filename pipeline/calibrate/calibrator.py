"""``RangesFromOnnx``: stream calibration batches through the FP32 graph on ONNX Runtime.

Only the tensors that will be quantized are added as graph outputs, and their
statistics are updated batch by batch, so peak memory is one batch's
activations plus fixed-size histograms, whatever the number of samples.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable
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
        stats = {name: TensorStats(self.bins) for name in self.tensors}
        with tempfile.TemporaryDirectory(prefix="trtpipe.calib.") as tmp:
            path = Path(tmp) / "augmented.onnx"
            onnxutil.save(augmented(fp32, self.tensors, view), path)
            sess = ortsession.session(path)
            wanted = [o.name for o in sess.get_outputs() if o.name in stats]
            for feed in progress(batches, "calibrating", length=total_batches):
                values = sess.run(wanted, ortsession.feed_for(sess, feed)) if wanted else []  # [] means "all"
                self._update(stats, wanted, values)
        ranges = {
            name: TensorRange(s.min if s.count else 0.0, s.max if s.count else 0.0, s.thresholds(self.percentile))
            for name, s in stats.items()
        }
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


def batches_needed(samples: int, batch_size: int) -> int:
    return math.ceil(samples / batch_size)
