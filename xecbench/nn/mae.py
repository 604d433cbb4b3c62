"""Masked-autoencoder pretraining on the whole detector (FCMAE-style).

1. Mask a fraction of the *valid* sensors of each event (the same count per event).
2. Encode: masked and invalid sensors enter as zeros with the mask (see :class:`.encoder.XECEncoder`).
3. Decode every face: the last-stage features plus the fused face token, a learned mask token at
   hidden sites, one block, and a linear head that unfolds each coarse site into its
   ``stride x stride`` sensors (pixel shuffle) -- or one value per node on hex faces.
4. Loss on masked sensors only: npho on every masked sensor, time only where the time is valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import geometry as geo
from .blocks import ConvNeXtV2Block
from .encoder import EncoderConfig, XECEncoder
from .faces import FaceLayout
from .hex import HexNeXtBlock

LOSSES = ("mse", "l1", "huber")


def random_mask(valid: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mask ``floor(ratio * min_b n_valid)`` valid sensors per event, chosen uniformly at random.

    valid: ``(B, N)`` bool. Returns ``(B, N)`` bool, True = masked; never masks an invalid sensor.
    No host synchronisation: the count stays a tensor.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    noise = torch.rand(valid.shape, device=valid.device, generator=generator)
    noise = noise.masked_fill(~valid, 2.0)  # invalid sensors sort last
    order = noise.argsort(dim=1)
    positions = torch.arange(valid.shape[1], device=valid.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)  # rank of each sensor's noise in its event
    n_mask = torch.floor(ratio * valid.sum(dim=1).min().to(torch.float32))
    return rank < n_mask


def masked_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    time_valid: torch.Tensor,
    layout: FaceLayout,
    kind: str = "mse",
    channel_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean error over the masked sensors, per channel, weighted and summed; the same per face.

    pred, target ``(B, 4760, 2)``; mask, time_valid ``(B, 4760)`` bool. npho counts on every masked
    sensor, time only where it is valid too. Unscored targets get exactly zero weight (and gradient).
    """
    w = torch.stack([mask, mask & time_valid], dim=-1).to(pred.dtype)  # (B, N, 2)
    cw = pred.new_ones(2) if channel_weights is None else channel_weights.to(pred.dtype)
    target = torch.where(w > 0, target, 0.0)  # sentinels never enter the arithmetic
    err = masked_error(pred, target, kind) * w
    total = (err.sum((0, 1)) / w.sum((0, 1)).clamp(min=1.0) * cw).sum()
    per_face = {}
    for face in geo.FACES:
        ids = layout.ids(face)
        per_face[face] = (err[:, ids].sum((0, 1)) / w[:, ids].sum((0, 1)).clamp(min=1.0) * cw).sum()
    return total, per_face


def masked_error(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    if kind == "mse":
        return (pred - target) ** 2
    if kind == "l1":
        return (pred - target).abs()
    if kind == "huber":
        return F.huber_loss(pred, target, reduction="none", delta=1.0)
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")


@dataclass(frozen=True)
class MAEConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    mask_ratio: float = 0.6
    loss: str = "mse"  # "mse" | "l1" | "huber"
    channel_weights: tuple[float, float] = (1.0, 1.0)  # npho, time

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"MAEConfig.loss must be one of {LOSSES}, got {self.loss!r}")
        if not 0.0 <= self.mask_ratio <= 1.0:
            raise ValueError(f"MAEConfig.mask_ratio must be in [0, 1], got {self.mask_ratio}")


class GridDecoder(nn.Module):
    """Last-stage features ``(B, C, h, w)`` + token ``(B, D)`` -> per-cell ``(B, 2, H, W)``."""

    def __init__(self, dim: int, token_dim: int, stride: int, out_shape: tuple[int, int]):
        super().__init__()
        self.token_proj = nn.Linear(token_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.block = ConvNeXtV2Block(dim)
        self.pred = nn.Conv2d(dim, 2 * stride * stride, 1)
        self.stride, self.out_shape = stride, out_shape

    def forward(self, feats: torch.Tensor, mask: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        x = torch.where(mask, self.mask_token.to(feats.dtype), feats) + self.token_proj(token)[..., None, None]
        x = F.pixel_shuffle(self.pred(self.block(x)), self.stride)  # (B, 2, h*s, w*s)
        H, W = self.out_shape
        return x[..., :H, :W]


class HexDecoder(nn.Module):
    """Node features ``(B, 73, C)`` + token -> ``(B, 73, 2)``."""

    def __init__(self, dim: int, token_dim: int, op: str):
        super().__init__()
        self.token_proj = nn.Linear(token_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.block = HexNeXtBlock(dim, op)
        self.pred = nn.Linear(dim, 2)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        x = torch.where(mask[..., None], self.mask_token.to(feats.dtype), feats) + self.token_proj(token)[:, None]
        return self.pred(self.block(x))


@dataclass
class MAEOutput:
    pred: torch.Tensor  # (B, 4760, 2) normalised predictions at every sensor
    mask: torch.Tensor  # (B, 4760) bool, True = masked (the scored sensors)
    loss: torch.Tensor  # scalar
    loss_per_face: dict[str, torch.Tensor]  # scalar per face (npho + time terms, weighted)


class XECMAE(nn.Module):
    """Masked autoencoder over all six faces. See the module docstring for the method."""

    def __init__(self, cfg: MAEConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or MAEConfig()
        enc = cfg.encoder
        self.encoder = XECEncoder(enc)
        self.decoders = nn.ModuleDict()
        for face in geo.GRID_FACES:
            shape = self.encoder.layout.grid_shape(face)
            self.decoders[face] = GridDecoder(enc.dims[-1], enc.token_dim, enc.stride(face), shape)
        for face in geo.HEX_FACES:
            self.decoders[face] = HexDecoder(enc.hex_dim, enc.token_dim, enc.hex_op)
        self.register_buffer("channel_weights", torch.tensor(cfg.channel_weights), persistent=False)

    def decode(self, enc: dict) -> torch.Tensor:
        """Encoder output -> predictions ``(B, 4760, 2)`` at every sensor."""
        layout = self.encoder.layout
        per_face = {}
        for k, face in enumerate(geo.FACES):
            out = self.decoders[face](enc["features"][face], enc["masks"][face], enc["tokens"][:, k])
            per_face[face] = out if face in geo.HEX_FACES else layout.from_grid(out, face)
        return layout.scatter(per_face)

    def forward(
        self,
        x: torch.Tensor,
        valid: torch.Tensor,
        time_valid: torch.Tensor,
        mask: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
    ) -> MAEOutput:
        """x ``(B, 4760, 2)`` normalised, valid / time_valid ``(B, 4760)`` bool. ``mask`` (True =
        masked) overrides the random mask drawn at ``mask_ratio`` (default from the config)."""
        if mask is None:
            ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
            mask = random_mask(valid, ratio, generator)
        mask = mask & valid
        enc = self.encoder(x, valid & ~mask, time_valid)
        pred = self.decode(enc)
        loss, per_face = self.loss(pred, x, mask, time_valid)
        return MAEOutput(pred=pred, mask=mask, loss=loss, loss_per_face=per_face)

    def loss(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, time_valid: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return masked_loss(pred, target, mask, time_valid, self.encoder.layout, self.cfg.loss, self.channel_weights)
