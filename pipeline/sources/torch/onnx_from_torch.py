"""``OnnxFromTorch``: the FP32 reference graph with the config's dynamic axes.

torch.export (torch.onnx's dynamo exporter) goes first; where it fails, or
specializes a dynamic axis, the TorchScript-based exporter torch also ships is
tried. The graph's metadata (``trtpipe.exporter``) and the log say which one made
it. When both fail, the error line carries torch's own cause (the exception
summary, not the exporter's banner) and the full log goes to a file it names.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import traceback
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from pipeline import onnxutil
from pipeline.config import Config
from pipeline.console import info
from pipeline.data import Feed
from pipeline.errors import PipelineError
from pipeline.fileio import write_text
from pipeline.sources.torch.binding import BoundModel

EXPORTERS = ("torch.export", "torchscript")


def torch_outputs(model: BoundModel, feed: Feed, cfg: Config) -> list[np.ndarray]:
    """Run the model on a feed; outputs as numpy, checked against the config's [[outputs]]."""
    with torch.no_grad():
        outs = model(*(torch.from_numpy(np.ascontiguousarray(feed[s.name])) for s in cfg.inputs))
    spec0 = cfg.inputs[0]
    batch = feed[spec0.name].shape[spec0.batch_axis or 0]
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


class _ExporterFailed(Exception):
    """One exporter could not make a usable graph; the next one is tried."""


class OnnxFromTorch:
    """Export ``model`` (constant and BatchNorm folding included), falling back through ``EXPORTERS``."""

    def __init__(self, cfg: Config, example: Feed, log_path: Path) -> None:
        self.cfg = cfg
        self.example = example
        self.log_path = log_path

    def __call__(self, model: BoundModel) -> onnx.ModelProto:
        cfg = self.cfg
        log: list[str] = []
        causes: list[str] = []
        for exporter in EXPORTERS:
            captured = io.StringIO()
            try:
                proto = self._export(exporter, model, captured)
            except Exception as exc:  # exporters raise many types; each means "not this exporter"
                causes.append(f"{exporter}: {torch_cause(exc)}")
                log.append(_log_entry(exporter, captured.getvalue(), exc))
                continue
            log.append(_log_entry(exporter, captured.getvalue(), None))
            write_text(self.log_path, "\n".join(log))
            if causes:
                info(f"{cfg.name}: {causes[0]}; exported with the {exporter} exporter instead (log: {self.log_path})")
            onnx.helper.set_model_props(
                proto, {"trtpipe.model": cfg.name, "trtpipe.precision": "fp32", "trtpipe.exporter": exporter}
            )
            return proto
        write_text(self.log_path, "\n".join(log))
        raise PipelineError(
            f"{cfg.path}: {type(model.model).__name__} from {cfg.model.source!r} did not export: "
            f"{'; '.join(causes)} (full log: {self.log_path})"
        )

    def _export(self, exporter: str, model: BoundModel, captured: io.StringIO) -> onnx.ModelProto:
        cfg = self.cfg
        args = tuple(torch.from_numpy(self.example[s.name]) for s in cfg.inputs)
        names = {"input_names": [s.name for s in cfg.inputs], "output_names": [s.name for s in cfg.outputs]}
        # Exporters print progress and warn about ops this model does not use: keep it for the log.
        with contextlib.redirect_stdout(captured), warnings.catch_warnings(), _quiet("torch.onnx"):
            warnings.simplefilter("ignore")
            if exporter == "torch.export":
                program = torch.onnx.export(
                    model,
                    args,
                    dynamic_shapes=(self._dims(),),  # forward(*inputs): one entry, a tuple per input
                    opset_version=cfg.export.opset,
                    dynamo=True,
                    optimize=True,
                    verbose=False,
                    **names,
                )
                proto = program.model_proto
            else:
                buffer = io.BytesIO()
                torch.onnx.export(
                    model,
                    args,
                    buffer,
                    dynamic_axes=_dynamic_axes(cfg),
                    opset_version=cfg.export.opset,
                    dynamo=False,
                    do_constant_folding=True,
                    **names,
                )
                proto = onnx.load_from_string(buffer.getvalue())
        if proto.opset_import and _default_opset(proto) != cfg.export.opset:
            raise _ExporterFailed(f"wrote opset {_default_opset(proto)}, not the configured {cfg.export.opset}")
        _check_io(proto, cfg)
        try:
            return onnxutil.check(proto, f"{cfg.name} fp32 graph")
        except PipelineError as exc:
            raise _ExporterFailed(str(exc)) from None

    def _dims(self) -> tuple[dict[int, torch.export.Dim], ...]:
        dims: dict[str, torch.export.Dim] = {}
        return tuple(
            {axis: dims.setdefault(d, torch.export.Dim(d)) for axis, d in enumerate(spec.shape) if isinstance(d, str)}
            for spec in self.cfg.inputs
        )


def _dynamic_axes(cfg: Config) -> dict[str, dict[int, str]]:
    return {
        s.name: {axis: d for axis, d in enumerate(s.shape) if isinstance(d, str)} for s in (*cfg.inputs, *cfg.outputs)
    }


def _default_opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def torch_cause(exc: BaseException) -> str:
    """The line that says why: torch.onnx's "Exception summary" when it has one, else the first line."""
    text = _ANSI.sub("", str(exc)).strip()
    summary = re.search(r"## Exception summary\s*\n\s*(\S[^\n]*)", text)
    if summary:
        return re.sub(r"^<class '(?:[\w.]+\.)?(\w+)'>:\s*", r"\1: ", summary.group(1).strip())
    first = text.splitlines()[0].strip() if text else ""
    if isinstance(exc, _ExporterFailed):
        return first
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _log_entry(exporter: str, output: str, exc: BaseException | None) -> str:
    status = "ok" if exc is None else "FAILED"
    body = "" if exc is None else "".join(traceback.format_exception(exc))
    return f"===== {exporter}: {status}\n{output}{body}"


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
    """The exported graph keeps the config's names, and its dynamic axes stay dynamic."""
    got = [v.name for v in (*proto.graph.input, *proto.graph.output)]
    want = [s.name for s in (*cfg.inputs, *cfg.outputs)]
    if [n for n in got if n in want] != want:
        raise _ExporterFailed(f"graph inputs/outputs are {got}, expected {want}")
    values = {v.name: v for v in (*proto.graph.input, *proto.graph.output)}
    for spec in (*cfg.inputs, *cfg.outputs):
        dims = values[spec.name].type.tensor_type.shape.dim
        for axis, want_dim in enumerate(spec.shape):
            if isinstance(want_dim, str) and axis < len(dims) and not dims[axis].dim_param:
                raise _ExporterFailed(
                    f"axis {axis} of {spec.name!r} was exported static ({dims[axis].dim_value}); "
                    f"the model specializes on it (e.g. a reshape with a fixed size)"
                )
