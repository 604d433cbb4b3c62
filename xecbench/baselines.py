"""Classical inpainting baselines: what a learned model has to beat.

Both work on raw values ``(B, 4760)`` with a ``usable`` mask (True = the sensor may be used as a
neighbour: valid and not hidden) and return an estimate at every sensor, vectorised over events and
sensors through the padded same-face neighbour table of :func:`geometry.neighbours`.

* :func:`neighbour_average`: the mean of the usable same-face neighbours within ``radius``.
* :func:`solid_angle_estimate`: the light per unit solid angle seen by the usable neighbours, times
  the solid angle of the hidden sensor, both seen from a shower position estimated from the
  brightest usable sensors (or given).
* :func:`npho_estimates`: both of them from one pass over the neighbours (what the models use).

All of them sum over the neighbours with :func:`neighbour_sums`, one gather per neighbour slot.
``sensors`` (optional, ``(S,)`` channel ids): the estimates at those sensors only, ``(B, S)``, the same
values as the full ones there (inference that fills a few sensors needs a fraction of the work).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from . import geometry as geo


@cache
def _table(radius: float, max_k: int, device: torch.device) -> torch.Tensor:
    """The padded same-face neighbour table ``(K, N)``, transposed so that each neighbour slot is
    one contiguous id list; a missing neighbour points at the spare all-zero row ``N`` that
    :func:`neighbour_sums` appends. Built once per device (the inpainter uses the baselines inside
    its forward pass, on the GPU too)."""
    nb = torch.as_tensor(np.array(geo.neighbours(radius, max_k)))
    return torch.where(nb >= 0, nb, nb.shape[0]).T.contiguous().to(device)


def neighbour_sums(
    values: torch.Tensor, radius: float = 11.0, max_k: int = 8, sensors: torch.Tensor | None = None
) -> torch.Tensor:
    """Sum of ``values (B, 4760, C)`` over each sensor's same-face neighbours within ``radius`` cm
    -> ``(B, 4760, C)``, or ``(B, S, C)`` at ``sensors (S,)`` only. Zero the sensors that must not
    count before calling."""
    B, N, C = values.shape
    table = _table(radius, max_k, values.device)  # (K, N)
    if sensors is not None:
        table = table.index_select(1, sensors)  # (K, S): the same sums, in the same order, at fewer sensors
    # sensors first, so that a gather copies whole rows of B * C numbers (an index over the
    # sensor axis of (B, N) is several times slower); one gather per neighbour slot serves all C
    # quantities and never materialises the (N, K, B * C) block
    rows = values.new_empty(N + 1, B, C)  # one copy into the transposed layout, spare row included
    rows[:N] = values.transpose(0, 1)
    rows[N] = 0
    rows = rows.view(N + 1, B * C)
    sums = rows.index_select(0, table[0])
    if rows.requires_grad:  # out= does not record gradients
        for ids in table[1:]:
            sums = sums + rows.index_select(0, ids)
    else:  # one buffer for every slot (a fresh large tensor per slot costs more than the gather)
        slot = torch.empty_like(sums)
        for ids in table[1:]:
            sums += torch.index_select(rows, 0, ids, out=slot)
    return sums.view(table.shape[1], B, C).permute(1, 0, 2)


def _usable_sums(
    usable: torch.Tensor, *values: torch.Tensor, radius: float, max_k: int, sensors: torch.Tensor | None = None
) -> torch.Tensor:
    """``(B, 4760 or S, 1 + len(values))``: the number of usable neighbours, then the sum of each of
    ``values (B, 4760)`` over them (unusable sensors may hold anything, NaN included)."""
    u = usable.to(values[0].dtype)
    parts = [u, *(torch.where(usable, v, 0.0) for v in values)]
    return neighbour_sums(torch.stack(parts, dim=-1), radius, max_k, sensors)


def neighbour_average(
    values: torch.Tensor,
    usable: torch.Tensor,
    radius: float = 11.0,
    max_k: int = 8,
    sensors: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the usable same-face neighbours within ``radius`` cm.

    values ``(B, 4760)`` raw (npho or time), usable ``(B, 4760)`` bool. Returns the estimate
    ``(B, 4760)`` (0 where no neighbour is usable) and ``(B, 4760)`` bool: an estimate exists
    (``(B, S)`` each at ``sensors``).
    """
    s = _usable_sums(usable, values, radius=radius, max_k=max_k, sensors=sensors)
    count = s[..., 0]
    return s[..., 1] / count.clamp(min=1), count > 0


