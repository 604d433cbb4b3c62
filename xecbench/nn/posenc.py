"""Positional encodings for the six face tokens, chosen by name.

Additive (added to the tokens before the fusion Transformer):
  ``learnable`` (default; ``(1, 6, D)``, trunc-normal std 0.02), ``sinusoidal`` (fixed, by face
  index), ``geometric`` (Fourier features of each face's 3D centre, then a learned projection),
  ``none``.
Inside attention (applied by :class:`.fusion.FusionAttention`):
  ``rope`` (rotary embedding of the face index on queries and keys), ``alibi`` (a per-head linear
  penalty on the distance between face centres, in metres).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import geometry as geo

POSENCS = ("learnable", "sinusoidal", "geometric", "none", "rope", "alibi")
N_FACES = len(geo.FACES)


def sinusoidal_table(n: int, dim: int) -> torch.Tensor:
    """``(n, dim)`` the Transformer's sin/cos table for positions 0..n-1."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    out = torch.zeros(n, dim)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return out


def face_centres_m() -> torch.Tensor:
    """``(6, 3)`` face centres in metres."""
    return torch.tensor(geo.face_centres(), dtype=torch.float32) / 100.0


class AdditivePosEnc(nn.Module):
    """Adds a ``(1, 6, D)`` encoding to ``(B, 6, D)`` tokens; identity for ``none``/``rope``/``alibi``."""

    def __init__(self, kind: str, dim: int, n_freq: int = 8):
        super().__init__()
        if kind not in POSENCS:
            raise ValueError(f"posenc must be one of {POSENCS}, got {kind!r}")
        self.kind = kind
        if kind == "learnable":
            self.table = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, N_FACES, dim), std=0.02))
        elif kind == "sinusoidal":
            self.register_buffer("table", sinusoidal_table(N_FACES, dim)[None], persistent=False)
        elif kind == "geometric":
            freqs = 2.0 ** torch.arange(n_freq, dtype=torch.float32)  # cycles per metre
            ang = face_centres_m()[:, :, None] * freqs * math.pi  # (6, 3, F)
            feats = torch.cat([ang.sin(), ang.cos()], dim=-1).flatten(1)  # (6, 6F)
            self.register_buffer("features", feats, persistent=False)
            self.proj = nn.Linear(feats.shape[1], dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.kind in ("learnable", "sinusoidal"):
            return tokens + self.table
        if self.kind == "geometric":
            return tokens + self.proj(self.features)[None]
        return tokens


def rope_rotate(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary embedding of positions 0..T-1 on ``(B, h, T, dh)`` (dh even), pairs (2i, 2i+1)."""
    T, dh = x.shape[-2:]
    freq = base ** (-torch.arange(0, dh, 2, device=x.device, dtype=torch.float32) / dh)
    ang = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * freq  # (T, dh/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


def alibi_bias(heads: int) -> torch.Tensor:
    """``(heads, 6, 6)`` additive attention bias: ``-slope_h * |c_i - c_j|`` (metres), with the
    geometric slopes 2^(-8 h / heads) of ALiBi."""
    slopes = 2.0 ** (-8.0 * torch.arange(1, heads + 1, dtype=torch.float32) / heads)
    dist = torch.cdist(face_centres_m(), face_centres_m())
    return -slopes[:, None, None] * dist
