"""Masking in one place: which sensors exist, which are hidden, which are scored.

One vocabulary, per sensor ``(B, 4760)`` bool, everywhere in the package:

* ``valid``: the npho is usable (not dead, not an invalid marker);
* ``time_valid``: the time is usable too (a dim sensor has a valid npho but no valid time);
* ``hidden``: chosen to be hidden (the MAE's random mask, or the sensors to inpaint);
* derived: ``visible = valid & ~hidden`` (what an encoder may look at) and ``scored = valid & hidden``
  (where a loss or a metric has a truth); ``time_scored = scored & time_valid``.

:class:`SensorMask` carries the three inputs and derives the rest. :func:`random_hidden` draws a
random ``hidden`` at a ratio, with two granularities:

* ``"sensor"``: each event hides ``floor(ratio * n_valid)`` of its own valid sensors (the shape of
  dead channels: single sensors);
* ``"cell"``: the same on the encoder's *last-stage cells* (FCMAE): whole ``stride x stride`` blocks
  of a grid face (8 x 8 SiPMs on the inner face of the tiny preset) or single hex nodes are hidden,
  so the masked convolution never sees a hidden cell. With sensor masking a last-stage inner cell
  is almost never fully hidden, and the encoder's last stage then acts as a dense one.

:func:`masked_loss` is the loss of every model: per event, the mean error over its scored sensors
(npho) and time-scored sensors (time), channel weights, then the mean over the events. Being a mean
over events, it splits exactly into micro-batches (gradient accumulation weighs each micro-batch by
its number of events), and an event with nothing scored contributes 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F

from .. import geometry as geo
from .faces import FaceLayout, cell_of_sensor

MASK_UNITS = ("sensor", "cell")
LOSSES = ("mse", "l1", "huber")


@dataclass(frozen=True)
class SensorMask:
    """The per-sensor booleans of a batch, ``(B, 4760)`` each (see the module docstring)."""

    valid: torch.Tensor
    time_valid: torch.Tensor
    hidden: torch.Tensor

    def __post_init__(self) -> None:
        if torch.jit.is_tracing():  # traced shapes are tensors; the traced inputs were checked eagerly
            return
        shapes = {k: tuple(getattr(self, k).shape) for k in ("valid", "time_valid", "hidden")}
        if shapes["time_valid"] != shapes["valid"] or shapes["hidden"] != shapes["valid"] or len(shapes["valid"]) != 2:
            raise ValueError(f"SensorMask: valid, time_valid and hidden must share one (B, N) shape, got {shapes}")
        for k in shapes:
            if getattr(self, k).dtype != torch.bool:
                raise TypeError(f"SensorMask.{k} must be a bool tensor, got {getattr(self, k).dtype}")

    @property
    def visible(self) -> torch.Tensor:
        return self.valid & ~self.hidden

    @property
    def scored(self) -> torch.Tensor:
        return self.valid & self.hidden

    @property
    def time_scored(self) -> torch.Tensor:
        return self.scored & self.time_valid

    def to(self, device: torch.device | str) -> SensorMask:
        return SensorMask(self.valid.to(device), self.time_valid.to(device), self.hidden.to(device))

    def __getitem__(self, index) -> SensorMask:
        """Select events: ``masks[2:4]``."""
        return SensorMask(self.valid[index], self.time_valid[index], self.hidden[index])

    @classmethod
    def of(cls, batch: dict[str, torch.Tensor], hidden: torch.Tensor) -> SensorMask:
        """From a dataset batch (``valid``, ``time_valid``) and a ``hidden`` choice."""
        return cls(batch["valid"], batch["time_valid"], hidden)


def random_hidden(
    valid: torch.Tensor,
    ratio: float,
    generator: torch.Generator | None = None,
    cells: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hide ``floor(ratio * n_valid)`` of each event's own valid units, uniformly at random.

    valid ``(B, N)`` bool. ``cells``: None for sensor granularity, or ``(N,)`` long, the unit of each
    sensor (see :func:`last_stage_cells`): a cell is valid if any of its sensors is, and hiding a cell
    hides its valid sensors. Returns ``hidden (B, N)`` bool, never True where ``valid`` is False; an
    event with nothing valid hides nothing. Vectorised, no host synchronisation.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    if cells is not None:
        # cell ids are below N, so N columns hold every cell (unused columns stay invalid); a fixed
        # width keeps the shapes independent of the data
        count = valid.new_zeros(valid.shape, dtype=torch.float32).index_add_(1, cells, valid.to(torch.float32))
        return random_hidden(count > 0, ratio, generator)[:, cells] & valid
    noise = torch.rand(valid.shape, device=valid.device, generator=generator)
    noise = noise.masked_fill(~valid, 2.0)  # invalid units sort last
    order = noise.argsort(dim=1)
    positions = torch.arange(valid.shape[1], device=valid.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)  # rank of each unit's noise in its event
    n_hide = torch.floor(ratio * valid.sum(dim=1, keepdim=True).to(torch.float32))  # (B, 1), per event
    return rank < n_hide


def random_hidden_by_face(
    valid: torch.Tensor, ratios: dict[str, float], generator: torch.Generator | None = None
) -> torch.Tensor:
    """:func:`random_hidden` face by face: each face hides ``floor(ratios[face] * n_valid)`` of each
    event's valid sensors on it. valid ``(B, 4760)`` -> hidden ``(B, 4760)`` bool."""
    hidden = torch.zeros_like(valid)
    for face in geo.FACES:  # six faces, not a loop over events or sensors
        ids = torch.as_tensor(np.array(geo.face_ids(face)), device=valid.device)
        hidden[:, ids] = random_hidden(valid[:, ids], ratios[face], generator)
    return hidden


