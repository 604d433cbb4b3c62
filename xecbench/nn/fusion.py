"""The fusion Transformer: six face tokens attend to each other.

Pre-norm encoder layers (as ``nn.TransformerEncoderLayer(norm_first=True)``) with an attention that
also supports the in-attention positional encodings ``rope`` and ``alibi``. The last attention
weights are kept in ``FusionAttention.last_attn`` ``(B, heads, 6, 6)`` for plots.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .posenc import AdditivePosEnc, alibi_bias, rope_rotate


class FusionAttention(nn.Module):
    def __init__(self, dim: int, heads: int, posenc: str):
        super().__init__()
        if dim % heads:
            raise ValueError(f"fusion: token dim {dim} must divide by heads {heads}")
        self.heads, self.posenc = heads, posenc
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        if posenc == "alibi":
            self.register_buffer("bias", alibi_bias(heads), persistent=False)
        self.last_attn: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        if self.posenc == "rope":
            q, k = rope_rotate(q), rope_rotate(k)
        scores = q @ k.transpose(-1, -2) / (C // self.heads) ** 0.5  # (B, h, T, T)
        if self.posenc == "alibi":
            scores = scores + self.bias.to(scores.dtype)
        attn = scores.softmax(dim=-1)
        self.last_attn = attn.detach()
        return self.proj((attn @ v).transpose(1, 2).reshape(B, T, C))


class FusionLayer(nn.Module):
    def __init__(self, dim: int, heads: int, posenc: str, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = FusionAttention(dim, heads, posenc)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + F.dropout(self.attn(self.norm1(x)), self.dropout, self.training)
        return x + F.dropout(self.mlp(self.norm2(x)), self.dropout, self.training)


class Fusion(nn.Module):
    """``(B, 6, D)`` face tokens -> context-aware tokens ``(B, 6, D)``."""

    def __init__(self, dim: int, layers: int = 2, heads: int = 4, posenc: str = "learnable"):
        super().__init__()
        self.posenc = AdditivePosEnc(posenc, dim)
        self.layers = nn.ModuleList(FusionLayer(dim, heads, posenc) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.posenc(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def attention_maps(self) -> list[torch.Tensor]:
        """Attention weights ``(B, heads, 6, 6)`` of each layer from the last forward."""
        return [layer.attn.last_attn for layer in self.layers]
