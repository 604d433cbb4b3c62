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
import threading
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


# Output branches: trailing shape (after the event axis) and dtype, in the order they are returned.
_BRANCHES: dict[str, tuple[tuple[int, ...], type]] = {
    "npho": ((geo.N_CHANNELS,), np.float32),
    "relative_time": ((geo.N_CHANNELS,), np.float32),
    "nphoExpected": ((geo.N_CHANNELS,), np.float32),
    "energyTruth": ((), np.float32),
    "timeTruth": ((), np.float32),
    "xyzTruth": ((3,), np.float32),
    "uvwTruth": ((3,), np.float32),
    "emiVec": ((3,), np.float32),
    "emiAng": ((2,), np.float32),
    "xyzVTX": ((3,), np.float32),
    "run": ((), np.int32),
    "event": ((), np.int64),
}

# Events whose light goes through the per-element passes and the Poisson draw together: their
# (CHUNK * n_points, 4760) rows of the block's geometry (~5 MB each for 4 points) stay in cache
# for all passes instead of streaming ~20 MB per pass through memory, while there are few enough
# chunks that the per-op overhead (with several threads: one parallel region per op) stays small.
# Must divide BLOCK and be even, so that each chunk's bmm output rows keep the 64-byte alignment
# pattern they had in a whole-block output (MKL may pick its code path by alignment).
CHUNK = 64
assert BLOCK % CHUNK == 0 and CHUNK % 2 == 0


def _empty_branches(n: int) -> dict[str, np.ndarray]:
    """Uninitialised output arrays for ``n`` events, keyed as in :data:`_BRANCHES`."""
    return {k: np.empty((n, *shape), dtype=dtype) for k, (shape, dtype) in _BRANCHES.items()}


@dataclass
class _Workspace:
    """Scratch tensors for simulating blocks of events with ``n_points`` light points (``K``).

    ``d2`` and ``n_d`` ``(BLOCK * K, 4760)``: the block's point-sensor geometry (see
    :func:`_projections`); ``point_light`` ``(CHUNK, 1, 4760)``: one chunk's light before the
    sensor areas; ``noise`` ``(BLOCK, 4760)``: the block's time jitter / random dead draws.
    """

    n_points: int
    d2: torch.Tensor
    n_d: torch.Tensor
    point_light: torch.Tensor
    noise: torch.Tensor

    @classmethod
    def new(cls, n_points: int) -> _Workspace:
        n = geo.N_CHANNELS
        return cls(
            n_points=n_points,
            d2=torch.empty(BLOCK * n_points, n),
            n_d=torch.empty(BLOCK * n_points, n),
            point_light=torch.empty(CHUNK, 1, n),
            noise=torch.empty(BLOCK, n),
        )


_thread_local = threading.local()


def _workspace(n_points: int) -> _Workspace:
    """This thread's workspace, kept between calls (~45 MB for 4 light points): allocating it
    anew costs ~11k page faults, which took a large part of a one-block call such as the dataset
    stream makes. One per thread, because every block overwrites the buffers."""
    ws = getattr(_thread_local, "workspace", None)
    if ws is None or ws.n_points != n_points:
        ws = _thread_local.workspace = None  # free the old buffers before allocating new ones
        ws = _thread_local.workspace = _Workspace.new(n_points)
    return ws


@dataclass
class _Kinematics:
    """Per-event truth of one block (``B`` events, ``K`` light points), all float32."""

    vertex: torch.Tensor  # (B, 3) cm
    direction: torch.Tensor  # (B, 3) unit vector
    energy: torch.Tensor  # (B,) MeV
    path: torch.Tensor  # (B,) cm from the vertex to the conversion
    conversion: torch.Tensor  # (B, 3) cm
    points: torch.Tensor  # (B, K, 3) cm, light-emission points (0 = the conversion)


def _kinematics(cfg: SimConfig, g: torch.Generator) -> _Kinematics:
    """Draw the gammas of one block; the first draws of the block's generator ``g``."""
    B, K = BLOCK, cfg.n_points

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    # --- vertex in the target, aim at a uniform point of the inner-face acceptance -----------
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
    return _Kinematics(vertex, direction, energy, path, conversion, points)


