"""Zoo models with random weights and their synthetic data, built offline.

Configs load this file by path (``source = "../models.py:torchvision_model"``), so it imports
nothing from the repository and works with ``trtpipe`` or ``python -m pipeline`` from any folder.
Weights come from ``torch.manual_seed``; nothing is downloaded (``weights=None``,
``pretrained=False``, transformers models from a ``*Config``, never ``from_pretrained``).
Data is deterministic: smooth images (a few low-frequency sinusoids per channel) and token ids
from a seeded generator, each sample a function of its index, so calibration and held-out
batches are the same on every run and for every batch size.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# BatchNorm statistics are warmed on this many synthetic batches of this size.
WARM_BATCHES = 2
WARM_BATCH_SIZE = 8


def torchvision_without_ops() -> None:
    """Make ``import torchvision`` work beside CPU torch when its C++ ops cannot load.

    PyPI's torchvision wheel is built against CUDA torch, so its ``_C.so`` does not load beside
    the CPU build; ``torchvision._meta_registrations`` still registers fake kernels for
    ``torchvision::nms`` and ``qnms`` unconditionally, and that fails on the undefined operators
    ("operator torchvision::nms does not exist"). Defining just those two schemas lets the import
    finish. Model definitions are plain Python; the ops themselves (nms, roi_align, ...) still
    raise torchvision's own "Couldn't load custom C++ ops" if called. Nothing is done when
    ``_C.so`` loads (a matching build), nor twice. transformers imports torchvision when it is
    installed, so text models need this too.
    """
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations or hasattr(torch.ops.torchvision, "nms"):
        return  # not installed, or its ops (or these schemas) are already registered
    try:
        torch.ops.load_library(str(Path(spec.submodule_search_locations[0]) / "_C.so"))
        return
    except OSError:
        pass
    for op in ("nms", "qnms"):  # torch.library.define keeps the definitions for the process
        torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


def torchvision_model(arch: str, **kwargs: Any) -> nn.Module:
    """``torchvision.models.get_model(arch)`` with random weights and warmed BatchNorm statistics."""
    torchvision_without_ops()
    import torchvision.models

    builder = torchvision.models.get_model_builder(arch)
    if "weights_backbone" in inspect.signature(builder).parameters:
        kwargs["weights_backbone"] = None  # segmentation builders default to downloading a backbone
    torch.manual_seed(0)
    model = builder(weights=None, **kwargs)
    return _ready(model)


def timm_model(arch: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(arch, pretrained=False)`` with warmed BatchNorm statistics."""
    torchvision_without_ops()
    import timm

    torch.manual_seed(0)
    return _ready(timm.create_model(arch, pretrained=False, **kwargs))


def transformers_model(model: str, config: str, settings: dict[str, Any] | None = None) -> nn.Module:
    """``transformers.<model>(transformers.<config>(**settings))``: random weights, no download."""
    torchvision_without_ops()
    import transformers

    torch.manual_seed(0)
    cfg = getattr(transformers, config)(**(settings or {}))
    return getattr(transformers, model)(cfg).eval()


def _ready(model: nn.Module) -> nn.Module:
    _init_zero_heads(model)
    _warm_batchnorm(model)
    return model.eval()


def _init_zero_heads(model: nn.Module) -> None:
    """Random-init Linear layers that start at zero (torchvision's ViT head): an all-zero output
    would make every precision agree exactly and hide quantization error."""
    for module in model.modules():
        if isinstance(module, nn.Linear) and not module.weight.detach().any():
            nn.init.trunc_normal_(module.weight, std=0.02)


