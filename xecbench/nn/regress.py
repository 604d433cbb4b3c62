"""Downstream regression: gamma energy, first-interaction position, direction and time from the fused
face tokens, as corrections to the classical reconstruction.

The encoder (from scratch, or an MAE's, frozen or fine-tuned) sees every valid sensor; its six fused
tokens ``(B, 6, D)`` are flattened. Every event also gets its classical reconstruction
(:class:`~xecbench.reco.ClassicalReco`: light centroid, total light, path-corrected time), and each
target's small MLP head sees the tokens and those classical values and predicts a *correction* to the
classical estimate of its target. The last layer starts at zero, so an untrained regressor is the
calibrated classical reconstruction, and the tokens only have to learn what it misses (the depth, the
position dependence of the light collection, ...). :meth:`XECRegressor.calibrate` fits the classical
reconstruction and the standardisation of the targets on the training set; both are buffers, so a
checkpoint carries them.

========== ====== =================== =====================================================
target     dims   truth branch        units
========== ====== =================== =====================================================
energy     1      ``energyTruth``     MeV
uvw        3      ``uvwTruth``        cm (u = z, v = arc on the inner face, w = depth)
direction  3      ``emiVec``          unit vector (the prediction is normalised)
time       1      ``timeTruth``       ns
========== ====== =================== =====================================================

Losses, in standardised units ``(value - centre) / scale``: ``smooth_l1`` (default), ``l1``, ``mse``,
and ``gaussian_nll``, for which each head also predicts a log-variance per dimension (``sigma`` in the
output, physical units).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data import EventDataset
from ..data.normalize import Normalizer
from ..reco import ClassicalReco, raw_signals
from .encoder import XECEncoder
from .masking import SensorMask

# name -> (dims, truth branch, smallest scale in physical units: a mono-energetic set has no spread)
TARGETS: dict[str, tuple[int, str, float]] = {
    "energy": (1, "energyTruth", 1.0),
    "uvw": (3, "uvwTruth", 1.0),
    "direction": (3, "emiVec", 0.01),
    "time": (1, "timeTruth", 0.01),
}
REGRESS_LOSSES = ("smooth_l1", "l1", "mse", "gaussian_nll")


def truth_of(batch: dict[str, torch.Tensor], target: str) -> torch.Tensor:
    """The truth of ``target`` from a batch, ``(B, dims)`` float."""
    dims, branch, _ = TARGETS[target]
    if branch not in batch:
        raise KeyError(f"target {target!r} needs the truth branch {branch!r}, which the data do not have")
    return batch[branch].reshape(-1, dims).float()


Stats = dict[str, tuple[list[float], list[float]]]  # target -> (centre, scale) per dimension


def target_stats(tensors: dict[str, torch.Tensor], targets: tuple[str, ...]) -> Stats:
    """Per target, the centre (mean) and scale (std, at least the target's floor) of each dimension
    over a training set's tensors."""
    out = {}
    for t in targets:
        y = truth_of(tensors, t).double()
        floor = TARGETS[t][2]
        out[t] = (y.mean(0).tolist(), y.std(0, unbiased=False).clamp(min=floor).tolist())
    return out


def check_targets(targets: tuple[str, ...]) -> None:
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets or len(set(targets)) != len(targets):
        raise ValueError(f"regression targets must be distinct names from {tuple(TARGETS)}, got {list(targets)}")


@dataclass
class RegressOutput:
    pred: dict[str, torch.Tensor]  # target -> (B, dims) physical units
    sigma: dict[str, torch.Tensor] | None  # target -> (B, dims) predicted std (gaussian_nll only)
    loss: torch.Tensor | None = None
    loss_per_target: dict[str, torch.Tensor] | None = None


N_CLASSICAL = 8  # energy, u, v, w, direction (3), time: the classical values every head sees


class XECRegressor(nn.Module):
    """Encoder + one MLP head per target on the flattened fused tokens and the classical estimates."""

    def __init__(
        self,
        encoder: XECEncoder,
        targets: tuple[str, ...] = ("energy", "uvw"),
        loss: str = "smooth_l1",
        weights: tuple[float, ...] | None = None,
        freeze_encoder: bool = False,
        hidden: int = 128,
        normalizer: Normalizer | None = None,
    ):
        super().__init__()
        check_targets(targets)
        if loss not in REGRESS_LOSSES:
            raise ValueError(f"regression loss must be one of {REGRESS_LOSSES}, got {loss!r}")
        if weights is not None and len(weights) != len(targets):
            raise ValueError(f"{len(weights)} target weights for {len(targets)} targets {list(targets)}")
        self.encoder, self.targets, self.loss_kind = encoder, tuple(targets), loss
        self.weights = dict(zip(targets, weights or [1.0] * len(targets)))
        self.freeze_encoder = freeze_encoder
        self.normalizer = normalizer or Normalizer()  # the data's: the classical values need raw counts
        encoder.requires_grad_(not freeze_encoder)
        self.classical = ClassicalReco()
        width = 6 * encoder.cfg.token_dim
        per_dim = 2 if loss == "gaussian_nll" else 1
        self.norm = nn.LayerNorm(width)
        self.heads = nn.ModuleDict()
        for t in targets:
            out = nn.Linear(hidden, per_dim * TARGETS[t][0])
            nn.init.zeros_(out.weight)  # start exactly at the classical estimate
            nn.init.zeros_(out.bias)
            self.heads[t] = nn.Sequential(nn.Linear(width + N_CLASSICAL, hidden), nn.GELU(), out)
        # standardisation of the targets and of the classical inputs, set by calibrate()
        for t in targets:
            self.register_buffer(f"centre_{t}", torch.zeros(TARGETS[t][0]))
            self.register_buffer(f"scale_{t}", torch.ones(TARGETS[t][0]))
        self.register_buffer("classical_centre", torch.zeros(N_CLASSICAL))
        self.register_buffer("classical_scale", torch.ones(N_CLASSICAL))

    @torch.no_grad()
    def calibrate(self, data: EventDataset) -> None:
        """Fit the classical reconstruction and the standardisations on a training set."""
        self.classical.calibrate(data)
        for t, (centre, scale) in target_stats(data.tensors, self.targets).items():
            getattr(self, f"centre_{t}").copy_(torch.as_tensor(centre))
            getattr(self, f"scale_{t}").copy_(torch.as_tensor(scale))
        values = self._classical_values(self.classical.predict(data)).double()
        ok = values.isfinite().all(1)
        self.classical_centre.copy_(values[ok].mean(0))
        self.classical_scale.copy_(values[ok].std(0, unbiased=False).clamp(min=1e-3))

    @staticmethod
    def _classical_values(c: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([c["energy"], c["uvw"], c["direction"], c["time"]], dim=1)  # (B, 8)

    def train(self, mode: bool = True) -> XECRegressor:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def forward(
        self, x: torch.Tensor, masks: SensorMask, truth: dict[str, torch.Tensor] | None = None
    ) -> RegressOutput:
        """x ``(B, 4760, 2)`` normalised; the encoder and the classical reconstruction see
        ``masks.visible``. With ``truth`` (target -> ``(B, dims)`` physical, e.g. :func:`truth_of`) the
        loss is computed in standardised units."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            tokens = self.encoder(x, masks)["tokens"]  # (B, 6, D)
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            npho, time = raw_signals(x.float(), masks.visible, masks.visible & masks.time_valid, self.normalizer)
            classical = self.classical(npho, time, masks.visible & masks.time_valid)
            values = (self._classical_values(classical) - self.classical_centre) / self.classical_scale
            values = values.nan_to_num(0.0)  # no valid time: the calibration set's mean
        h = torch.cat([self.norm(tokens.flatten(1)), values.to(tokens.dtype)], dim=1)  # (B, 6 D + 8)
        pred, sigma, losses = {}, {}, {}
        for t in self.targets:
            dims = TARGETS[t][0]
            centre, scale = getattr(self, f"centre_{t}"), getattr(self, f"scale_{t}")
            start = torch.where(classical[t].isfinite(), classical[t], centre)  # physical
            out = self.heads[t](h)  # (B, dims) or (B, 2 dims)
            mu = (start - centre) / scale + out[:, :dims]  # standardised
            value = mu * scale + centre
            pred[t] = F.normalize(value, dim=-1) if t == "direction" else value
            log_var = out[:, dims:] if self.loss_kind == "gaussian_nll" else None
            if log_var is not None:
                sigma[t] = (0.5 * log_var).exp() * scale
            if truth is not None:
                y = (truth[t].to(mu.dtype) - centre) / scale
                losses[t] = self._loss(mu, y, log_var)
        loss = sum(self.weights[t] * v for t, v in losses.items()) if losses else None
        return RegressOutput(pred, sigma or None, loss, losses or None)

    def _loss(self, mu: torch.Tensor, y: torch.Tensor, log_var: torch.Tensor | None) -> torch.Tensor:
        if self.loss_kind == "gaussian_nll":
            return F.gaussian_nll_loss(mu, y, log_var.clamp(-12, 12).exp())
        if self.loss_kind == "l1":
            return F.l1_loss(mu, y)
        if self.loss_kind == "mse":
            return F.mse_loss(mu, y)
        return F.smooth_l1_loss(mu, y)
