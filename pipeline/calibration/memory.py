"""How calibration runs ONNX Runtime within a memory budget taken from the graph's shapes.

Every captured tensor is a graph output, so ONNX Runtime keeps all of them until a run
ends: a run of ``m`` samples holds ``m x`` the per-sample bytes of the captured tensors,
and two runs are alive at once (one running, one being folded). Plain inference at batch
``B`` cannot hold less than ``B x`` the graph's liveness peak (the most bytes of
activations alive at once, nodes run in order). So a run may take half of that, or
``MIN_RUN_BYTES`` for graphs whose activations are tiny beside the process itself, and
the batch is split into equal micro-batches of as many samples as fit. When one sample's
captured tensors do not fit, they are split into groups, each captured in its own pass
over the same data.

A dynamic axis other than the batch (``[[axes]]``, a sequence length) counts at its profile max: the
longest rows calibration may stream are what must fit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from pipeline.graphview import GraphView

# A run may always take this much: a Python process running ONNX Runtime is ~150 MB
# before any activation, and smaller runs only add per-run overhead on small graphs.
MIN_RUN_BYTES = 16 << 20


@dataclass(frozen=True)
class CapturePlan:
    batch_size: int  # the configured batch, as plain inference would run it
    micro_batch: int  # samples per ONNX Runtime run
    groups: tuple[tuple[str, ...], ...]  # captured tensors, one group per pass over the data
    budget: int  # bytes of captured tensors one run may hold
    inference_bytes: int  # per sample: the liveness peak of plain inference

    def describe(self) -> str:
        mib = 1 << 20
        passes = f" in {len(self.groups)} passes over the data" if len(self.groups) > 1 else ""
        return (
            f"{self.micro_batch} sample(s) per run{passes}, captured tensors at most {self.budget / mib:.0f} MiB "
            f"a run (plain inference at batch {self.batch_size} holds at least "
            f"{self.batch_size * self.inference_bytes / mib:.0f} MiB of activations)"
        )


def capture_plan(
    view: GraphView,
    captured: Iterable[str],
    batch_size: int,
    min_run_bytes: int = MIN_RUN_BYTES,
    axes: Mapping[str, int] | None = None,
) -> CapturePlan:
    """``axes``: each dynamic axis' largest size (its [[axes]] max); an axis left out counts as 1."""
    axes = axes or {}
    typed = concrete(view, axes)
    sizes = {name: max(sample_bytes(v, name, axes) for v in (view, typed)) for name in sorted(set(captured))}
    floor = max(liveness_peak(v, axes) for v in (view, typed))
    budget = max(batch_size * floor // 2, min_run_bytes)
    per_sample = max(sum(sizes.values()), 1)
    fits = max(1, min(batch_size, budget // per_sample))
    micro = -(-batch_size // -(-batch_size // fits))  # the batch in equal parts of at most ``fits``
    groups = split(view, sizes, budget) if per_sample > budget else (tuple(sizes),)
    return CapturePlan(batch_size, micro, groups, budget, floor)


def concrete(view: GraphView, axes: Mapping[str, int]) -> GraphView:
    """``view``'s graph typed again with every input dim at a size (each axis in ``axes`` at its size,
    the batch and any other at 1): exporters leave dims inside the graph that symbolic inference
    cannot name from the inputs' (Paddle2ONNX's recognizer: 16x the activations it could name), each
    of which would count as 1. ``view`` itself where inference fails on the sized graph."""
    from pipeline.onnxutil import skeleton

    sized = skeleton(view.model, every_dtype=True)
    del sized.graph.value_info[:]
    for value in sized.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_value = axes.get(dim.dim_param, 1)  # dim_value and dim_param are one field: the name goes
    try:
        return GraphView(onnx.shape_inference.infer_shapes(sized, data_prop=True))
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        return view


def split(view: GraphView, sizes: dict[str, int], budget: int) -> tuple[tuple[str, ...], ...]:
    """Tensors in graph order, cut into groups whose ``sizes`` add up to at most ``budget``
    (a larger tensor is a group of its own)."""
    order = {name: i for i, node in enumerate(view.nodes) for name in node.output}
    groups: list[tuple[str, ...]] = []
    current: list[str] = []
    used = 0
    for name in sorted(sizes, key=lambda n: (order.get(n, -1), n)):
        if current and used + sizes[name] > budget:
            groups.append(tuple(current))
            current, used = [], 0
        current.append(name)
        used += sizes[name]
    groups.append(tuple(current))
    return tuple(groups)


def sample_bytes(view: GraphView, tensor: str, axes: Mapping[str, int] | None = None) -> int:
    """Bytes of one sample of ``tensor``: each symbolic dim at its size in ``axes`` (products of
    them as shape inference writes them, ``batch*seq``), the batch axis and unknown ones as 1."""
    info = view.value_infos.get(tensor)
    tt = info.type.tensor_type if info is not None and info.type.HasField("tensor_type") else None
    if tt is None or not tt.elem_type:
        return 0  # shape inference found no type: rare, and nothing to plan with
    dims = [d.dim_value if d.HasField("dim_value") else _symbolic_size(d.dim_param, axes or {}) for d in tt.shape.dim]
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).itemsize
    return int(np.prod(dims, dtype=np.int64)) * itemsize


def _symbolic_size(param: str, axes: Mapping[str, int]) -> int:
    """A symbolic dim's size: a name in ``axes``, a product of names and numbers (``2*batch``), else 1."""
    size = 1
    for factor in param.split("*"):
        factor = factor.strip()
        size *= int(factor) if factor.isdigit() else axes.get(factor, 1)
    return size


def liveness_peak(view: GraphView, axes: Mapping[str, int] | None = None) -> int:
    """Most bytes per sample of activations alive at once, nodes run in graph order. A tensor made
    from constants alone is none (a tied LM head's transposed embedding: ONNX Runtime folds it into
    a weight), nor is one computed from shapes."""
    varying = view.input_dependent()
    last_use = {name: i for i, node in enumerate(view.nodes) for name in node.input}
    last_use.update(dict.fromkeys(view.outputs, len(view.nodes)))
    live = {name: sample_bytes(view, name, axes) for name in view.inputs if not view.is_const(name)}
    peak = sum(live.values())
    for i, node in enumerate(view.nodes):
        live.update({out: sample_bytes(view, out, axes) for out in node.output if out in varying})
        peak = max(peak, sum(live.values()))
        live = {name: size for name, size in live.items() if last_use.get(name, -1) > i}
    return peak
