"""Where a graph normalises, found by pattern rather than by op name, and the residual stream it reads.

Exporters spell a normalisation many ways: one ``LayerNormalization`` (or ``RMSNormalization``,
``GroupNormalization``, ``InstanceNormalization``); RMSNorm as ``Pow -> ReduceMean -> Add eps -> Sqrt
-> Div`` or ``-> Reciprocal -> Mul`` (Llama, Qwen2, T5); a LayerNorm as ``ReduceMean -> Sub`` then that;
GroupNorm as ``Reshape -> InstanceNormalization -> Reshape -> Mul -> Add``; MobileBERT's NoNorm as a
``Mul`` by a constant and an ``Add`` of one straight on a residual sum. Each ``Norm`` names the tensor
it normalises and its own nodes (the scale and shift after it included): they compute in float, as
one LayerNormalization does, and what feeds the norm is the residual stream the CPU graph keeps float.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.graphview import GraphView

# Normalisations that are one op; their first input is what they normalise.
NORM_OPS = (
    "LayerNormalization",
    "RMSNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "SimplifiedLayerNormalization",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
)
# Ops that move or select values without computing new ones: a stream reaches a norm, an output or
# a row selected from it (CLIP's class token: Gather of index 0) through them, by their first input.
PASSES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Cast", "Gather", "Slice")
# Ops between an RMSNorm's mean of squares and the division by its root: + eps, sqrt, 1/x.
_ROOT_CHAIN = ("Add", "Sqrt", "Reciprocal", "Div", "Pow", "Cast")
_ROOT_CHAIN_DEPTH = 6


@dataclass(frozen=True)
class Norm:
    normalised: str  # the tensor the norm reads (its statistics are over this one)
    nodes: tuple[str, ...]  # its own nodes, scale and shift included


def normalizations(view: GraphView) -> list[Norm]:
    """Every normalisation in ``view``, by any of the patterns above, in graph order."""
    found: dict[str, Norm] = {}
    for node in view.nodes:
        norm = _single_op(view, node) or _root_mean_square(view, node) or _no_norm(view, node)
        if norm is not None and norm.normalised not in found:
            found[norm.normalised] = _centered(view, norm)
    return list(found.values())


def _single_op(view: GraphView, node) -> Norm | None:
    if node.op_type not in NORM_OPS:
        return None
    # InstanceNormalization inside a GroupNorm: the group's scale and shift come after, per channel
    tail = _scale_and_shift(view, node.output[0]) if node.op_type == "InstanceNormalization" else ()
    return Norm(node.input[0], (node.name, *tail))


def _root_mean_square(view: GraphView, node) -> Norm | None:
    """x / sqrt(mean(x^2) + eps), from the ReduceMean of the square: x squared by ``Pow(x, 2)`` or
    ``Mul(x, x)``, then divided (or multiplied by the reciprocal) by what the chain makes."""
    if node.op_type != "ReduceMean":
        return None
    square = view.producer.get(node.input[0])
    if square is None or not _is_square(view, square):
        return None
    x = square.input[0]
    chain = _root_chain(view, node.output[0])
    for reader in view.consumers.get(x, []):
        if reader.op_type in ("Mul", "Div") and reader is not square:
            other = [t for t in reader.input if t != x]
            if other and other[0] in chain:
                inner = (square.name, node.name, *chain[other[0]], reader.name)
                return Norm(x, (*inner, *_scale_and_shift(view, reader.output[0])))
    return None


def _is_square(view: GraphView, node) -> bool:
    if node.op_type == "Mul":
        return node.input[0] == node.input[1]
    if node.op_type != "Pow":
        return False
    exponent = view.constant(node.input[1]) if view.is_weight(node.input[1]) else None
    return exponent is not None and exponent.size == 1 and float(exponent.reshape(-1)[0]) == 2.0


def _root_chain(view: GraphView, start: str) -> dict[str, tuple[str, ...]]:
    """{tensor: the chain nodes that made it} for each tensor ``_ROOT_CHAIN`` ops make from ``start``."""
    reached: dict[str, tuple[str, ...]] = {}
    todo = [(start, ())]
    while todo:
        tensor, path = todo.pop()
        if len(path) >= _ROOT_CHAIN_DEPTH:
            continue
        for reader in view.consumers.get(tensor, []):
            if reader.op_type in _ROOT_CHAIN and reader.output[0] not in reached:
                reached[reader.output[0]] = (*path, reader.name)
                todo.append((reader.output[0], (*path, reader.name)))
    return reached


def _centered(view: GraphView, norm: Norm) -> Norm:
    """A LayerNorm exported as ops: ``Sub(x, ReduceMean(x))`` then a root mean square; it normalises x."""
    sub = view.producer.get(norm.normalised)
    if sub is None or sub.op_type != "Sub":
        return norm
    mean = view.producer.get(sub.input[1])
    if mean is None or mean.op_type != "ReduceMean" or mean.input[0] != sub.input[0]:
        return norm
    return Norm(sub.input[0], (mean.name, sub.name, *norm.nodes))


def _no_norm(view: GraphView, node) -> Norm | None:
    """MobileBERT's NoNorm: ``x * weight + bias`` in place of a LayerNorm, straight on the residual
    stream: x is a residual sum (an Add of two activations) or is added to one."""
    if node.op_type != "Mul":
        return None
    x = _varying_operand(view, node)
    if x is None:
        return None
    source = view.producer.get(_through_passes_back(view, x))
    residual = source is not None and source.op_type == "Add" and _both_varying(view, source)
    if not residual and not any(r.op_type == "Add" and _both_varying(view, r) for r in reached(view, x)):
        return None
    shift = _only_reader(view, node.output[0])
    if shift is None or shift.op_type != "Add" or _varying_operand(view, shift) is None:
        return None
    return Norm(x, (node.name, shift.name))


def _scale_and_shift(view: GraphView, tensor: str) -> tuple[str, ...]:
    """The ``Mul`` by a constant and then ``Add`` of a constant that follow a norm's output (the
    affine part; a GroupNorm's Reshape back to channels before them), or what of them is there."""
    nodes: list[str] = []
    reader = _only_reader(view, tensor)
    while reader is not None and reader.op_type in PASSES and reader.input[0] == tensor:
        nodes.append(reader.name)
        tensor = reader.output[0]
        reader = _only_reader(view, tensor)
    moves = len(nodes)
    for op in ("Mul", "Add"):
        reader = _only_reader(view, tensor)
        if reader is None or reader.op_type != op or _varying_operand(view, reader) is None:
            break
        nodes.append(reader.name)
        tensor = reader.output[0]
    return tuple(nodes) if len(nodes) > moves else ()


