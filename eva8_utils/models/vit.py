"""vit_tiny: a small Vision Transformer for 32x32 inputs (Dosovitskiy et al. 2021).

4x4 patches -> 64 tokens + a class token, learned position embeddings (interpolated
for other input sizes), pre-norm transformer blocks, a linear head on the class token.
CAMs use ``blocks.<last>.norm1`` with :meth:`ViT.cam_reshape`, which turns the token
sequence (N, 1 + h*w, C) into a feature map (N, C, h, w) as pytorch-grad-cam expects.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Input (N, 3, H, W) normalised images; output (N, num_classes) logits."""

    def __init__(self, num_classes: int = 10, image_size: int = 32, patch_size: int = 4, dim: int = 192,
                 depth: int = 6, heads: int = 3, mlp_ratio: float = 2.0, dropout: float = 0.0):
        super().__init__()
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.patch_embed = nn.Conv2d(3, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid * self.grid, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.cam_layer = f"blocks.{depth - 1}.norm1"

    def _pos(self, h: int, w: int) -> torch.Tensor:
        if h == self.grid and w == self.grid:
            return self.pos_embed
        cls, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid = grid.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)                          # (N, C, h, w)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)                 # (N, h*w, C)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self._pos(h, w)
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])

    @staticmethod
    def cam_reshape(tokens: torch.Tensor) -> torch.Tensor:
        """(N, 1 + h*w, C) tokens -> (N, C, h, w) map, dropping the class token."""
        n, t, c = tokens.shape
        side = int(math.isqrt(t - 1))
        return tokens[:, 1:, :].reshape(n, side, side, c).permute(0, 3, 1, 2)


def vit_tiny(num_classes: int = 10, image_size: int = 32, dropout: float = 0.0) -> ViT:
    """ViT with 4x4 patches, width 192, 6 blocks of 3 heads (about 1.8M parameters)."""
    return ViT(num_classes, image_size=image_size, dropout=dropout)
