"""Dead-channel inpainting: an encoder (frozen or fine-tuned) plus a light head per face.

Each head sees the face's visible sensors (local context: two 3x3 convolutions on grid faces, two
direction-aware graph convolutions on hex faces) conditioned on the face's fused latent token, and
predicts normalised ``(npho, time)`` at every sensor of its face. The model returns

* a dense output ``(B, 4760, 2)`` for all positions, and
* the predictions at the sensors to fill (``~masks.visible``: hidden or dead) gathered into a
  fixed-capacity padded tensor
  ``(B, K, 2)`` with their channel ids and a slot-validity mask, where ``K`` is known before the
  forward pass: no data-dependent shapes and no host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import geometry as geo
from .encoder import IN_CHANS, XECEncoder, sensor_inputs
from .hex import HexConv
from .mae import XECMAE
from .masking import SensorMask, masked_loss


def gather_masked(values: torch.Tensor, mask: torch.Tensor, capacity: int):
    """Gather ``values (B, N, C)`` at the masked positions of ``mask (B, N)`` into ``capacity`` slots.

    Returns ``index (B, K)`` (channel ids of the masked sensors in id order, then 0 as padding),
    ``gathered (B, K, C)`` and ``slot_valid (B, K)`` bool (False for padding). Masked positions
    beyond the capacity are dropped; ``overflow (B,)`` says where that happened.
    """
    B, N = mask.shape
    K = int(capacity)
    # slot of a masked sensor = the number of masked sensors before it; unmasked sensors and masked
    # ones beyond the capacity all write into a spare slot K that is cut off afterwards
    m = mask.to(torch.int32)
    count = m.cumsum(1, dtype=torch.int32)
    slot = ((count.clamp(max=K + 1) - 1) * m + K * (1 - m)).long()
    ids = torch.arange(N, device=mask.device).expand(B, N)
    index = torch.zeros(B, K + 1, dtype=torch.long, device=mask.device).scatter_(1, slot, ids)[:, :K]
    n_masked = mask.sum(1)
    slot_valid = torch.arange(K, device=mask.device)[None] < n_masked[:, None]
    gathered = torch.gather(values, 1, index[..., None].expand(B, K, values.shape[-1]))
    gathered = gathered * slot_valid[..., None].to(values.dtype)
    return index, gathered, slot_valid, n_masked > K


class GridHead(nn.Module):
    """Local conv context on a face image + the face token -> ``(B, 2, H, W)``."""

    def __init__(self, token_dim: int, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(IN_CHANS + 1, width, 3, padding=1)
        self.token_proj = nn.Linear(token_dim, width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.out = nn.Conv2d(width, 2, 1)

    def forward(self, img: torch.Tensor, hidden: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        x = torch.cat([img, hidden.to(img.dtype)], dim=1)  # hidden cells: zeros + a flag
        x = F.gelu(self.conv1(x) + self.token_proj(token)[..., None, None])
        return self.out(F.gelu(self.conv2(x)))


class HexHead(nn.Module):
    """Graph context on hex nodes + the face token -> ``(B, 73, 2)``."""

    def __init__(self, token_dim: int, width: int):
        super().__init__()
        self.inp = nn.Linear(IN_CHANS + 1, width)
        self.token_proj = nn.Linear(token_dim, width)
        self.conv1 = HexConv(width)
        self.conv2 = HexConv(width)
        self.out = nn.Linear(width, 2)

    def forward(self, nodes: torch.Tensor, hidden: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        x = self.inp(torch.cat([nodes, hidden[..., None].to(nodes.dtype)], dim=-1)) + self.token_proj(token)[:, None]
        x = F.gelu(self.conv1(F.gelu(x)))
        return self.out(F.gelu(self.conv2(x)))


@dataclass
class InpaintOutput:
    dense: torch.Tensor  # (B, 4760, 2) predictions at every sensor
    index: torch.Tensor  # (B, K) channel ids of the gathered slots
    gathered: torch.Tensor  # (B, K, 2) predictions at the sensors to fill (hidden or dead)
    slot_valid: torch.Tensor  # (B, K) bool, False for padding
    overflow: torch.Tensor  # (B,) bool, more masked sensors than slots
    loss: torch.Tensor | None = None
    loss_per_face: dict[str, torch.Tensor] | None = None


class XECInpainter(nn.Module):
    """Encoder + per-face heads. ``freeze_encoder=True`` trains the heads only."""

    def __init__(
        self,
        encoder: XECEncoder,
        head_width: int = 32,
        freeze_encoder: bool = True,
        loss: str = "mse",
        channel_weights: tuple[float, float] = (1.0, 1.0),
    ):
        super().__init__()
        self.encoder = encoder
        self.freeze_encoder = freeze_encoder
        self.loss_kind = loss
        self.register_buffer("channel_weights", torch.tensor(channel_weights), persistent=False)
        encoder.requires_grad_(not freeze_encoder)
        D = encoder.cfg.token_dim
        self.heads = nn.ModuleDict(
            {f: (HexHead(D, head_width) if f in geo.HEX_FACES else GridHead(D, head_width)) for f in geo.FACES}
        )

    @classmethod
    def from_mae(cls, mae: XECMAE | dict, **kwargs) -> XECInpainter:
        """Build from a trained MAE (a model, or a state dict saved from one with the default config)."""
        if isinstance(mae, dict):
            model = XECMAE()
            model.load_state_dict(mae)
            mae = model
        return cls(mae.encoder, **kwargs)

    def train(self, mode: bool = True) -> XECInpainter:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # frozen: no dropout / drop-path, fixed statistics
        return self

    def forward(self, x: torch.Tensor, masks: SensorMask, capacity: int) -> InpaintOutput:
        """x ``(B, 4760, 2)`` normalised. The heads fill every sensor the encoder may not see
        (``~masks.visible``: hidden or dead); the loss is on ``masks.scored`` (hidden and valid)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            enc = self.encoder(x, masks)
        tokens = enc["tokens"]
        layout = self.encoder.layout
        visible = masks.visible
        inp = sensor_inputs(x, masks.time_valid & visible)
        per_face = {}
        for k, face in enumerate(geo.FACES):
            if face in geo.HEX_FACES:
                nodes, hidden = layout.to_nodes(inp, visible, face)
                per_face[face] = self.heads[face](nodes, hidden, tokens[:, k])
            else:
                img, hidden = layout.to_grid(inp, visible, face)
                per_face[face] = layout.from_grid(self.heads[face](img, hidden, tokens[:, k]), face)
        dense = layout.scatter(per_face)
        index, gathered, slot_valid, overflow = gather_masked(dense, ~visible, capacity)
        loss, loss_face = masked_loss(dense, x, masks, layout, self.loss_kind, self.channel_weights)
        return InpaintOutput(dense, index, gathered, slot_valid, overflow, loss, loss_face)
