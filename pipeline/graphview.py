"""A read-only view of an ONNX graph: producers, consumers, shapes, constants, weights.

Calibration, quantization and attribution all look graphs up this way; it knows nothing of
either target's rules.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx

from pipeline.onnxutil import array, attribute, constant_value, consumer_map, infer_shapes_lean, producer_map


class GraphView:
    """Lookups over one graph: producers, consumers, constants, static shapes."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model  # the graph as given (no inferred shapes), for passes that rewrite it
        self.graph = infer_shapes_lean(model).graph  # its initializers have no data: the model's are used
        self.nodes = list(self.graph.node)
        self.producer = producer_map(self.graph)
        self.consumers = consumer_map(self.graph)
        self.initializers = {i.name: i for i in model.graph.initializer}
        for node in self.nodes:  # Constant nodes count as initializers
            if (value := constant_value(node)) is not None:
                self.initializers[node.output[0]] = value
        self.shapes: dict[str, list[int | None]] = {}
        for v in (*self.graph.value_info, *self.graph.input, *self.graph.output):
            if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
                self.shapes[v.name] = [
                    d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim
                ]
        self.outputs = {o.name for o in self.graph.output}
        self.inputs = {i.name for i in self.graph.input}
        self.value_infos = {v.name: v for v in (*self.graph.value_info, *self.graph.input, *self.graph.output)}
        self.weights_folder: Path | None = None  # where the model's tensors are, once moved to a file

    def move_weights(self, path: Path) -> onnx.ModelProto:
        """The model written to ``path`` with its weights beside it, and read back without them
        (``onnxutil.weights_to_file``): the graph this view now reads, each weight from the file when
        asked for. The model given is no longer this view's: dropped, its weights leave memory.
        ``path``'s folder holds any graph made from it that still names them."""
        from pipeline.onnxutil import weights_to_file

        self.model = weights_to_file(self.model, path)
        self.initializers.update({i.name: i for i in self.model.graph.initializer})
        self.weights_folder = path.parent
        return self.model

    @classmethod
    def of(cls, model: onnx.ModelProto | GraphView) -> GraphView:
        """Shape inference is the costly part on large graphs: callers that already have a view pass it."""
        return model if isinstance(model, GraphView) else cls(model)

    def with_weights(self, model: onnx.ModelProto, folder: Path | None = None) -> GraphView:
        """This view (of ``model``'s skeleton) reading its weights' data from ``model`` (or, where
        ``model`` names them in files, from ``folder``): no second shape inference."""
        view = copy.copy(self)
        view.model = model
        view.weights_folder = folder
        view.initializers = {**self.initializers, **{i.name: i for i in model.graph.initializer}}
        return view

    def is_const(self, tensor: str) -> bool:
        return tensor in self.initializers

    def array(self, tensor: str) -> np.ndarray:
        return array(self.initializers[tensor], self.weights_folder)

    def shape(self, tensor: str) -> list[int | None] | None:
        if tensor in self.initializers:
            return list(self.initializers[tensor].dims)
        return self.shapes.get(tensor)

    def constant(self, tensor: str) -> np.ndarray | None:
        """The value of a tensor made from constants alone through ops that only move values (a tied
        LM head's ``Transpose(embedding)``), or None for an activation."""
        if tensor in self.initializers:
            return self.array(tensor)
        node = self.producer.get(tensor)
        if node is None or node.op_type not in _FOLDABLE or not node.input:
            return None
        inputs = [self.constant(t) if t else None for t in node.input]
        if any(v is None for t, v in zip(node.input, inputs, strict=True) if t):
            return None
        return _FOLDABLE[node.op_type](node, *inputs)

    def is_weight(self, tensor: str) -> bool:
        """Made from constants alone (what ``constant`` folds), judged from the structure: no weight
        data is read, so it works on a view of a graph without its weights too."""
        if tensor in self.initializers:
            return True
        node = self.producer.get(tensor)
        return (
            node is not None
            and node.op_type in _FOLDABLE
            and bool(node.input)
            and all(self.is_weight(t) for t in node.input if t)
        )

    def input_dependent(self) -> set[str]:
        """Tensors whose values depend on the graph inputs' values. A Shape or Size output depends on
        shapes only, and what is computed from constants and shapes is the same for every input
        (T5's relative-position buckets, with a log(0) = -inf inside): nothing to calibrate or quantize."""
        if not hasattr(self, "_input_dependent"):
            found = set(self.inputs)
            for node in self.nodes:  # topologically sorted
                if node.op_type not in ("Shape", "Size") and any(i in found for i in node.input if i):
                    found.update(node.output)
            self._input_dependent = found
        return self._input_dependent

    def depth(self) -> dict[str, int]:
        """Longest path (in nodes) from a graph input to each tensor."""
        depth: dict[str, int] = {}
        for node in self.nodes:  # ONNX graphs are topologically sorted
            d = 1 + max((depth.get(i, 0) for i in node.input if i), default=0)
            for o in node.output:
                depth[o] = d
        return depth


def _reshape(node: onnx.NodeProto, x: np.ndarray, shape: np.ndarray) -> np.ndarray:
    dims = [x.shape[i] if d == 0 and not attribute(node, "allowzero", 0) else int(d) for i, d in enumerate(shape)]
    return x.reshape(dims)


def _axes(node: onnx.NodeProto, axes: np.ndarray | None) -> tuple[int, ...]:
    return tuple(int(a) for a in (axes if axes is not None else attribute(node, "axes", [])))


# numpy for the ops ``GraphView.constant`` folds through: each only moves or casts values.
_FOLDABLE = {
    "Identity": lambda node, x: x,
    "Transpose": lambda node, x: np.transpose(x, attribute(node, "perm", None)),
    "Reshape": _reshape,
    "Flatten": lambda node, x: x.reshape(int(np.prod(x.shape[: attribute(node, "axis", 1)])), -1),
    "Squeeze": lambda node, x, axes=None: np.squeeze(x, _axes(node, axes)) if _axes(node, axes) else np.squeeze(x),
    "Unsqueeze": lambda node, x, axes=None: np.expand_dims(x, _axes(node, axes)),
    "Cast": lambda node, x: x.astype(onnx.helper.tensor_dtype_to_np_dtype(attribute(node, "to"))),
}