def _projections(p: torch.Tensor, p_sq: torch.Tensor, ws: _Workspace) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distances and normal projections of all ``B * K`` light points to all sensors.

    ``p`` ``(B * K, 3)`` points (event-major), ``p_sq`` ``(B * K, 1)`` their squared norms.
    Returns ``d2`` ``(B * K, 4760)`` (``|s - p|^2``, cm^2) and ``n_d`` ``(B * K, 4760)``
    (``n . (p - s) = d cos(theta)``, cm), both unclamped, in the workspace buffers.

    These are the original two whole-block ``addmm`` calls with the same shapes and operand
    layouts: MKL picks its kernel (and so its rounding) by the matrix sizes and thread count, so
    products of fewer rows are not bit-identical everywhere (measured on one machine: blocks of
    up to 3 rows rounded differently with 1 thread, up to 10 rows with 2 threads).
    Only the output buffers are reused instead of freshly allocated (page faults on every block).
    """
    pos, nrm, _, pos_sq, n_dot_s = _sensor_tensors()
    # |s - p|^2 = |s|^2 + |p|^2 - 2 p.s as one matmul onto the pre-filled buffer
    d2 = torch.add(pos_sq[None, :], p_sq, out=ws.d2).addmm_(p, pos.T, alpha=-2.0)
    n_d = ws.n_d.copy_((-n_dot_s)[None, :].expand_as(ws.n_d)).addmm_(p, nrm.T)
    return d2, n_d


def _light_chunk(
    d2: torch.Tensor,
    n_d: torch.Tensor,
    point_energy: torch.Tensor,
    ws: _Workspace,
    expected: torch.Tensor,
    d2_first: torch.Tensor,
) -> None:
    """Expected photons of ``C`` events from their ``K`` light points each.

    ``d2`` and ``n_d`` ``(C * K, 4760)``: rows of :func:`_projections` (both are overwritten);
    ``point_energy`` ``(C, 1, K)`` photons emitted per point. Writes ``expected`` ``(C, 4760)``
    (photons per sensor) and ``d2_first`` ``(C, 4760)`` (squared distance in cm^2 from point 0,
    the conversion, clamped at 1; the light's flight time is its square root over c_LXE).

    Per-element ops in the original order and the same per-event ``bmm`` products (torch loops
    over the batch either way), so chunking keeps the results bit-identical while a chunk's
    rows stay in cache for all these passes.
    """
    C, K = point_energy.shape[0], point_energy.shape[2]
    d2.clamp_(min=1.0)  # a point never sits closer than ~1 cm to a sensor's centre
    d2_first.copy_(d2.view(C, K, -1)[:, 0])
    cos_d = n_d.clamp_(min=0.0)  # the sensor sees no light from behind
    omega = d2.rsqrt_().pow_(3).mul_(cos_d).view(C, K, -1)  # cos(theta) / d^2
    light = torch.bmm(point_energy, omega, out=ws.point_light[:C])  # (C, 1, N)
    torch.mul(light.squeeze(1), _sensor_tensors()[2], out=expected)  # times area / 4 pi


def _valid_times(
    npho: torch.Tensor, d2_first: torch.Tensor, noise: torch.Tensor, t_conv: torch.Tensor, cfg: SimConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Times of the sensors at or above the time threshold (the only ones that are kept).

    ``npho``, ``d2_first`` (see :func:`_light_chunk`) and ``noise`` (standard normal) are
    ``(B, 4760)``, ``t_conv`` ``(B,)``. Returns the flat indices ``(V,)`` of those sensors into a
    ``(B, 4760)`` array and their times ``(V,)`` in ns.

    Only a few per cent of sensors pass, so gathering them first saves about ten full passes
    over the block. Each kept value goes through the same float32 operations in the same order
    as the whole-array expression ``noise * sigma + flight + t_conv`` did: bit-identical.
    """
    # numpy finds the few indices (and their events) several times faster than torch; the
    # threshold is rounded to float32 as torch's comparison does
    flat = np.flatnonzero(npho.numpy().reshape(-1) >= np.float32(cfg.time_threshold))
    idx, event = torch.from_numpy(flat), torch.from_numpy(flat // npho.shape[1])  # (V,) each
    # sigma = time_jitter * sqrt(threshold / max(npho, 1)); torch evaluates `threshold / x` as
    # reciprocal-then-multiply, which is kept as two steps for identical rounding
    sigma = npho.view(-1).index_select(0, idx).clamp_(min=1.0).reciprocal_()
    sigma.mul_(cfg.time_threshold).sqrt_().mul_(cfg.time_jitter)
    flight = d2_first.view(-1).index_select(0, idx).sqrt_().div_(geo.LXE_LIGHT_SPEED)
    jitter = noise.view(-1).index_select(0, idx).mul_(sigma)
    times = jitter.add_(flight).add_(t_conv.index_select(0, event))
    return idx, times


def _simulate_block(
    cfg: SimConfig, seed: int, block: int, out: dict[str, np.ndarray], ws: _Workspace, dead_ids: torch.Tensor | None
) -> None:
    """Simulate the :data:`BLOCK` events of ``block`` into ``out`` (arrays of length BLOCK,
    keyed as in :data:`_BRANCHES`, e.g. views into the caller's result). ``dead_ids``: channel
    ids of the fixed dead map, or None.

    Draw order from the block's generator: kinematics, Poisson counts (event by event, sensor by
    sensor), time jitter ``(BLOCK, 4760)``, then random dead channels ``(BLOCK, 4760)``.
    """
    g = _block_generator(seed, block)
    B, K = BLOCK, cfg.n_points
    kin = _kinematics(cfg, g)

    # --- light and Poisson counts, CHUNK events at a time ---------------------------------------
    # torch.poisson draws element by element in memory order, so chunks taken in order consume
    # the generator exactly as one whole-block call would.
    npho = torch.from_numpy(out["npho"])  # (B, N) views: results are written in place
    time = torch.from_numpy(out["relative_time"])
    expected = torch.from_numpy(out["nphoExpected"])
    p = kin.points.reshape(B * K, 3)
    d2, n_d = _projections(p, (p * p).sum(1, keepdim=True), ws)
    point_energy = (cfg.light_yield * kin.energy / K)[:, None, None].expand(B, 1, K)
    for lo in range(0, B, CHUNK):
        ev, rows = slice(lo, lo + CHUNK), slice(lo * K, (lo + CHUNK) * K)
        # `time` holds the squared distance to the conversion until the times are computed
        _light_chunk(d2[rows], n_d[rows], point_energy[ev], ws, expected[ev], time[ev])
        npho[ev] = torch.poisson(expected[ev], generator=g)

    # --- time: conversion time + flight of the light from the conversion, with jitter --------
    # the jitter is drawn for every sensor (the generator must advance as before), used where valid
    t_conv = kin.path / SPEED_OF_LIGHT
    noise = ws.noise.normal_(generator=g)  # the same draws as torch.randn(B, N, generator=g)
    idx, times = _valid_times(npho, time, noise, t_conv, cfg)
    time.fill_(INVALID).view(-1).index_copy_(0, idx, times)

    # --- dead channels read as invalid, as in real files --------------------------------------
    if dead_ids is not None:
        npho[:, dead_ids] = INVALID
        time[:, dead_ids] = INVALID
    if cfg.random_dead_fraction > 0:
        dead = noise.uniform_(generator=g) < cfg.random_dead_fraction  # == torch.rand(B, N) < f
        npho.masked_fill_(dead, INVALID)
        time.masked_fill_(dead, INVALID)

    # --- per-event truth --------------------------------------------------------------------
    conv = kin.conversion.numpy().astype(np.float32)
    d = kin.direction.numpy()
    theta = np.degrees(np.arccos(np.clip(d[:, 2], -1, 1)))
    phi = np.degrees(np.arctan2(d[:, 1], d[:, 0])) % 360.0
    out["energyTruth"][:] = kin.energy.numpy()
    out["timeTruth"][:] = t_conv.numpy()
    out["xyzTruth"][:] = conv
    out["uvwTruth"][:] = geo.xyz_to_uvw(conv)
    out["emiVec"][:] = d
    out["emiAng"][:] = np.stack([theta, phi], 1)
    out["xyzVTX"][:] = kin.vertex.numpy()
    out["run"][:] = cfg.run
    out["event"][:] = np.arange(block * B, (block + 1) * B)


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
    dead_ids = None  # loaded even for no events, so that a bad map path fails early
    if cfg.dead_channels is not None:
        dead_ids = torch.as_tensor(dead_channel_map(None if cfg.dead_channels == "default" else cfg.dead_channels))
    result = _empty_branches(n_events)
    if n_events == 0:
        return result
    ws = _workspace(cfg.n_points)
    stop = start + n_events
    with torch.no_grad():
        for b in range(start // BLOCK, (stop - 1) // BLOCK + 1):
            lo, hi = max(start, b * BLOCK), min(stop, (b + 1) * BLOCK)  # wanted events of this block
            if hi - lo == BLOCK:  # whole block: simulate straight into the result
                _simulate_block(cfg, seed, b, {k: v[lo - start : hi - start] for k, v in result.items()}, ws, dead_ids)
            else:  # partial block (first or last): simulate it all, keep the wanted rows
                part = _empty_branches(BLOCK)
                _simulate_block(cfg, seed, b, part, ws, dead_ids)
                for k, v in result.items():
                    v[lo - start : hi - start] = part[k][lo - b * BLOCK : hi - b * BLOCK]
    return result
