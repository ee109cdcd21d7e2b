"""``BoundModel``: the user's module called with the config's inputs by name, returning its outputs in order.

Config inputs bind to ``forward()``'s parameters by name, so a two-input model whose
config lists its inputs in another order still gets each tensor where it belongs. The
one exception: a config with one input for a ``forward()`` with one parameter to take
it binds whatever the names (``images`` -> ``forward(self, x)``): there is nothing to
confuse. Outputs may be a tensor, a tuple or list, or a dict (transformers'
``ModelOutput`` is one); dict outputs are picked by the ``[[outputs]]`` names.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch

from pipeline.config import Config
from pipeline.errors import PipelineError

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def input_binding(model: torch.nn.Module, cfg: Config) -> dict[str, str]:
    """``{config input name: forward() parameter name}``; a mismatch is one line naming both sides."""
    wanted = [s.name for s in cfg.inputs]
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # a forward() Python cannot inspect (C++ or wrapped): names must match
        return {n: n for n in wanted}
    named = [p for p in params if p.kind in _NAMED]
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    names = [p.name for p in named]
    where = f"{cfg.path}: {type(model).__name__}.forward({', '.join(names)})"
    unknown = [n for n in wanted if n not in names]
    if unknown and len(wanted) == 1 and (only := _single_parameter(params)) is not None:
        return {wanted[0]: only}
    if unknown and not takes_kwargs:
        raise PipelineError(
            f"{where} has no parameter {unknown[0]!r} for [[inputs]] {unknown[0]!r}; name each input after the "
            f"forward() parameter it feeds"
        )
    required = [
        p.name
        for p in params
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        and p.name not in wanted
    ]
    if required:
        raise PipelineError(f"{where} needs {required[0]!r}, which [[inputs]] does not list; add it to [[inputs]]")
    return {n: n for n in wanted}


def _single_parameter(params: list[inspect.Parameter]) -> str | None:
    """The one parameter a lone input can only mean: the only one without a default, else the only one."""
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return None
    takeable = [p for p in params if p.kind in (*_NAMED, inspect.Parameter.POSITIONAL_ONLY)]
    required = [p for p in takeable if p.default is inspect.Parameter.empty]
    if len(required) == 1:
        return required[0].name if required[0].kind in _NAMED else None
    return takeable[0].name if len(takeable) == 1 and not required and takeable[0].kind in _NAMED else None


class BoundModel(torch.nn.Module):
    """``forward(*inputs)`` in config input order -> tuple of outputs in ``[[outputs]]`` order."""

    def __init__(self, model: torch.nn.Module, cfg: Config) -> None:
        super().__init__()
        self.model = model
        self.binding = input_binding(model, cfg)
        self.input_names = [s.name for s in cfg.inputs]
        self.output_names = [s.name for s in cfg.outputs]
        self.where = str(cfg.path)
        # A new Module starts in training mode, and the TorchScript exporter restores the wrapper's
        # mode onto every child after exporting: keep the user's model in eval mode (no dropout).
        self.train(model.training)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kwargs = {self.binding[n]: t for n, t in zip(self.input_names, inputs, strict=True)}
        return self.select(self.model(**kwargs))

    def select(self, result: object) -> tuple[torch.Tensor, ...]:
        if isinstance(result, torch.Tensor):
            outs: list[object] = [result]
        elif isinstance(result, Mapping):
            missing = [n for n in self.output_names if n not in result]
            if missing:
                raise PipelineError(
                    f"{self.where}: the model returns a dict without {missing[0]!r} (keys: "
                    f"{', '.join(map(str, result))}); name each [[outputs]] entry after one of its keys"
                )
            outs = [result[n] for n in self.output_names]
        elif isinstance(result, (tuple, list)):
            outs = list(result)
        else:
            raise PipelineError(
                f"{self.where}: the model must return a tensor, a tuple of tensors or a dict, "
                f"got {type(result).__name__}"
            )
        if len(outs) != len(self.output_names):
            raise PipelineError(
                f"{self.where}: the model returns {len(outs)} output(s) but [[outputs]] lists "
                f"{len(self.output_names)} ({', '.join(self.output_names)}); make them agree"
            )
        for name, out in zip(self.output_names, outs, strict=True):
            if not isinstance(out, torch.Tensor):
                raise PipelineError(
                    f"{self.where}: output {name!r} is a {type(out).__name__}, not a tensor; "
                    f"return tensors (or a dict of them)"
                )
        return tuple(outs)  # type: ignore[arg-type]
