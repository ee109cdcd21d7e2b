"""``OnnxFromTorch``: the FP32 reference graph with the config's dynamic axes."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
import onnx
import torch

from pipeline import onnxutil
from pipeline.config import Config
from pipeline.data import Feed
from pipeline.errors import PipelineError


def torch_outputs(model: torch.nn.Module, feed: Feed, cfg: Config) -> list[np.ndarray]:
    """Run the model on a feed; outputs as numpy, checked against the config's [[outputs]]."""
    with torch.no_grad():
        result = model(*(torch.from_numpy(np.ascontiguousarray(feed[s.name])) for s in cfg.inputs))
    outs = [result] if isinstance(result, torch.Tensor) else list(result) if isinstance(result, (tuple, list)) else None
    if outs is None or not all(isinstance(o, torch.Tensor) for o in outs):
        raise PipelineError(f"{cfg.path}: the model must return a tensor or a tuple of tensors, got {type(result)}")
    if len(outs) != len(cfg.outputs):
        raise PipelineError(
            f"{cfg.path}: the model returns {len(outs)} output(s) but [[outputs]] lists {len(cfg.outputs)} "
            f"({', '.join(o.name for o in cfg.outputs)}); make them agree"
        )
    batch = feed[cfg.inputs[0].name].shape[cfg.inputs[0].batch_axis or 0]
    arrays = []
    for spec, out in zip(cfg.outputs, outs, strict=True):
        arr = out.detach().cpu().numpy()
        expected = [batch if d == "batch" else d for d in spec.shape]
        mismatch = len(arr.shape) != len(expected) or any(
            isinstance(e, int) and e != g for e, g in zip(expected, arr.shape, strict=False)
        )
        if mismatch:
            raise PipelineError(
                f"{cfg.path}: output {spec.name!r} has shape {list(arr.shape)} at batch {batch}, "
                f"but [[outputs]] says {list(spec.shape)}; fix the config's shape"
            )
        if arr.dtype != np.dtype(spec.dtype):
            raise PipelineError(
                f"{cfg.path}: output {spec.name!r} has dtype {arr.dtype}, but [[outputs]] says {spec.dtype}"
            )
        arrays.append(arr)
    return arrays


class OnnxFromTorch:
    """Export ``model`` with torch.onnx's exporter (constant folding, BN folding included)."""

    def __init__(self, cfg: Config, example: Feed) -> None:
        self.cfg = cfg
        self.example = example

    def __call__(self, model: torch.nn.Module) -> onnx.ModelProto:
        cfg = self.cfg
        dims: dict[str, torch.export.Dim] = {}
        dynamic_shapes = {}
        for spec in cfg.inputs:
            axes = {}
            for axis, dim in enumerate(spec.shape):
                if isinstance(dim, str):
                    axes[axis] = dims.setdefault(dim, torch.export.Dim(dim))
            dynamic_shapes[spec.name] = axes
        args = tuple(torch.from_numpy(self.example[s.name]) for s in cfg.inputs)
        log = io.StringIO()
        try:
            # The exporter prints progress and warns about torchvision ops this model does not use.
            with contextlib.redirect_stdout(log), warnings.catch_warnings(), _quiet("torch.onnx"):
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    model,
                    args,
                    input_names=[s.name for s in cfg.inputs],
                    output_names=[s.name for s in cfg.outputs],
                    dynamic_shapes=dynamic_shapes,
                    opset_version=cfg.export.opset,
                    dynamo=True,
                    optimize=True,
                    verbose=False,
                )
        except Exception as exc:  # torch.export raises many types; all mean "this model cannot be exported"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PipelineError(f"{cfg.path}: torch.onnx.export failed for {cfg.model.source!r}: {first}") from exc
        proto = program.model_proto
        _check_io(proto, cfg)
        onnx.helper.set_model_props(proto, {"trtpipe.model": cfg.name, "trtpipe.precision": "fp32"})
        return onnxutil.check(proto, f"{cfg.name} fp32 graph")


@contextlib.contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_io(proto: onnx.ModelProto, cfg: Config) -> None:
    """The exported graph keeps the config's names, and its batch axis stays dynamic."""
    for spec, value in zip((*cfg.inputs, *cfg.outputs), (*proto.graph.input, *proto.graph.output), strict=False):
        dims = value.type.tensor_type.shape.dim
        for axis, want in enumerate(spec.shape):
            if isinstance(want, str) and axis < len(dims) and not dims[axis].dim_param:
                raise PipelineError(
                    f"{cfg.path}: axis {axis} of {spec.name!r} was exported static ({dims[axis].dim_value}); "
                    f"the model specializes on it (e.g. a reshape with a fixed size)"
                )
