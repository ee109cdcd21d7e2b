"""A small ViT-style transformer for 1x16x16 digits.

Patch embedding, multi-head self-attention written out as MatMul/Softmax/MatMul
(so the exported graph shows the batched MatMuls a quantizer must handle),
LayerNorm and GELU.

``build(outliers=k)`` is the same trained network with the activation outliers
trained transformers carry: ``k`` LayerNorm output channels scaled up and the
next layer's input weights scaled down by the same factor (``add_outliers``),
so it computes the same function but per-tensor int8 loses the other channels.
"""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DigitViT(nn.Module):
    def __init__(self, dim: int = 192, depth: int = 4, heads: int = 3, mlp: int = 768, patch: int = 4) -> None:
        super().__init__()
        tokens = (16 // patch) ** 2
        self.embed = nn.Conv2d(1, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.embed(image).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def build(
    dim: int = 192, depth: int = 4, heads: int = 3, mlp: int = 768, outliers: int = 0, factor: float = 50.0
) -> nn.Module:
    """The ViT; with ``outliers``, ``add_outliers`` runs on the weights each time they are loaded
    (the pipeline builds the model first and loads the checkpoint into it after)."""
    model = DigitViT(dim, depth, heads, mlp)
    if outliers:
        model.register_load_state_dict_post_hook(lambda module, _keys: add_outliers(module, outliers, factor))
    return model


def outlier_channels(dim: int, count: int) -> list[int]:
    """The same ``count`` channels in every block, as trained transformers' outliers sit in a few
    fixed dimensions of the residual stream; seeded, so the model is reproducible."""
    if not 0 < count <= dim:
        raise ValueError(f"outliers must be in 1..{dim}, got {count}")
    return sorted(torch.randperm(dim, generator=torch.Generator().manual_seed(0))[:count].tolist())


@torch.no_grad()
def add_outliers(model: DigitViT, count: int, factor: float) -> None:
    """Scale ``count`` output channels of every block's two LayerNorms (gamma and beta) by ``factor``
    and the matching input columns of the Linear reading each (qkv, the MLP's first) by 1/``factor``:
    the same function, with those channels ``factor`` times wider than the rest."""
    if factor <= 0:
        raise ValueError(f"factor must be positive, got {factor}")
    channels = outlier_channels(model.norm.normalized_shape[0], count)
    for block in model.blocks:
        for norm, linear in ((block.norm1, block.attn.qkv), (block.norm2, block.mlp[0])):
            norm.weight[channels] *= factor
            norm.bias[channels] *= factor
            linear.weight[:, channels] /= factor
