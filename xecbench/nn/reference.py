"""Slow, obviously correct references for the fast paths, for notebooks and benchmarks.

* :func:`sparse_dwconv` -- a depthwise convolution that gathers only the visible neighbours of each
  visible site (what a sparse convolution library computes).
* :func:`hidden_leak` -- how much the visible outputs of a block move when the hidden inputs change,
  and :func:`hidden_refill` -- how large the hidden outputs become: both zero for a masked block.
* :func:`gather_masked_loop` -- the per-event loop that :func:`.inpaint.gather_masked` replaces.

The test suite keeps its own independent references; these exist to be shown and timed.
"""

from __future__ import annotations

import torch
from torch import nn


def sparse_dwconv(x: torch.Tensor, mask: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Depthwise ``conv`` over visible sites only. x ``(B, C, H, W)``, mask ``(B, 1, H, W)``
    (True = hidden). Visible outputs read visible inputs only; hidden outputs are zero."""
    B, C, H, W = x.shape
    k = conv.kernel_size[0]
    r = k // 2
    out = torch.zeros_like(x)
    for b in range(B):
        for i in range(H):
            for j in range(W):
                if mask[b, 0, i, j]:
                    continue
                acc = conv.bias.clone() if conv.bias is not None else torch.zeros(C)
                for di in range(-r, r + 1):
                    for dj in range(-r, r + 1):
                        ii, jj = i + di, j + dj
                        if 0 <= ii < H and 0 <= jj < W and not mask[b, 0, ii, jj]:
                            acc += conv.weight[:, 0, di + r, dj + r] * x[b, :, ii, jj]
                out[b, :, i, j] = acc
    return out


@torch.no_grad()
def hidden_leak(
    block: nn.Module, x: torch.Tensor, mask: torch.Tensor, masked: bool = True, scale: float = 10.0
) -> float:
    """Largest change of a visible output when the hidden inputs are replaced by noise: 0 for the
    masked block, large for the plain dense block (``masked=False``), which reads hidden values."""
    noisy = torch.where(mask, torch.randn_like(x) * scale, x)

    def run(inp: torch.Tensor) -> torch.Tensor:
        return block(inp, mask) if masked else block(inp)

    visible = (~mask).expand_as(x)
    return float((run(x) - run(noisy)).abs()[visible].max())


@torch.no_grad()
def hidden_refill(block: nn.Module, x: torch.Tensor, mask: torch.Tensor, masked: bool = True) -> float:
    """Largest output at hidden sites when they enter as zeros: 0 for the masked block; the dense
    block refills them (depthwise conv from neighbours, LayerNorm and bias terms), and the next
    spatial operation would then read those made-up values."""
    x0 = x.masked_fill(mask, 0.0)
    out = block(x0, mask) if masked else block(x0)
    return float(out.abs()[mask.expand_as(out)].max())


def gather_masked_loop(values: torch.Tensor, mask: torch.Tensor, capacity: int) -> torch.Tensor:
    """Per-event loop: ``(B, N, C)`` values at the masked positions, padded to ``capacity``."""
    out = values.new_zeros(values.shape[0], capacity, values.shape[-1])
    for b in range(values.shape[0]):  # data-dependent shapes, one host sync per event on a GPU
        ids = mask[b].nonzero().squeeze(1)[:capacity]
        out[b, : len(ids)] = values[b, ids]
    return out
