"""Dead-channel inpainting: an encoder (frozen or fine-tuned) plus a light head per face that
corrects the classical estimates.

Every sensor first gets its classical estimates from the visible neighbours
(:func:`classical_estimates`: neighbour average and solid-angle estimate of npho, neighbour average
of the time). Each head sees the face's visible sensors and those estimates at sensor resolution
(local context: two 3x3 convolutions on grid faces, two direction-aware graph convolutions on hex
faces), conditioned on the face's fused latent token, and predicts a *correction* to the neighbour
average. The correction starts at exactly zero, so an untrained inpainter is the neighbour average,
and training can only move it where the data say it is better. The model returns

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
from ..baselines import neighbour_average, solid_angle_estimate
from ..data.normalize import Normalizer
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


N_ESTIMATES = 4  # neighbour-average npho, solid-angle npho, neighbour-average time, "an estimate exists"


@torch.no_grad()
def classical_estimates(x: torch.Tensor, masks: SensorMask, normalizer: Normalizer) -> torch.Tensor:
    """The classical estimates of every sensor from its visible neighbours, ``(B, 4760, 4)`` in
    normalised units: the neighbour average and the solid-angle estimate of npho (both computed on
    raw photon counts, exactly as the baselines of :mod:`xecbench.baselines`), the neighbour average
    of the time over time-valid neighbours, and 1 where a visible neighbour exists (else all 0)."""
    visible = masks.visible
    raw = normalizer.npho_inverse(torch.where(visible, x[..., 0], 0.0).float())
    nb, has = neighbour_average(raw, visible)
    sa, _ = solid_angle_estimate(raw, visible)
    t_nb, t_has = neighbour_average(x[..., 1], visible & masks.time_valid)
    h = has.to(x.dtype)
    est = [normalizer.npho(nb) * h, normalizer.npho(sa) * h, t_nb * t_has.to(x.dtype), h]
    return torch.stack(est, dim=-1).to(x.dtype)


class GridHead(nn.Module):
    """Local conv context on a face image (observed sensors, hidden flag, classical estimates) + the
    face token -> a correction ``(B, 2, H, W)``, zero at initialisation."""

    def __init__(self, token_dim: int, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(IN_CHANS + 1 + N_ESTIMATES, width, 3, padding=1)
        self.token_proj = nn.Linear(token_dim, width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.out = nn.Conv2d(width, 2, 1)
        nn.init.zeros_(self.out.weight)  # start exactly at the classical estimate
        nn.init.zeros_(self.out.bias)

    def forward(self, img: torch.Tensor, hidden: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """img ``(B, 3 + 4, H, W)``: observations (zero where hidden) and estimates."""
        x = torch.cat([img, hidden.to(img.dtype)], dim=1)
        x = F.gelu(self.conv1(x) + self.token_proj(token)[..., None, None])
        return self.out(F.gelu(self.conv2(x)))


class HexHead(nn.Module):
    """Graph context on hex nodes (observed, hidden flag, estimates) + the face token -> a correction
    ``(B, 73, 2)``, zero at initialisation."""

    def __init__(self, token_dim: int, width: int):
        super().__init__()
        self.inp = nn.Linear(IN_CHANS + 1 + N_ESTIMATES, width)
        self.token_proj = nn.Linear(token_dim, width)
        self.conv1 = HexConv(width)
        self.conv2 = HexConv(width)
        self.out = nn.Linear(width, 2)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

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
        normalizer: Normalizer | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.normalizer = normalizer or Normalizer()  # the data's: estimates are made on raw counts
        self.freeze_encoder = freeze_encoder
        self.loss_kind = loss
        self.register_buffer("channel_weights", torch.tensor(channel_weights), persistent=False)
        encoder.requires_grad_(not freeze_encoder)
        D = encoder.cfg.token_dim
        self.heads = nn.ModuleDict(
            {f: (HexHead(D, head_width) if f in geo.HEX_FACES else GridHead(D, head_width)) for f in geo.FACES}
        )
        # per face, how far the starting point moves from the neighbour average towards the
        # solid-angle estimate (0 at first; the solid angle wins on some faces, loses on others)
        self.blend = nn.Parameter(torch.zeros(len(geo.FACES)))
        face_of = torch.zeros(geo.N_CHANNELS, dtype=torch.long)
        for k, face in enumerate(geo.FACES):
            face_of[encoder.layout.ids(face)] = k
        self.register_buffer("face_of_sensor", face_of, persistent=False)

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
        inp = sensor_inputs(x, masks.time_valid & visible)  # (B, N, 3), zero where not visible
        est = classical_estimates(x, masks, self.normalizer)  # (B, N, 4), at every sensor
        everywhere = torch.ones_like(visible)
        per_face = {}
        for k, face in enumerate(geo.FACES):
            if face in geo.HEX_FACES:
                nodes, hidden = layout.to_nodes(inp, visible, face)
                nodes = torch.cat([nodes, layout.to_nodes(est, everywhere, face)[0]], dim=-1)
                per_face[face] = self.heads[face](nodes, hidden, tokens[:, k])
            else:
                img, hidden = layout.to_grid(inp, visible, face)
                img = torch.cat([img, layout.to_grid(est, everywhere, face)[0]], dim=1)
                per_face[face] = layout.from_grid(self.heads[face](img, hidden, tokens[:, k]), face)
        correction = layout.scatter(per_face)
        npho = est[..., 0] + self.blend[self.face_of_sensor] * (est[..., 1] - est[..., 0])
        dense = torch.stack([npho, est[..., 2]], dim=-1) + correction  # classical start, corrected
        index, gathered, slot_valid, overflow = gather_masked(dense, ~visible, capacity)
        loss, loss_face = masked_loss(dense, x, masks, layout, self.loss_kind, self.channel_weights)
        return InpaintOutput(dense, index, gathered, slot_valid, overflow, loss, loss_face)
