"""An ONNX file exported elsewhere (optimum, a framework's exporter, a model zoo, a wheel): ``[model]
onnx = "model.onnx"``, relative to the config, its external-data files beside it.

The file is checked, upgraded to the opset the pipeline needs where it is older (refused in one line
where ONNX's converter cannot), and its inputs and outputs held to the config's: names, dtypes, ranks,
static sizes. Its dynamic dimensions take the config's axis names (``batch`` and ``[[axes]]``); a
dimension the file fixes where the config says ``batch`` is made dynamic, and export's parity at
several batch sizes then shows whether the graph truly is batch-agnostic. Parity is against the file
itself on ONNX Runtime. Nothing in the file is run but its graph; weights outside its folder are
refused.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from pipeline.console import info
from pipeline.errors import PipelineError
from pipeline.sources.base import Source

if TYPE_CHECKING:
    from pipeline.config import ModelSection, TensorSpec
    from pipeline.data import Feed

ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.BOOL: "bool",
}


class OnnxFileSource(Source):
    kind = "ONNX file"

    @staticmethod
    def names(model: ModelSection) -> bool:
        return model.onnx is not None

    @property
    def path(self) -> Path:
        return self.cfg.resolve(self.cfg.model.onnx or "").resolve()

    def files(self) -> list[tuple[str, Path]]:
        if not self.path.is_file():
            return []
        return [("onnx model", self.path), *(("onnx external data", p) for p in _external_files(self.path))]

    def load(self) -> None:
        self.graph  # noqa: B018  (read, checked and held to the config as it loads)

    @cached_property
    def original(self) -> onnx.ModelProto:
        """The file as it is, its external data read from its own folder only."""
        path, key = self.path, f"{self.cfg.path}: model.onnx"
        if not path.is_file():
            raise PipelineError(f"{key} file {path} does not exist")
        for data in _external_files(path, check=True):
            if not data.is_file():
                raise PipelineError(f"{path}: its weights file {data.name} is missing beside it")
        try:
            model = onnx.load(str(path), load_external_data=True)
        except Exception as exc:  # protobuf's DecodeError and onnx's own: a file that is not an ONNX graph
            raise PipelineError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
        return model

    @cached_property
    def graph(self) -> onnx.ModelProto:
        """The graph the pipeline continues from: at the configured opset, its I/O held to the config."""
        from pipeline import onnxutil

        model = _at_opset(self.original, self.cfg.export.opset, self.path)
        model, moved = onnxutil.constants_as_initializers(model)
        if moved:
            info(f"{self.cfg.name}: {moved} Constant node(s) of {self.path.name} read as initializers (same values)")
        _hold_to_config(model, self.cfg, self.path)
        model = onnxutil.check(model, f"{self.path}")
        onnx.helper.set_model_props(
            model,
            {
                **{p.key: p.value for p in self.original.metadata_props},
                "trtpipe.model": self.cfg.name,
                "trtpipe.precision": "fp32",
                "trtpipe.exporter": "onnx file",
            },
        )
        return model

    def fp32_graph(self, example: Feed, log: Path) -> onnx.ModelProto:
        return self.graph

    @cached_property
    def _session(self):
        from pipeline import ortsession

        return ortsession.session(self.original, cpu_only=True)

    def reference(self, feed: Feed) -> list[np.ndarray]:
        from pipeline import ortsession

        outs = dict(
            zip([o.name for o in self._session.get_outputs()], ortsession.run(self._session, feed), strict=True)
        )
        return [outs[spec.name] for spec in self.cfg.outputs]


def _external_files(path: Path, check: bool = False) -> list[Path]:
    """The external-data files the graph at ``path`` names; with ``check``, one outside its folder is refused."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    folder = path.parent.resolve()
    found = []
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            data = (folder / ExternalDataInfo(tensor).location).resolve()
            if not data.is_relative_to(folder):
                if check:
                    raise PipelineError(
                        f"{path}: tensor {tensor.name!r} takes its weights from {ExternalDataInfo(tensor).location!r}, "
                        f"outside the model's folder; keep its external data beside it"
                    )
                continue
            found.append(data)
    return sorted(set(found))


def _at_opset(model: onnx.ModelProto, opset: int, path: Path) -> onnx.ModelProto:
    have = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if have is None or have == opset:
        return model
    if have > opset:
        raise PipelineError(
            f"{path}: opset {have} is newer than [export] opset = {opset}; set opset = {have} in the config"
        )
    try:
        return onnx.version_converter.convert_version(model, opset)
    except Exception as exc:  # the converter raises its own C++ errors, each a graph it cannot upgrade
        raise PipelineError(
            f"{path}: ONNX's converter cannot upgrade opset {have} to {opset} ({str(exc).splitlines()[0]}); "
            f"export the model again at opset {opset} or newer"
        ) from None


def _hold_to_config(model: onnx.ModelProto, cfg, path: Path) -> None:
    """The graph's inputs and outputs are the config's, in any order: names, dtypes, ranks, static sizes;
    dynamic dimensions renamed to the config's axes (a fixed one made dynamic where the config says so)."""
    del model.graph.value_info[:]  # inferred anew: the file's may hold the sizes it was traced at
    initializers = {i.name for i in model.graph.initializer}
    inputs = {v.name: v for v in model.graph.input if v.name not in initializers}
    outputs = {v.name: v for v in model.graph.output}
    for kind, specs, values in (("input", cfg.inputs, inputs), ("output", cfg.outputs, outputs)):
        names = [s.name for s in specs]
        if sorted(names) != sorted(values):
            raise PipelineError(
                f"{cfg.path}: the config's [[{kind}s]] are {names}, the graph {path.name} has {sorted(values)}; "
                f"name them as the graph does (trtpipe init writes them from the graph)"
            )
        for spec in specs:
            _hold(values[spec.name], spec, kind, cfg, path)


def _hold(value: onnx.ValueInfoProto, spec: TensorSpec, kind: str, cfg, path: Path) -> None:
    tensor = value.type.tensor_type
    dtype = ONNX_DTYPES.get(tensor.elem_type, onnx.TensorProto.DataType.Name(tensor.elem_type).lower())
    where = f"{cfg.path}: {kind} {spec.name!r}"
    if dtype != spec.dtype:
        raise PipelineError(f"{where} is {dtype} in {path.name}, the config says {spec.dtype}")
    if tensor.HasField("shape") and len(tensor.shape.dim) != len(spec.shape):
        graph_shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
        raise PipelineError(f"{where} has shape {graph_shape} in {path.name}, the config says {list(spec.shape)}")
    if not tensor.HasField("shape"):
        for _ in spec.shape:
            tensor.shape.dim.add()
    for dim, want in zip(tensor.shape.dim, spec.shape, strict=True):
        if isinstance(want, str):
            dim.Clear()
            dim.dim_param = want  # the config's axis name: batch, or an [[axes]] entry
        elif dim.HasField("dim_value") and dim.dim_value != want:
            raise PipelineError(
                f"{where} has a dimension of {dim.dim_value} in {path.name} where the config says {want}"
            )
        elif not dim.HasField("dim_value"):
            dim.Clear()
            dim.dim_value = want
