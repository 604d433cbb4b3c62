"""Classical reconstruction of the gamma: what a regressor on the face tokens has to beat, and where
it starts from.

All work on raw photon counts and times of the valid sensors, vectorised over events, on any device,
and are calibrated on a training set (:meth:`ClassicalReco.fit`) as a physicist would calibrate them:

* **position**: the light-weighted centroid (u, v) of the ``top_k`` brightest valid inner sensors;
  the depth w cannot be seen this way, so it is the calibration set's mean depth.
* **direction**: from the target centre (the origin) to that position.
* **energy**: the total light of the valid sensors, ``E = slope * sum(npho) + offset`` by least
  squares on the calibration set.
* **time**: each time-valid sensor's time minus the light's flight time from the estimated position
  (``|x_i - x| / v_LXe``), averaged with weights npho (the jitter variance falls as 1/npho: the
  inverse-variance mean), minus the calibration set's mean residual.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from torch import nn

from . import geometry as geo
from .data import EventDataset
from .data.normalize import Normalizer


@cache
def _inner_uv() -> torch.Tensor:
    """``(4092, 2)`` u, v of the inner sensors (cm)."""
    uvw = geo.xyz_to_uvw(geo.sensor_positions()[geo.face_ids("inner")])
    return torch.tensor(uvw[:, :2], dtype=torch.float64)


@cache
def _positions() -> torch.Tensor:
    return torch.tensor(geo.sensor_positions(), dtype=torch.float64)


def uvw_to_xyz(uvw: torch.Tensor) -> torch.Tensor:
    """:func:`geometry.uvw_to_xyz` for tensors ``(..., 3)`` on any device."""
    phi = torch.pi + uvw[..., 1] / geo.INNER_R
    r = geo.INNER_R + uvw[..., 2]
    return torch.stack([r * phi.cos(), r * phi.sin(), uvw[..., 0]], dim=-1)


def raw_signals(
    x: torch.Tensor, valid: torch.Tensor, time_valid: torch.Tensor, normalizer: Normalizer
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised ``x (B, 4760, 2)`` -> raw npho (0 where invalid) and raw time (0 where not time-valid)."""
    npho = torch.where(valid, normalizer.npho_inverse(x[..., 0]), 0.0)
    time = torch.where(time_valid, normalizer.time_inverse(x[..., 1]), 0.0)
    return npho, time


def light_centroid(npho: torch.Tensor, top_k: int = 9) -> torch.Tensor:
    """``(B, 2)`` u, v: the npho-weighted mean position of the ``top_k`` brightest inner sensors."""
    inner = npho[:, : len(geo.face_ids("inner"))]  # the inner sensors are channels 0..4091
    w, idx = inner.topk(top_k, dim=1)
    w = w.clamp(min=0)
    uv = _inner_uv().to(npho)[idx]  # (B, k, 2)
    return (uv * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp(min=1e-9)


def corrected_time(npho: torch.Tensor, time: torch.Tensor, time_valid: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
    """``(B,)`` the npho-weighted mean over time-valid sensors of ``t_i - |x_i - xyz| / v_LXe`` (ns);
    NaN where no sensor has a valid time."""
    flight = (_positions().to(npho)[None] - xyz[:, None]).norm(dim=-1) / geo.LXE_LIGHT_SPEED  # (B, N)
    w = torch.where(time_valid, npho, 0.0)
    total = w.sum(1)
    return torch.where(total > 0, ((time - flight) * w).sum(1) / total.clamp(min=1e-9), torch.nan)


class ClassicalReco(nn.Module):
    """Calibrated classical estimates; :meth:`fit` on training events, then :meth:`forward` on raw
    signals or :meth:`predict` on a data set. The calibration lives in buffers, so a model that holds
    one saves it with its weights."""

    def __init__(self, top_k: int = 9):
        super().__init__()
        self.top_k = top_k
        for name in ("energy_slope", "energy_offset", "depth", "time_offset"):
            self.register_buffer(name, torch.zeros((), dtype=torch.float64))

    @classmethod
    def fit(cls, data: EventDataset, top_k: int = 9) -> ClassicalReco:
        """Calibrate on events with truth (``energyTruth``, ``uvwTruth``, ``timeTruth`` where present)."""
        reco = cls(top_k)
        reco.calibrate(data)
        return reco

    @torch.no_grad()
    def calibrate(self, data: EventDataset) -> None:
        t = data.tensors
        npho, time = raw_signals(t["x"].double(), t["valid"], t["time_valid"], data.normalizer)
        if "energyTruth" in t:
            total = npho.sum(1).numpy()
            energy = t["energyTruth"].double().numpy()
            if np.ptp(energy) > 0:  # a spectrum: slope and offset
                slope, offset = np.polyfit(total, energy, 1)
            else:  # one line: the slope through the origin
                slope, offset = (energy * total).sum() / (total**2).sum(), 0.0
            self.energy_slope.fill_(float(slope))
            self.energy_offset.fill_(float(offset))
        if "uvwTruth" in t:
            self.depth.fill_(float(t["uvwTruth"][:, 2].double().mean()))
        if "timeTruth" in t:
            self.time_offset.zero_()
            guess = self(npho, time, t["time_valid"])["time"][:, 0]
            self.time_offset.fill_(float(np.nanmean((guess - t["timeTruth"].double()).numpy())))

    def forward(self, npho: torch.Tensor, time: torch.Tensor, time_valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw ``npho``, ``time`` ``(B, 4760)`` (0 where invalid) -> ``{"energy": (B, 1) MeV, "uvw":
        (B, 3) cm, "direction": (B, 3) unit, "time": (B, 1) ns}`` in the dtype of ``npho``."""
        c = {k: getattr(self, k).to(npho.dtype) for k in ("energy_slope", "energy_offset", "depth", "time_offset")}
        uv = light_centroid(npho, self.top_k)
        uvw = torch.cat([uv, c["depth"].expand(uv.shape[0], 1)], dim=1)  # shape[0]: traced batch size stays free
        xyz = uvw_to_xyz(uvw)
        return {
            "energy": (c["energy_slope"] * npho.sum(1) + c["energy_offset"])[:, None],
            "uvw": uvw,
            "direction": xyz / xyz.norm(dim=-1, keepdim=True),
            "time": (corrected_time(npho, time, time_valid, xyz) - c["time_offset"])[:, None],
        }

    @torch.no_grad()
    def predict(self, data: EventDataset) -> dict[str, torch.Tensor]:
        """:meth:`forward` on every event of a data set (float64, CPU)."""
        t = data.tensors
        npho, time = raw_signals(t["x"].double(), t["valid"], t["time_valid"], data.normalizer)
        return self(npho, time, t["time_valid"])