def _warm_batchnorm(model: nn.Module) -> None:
    """Running statistics from a few train-mode passes on smooth images, as after training:
    fresh BatchNorm (mean 0, var 1) would leave activations unnormalised in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the warm-up batches
    model.train()
    with torch.no_grad():
        for i in range(WARM_BATCHES):
            model(torch.from_numpy(_smooth_images(WARM_BATCH_SIZE, 224, seed=10_000 + i * WARM_BATCH_SIZE)))
    for m in norms:
        m.momentum = 0.1


def images(samples: int, batch_size: int, size: int = 224, name: str = "x") -> Iterator[dict[str, np.ndarray]]:
    """Calibration (and held-out) batches of smooth 3-channel images, roughly zero-mean, unit-scale,
    as the model's input ``name``."""
    for start in range(0, samples, batch_size):
        yield {name: _smooth_images(min(batch_size, samples - start), size, seed=start)}


def tokens(
    samples: int, batch_size: int, seq: int = 128, vocab: int = 30522, names: tuple[str, ...] = ("input_ids",)
) -> Iterator[dict[str, np.ndarray]]:
    """Token ids (int64, Zipf-like over the vocabulary) and, if named, an attention mask with
    right padding (lengths from seq/4 to seq), one seeded generator per sample."""
    for start in range(0, samples, batch_size):
        rows = [_token_row(i, seq, vocab) for i in range(start, min(start + batch_size, samples))]
        ids = np.stack([r[0] for r in rows])
        mask = np.stack([r[1] for r in rows])
        batch = {"input_ids": ids, "attention_mask": mask}
        yield {name: batch[name] for name in names}


def mixed_length_tokens(
    samples: int,
    batch_size: int,
    lengths: tuple[int, ...] = (16, 32, 48, 64),
    vocab: int = 30522,
    names: tuple[str, ...] = ("input_ids", "attention_mask"),
) -> Iterator[dict[str, np.ndarray]]:
    """``tokens`` at sequence lengths taking turns batch by batch (a model with a dynamic seq axis):
    each batch one length, as rows of two lengths cannot share one."""
    for number, start in enumerate(range(0, samples, batch_size)):
        seq = lengths[number % len(lengths)]
        rows = [_token_row(i, seq, vocab) for i in range(start, min(start + batch_size, samples))]
        batch = {"input_ids": np.stack([r[0] for r in rows]), "attention_mask": np.stack([r[1] for r in rows])}
        yield {name: batch[name] for name in names}


def _token_row(index: int, seq: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(index)
    ids = np.minimum(rng.zipf(1.3, seq) + 100, vocab - 1).astype(np.int64)  # skip the special-token range
    length = int(rng.integers(seq // 4, seq + 1))
    mask = (np.arange(seq) < length).astype(np.int64)
    return np.where(mask == 1, ids, 0), mask


def _smooth_images(n: int, size: int, seed: int) -> np.ndarray:
    """``n`` images; image ``k`` depends only on ``seed + k``."""
    return np.stack([_smooth_image(size, seed + k) for k in range(n)])


def _smooth_image(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = np.linspace(0.0, 1.0, size, dtype=np.float32)
    freq = rng.uniform(0.5, 4.0, (3, 4, 2)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, (3, 4)).astype(np.float32)
    arg = (
        2 * np.pi * (freq[..., 0, None, None] * grid[:, None] + freq[..., 1, None, None] * grid[None, :])
        + phase[..., None, None]
    )
    return (np.sin(arg).sum(axis=1) / 2.0).astype(np.float32)


class PaddedTransformerEncoder(nn.Module):
    """Token embedding, learned positions and PyTorch's own ``nn.TransformerEncoder`` (post-norm
    LayerNorm), fed a ``src_key_padding_mask`` from the attention mask: the padding mask reaches
    the attention scores as -inf where it pads, the case the CPU graph's mask rule is for."""

    def __init__(self, vocab: int = 30522, seq: int = 128, width: int = 256, heads: int = 4, layers: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.randn(1, seq, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True)
        # nested tensors are the eval fast path; they drop padded rows, which no exporter keeps
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(input_ids) + self.position
        return self.encoder(hidden, src_key_padding_mask=attention_mask == 0)


def padded_transformer_encoder(**kwargs: Any) -> nn.Module:
    """``PaddedTransformerEncoder(**kwargs)`` with seeded random weights."""
    torch.manual_seed(0)
    return PaddedTransformerEncoder(**kwargs).eval()