@cache
def _sensor_tensors(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sensor positions, normals and areas as tensors, built once per dtype and device."""
    arrays = (geo.sensor_positions(), geo.sensor_normals(), geo.sensor_areas())
    return tuple(torch.tensor(a, dtype=dtype, device=device) for a in arrays)


def solid_angles(source: torch.Tensor) -> torch.Tensor:
    """``area * cos(incidence) / d^2`` of every sensor from points ``source (B, 3)`` -> ``(B, 4760)``
    (0 for sensors facing away)."""
    pos, nrm, area = _sensor_tensors(source.dtype, source.device)
    d = source[:, None, :] - pos[None]  # (B, N, 3) from sensor to source
    d2 = d.pow(2).sum(-1).clamp(min=1.0)
    cos = (d * nrm).sum(-1) / d2.sqrt()
    return area * cos.clamp(min=0) / d2


def estimate_source(npho: torch.Tensor, usable: torch.Tensor, top_k: int = 10, depth: float = 3.0) -> torch.Tensor:
    """Shower position ``(B, 3)``: the npho-weighted mean of the ``top_k`` brightest usable
    sensors, pushed ``depth`` cm into the xenon along their weighted normal."""
    pos, nrm, _ = _sensor_tensors(npho.dtype, npho.device)
    w, idx = torch.where(usable, npho, -1.0).topk(top_k, dim=1)
    w = w.clamp(min=0)[..., None]
    centre = (pos[idx] * w).sum(1) / w.sum(1).clamp(min=1e-9)
    normal = (nrm[idx] * w).sum(1)
    normal = normal / normal.norm(dim=-1, keepdim=True).clamp(min=1e-9)
    return centre + depth * normal


def npho_estimates(
    npho: torch.Tensor,
    usable: torch.Tensor,
    source: torch.Tensor | None = None,
    radius: float = 11.0,
    max_k: int = 8,
    sensors: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both classical npho estimates from one pass over the neighbours: the neighbour average, the
    solid-angle estimate (:func:`solid_angle_estimate`) and whether an estimate exists, each
    ``(B, 4760)`` (``(B, S)`` at ``sensors``)."""
    if source is None:
        source = estimate_source(npho, usable)
    omega = solid_angles(source)  # (B, N): the neighbours' too
    s = _usable_sums(usable, npho, omega, radius=radius, max_k=max_k, sensors=sensors)
    if sensors is not None:
        omega = omega.index_select(1, sensors)
    count, light, seen = s.unbind(-1)
    average = light / count.clamp(min=1)
    sees = seen > 0
    by_angle = torch.where(sees, omega * light / torch.where(sees, seen, 1.0), average)
    return average, by_angle, count > 0


def solid_angle_estimate(
    npho: torch.Tensor,
    usable: torch.Tensor,
    source: torch.Tensor | None = None,
    radius: float = 11.0,
    max_k: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """npho at every sensor from its usable neighbours, scaled by solid angle:
    ``Omega_i * sum_j npho_j / sum_j Omega_j`` over the usable neighbours j of sensor i.

    npho ``(B, 4760)`` raw; ``source (B, 3)`` the shower position (estimated if None). Where no
    usable neighbour sees the source (the sensors facing away from it) the neighbour average is
    used. Returns the estimate and whether one exists (any usable neighbour).
    """
    _, by_angle, has = npho_estimates(npho, usable, source, radius, max_k)
    return by_angle, has
