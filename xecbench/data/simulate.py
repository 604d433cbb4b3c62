"""Toy detector simulation: the workbench's default data, so everything runs without downloads.

A gamma from the target region enters the inner face, converts after an exponential depth and
deposits its energy at a few light-emission points spread along its direction (a crude shower).
Each sensor sees ``light_yield * E * area * cos(incidence) / (4 pi d^2)`` photons from every point,
with Poisson fluctuations. Its time is the interaction time plus the light's flight time from the
conversion point, smeared by a jitter that shrinks as 1/sqrt(npho); below ``time_threshold`` photons
the time is invalid. Dead channels read as invalid exactly as in real files (see :mod:`.io`).

The output is a dict keyed by the branch names of the real ROOT files (``npho``,
``relative_time``, ``energyTruth``, ...), so one pipeline serves both. Events come in blocks of
:data:`BLOCK` seeded by ``(seed, block index)``: event ``i`` of a seed is the same whatever the
chunking, number of DataLoader workers or ``start`` offset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .. import geometry as geo

BLOCK = 256  # events per seeded block
INVALID = 1e10  # raw marker of an invalid npho or time (readers flag anything > 9e9)
SPEED_OF_LIGHT = 29.9792458  # cm / ns
DEAD_CHANNEL_FILE = Path(str(resources.files("xecbench.data") / "dead_channels.txt"))  # package data


@dataclass(frozen=True)
class SimConfig:
    """Knobs of the toy detector. Defaults give MEG-like events: ~10^4 photons on the brightest
    sensor and a few per cent of sensors above the time threshold."""

    energy: float = 52.8  # MeV, for spectrum "mono"
    spectrum: str = "mono"  # "mono" | "flat"
    energy_range: tuple[float, float] = (10.0, 60.0)  # MeV, for spectrum "flat"
    light_yield: float = 5000.0  # detected photons per MeV over the full solid angle
    interaction_length: float = 3.56  # cm, mean depth of the first interaction (9/7 X0)
    max_depth: float = 30.0  # cm, conversions deeper than this are placed here
    n_points: int = 4  # light-emission points per shower
    shower_length: float = 3.0  # cm, mean longitudinal spread of the points after the conversion
    shower_width: float = 1.5  # cm, lateral sigma of the points
    vertex_sigma: tuple[float, float, float] = (0.5, 0.5, 2.0)  # cm, target region
    phi_range: tuple[float, float] = (125.0, 235.0)  # deg, where gammas aim on the inner face
    z_range: tuple[float, float] = (-25.0, 25.0)  # cm
    time_threshold: float = 100.0  # photons; below it the time is invalid
    time_jitter: float = 0.5  # ns at 100 photons, scales as 1/sqrt(npho)
    dead_channels: str | None = "default"  # "default" = the packaged map, None = no dead map
    random_dead_fraction: float = 0.0  # extra dead channels drawn per event
    run: int = 0

    def __post_init__(self) -> None:
        if self.spectrum not in ("mono", "flat"):
            raise ValueError(f"SimConfig.spectrum must be 'mono' or 'flat', got {self.spectrum!r}")
        if self.n_points < 1:
            raise ValueError(f"SimConfig.n_points must be >= 1, got {self.n_points}")
        if not 0.0 <= self.random_dead_fraction < 1.0:
            raise ValueError(f"SimConfig.random_dead_fraction must be in [0, 1), got {self.random_dead_fraction}")


@cache
def dead_channel_map(path: str | None = None) -> np.ndarray:
    """Channel ids of the fixed dead-channel map (the packaged ``xecbench/data/dead_channels.txt`` by default)."""
    p = Path(path) if path else DEAD_CHANNEL_FILE
    if not p.is_file():
        raise FileNotFoundError(f"dead-channel map {p} not found")
    ids = np.loadtxt(p, dtype=np.int64, comments="#", ndmin=1)
    bad = ids[(ids < 0) | (ids >= geo.N_CHANNELS)]
    if bad.size:
        raise ValueError(f"dead-channel map {p}: ids out of range 0..4759: {bad.tolist()}")
    return ids


def _block_generator(seed: int, block: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(block)]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


@cache
def _sensor_tensors() -> tuple[torch.Tensor, ...]:
    pos = torch.tensor(geo.sensor_positions(), dtype=torch.float32)
    nrm = torch.tensor(geo.sensor_normals(), dtype=torch.float32)
    area = torch.tensor(geo.sensor_areas(), dtype=torch.float32)
    pos_sq = (pos * pos).sum(1)  # (N,)
    n_dot_s = (nrm * pos).sum(1)  # (N,)
    return pos, nrm, area / (4 * math.pi), pos_sq, n_dot_s


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def _simulate_block(cfg: SimConfig, seed: int, block: int) -> dict[str, np.ndarray]:
    g = _block_generator(seed, block)
    B, K = BLOCK, cfg.n_points

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    # --- kinematics: vertex in the target, aim at a uniform point of the inner-face acceptance --
    vertex = randn(B, 3) * torch.tensor(cfg.vertex_sigma)
    phi_aim = torch.deg2rad(cfg.phi_range[0] + (cfg.phi_range[1] - cfg.phi_range[0]) * rand(B))
    z_aim = cfg.z_range[0] + (cfg.z_range[1] - cfg.z_range[0]) * rand(B)
    aim = torch.stack([geo.INNER_R * phi_aim.cos(), geo.INNER_R * phi_aim.sin(), z_aim], 1)
    direction = _unit(aim - vertex)  # (B, 3)
    if cfg.spectrum == "mono":
        energy = torch.full((B,), cfg.energy)
    else:
        lo, hi = cfg.energy_range
        energy = lo + (hi - lo) * rand(B)

    # entry into the inner cylinder: |vertex_xy + t dir_xy| = R, the positive root
    a = direction[:, :2].pow(2).sum(1)
    b = (vertex[:, :2] * direction[:, :2]).sum(1)
    c = vertex[:, :2].pow(2).sum(1) - geo.INNER_R**2
    t_entry = (-b + (b * b - a * c).sqrt()) / a
    depth = (-cfg.interaction_length * torch.log1p(-rand(B))).clamp(max=cfg.max_depth)
    path = t_entry + depth  # (B,) from the vertex to the conversion
    conversion = vertex + path[:, None] * direction  # (B, 3)

    # --- shower: point 0 is the conversion; the others spread along and around the direction --
    along = torch.zeros(B, K)
    lateral = torch.zeros(B, K, 3)
    if K > 1:
        along[:, 1:] = -cfg.shower_length * torch.log1p(-rand(B, K - 1))
        lateral[:, 1:] = randn(B, K - 1, 3) * cfg.shower_width
        # keep only the part of the offset perpendicular to the direction
        lateral -= (lateral * direction[:, None]).sum(-1, keepdim=True) * direction[:, None]
    points = conversion[:, None] + along[..., None] * direction[:, None] + lateral  # (B, K, 3)

    # --- light: solid angle of every sensor from every point, as two matmuls -----------------
    pos, nrm, area4pi, pos_sq, n_dot_s = _sensor_tensors()
    p = points.reshape(B * K, 3)
    d2 = torch.addmm(pos_sq[None, :] + (p * p).sum(1, keepdim=True), p, pos.T, alpha=-2.0)
    d2.clamp_(min=1.0)  # a point never sits closer than ~1 cm to a sensor's centre
    dist = d2.view(B, K, -1)[:, 0].sqrt()  # (B, N) from the conversion point, for the time
    cos_d = torch.addmm(-n_dot_s[None, :], p, nrm.T).clamp_(min=0.0)  # n . (p - s) = d cos(theta)
    omega = d2.rsqrt_().pow_(3).mul_(cos_d).view(B, K, -1)  # cos(theta) / d^2
    point_energy = (cfg.light_yield * energy / K)[:, None, None].expand(B, 1, K)
    expected = torch.bmm(point_energy, omega).squeeze(1).mul_(area4pi)  # (B, N)
    npho = torch.poisson(expected, generator=g)

    # --- time: conversion time + flight of the light from the conversion, with jitter --------
    t_conv = path / SPEED_OF_LIGHT
    sigma = (cfg.time_threshold / npho.clamp(min=1.0)).sqrt_().mul_(cfg.time_jitter)
    time = randn(B, geo.N_CHANNELS).mul_(sigma).add_(dist.div_(geo.LXE_LIGHT_SPEED)).add_(t_conv[:, None])
    time.masked_fill_(npho < cfg.time_threshold, INVALID)

    # --- dead channels read as invalid, as in real files --------------------------------------
    dead = torch.zeros(B, geo.N_CHANNELS, dtype=torch.bool)
    if cfg.dead_channels is not None:
        path_arg = None if cfg.dead_channels == "default" else cfg.dead_channels
        dead[:, torch.as_tensor(dead_channel_map(path_arg))] = True
    if cfg.random_dead_fraction > 0:
        dead |= rand(B, geo.N_CHANNELS) < cfg.random_dead_fraction
    npho.masked_fill_(dead, INVALID)
    time.masked_fill_(dead, INVALID)

    conv = conversion.numpy().astype(np.float32)
    d = direction.numpy()
    theta = np.degrees(np.arccos(np.clip(d[:, 2], -1, 1)))
    phi = np.degrees(np.arctan2(d[:, 1], d[:, 0])) % 360.0
    return {
        "npho": npho.numpy(),
        "relative_time": time.numpy(),
        "nphoExpected": expected.numpy(),
        "energyTruth": energy.numpy().astype(np.float32),
        "timeTruth": t_conv.numpy().astype(np.float32),
        "xyzTruth": conv,
        "uvwTruth": geo.xyz_to_uvw(conv).astype(np.float32),
        "emiVec": d.astype(np.float32),
        "emiAng": np.stack([theta, phi], 1).astype(np.float32),
        "xyzVTX": vertex.numpy().astype(np.float32),
        "run": np.full(B, cfg.run, dtype=np.int32),
        "event": np.arange(block * B, (block + 1) * B, dtype=np.int64),
    }


def simulate(n_events: int, seed: int = 0, config: SimConfig | None = None, start: int = 0) -> dict[str, np.ndarray]:
    """Simulate events ``start .. start + n_events - 1`` of ``seed``.

    Returns a dict of numpy arrays keyed by ROOT branch names: ``npho`` and ``relative_time``
    ``(n_events, 4760)`` float32 (raw, invalid = 1e10), truth ``nphoExpected`` ``(n_events, 4760)``
    (each sensor's expected count before the Poisson draw, also for dead channels: the floor of any
    estimate of a hidden sensor), ``energyTruth`` (MeV),
    ``timeTruth`` (ns), ``xyzTruth`` / ``uvwTruth`` (cm), ``emiVec``, ``emiAng`` (theta, phi deg),
    ``xyzVTX``, ``run``, ``event``.
    """
    if n_events < 0 or start < 0:
        raise ValueError(f"simulate: n_events and start must be >= 0, got {n_events}, {start}")
    cfg = config or SimConfig()
    first, last = start // BLOCK, (start + n_events - 1) // BLOCK
    with torch.no_grad():
        blocks = [_simulate_block(cfg, seed, b) for b in range(first, last + 1)] if n_events else []
    if not blocks:
        empty = _simulate_block(cfg, seed, 0)
        return {k: v[:0] for k, v in empty.items()}
    lo = start - first * BLOCK
    return {k: np.concatenate([b[k] for b in blocks])[lo : lo + n_events] for k in blocks[0]}
