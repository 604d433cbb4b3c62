"""HexNeXt: the ConvNeXt V2 block on the hexagonal top/bottom faces.

Node features are ``(B, 73, C)``. The spatial operator works on the padded neighbour table of
:func:`geometry.hex_graph` (``(73, 7)``: self + six directions, -1 for none), by one gather:

* ``conv``: direction-aware depthwise graph convolution, one weight vector per direction:
  ``y[n] = sum_d w[d] * x[table[n, d]]``.
* ``attention``: multi-head graph attention over self and the hex neighbours; hidden nodes are never
  used as keys (masked softmax), and a node with no visible key gets zero.

A dense ``(73 x 73)`` formulation and a scatter (``index_add``) formulation were the alternatives:
``benchmarks/bench_hex.py`` measures them and the gather wins on CPU at these sizes.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import geometry as geo
from .blocks import ChannelMLP, DropPath, add_residual


def _neighbour_table() -> torch.Tensor:
    """``(73, 7)`` neighbour indices with -1 replaced by 73 (a zero pad row)."""
    t = torch.as_tensor(geo.hex_graph().table.copy())
    return torch.where(t < 0, torch.full_like(t, geo.HEX_N), t)


def gather_neighbours(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``(B, N, C)`` -> ``(B, N, 7, C)``: features of self and the six neighbours (0 where absent)."""
    B, N, C = x.shape
    pad = torch.cat([x, x.new_zeros(B, 1, C)], dim=1)
    # index_select, not pad[:, table]: the same values, but its backward is an index_add instead of
    # advanced indexing's accumulating index_put, which makes HexConv's forward + backward about 2x
    # faster on CPU (benchmarks/bench_hex.py)
    return pad.index_select(1, table.flatten()).view(B, *table.shape, C)


class HexConv(nn.Module):
    """Direction-aware depthwise graph convolution (one ``(C,)`` weight per direction 0..6)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(7, dim) * 0.02)
        self.bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("table", _neighbour_table(), persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x ``(B, 73, C)`` with hidden nodes already zero; mask unused (zeros contribute nothing)."""
        return (gather_neighbours(x, self.table) * self.weight).sum(2) + self.bias


class HexAttention(nn.Module):
    """GAT-style multi-head attention over self + hex neighbours; hidden nodes are never keys."""

    def __init__(self, dim: int, heads: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"HexAttention: dim {dim} must divide by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # direction embedding on the keys, so the operator knows where a neighbour sits
        self.dir_emb = nn.Parameter(torch.zeros(7, dim))
        self.register_buffer("table", _neighbour_table(), persistent=False)
        exists = torch.as_tensor(geo.hex_graph().table.copy()) >= 0
        self.register_buffer("exists", exists, persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        h, dh = self.heads, C // self.heads
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        k = gather_neighbours(k, self.table) + self.dir_emb  # (B, N, 7, C)
        v = gather_neighbours(v, self.table)
        allowed = self.exists.expand(B, N, 7)
        if mask is not None:
            hidden_pad = torch.cat([mask, mask.new_ones(B, 1)], dim=1)  # pad row counts as hidden
            allowed = allowed & ~hidden_pad[:, self.table]
        scores = (q.view(B, N, 1, h, dh) * k.view(B, N, 7, h, dh)).sum(-1) / dh**0.5  # (B, N, 7, h)
        scores = scores.masked_fill(~allowed[..., None], float("-inf"))
        attn = torch.softmax(scores, dim=2).nan_to_num(0.0)  # all keys hidden -> zero row
        out = (attn[..., None] * v.view(B, N, 7, h, dh)).sum(2).reshape(B, N, C)
        return self.proj(out)


class HexNeXtBlock(nn.Module):
    """ConvNeXt V2 block on the hex graph: spatial op -> :class:`.blocks.ChannelMLP`, residual.

    x: ``(B, 73, C)``; mask ``(B, 73)`` bool (True = hidden) or None; hidden outputs are zero.
    """

    def __init__(self, dim: int, op: str = "conv", heads: int = 4, drop_path: float = 0.0):
        super().__init__()
        if op not in ("conv", "attention"):
            raise ValueError(f"HexNeXtBlock: op must be 'conv' or 'attention', got {op!r}")
        self.spatial = HexConv(dim) if op == "conv" else HexAttention(dim, heads)
        self.mlp = ChannelMLP(dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        keep = None if mask is None else (~mask)[..., None].to(x.dtype)  # (B, N, 1)
        x = x if keep is None else x * keep
        return add_residual(x, self.mlp(self.spatial(x, mask), keep), self.drop_path, keep)