def _only_reader(view: GraphView, tensor: str):
    readers = view.consumers.get(tensor, [])
    return readers[0] if len(readers) == 1 and tensor not in view.outputs else None


def _varying_operand(view: GraphView, node) -> str | None:
    """The one activation of a two-input op whose other input is constant, else None."""
    varying = view.input_dependent()
    live = [t for t in node.input[:2] if t in varying]
    constant = [t for t in node.input[:2] if t and t not in varying]
    return live[0] if len(live) == 1 and len(constant) == 1 else None


def _both_varying(view: GraphView, node) -> bool:
    varying = view.input_dependent()
    return len(node.input) == 2 and all(t in varying for t in node.input)


def _through_passes_back(view: GraphView, tensor: str) -> str:
    """The tensor ``tensor`` was moved from (through ``PASSES``, by their first input)."""
    node = view.producer.get(tensor)
    while node is not None and node.op_type in PASSES:
        tensor = node.input[0]
        node = view.producer.get(tensor)
    return tensor


def reached(view: GraphView, tensor: str) -> Iterator:
    """The readers of ``tensor`` and of what ``PASSES`` move it to, those passes left out."""
    seen: set[str] = set()
    todo = [tensor]
    while todo:
        t = todo.pop()
        for reader in view.consumers.get(t, []):
            if reader.name in seen:
                continue
            seen.add(reader.name)
            if reader.op_type in PASSES and reader.input[0] == t:
                todo.append(reader.output[0])
            else:
                yield reader


def moved_to(view: GraphView, tensor: str) -> set[str]:
    """``tensor`` and every tensor ``PASSES`` move or select it into."""
    found, todo = set(), [tensor]
    while todo:
        t = todo.pop()
        if t not in found:
            found.add(t)
            todo += [r.output[0] for r in view.consumers.get(t, []) if r.op_type in PASSES and r.input[0] == t]
    return found


def residual_stream_adds(view: GraphView, norms: list[Norm] | None = None) -> list[str]:
    """Adds (of an activation) whose sum reaches a normalisation, a graph output or another such Add,
    directly or through ops that move or select values: a transformer's residual stream."""
    norms = normalizations(view) if norms is None else norms
    varying = view.input_dependent()
    normalised = {n.normalised for n in norms}
    inside = {name for n in norms for name in n.nodes}
    adds = {
        n.output[0]: n
        for n in view.nodes
        if n.op_type == "Add" and n.name not in inside and any(i in varying for i in n.input)
    }
    ends = normalised | view.outputs
    stream = {node.name for out, node in adds.items() if moved_to(view, out) & ends}
    changed = True
    while changed:  # readers come later in graph order: backwards, one pass nearly always settles it
        changed = False
        for out, node in reversed(adds.items()):
            if node.name not in stream and any(r.name in stream for r in reached(view, out)):
                stream.add(node.name)
                changed = True
    return sorted(stream)


def stream_passes(view: GraphView, adds: list[str], norms: list[Norm]) -> list[str]:
    """The ``PASSES`` the stream is moved through on its way into a stream Add or a norm: an embedding
    Gather, a Reshape. Quantized, they round the stream as the Add would (a TransformerEncoder's token
    embedding, gathered in uint8, was its CPU graph's largest single error)."""
    names = set(adds)
    todo = [t for n in view.nodes if n.name in names for t in n.input if t]
    todo += [n.normalised for n in norms]
    found: dict[str, None] = {}
    while todo:
        node = view.producer.get(todo.pop())
        if node is not None and node.op_type in PASSES and node.name not in found:
            found[node.name] = None
            todo.append(node.input[0])
    return list(found)
