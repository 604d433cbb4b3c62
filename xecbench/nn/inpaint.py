"""Dead-channel inpainting: an encoder (frozen or fine-tuned) plus a :class:`.refine.Refiner`, light
heads per face that correct the classical estimates (neighbour average, solid angle) at sensor
resolution, conditioned on the encoder's fused face tokens. The correction starts at exactly zero, so
an untrained inpainter is the neighbour average. The model returns

* a dense output ``(B, 4760, 2)`` for all positions, and
* the predictions at the sensors to fill (``~masks.visible``: hidden or dead) gathered into a
  fixed-capacity padded tensor
  ``(B, K, 2)`` with their channel ids and a slot-validity mask, where ``K`` is known before the
  forward pass: no data-dependent shapes and no host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data.normalize import Normalizer
from .encoder import XECEncoder
from .mae import XECMAE
from .masking import SensorMask, masked_loss
from .refine import Refiner


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
        normalizer: Normalizer | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.freeze_encoder = freeze_encoder
        self.loss_kind = loss
        self.register_buffer("channel_weights", torch.tensor(channel_weights), persistent=False)
        encoder.requires_grad_(not freeze_encoder)
        self.refiner = Refiner(encoder.layout, encoder.cfg.token_dim, head_width, normalizer or Normalizer())

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

    def predict(self, x: torch.Tensor, masks: SensorMask, at: torch.Tensor | None = None) -> torch.Tensor:
        """Predictions ``(B, 4760, 2)`` at every sensor from the visible ones (no loss, no gather).
        ``at (B, 4760)`` bool: only there (the other sensors are not predicted: 0), much faster (see
        :meth:`.refine.Refiner.forward_at`)."""
        return self.refiner(x, masks, *self.refiner_inputs(x, masks), at=at)

    def refiner_inputs(self, x: torch.Tensor, masks: SensorMask) -> tuple[torch.Tensor, None]:
        """What the refiner takes besides the sensors: the encoder's fused tokens ``(B, 6, D)`` (and no
        extra features). Shapes independent of the data (see :class:`.deploy.RawInpainter`)."""
        return self.encoder(x, masks)["tokens"], None

    def forward(self, x: torch.Tensor, masks: SensorMask, capacity: int) -> InpaintOutput:
        """x ``(B, 4760, 2)`` normalised. The heads fill every sensor the encoder may not see
        (``~masks.visible``: hidden or dead); the loss is on ``masks.scored`` (hidden and valid)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            enc = self.encoder(x, masks)
        dense = self.refiner(x, masks, enc["tokens"])
        index, gathered, slot_valid, overflow = gather_masked(dense, ~masks.visible, capacity)
        loss, loss_face = masked_loss(dense, x, masks, self.encoder.layout, self.loss_kind, self.channel_weights)
        return InpaintOutput(dense, index, gathered, slot_valid, overflow, loss, loss_face)
