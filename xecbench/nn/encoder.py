"""The XEC encoder: one encoder per face -> one token per face -> fusion Transformer.

Inputs are the normalised sensors ``x (B, 4760, 2)`` (npho, time) with a :class:`.masking.SensorMask`
(the encoder looks at ``visible`` sensors only, and at their time where ``time_valid``). Each sensor
enters with three channels:
npho, time (0 where invalid) and a time-valid flag, and hidden sensors enter as zeros with the mask,
so a sentinel never reaches a convolution.

Grid faces (inner 93x44, us/ds 24x6, outer 9x24) go through a patchifying stem and ConvNeXt V2
stages with FCMAE masking; hex faces (top/bottom) through HexNeXt blocks. Each face's token is the
mean of its visible output sites, projected to ``token_dim``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from .. import geometry as geo
from .blocks import ConvNeXtV2Block, Downsample, LayerNorm2d, downsample_mask, pad_to_multiple, zero_masked
from .faces import FaceLayout
from .fusion import Fusion
from .hex import HexNeXtBlock
from .masking import SensorMask, last_stage_cells
from .posenc import POSENCS

IN_CHANS = 3  # npho, time (0 where invalid), time-valid flag


@dataclass(frozen=True)
class EncoderConfig:
    """All sizes of the encoder. Presets: :data:`PRESETS` (``tiny`` for CPU, ``base`` for research)."""

    dims: tuple[int, ...] = (24, 48)  # grid-face stage widths
    depths: tuple[int, ...] = (1, 1)  # ConvNeXt V2 blocks per stage
    inner_stem: int = 4  # patchifying stem stride on the 93x44 inner face (others use 1)
    hex_dim: int = 24
    hex_depth: int = 1
    hex_op: str = "conv"  # "conv" | "attention"
    hex_heads: int = 4
    token_dim: int = 48
    fusion_layers: int = 2
    fusion_heads: int = 4
    posenc: str = "learnable"
    drop_path: float = 0.0

    def __post_init__(self) -> None:
        if len(self.dims) != len(self.depths):
            raise ValueError(f"dims {self.dims} and depths {self.depths} must have the same length")
        if self.posenc not in POSENCS:
            raise ValueError(f"posenc must be one of {POSENCS}, got {self.posenc!r}")
        if self.hex_op not in ("conv", "attention"):
            raise ValueError(f"hex_op must be 'conv' or 'attention', got {self.hex_op!r}")

    def stride(self, face: str) -> int:
        """Total downsampling of a grid face from sensors to the last stage."""
        stem = self.inner_stem if face == "inner" else 1
        return stem * 2 ** (len(self.dims) - 1)

    def last_stage_cells(self) -> torch.Tensor:
        """``(4760,)`` the last-stage cell of each sensor (the units of FCMAE cell masking)."""
        return last_stage_cells({f: self.stride(f) for f in geo.GRID_FACES})


PRESETS: dict[str, EncoderConfig] = {
    "tiny": EncoderConfig(),
    "base": EncoderConfig(
        # D = 1024 tokens; a patchifying stride-4 stem on the inner face keeps a training step at
        # batch 32 near 17 events/s on 2 CPU cores (benchmarks/bench_models.py)
        dims=(96, 192, 384),
        depths=(2, 2, 2),
        inner_stem=4,
        hex_dim=192,
        hex_depth=2,
        hex_heads=8,
        token_dim=1024,
        fusion_layers=2,
        fusion_heads=16,
        drop_path=0.1,
    ),
}


def encoder_config(preset: str = "tiny", **overrides) -> EncoderConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown encoder preset {preset!r}; presets are {tuple(PRESETS)}")
    return replace(PRESETS[preset], **overrides)


class GridFaceEncoder(nn.Module):
    """Image ``(B, 3, H, W)`` + mask ``(B, 1, H, W)`` -> features ``(B, C, h, w)``, mask, token."""

    def __init__(self, cfg: EncoderConfig, stem: int):
        super().__init__()
        d0 = cfg.dims[0]
        self.stem_k = stem
        self.stem = nn.Conv2d(IN_CHANS, d0, stem, stride=stem)
        self.stem_norm = LayerNorm2d(d0, eps=1e-6)
        rates = torch.linspace(0, cfg.drop_path, sum(cfg.depths)).tolist()
        self.downs = nn.ModuleList()
        self.stages = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(cfg.dims, cfg.depths)):
            self.downs.append(nn.Identity() if i == 0 else Downsample(cfg.dims[i - 1], dim))
            start = sum(cfg.depths[:i])
            self.stages.append(nn.ModuleList(ConvNeXtV2Block(dim, rates[start + j]) for j in range(depth)))
        self.head_norm = nn.LayerNorm(cfg.dims[-1])
        self.head = nn.Linear(cfg.dims[-1], cfg.token_dim)

    def forward(self, img: torch.Tensor, mask: torch.Tensor):
        img, mask = pad_to_multiple(img, mask, self.stem_k)
        # channels-last from here on: the blocks' pointwise halves work on (B, H, W, C) anyway, and
        # oneDNN's depthwise 7x7 backward runs several times faster on it than on channels-first
        x = self.stem(zero_masked(img, mask)).contiguous(memory_format=torch.channels_last)
        if self.stem_k > 1:
            mask = downsample_mask(mask, self.stem_k)
        x = zero_masked(self.stem_norm(x), mask)
        for down, blocks in zip(self.downs, self.stages):
            if isinstance(down, Downsample):
                x, mask = down(x, mask)
            for blk in blocks:
                x = blk(x, mask)
        vis = (~mask).to(x.dtype)
        pooled = (x * vis).sum((2, 3)) / vis.sum((2, 3)).clamp(min=1.0)  # mean over visible sites
        return x, mask, self.head(self.head_norm(pooled))


class HexFaceEncoder(nn.Module):
    """Nodes ``(B, 73, 3)`` + mask ``(B, 73)`` -> features ``(B, 73, C)``, mask, token."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.stem = nn.Linear(IN_CHANS, cfg.hex_dim)
        self.stem_norm = nn.LayerNorm(cfg.hex_dim, eps=1e-6)
        self.blocks = nn.ModuleList(
            HexNeXtBlock(cfg.hex_dim, cfg.hex_op, cfg.hex_heads, cfg.drop_path) for _ in range(cfg.hex_depth)
        )
        self.head_norm = nn.LayerNorm(cfg.hex_dim)
        self.head = nn.Linear(cfg.hex_dim, cfg.token_dim)

    def forward(self, nodes: torch.Tensor, mask: torch.Tensor):
        keep = (~mask)[..., None].to(nodes.dtype)
        x = self.stem_norm(self.stem(nodes)) * keep
        for blk in self.blocks:
            x = blk(x, mask)
        pooled = (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return x, mask, self.head(self.head_norm(pooled))


def sensor_inputs(x: torch.Tensor, time_valid: torch.Tensor) -> torch.Tensor:
    """``(B, 4760, 2)`` normalised -> ``(B, 4760, 3)``: npho, time (0 where invalid), time-valid."""
    tv = time_valid.to(x.dtype)
    return torch.stack([x[..., 0], x[..., 1] * tv, tv], dim=-1)


class XECEncoder(nn.Module):
    """Six face encoders + fusion. ``forward`` returns a dict:

    ``tokens (B, 6, D)`` fused face tokens (order :data:`geometry.FACES`), ``face_tokens`` before
    fusion, and per face ``features[face]`` / ``masks[face]`` (grid: ``(B, C, h, w)`` /
    ``(B, 1, h, w)``; hex: ``(B, 73, C)`` / ``(B, 73)``).
    """

    def __init__(self, cfg: EncoderConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or EncoderConfig()
        self.layout = FaceLayout()
        self.faces = nn.ModuleDict()
        for face in geo.GRID_FACES:
            self.faces[face] = GridFaceEncoder(cfg, cfg.inner_stem if face == "inner" else 1)
        for face in geo.HEX_FACES:
            self.faces[face] = HexFaceEncoder(cfg)
        self.fusion = Fusion(cfg.token_dim, cfg.fusion_layers, cfg.fusion_heads, cfg.posenc)

    @property
    def n_layers(self) -> int:
        """Depth levels of :meth:`layer_of`: stems 0, stages 1..S, face heads and positional
        encoding S + 1, fusion layers after; whatever sits on top of the encoder is level ``n_layers``."""
        return max(len(self.cfg.dims), self.cfg.hex_depth) + 2 + self.cfg.fusion_layers

    def layer_of(self, name: str) -> int:
        """The depth level of parameter ``name`` (relative to the encoder), for layer-wise learning-rate
        decay: a stem is level 0, grid stage i (with its downsampling) and hex block i are level i + 1."""
        parts = name.split(".")
        top = max(len(self.cfg.dims), self.cfg.hex_depth)
        if parts[0] == "faces":
            kind = parts[2]
            if kind in ("stem", "stem_norm"):
                return 0
            if kind in ("downs", "stages", "blocks"):
                return int(parts[3]) + 1
            return top + 1  # head_norm, head: the face token
        if parts[0] == "fusion":
            if parts[1] == "layers":
                return top + 2 + int(parts[2])
            return top + 1 + (self.cfg.fusion_layers if parts[1] == "norm" else 0)
        raise ValueError(f"XECEncoder.layer_of: no layer for parameter {name!r}")

    def forward(self, x: torch.Tensor, masks: SensorMask) -> dict:
        """x ``(B, 4760, 2)`` normalised; the encoder sees ``masks.visible`` only."""
        if x.dim() != 3 or x.shape[1:] != (geo.N_CHANNELS, 2):
            raise ValueError(f"XECEncoder: x must be (B, {geo.N_CHANNELS}, 2), got {tuple(x.shape)}")
        if masks.valid.shape != x.shape[:2]:
            raise ValueError(f"XECEncoder: masks are {tuple(masks.valid.shape)}, x is {tuple(x.shape)}")
        visible = masks.visible
        inp = sensor_inputs(x, masks.time_valid & visible)
        feats, masks, tokens = {}, {}, []
        for face in geo.FACES:
            if face in geo.HEX_FACES:
                data, mask = self.layout.to_nodes(inp, visible, face)
            else:
                data, mask = self.layout.to_grid(inp, visible, face)
            feats[face], masks[face], tok = self.faces[face](data, mask)
            tokens.append(tok)
        face_tokens = torch.stack(tokens, dim=1)
        return {"tokens": self.fusion(face_tokens), "face_tokens": face_tokens, "features": feats, "masks": masks}
