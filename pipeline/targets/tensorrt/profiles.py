"""Optimization profiles from the config, checked against the graph's inputs in plain Python."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from pipeline.config import BATCH_AXIS, Config
from pipeline.errors import PipelineError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class InputProfile:
    name: str
    min: Shape
    opt: Shape
    max: Shape

    def as_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def profiles_for(cfg: Config, graph: onnx.ModelProto) -> list[list[InputProfile]]:
    """One list of per-input shapes for each ``[batch]`` profile; errors name the input and axis."""
    graph_inputs = {i.name: i for i in graph.graph.input}
    axis_ranges = {a.name: a for a in cfg.axes}
    for spec in cfg.inputs:
        if spec.name not in graph_inputs:
            raise PipelineError(
                f"{cfg.path}: input {spec.name!r} is not an input of the graph "
                f"(graph inputs: {', '.join(graph_inputs)})"
            )
        dims = graph_inputs[spec.name].type.tensor_type.shape.dim
        if len(dims) != len(spec.shape):
            raise PipelineError(
                f"{cfg.path}: input {spec.name!r} has rank {len(dims)} in the graph, {len(spec.shape)} in the config"
            )
        for axis, (dim, want) in enumerate(zip(dims, spec.shape, strict=True)):
            if isinstance(want, int) and dim.HasField("dim_value") and dim.dim_value != want:
                raise PipelineError(
                    f"{cfg.path}: input {spec.name!r} axis {axis} is {dim.dim_value} in the graph "
                    f"but {want} in the config"
                )
            if isinstance(want, int) and dim.HasField("dim_param"):
                raise PipelineError(
                    f"{cfg.path}: input {spec.name!r} axis {axis} is dynamic ({dim.dim_param!r}) "
                    f"in the graph but static ({want}) in the config"
                )
            if isinstance(want, str) and dim.HasField("dim_value"):
                raise PipelineError(
                    f"{cfg.path}: input {spec.name!r} axis {axis} is {dim.dim_value} in the graph "
                    f"but dynamic ({want!r}) in the config; re-run export"
                )
    profiles = []
    for batch in cfg.batch:
        per_input = []
        for spec in cfg.inputs:
            shapes = {}
            for which in ("min", "opt", "max"):
                shapes[which] = tuple(
                    getattr(batch, which)
                    if d == BATCH_AXIS
                    else getattr(axis_ranges[d], which)
                    if isinstance(d, str)
                    else d
                    for d in spec.shape
                )
            per_input.append(InputProfile(spec.name, shapes["min"], shapes["opt"], shapes["max"]))
        profiles.append(per_input)
    return profiles


def check_bench_batches(cfg: Config, batches: tuple[int, ...], key: str) -> None:
    """Every benchmark batch size must fall inside some profile's [min, max]."""
    for b in batches:
        if not any(p.min <= b <= p.max for p in cfg.batch):
            ranges = ", ".join(f"[{p.min}, {p.max}]" for p in cfg.batch)
            raise PipelineError(
                f"{cfg.path}: {key} batch {b} is outside every [batch] profile ({ranges}); "
                f"widen a profile or drop that batch size"
            )


def profile_index_for(cfg: Config, batch: int) -> int:
    """The profile to run ``batch`` with: the first whose range holds it."""
    for i, p in enumerate(cfg.batch):
        if p.min <= batch <= p.max:
            return i
    raise PipelineError(f"batch {batch} is outside every [batch] profile of {cfg.name}")
