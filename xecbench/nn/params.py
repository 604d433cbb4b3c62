"""Parameter counts of the models, per preset (what ``xecbench info`` prints)."""

from __future__ import annotations

from torch import nn

from .encoder import PRESETS
from .inpaint import XECInpainter
from .mae import XECMAE, MAEConfig


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def preset_parameter_counts() -> dict[str, dict[str, int]]:
    """Trainable parameters of the encoder, the MAE and the inpainter for every preset."""
    out = {}
    for name, cfg in PRESETS.items():
        mae = XECMAE(MAEConfig(encoder=cfg))
        out[name] = {
            "encoder": count_parameters(mae.encoder),
            "mae": count_parameters(mae),
            "inpainter_heads": count_parameters(XECInpainter(mae.encoder).refiner),
        }
    return out
