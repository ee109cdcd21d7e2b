"""Build the user's ``torch.nn.Module`` from the config and load its weights safely."""

from __future__ import annotations

import inspect
import io
import pickle

import torch

from pipeline.callables import load_callable, user_code
from pipeline.config import Config
from pipeline.console import info
from pipeline.errors import PipelineError
from pipeline.fileio import read_checked


def model_from_config(cfg: Config) -> torch.nn.Module:
    build = load_callable(cfg.model.source, cfg.root, "model.source")
    try:
        inspect.signature(build).bind(**cfg.model.args)
    except TypeError as exc:
        raise PipelineError(f"{cfg.path}: model.source {cfg.model.source!r} rejected [model.args]: {exc}") from None
    except ValueError:  # no signature to read (a builtin, a C extension): it is called as it is
        pass
    with user_code(f"building the model with model.source {cfg.model.source!r}"):
        model = build(**cfg.model.args)
    if not isinstance(model, torch.nn.Module):
        raise PipelineError(
            f"{cfg.path}: model.source {cfg.model.source!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    if cfg.model.weights is not None:
        load_weights(model, cfg)
    return model.eval()


def load_weights(model: torch.nn.Module, cfg: Config) -> None:
    path = cfg.resolve(cfg.model.weights or "")
    if not path.exists():
        raise PipelineError(f"{cfg.path}: model.weights file {path} does not exist")
    if not path.is_file():
        raise PipelineError(f"{cfg.path}: model.weights {path} is not a regular file (a folder, FIFO or device)")
    # The bytes hashed are the bytes loaded: a checkpoint saved anew meanwhile is refused, not recorded.
    data = read_checked(path)
    try:
        # weights_only: never unpickle arbitrary objects from a user file.
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's weights_only refused an object: its advice would run pickled code
        raise PipelineError(
            f"{path}: holds objects other than tensors, which trtpipe never unpickles (a whole pickled model?); "
            f"save the weights with torch.save(model.state_dict(), path)"
        ) from None
    except Exception as exc:  # torch's loader raises any type on bytes that are no checkpoint (/etc/passwd: IndexError)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"{path}: not a readable state_dict (truncated, corrupt or not one): {first}") from None
    state = _unwrapped(state, path)
    if not isinstance(state, dict):
        raise PipelineError(f"{path}: expected a state_dict (a dict of tensors), got {type(state).__name__}")
    odd = next(((k, v) for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if odd is not None:
        raise PipelineError(f"{path}: {odd[0]!r} is a {type(odd[1]).__name__}; a state_dict maps names to tensors")
    expected = model.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and hasattr(v, "shape") and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if wrong:
        raise PipelineError(
            f"{path}: weight shapes do not match the model built by {cfg.model.source!r} "
            f"(checkpoint vs model: {'; '.join(wrong[:3])}{'; ...' if len(wrong) > 3 else ''}); check [model.args]"
        )
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise PipelineError(
            f"{path}: weights do not match the model built by {cfg.model.source!r}: "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}; check [model.args]"
        )


# Where training loops keep the weights inside a checkpoint dict (Lightning: state_dict; many: model).
WEIGHT_KEYS = ("state_dict", "model")


def _unwrapped(state: object, path) -> object:
    """The state_dict itself, or the one a checkpoint dict holds under a ``WEIGHT_KEYS`` key (said in one line)."""
    if not isinstance(state, dict) or all(isinstance(v, torch.Tensor) for v in state.values()):
        return state
    key = next((k for k in WEIGHT_KEYS if isinstance(state.get(k), dict)), None)
    if key is None:
        return state
    info(f"{path}: a checkpoint dict; loading the weights under its key {key!r}")
    return state[key]
