"""Masked-autoencoder pretraining on the whole detector (FCMAE-style).

1. Hide a fraction of each event's *valid* sensors (:func:`.masking.random_hidden`, per sensor or
   per last-stage cell).
2. Encode: hidden and invalid sensors enter as zeros with the mask (see :class:`.encoder.XECEncoder`).
3. Decode every face in two steps. Coarse: the last-stage features plus the fused face token, a
   learned mask token at hidden sites, one block, and a linear layer that unfolds each coarse site
   into features of its ``stride x stride`` sensors (pixel shuffle; hex faces stay per node). Fine: a
   :class:`.refine.Refiner` sees those features next to the visible sensors and their classical
   estimates at full sensor resolution, and predicts a correction to the neighbour average -- so the
   reconstruction starts at the neighbour average instead of a blocky upsampling.
4. Loss on the scored sensors only (:func:`.masking.masked_loss`): npho on every hidden valid
   sensor, time only where the time is valid too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import geometry as geo
from ..data.normalize import Normalizer
from .blocks import ConvNeXtV2Block
from .encoder import EncoderConfig, XECEncoder
from .hex import HexNeXtBlock
from .masking import LOSSES, MASK_UNITS, SensorMask, masked_loss, random_hidden
from .refine import Refiner


@dataclass(frozen=True)
class MAEConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    mask_ratio: float = 0.6
    loss: str = "mse"  # "mse" | "l1" | "huber"
    channel_weights: tuple[float, float] = (1.0, 1.0)  # npho, time
    mask_unit: str = "sensor"  # "sensor" | "cell" (whole last-stage cells, FCMAE)
    decoder_features: int = 8  # per-sensor features the coarse decoder hands to the refiner
    head_width: int = 32  # width of the full-resolution refiner heads

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"MAEConfig.loss must be one of {LOSSES}, got {self.loss!r}")
        if not 0.0 <= self.mask_ratio <= 1.0:
            raise ValueError(f"MAEConfig.mask_ratio must be in [0, 1], got {self.mask_ratio}")
        if self.mask_unit not in MASK_UNITS:
            raise ValueError(f"MAEConfig.mask_unit must be one of {MASK_UNITS}, got {self.mask_unit!r}")


class GridDecoder(nn.Module):
    """Last-stage features ``(B, C, h, w)`` + token ``(B, D)`` -> per-cell features ``(B, F, H, W)``."""

    def __init__(self, dim: int, token_dim: int, stride: int, out_shape: tuple[int, int], features: int):
        super().__init__()
        self.token_proj = nn.Linear(token_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.block = ConvNeXtV2Block(dim)
        self.pred = nn.Conv2d(dim, features * stride * stride, 1)
        self.stride, self.out_shape = stride, out_shape

    def forward(self, feats: torch.Tensor, mask: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        x = torch.where(mask, self.mask_token.to(feats.dtype), feats) + self.token_proj(token)[..., None, None]
        x = F.pixel_shuffle(self.pred(self.block(x)), self.stride)  # (B, F, h*s, w*s)
        H, W = self.out_shape
        return x[..., :H, :W]


class HexDecoder(nn.Module):
    """Node features ``(B, 73, C)`` + token -> ``(B, 73, F)``."""

    def __init__(self, dim: int, token_dim: int, op: str, features: int):
        super().__init__()
        self.token_proj = nn.Linear(token_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.block = HexNeXtBlock(dim, op)
        self.pred = nn.Linear(dim, features)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        x = torch.where(mask[..., None], self.mask_token.to(feats.dtype), feats) + self.token_proj(token)[:, None]
        return self.pred(self.block(x))


@dataclass
class MAEOutput:
    pred: torch.Tensor  # (B, 4760, 2) normalised predictions at every sensor
    masks: SensorMask  # what was hidden; the loss is on masks.scored
    loss: torch.Tensor  # scalar
    loss_per_face: dict[str, torch.Tensor]  # scalar per face (npho + time terms, weighted)


class XECMAE(nn.Module):
    """Masked autoencoder over all six faces. See the module docstring for the method."""

    def __init__(self, cfg: MAEConfig | None = None, normalizer: Normalizer | None = None):
        """``normalizer``: the data's (the refiner's classical estimates work on raw photon counts)."""
        super().__init__()
        self.cfg = cfg = cfg or MAEConfig()
        enc, feats = cfg.encoder, cfg.decoder_features
        self.encoder = XECEncoder(enc)
        self.decoders = nn.ModuleDict()
        for face in geo.GRID_FACES:
            shape = self.encoder.layout.grid_shape(face)
            self.decoders[face] = GridDecoder(enc.dims[-1], enc.token_dim, enc.stride(face), shape, feats)
        for face in geo.HEX_FACES:
            self.decoders[face] = HexDecoder(enc.hex_dim, enc.token_dim, enc.hex_op, feats)
        self.refiner = Refiner(self.encoder.layout, enc.token_dim, cfg.head_width, normalizer or Normalizer(), feats)
        self.register_buffer("channel_weights", torch.tensor(cfg.channel_weights), persistent=False)
        self.register_buffer("cells", enc.last_stage_cells(), persistent=False)

    def draw_masks(
        self,
        valid: torch.Tensor,
        time_valid: torch.Tensor,
        ratio: float | None = None,
        generator: torch.Generator | None = None,
    ) -> SensorMask:
        """A random :class:`SensorMask` at ``ratio`` (default the config's) and the config's unit."""
        ratio = self.cfg.mask_ratio if ratio is None else ratio
        cells = self.cells if self.cfg.mask_unit == "cell" else None
        return SensorMask(valid, time_valid, random_hidden(valid, ratio, generator, cells))

    def decode(self, x: torch.Tensor, masks: SensorMask, enc: dict, at: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output -> predictions ``(B, 4760, 2)`` at every sensor: the coarse decoders' features
        per face, refined at full resolution from the visible sensors of ``x``."""
        return self.refiner(x, masks, *self.refiner_inputs(x, masks, enc), at)

    def refiner_inputs(
        self, x: torch.Tensor, masks: SensorMask, enc: dict | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """What the refiner takes besides the sensors: the fused tokens ``(B, 6, D)`` and the coarse
        decoders' features per face (``enc``: the encoder's output, if already computed). Shapes
        independent of the data, so a trace of it holds (:class:`.deploy.RawInpainter`)."""
        enc = self.encoder(x, masks) if enc is None else enc
        tokens = enc["tokens"]
        coarse = {
            face: self.decoders[face](enc["features"][face], enc["masks"][face], tokens[:, k])
            for k, face in enumerate(geo.FACES)
        }
        return tokens, coarse

    def forward(self, x: torch.Tensor, masks: SensorMask) -> MAEOutput:
        """x ``(B, 4760, 2)`` normalised; ``masks`` says what is hidden (:meth:`draw_masks`)."""
        enc = self.encoder(x, masks)
        pred = self.decode(x, masks, enc)
        loss, per_face = self.loss(pred, x, masks)
        return MAEOutput(pred=pred, masks=masks, loss=loss, loss_per_face=per_face)

    def predict(self, x: torch.Tensor, masks: SensorMask, at: torch.Tensor | None = None) -> torch.Tensor:
        """Predictions ``(B, 4760, 2)`` at every sensor from the visible ones (no loss).
        ``at (B, 4760)`` bool: only there (the other sensors are not predicted: 0), much faster (see
        :meth:`.refine.Refiner.forward_at`)."""
        return self.decode(x, masks, self.encoder(x, masks), at)

    def loss(
        self, pred: torch.Tensor, target: torch.Tensor, masks: SensorMask
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return masked_loss(pred, target, masks, self.encoder.layout, self.cfg.loss, self.channel_weights)
