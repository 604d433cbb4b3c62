"""Trained models with raw detector values in and out: what ``xecbench inpaint`` runs and what
``xecbench export`` writes, so that software without Python gets the same numbers.

* :class:`RawInpainter` takes ``sensors (B, 4760, 2)``, the raw (npho, time) as the ROOT files hold them
  (invalid > 9e9 or NaN), and ``fill (B, 4760)`` (1 = replace this sensor), and returns ``(B, 4760, 2)``:
  the model's prediction where ``fill`` is set, the input everywhere else. The encoder sees the valid
  sensors that are not to be filled.
* :class:`RawRegressor` takes ``sensors (B, 4760, 2)`` and returns ``(B, D)``: the targets in physical
  units, concatenated in the order of :attr:`RawRegressor.outputs`.

The normalisation is part of the module (traced into an exported graph as constants).
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.normalize import Normalizer
from ..geometry import N_CHANNELS
from .masking import SensorMask
from .regress import TARGETS, XECRegressor


def _check_sensors(sensors: torch.Tensor) -> None:
    if torch.jit.is_tracing():
        return
    if sensors.dim() != 3 or tuple(sensors.shape[1:]) != (N_CHANNELS, 2):
        raise ValueError(f"sensors must have shape (B, {N_CHANNELS}, 2) (raw npho, time), got {tuple(sensors.shape)}")


class RawInpainter(nn.Module):
    """An inpainter (or an MAE) that fills sensors in raw units. ``fill_time=False`` keeps the input
    time everywhere (for a model trained without a time loss).

    ``sparse=True`` runs the full-resolution heads only around the sensors to fill (the same values,
    many times faster when few are filled); an exported graph uses ``sparse=False``, whose shapes do
    not depend on the data."""

    def __init__(self, model: nn.Module, normalizer: Normalizer, fill_time: bool = True, sparse: bool = True):
        super().__init__()
        if not hasattr(model, "predict"):
            raise TypeError(f"RawInpainter needs a model with predict(x, masks, at), got {type(model).__name__}")
        self.model, self.normalizer, self.fill_time, self.sparse = model, normalizer, fill_time, sparse

    def forward(self, sensors: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        """sensors ``(B, 4760, 2)`` raw, fill ``(B, 4760)`` bool or 0/1 -> ``(B, 4760, 2)`` raw."""
        _check_sensors(sensors)
        fill = fill > 0.5 if fill.is_floating_point() else fill.bool()
        traced = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if sensors.device.type == "cpu" and not (traced or sensors.requires_grad):
            x, valid, time_valid = self.normalizer.normalize(sensors[..., 0], sensors[..., 1])  # same bits, faster
        else:
            x, valid, time_valid = self.normalizer(sensors[..., 0], sensors[..., 1])
        at = fill if self.sparse else None
        pred = self.model.predict(x, SensorMask(valid, time_valid, fill), at)  # (B, 4760, 2) normalised
        npho, time = self.normalizer.inverse(pred.float())
        filled = torch.stack([npho, time if self.fill_time else sensors[..., 1].float()], dim=-1)
        return torch.where(fill[..., None], filled.to(sensors.dtype), sensors)


class RawRegressor(nn.Module):
    """A regressor on raw sensors: ``(B, 4760, 2) -> (B, D)`` physical units, nothing hidden."""

    def __init__(self, model: XECRegressor):
        super().__init__()
        self.model = model
        # one name per output column, e.g. energy, uvw.u, uvw.v, uvw.w
        self.outputs: list[str] = []
        for t in model.targets:
            dims = TARGETS[t][0]
            self.outputs += [t] if dims == 1 else [f"{t}.{c}" for c in ("uvw" if t == "uvw" else "xyz")[:dims]]

    def forward(self, sensors: torch.Tensor) -> torch.Tensor:
        _check_sensors(sensors)
        x, valid, time_valid = self.model.normalizer(sensors[..., 0], sensors[..., 1])
        out = self.model(x, SensorMask(valid, time_valid, torch.zeros_like(valid)))
        return torch.cat([out.pred[t].float() for t in self.model.targets], dim=1)
