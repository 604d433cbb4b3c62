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

from collections.abc import Sequence
from functools import cache, reduce

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


def _neighbourhood(
    radius: float, max_k: int, device: torch.device, sensors: torch.Tensor | None = None
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """Where sums at ``sensors (S,)`` read from: ``ids (U,)``, the sorted channel ids of the sensors and
    their neighbours; ``own (S,)``, each sensor's position in ``ids``; ``table (K, S)``, its neighbours'
    positions in ``ids`` (``U`` where a slot is empty). Without ``sensors``: None, None and the full
    ``(K, N)`` table. The estimates at a few sensors then read and compute the values at ``U`` sensors
    instead of all 4760."""
    table = _table(radius, max_k, device)
    if sensors is None:
        return None, None, table
    N = table.shape[1]
    near = table.index_select(1, sensors)  # (K, S) channel ids, N for an empty slot
    used = torch.zeros(N + 1, dtype=torch.bool, device=device)
    used[sensors] = True
    used[near.flatten()] = True
    position = used.cumsum(0) - 1  # channel id -> its position in ids
    ids = used[:N].nonzero().squeeze(1)
    position[N] = len(ids)  # the empty slot: the zero row after the U sensors
    return ids, position[sensors], position[near]


def _slot_sums(parts: Sequence[torch.Tensor], table: torch.Tensor) -> torch.Tensor:
    """C quantities ``parts``, each ``(B, M)``, summed over the slots of ``table (K, S)`` (row ids;
    ``M``: a zero row), slot after slot -> ``(B, S, C)``."""
    B, M = parts[0].shape
    # sensors first, so that a gather copies whole rows of B * C numbers (an index over the
    # sensor axis of (B, M) is several times slower); one gather per neighbour slot serves all C
    # quantities and never materialises the (S, K, B * C) block. Each part is copied straight into
    # its column (6x faster than stacking them and then transposing), in the widest of their dtypes
    dtype = reduce(torch.promote_types, [p.dtype for p in parts])
    rows = parts[0].new_empty(M + 1, B, len(parts), dtype=dtype)
    for i, part in enumerate(parts):
        rows[:M, :, i] = part.T
    rows[M] = 0
    rows = rows.view(M + 1, -1)
    sums = rows.index_select(0, table[0])
    if rows.requires_grad:  # out= does not record gradients
        for ids in table[1:]:
            sums = sums + rows.index_select(0, ids)
    else:  # one buffer for every slot (a fresh large tensor per slot costs more than the gather)
        slot = torch.empty_like(sums)
        for ids in table[1:]:
            sums += torch.index_select(rows, 0, ids, out=slot)
    return sums.view(table.shape[1], B, len(parts)).permute(1, 0, 2)


def neighbour_sums(
    values: torch.Tensor, radius: float = 11.0, max_k: int = 8, sensors: torch.Tensor | None = None
) -> torch.Tensor:
    """Sum of ``values (B, 4760, C)`` over each sensor's same-face neighbours within ``radius`` cm
    -> ``(B, 4760, C)``, or ``(B, S, C)`` at ``sensors (S,)`` only (the same sums, in the same order).
    Zero the sensors that must not count before calling."""
    ids, _, table = _neighbourhood(radius, max_k, values.device, sensors)
    if values.shape[-1] == 0:  # nothing to sum
        return values.new_zeros(values.shape[0], table.shape[1], 0)
    return _slot_sums((values if ids is None else values.index_select(1, ids)).unbind(-1), table)


def _usable_sums(usable: torch.Tensor, *values: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``(B, S, 1 + len(values))``: the number of usable neighbours, then the sum of each of
    ``values (B, M)`` over them (unusable sensors may hold anything, NaN included), over the slots of
    ``table`` (see :func:`_slot_sums`)."""
    u = usable.to(values[0].dtype)
    return _slot_sums([u, *(torch.where(usable, v, 0.0) for v in values)], table)


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
    ids, _, table = _neighbourhood(radius, max_k, values.device, sensors)
    if ids is not None:  # read the sensors' neighbourhoods only
        values, usable = values.index_select(1, ids), usable.index_select(1, ids)
    s = _usable_sums(usable, values, table=table)
    count = s[..., 0]
    return s[..., 1] / count.clamp(min=1), count > 0


@cache
def _sensor_tensors(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sensor positions, normals and areas as tensors, built once per dtype and device."""
    arrays = (geo.sensor_positions(), geo.sensor_normals(), geo.sensor_areas())
    return tuple(torch.tensor(a, dtype=dtype, device=device) for a in arrays)


def solid_angles(source: torch.Tensor, sensors: torch.Tensor | None = None) -> torch.Tensor:
    """``area * cos(incidence) / d^2`` of every sensor from points ``source (B, 3)`` -> ``(B, 4760)``
    (0 for sensors facing away), or ``(B, S)`` at ``sensors (S,)`` only."""
    pos, nrm, area = _sensor_tensors(source.dtype, source.device)
    if sensors is not None:
        pos, nrm, area = pos.index_select(0, sensors), nrm.index_select(0, sensors), area.index_select(0, sensors)
    # component by component: a sum over a last dimension of 3 is several times slower on a CPU
    d = [source[:, None, i] - pos[:, i] for i in range(3)]  # (B, N) each, from sensor to source
    d2 = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).clamp(min=1.0)
    cos = (d[0] * nrm[:, 0] + d[1] * nrm[:, 1] + d[2] * nrm[:, 2]) / d2.sqrt()
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
    ids, own, table = _neighbourhood(radius, max_k, npho.device, sensors)
    if ids is not None:  # read and compute at the sensors' neighbourhoods only
        npho, usable = npho.index_select(1, ids), usable.index_select(1, ids)
    omega = solid_angles(source, ids)  # (B, N or U): the neighbours' too
    s = _usable_sums(usable, npho, omega, table=table)
    if own is not None:
        omega = omega.index_select(1, own)
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