@cache
def _last_stage_cells(strides: tuple[tuple[str, int], ...]) -> np.ndarray:
    cells = np.full(geo.N_CHANNELS, -1, dtype=np.int64)
    offset = 0
    stride_of = dict(strides)
    for face in geo.FACES:
        ids = np.asarray(geo.face_ids(face))
        if face in geo.HEX_FACES:
            cells[ids] = offset + np.arange(ids.size)
            offset += ids.size
            continue
        s = stride_of[face]
        H, W = geo.grid_ids(face).shape
        row, col = np.divmod(cell_of_sensor(face), W)
        w_coarse = -(-W // s)
        cells[ids] = offset + (row // s) * w_coarse + col // s
        offset += -(-H // s) * w_coarse
    return cells


def last_stage_cells(strides: dict[str, int]) -> torch.Tensor:
    """``(4760,)`` long: the encoder's last-stage cell of each sensor, numbered across the faces.

    ``strides``: the total downsampling of each grid face (``EncoderConfig.stride(face)``); a hex
    node is its own cell. Cells are numbered face after face, so every id in ``0 .. n_cells - 1``
    occurs (also the padded border cells of a face whose size does not divide by its stride).
    """
    key = tuple(sorted((f, int(strides[f])) for f in geo.GRID_FACES))
    used = _last_stage_cells(key)
    # renumber densely: padded grid cells hold no sensor
    _, dense = np.unique(used, return_inverse=True)
    return torch.as_tensor(dense)


def masked_error(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Element-wise error ``(pred - target)``: squared, absolute or Huber (delta 1)."""
    if kind == "mse":
        return (pred - target) ** 2
    if kind == "l1":
        return (pred - target).abs()
    if kind == "huber":
        return F.huber_loss(pred, target, reduction="none", delta=1.0)
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")


def masked_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    masks: SensorMask,
    layout: FaceLayout,
    kind: str = "mse",
    channel_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean over events of each event's channel-weighted mean error over its scored sensors; the
    same per face (each event's mean over the face's scored sensors).

    pred, target ``(B, 4760, 2)`` normalised (npho, time). npho counts on every scored sensor, time
    on the time-scored ones. Unscored targets get exactly zero weight and gradient; an event (or a
    face of it) with nothing scored contributes 0, never NaN.
    """
    w = torch.stack([masks.scored, masks.time_scored], dim=-1).to(pred.dtype)  # (B, N, 2)
    cw = pred.new_ones(2) if channel_weights is None else channel_weights.to(pred.dtype)
    target = torch.where(w > 0, target, 0.0)  # sentinels never enter the arithmetic
    err = masked_error(pred, target, kind) * w

    def per_event(e: torch.Tensor, ww: torch.Tensor) -> torch.Tensor:  # (B, n, 2) -> scalar
        return ((e.sum(1) / ww.sum(1).clamp(min=1.0)) * cw).sum(-1).mean()

    per_face = {face: per_event(err[:, layout.ids(face)], w[:, layout.ids(face)]) for face in geo.FACES}
    return per_event(err, w), per_face
