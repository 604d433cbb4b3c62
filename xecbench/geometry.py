"""Detector geometry of the MEG II liquid-xenon calorimeter (XEC).

Everything here is derived from a handful of published numbers (see ``DESIGN.md``): 4760
photosensors on six faces, their channel ids, the grids and hexagonal rows they sit on, and a
parametric 3D model (positions in cm, unit normals pointing into the xenon, sensitive areas).

Conventions
-----------
* Beam axis = z; the calorimeter sits at negative x (phi around 180 degrees).
* Channel order is the flat id order 0..4759 used by the data (one event = ``(4760, 2)``).
* Face order everywhere in the package is :data:`FACES`.

All arrays returned here are read-only numpy arrays built once and cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

N_CHANNELS = 4760
FACES: tuple[str, ...] = ("inner", "us", "ds", "outer", "top", "bottom")
GRID_FACES: tuple[str, ...] = ("inner", "us", "ds", "outer")
HEX_FACES: tuple[str, ...] = ("top", "bottom")

# --- inner face: SiPM cylinder, 93 phi rows x 44 z columns, id = 44 * phi_row + z_col -------
INNER_SHAPE = (93, 44)
INNER_R = 64.97
INNER_PHI0, INNER_DPHI = 117.9, 1.3497  # deg; row 0 at y > 0
INNER_Z0, INNER_DZ = -32.46, 1.5098  # cm
INNER_CHIP = 0.59  # cm; four chips per MPPC

# --- outer face: PMT cylinder, coarse 24 phi columns x 9 z rows, z runs fastest ------------
OUTER_FIRST, OUTER_NPHI, OUTER_NZ = 4092, 24, 9
OUTER_R = 106.27
OUTER_PHI0, OUTER_DPHI = 119.85, 5.2309  # deg (also the phi columns of us/ds)
OUTER_Z0, OUTER_DZ = -41.42, 10.355
# The dense centre patch: 6 phi rows (171.3 deg first) x 5 z sites (-12.4 cm first).
OUTER_PATCH_IDS = np.array(
    [
        [4185, 4742, 4186, 4743, 4187],
        [4744, 4745, 4746, 4747, 4748],
        [4194, 4749, 4195, 4750, 4196],
        [4203, 4751, 4204, 4752, 4205],
        [4753, 4754, 4755, 4756, 4757],
        [4212, 4758, 4213, 4759, 4214],
    ]
)
PATCH_PHI0, PATCH_DPHI = 171.3, 3.49
PATCH_Z0, PATCH_DZ = -12.4, 6.2

# --- upstream / downstream: slanted conical rings, 24 phi x 6 radial steps ------------------
US_FIRST, DS_FIRST = 4308, 4452
END_SHAPE = (24, 6)
END_R0, END_DR = 69.53, 6.684
END_Z0, END_DZ = 35.15, 2.337  # |z| grows outward: us at -z, ds at +z

# --- top / bottom: hexagonal rows in planes containing the z axis --------------------------
TOP_FIRST, BOTTOM_FIRST = 4596, 4669
HEX_ROW_LENGTHS = (11, 12, 11, 12, 13, 14)
HEX_N = sum(HEX_ROW_LENGTHS)  # 73
HEX_PHI = 117.24  # deg; top at +HEX_PHI, bottom at -HEX_PHI
HEX_R0, HEX_DR = 68.27, 6.91
HEX_DZ = 6.12

PMT_RADIUS = 2.3  # photocathode radius of a 2-inch PMT, cm
LXE_LIGHT_SPEED = 29.9792458 / 1.61  # cm / ns


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


# ------------------------------------------------------------------------------------------
# Channel maps
# ------------------------------------------------------------------------------------------


@cache
def face_ids(face: str) -> np.ndarray:
    """Flat channel ids of one face, ``(n_face,)`` int64, in the face's canonical order.

    inner: 0..4091; us/ds/top/bottom: their contiguous ranges; outer: 4092..4307 then 4742..4759.
    """
    ranges = {
        "inner": np.arange(0, 4092),
        "outer": np.concatenate([np.arange(4092, 4308), np.arange(4742, 4760)]),
        "us": np.arange(US_FIRST, US_FIRST + 144),
        "ds": np.arange(DS_FIRST, DS_FIRST + 144),
        "top": np.arange(TOP_FIRST, TOP_FIRST + HEX_N),
        "bottom": np.arange(BOTTOM_FIRST, BOTTOM_FIRST + HEX_N),
    }
    if face not in ranges:
        raise ValueError(f"unknown face {face!r}; faces are {FACES}")
    return _readonly(ranges[face].astype(np.int64))


@cache
def channel_face() -> np.ndarray:
    """Face index (position in :data:`FACES`) of every channel, ``(4760,)`` int64."""
    out = np.full(N_CHANNELS, -1, dtype=np.int64)
    for k, face in enumerate(FACES):
        out[face_ids(face)] = k
    return _readonly(out)


@cache
def grid_ids(face: str) -> np.ndarray:
    """Channel ids of a rectangular face laid out as an image.

    inner: ``(93, 44)`` [phi_row, z_col]; us/ds: ``(24, 6)`` [phi_col, radial_step];
    outer: ``(9, 24)`` [z_row, phi_col] on the coarse grid (the 12 coarse cells of the centre patch
    hold the patch sensors that kept their coarse ids; the other 18 patch sensors are not on it).
    """
    if face == "inner":
        g = np.arange(4092).reshape(INNER_SHAPE)
    elif face in ("us", "ds"):
        g = face_ids(face).reshape(END_SHAPE)
    elif face == "outer":
        # z runs fastest in the ids, so the (phi, z) reshape is the natural one; transpose to (z, phi)
        g = (OUTER_FIRST + np.arange(OUTER_NPHI * OUTER_NZ)).reshape(OUTER_NPHI, OUTER_NZ).T
    else:
        raise ValueError(f"grid_ids: face {face!r} is not rectangular; grid faces are {GRID_FACES}")
    return _readonly(np.ascontiguousarray(g, dtype=np.int64))


@cache
def hex_row_col() -> np.ndarray:
    """``(73, 2)`` (row, column) of each node of a hex face, in id order."""
    rc = [(r, c) for r, n in enumerate(HEX_ROW_LENGTHS) for c in range(n)]
    return _readonly(np.array(rc, dtype=np.int64))


@cache
def hex_local_coords() -> np.ndarray:
    """``(73, 2)`` in-plane coordinates (z, distance from the axis) in cm of a hex face's nodes.

    Rows are centred on z = 0, so a row one longer than its neighbour starts half a pitch further out.
    """
    rc = hex_row_col()
    lengths = np.asarray(HEX_ROW_LENGTHS)[rc[:, 0]]
    z = (rc[:, 1] - (lengths - 1) / 2.0) * HEX_DZ
    rho = HEX_R0 + HEX_DR * rc[:, 0]
    return _readonly(np.stack([z, rho], axis=1))


@dataclass(frozen=True)
class HexGraph:
    """Neighbour graph of one hexagonal face (73 nodes), local node indices 0..72.

    ``src, dst, direction``: directed edges including self loops, ``(E,)`` int64; direction 0 is the
    self loop and 1..6 the neighbour directions counter-clockwise in the (z, rho) plane starting
    at +z: 1 = +z, 2 = outer row +z, 3 = outer row -z, 4 = -z, 5 = inner row -z, 6 = inner row +z.
    Direction d and d + 3 (mod 6) are opposite. ``table``: ``(73, 7)`` neighbour index per direction,
    -1 where the neighbour does not exist (column 0 is the node itself). ``degree``: ``(73,)``
    number of neighbours excluding self.
    """

    src: np.ndarray
    dst: np.ndarray
    direction: np.ndarray
    table: np.ndarray
    degree: np.ndarray


@cache
def hex_graph() -> HexGraph:
    """The hexagonal neighbour graph shared by the top and bottom faces (see :class:`HexGraph`)."""
    starts = np.cumsum((0,) + HEX_ROW_LENGTHS[:-1])
    n_rows = len(HEX_ROW_LENGTHS)

    def node(r: int, c2: int) -> int:
        """Node at row r and doubled column c2 (only even values of c2 exist), or -1."""
        if not 0 <= r < n_rows or c2 % 2:
            return -1
        c = c2 // 2
        return int(starts[r] + c) if 0 <= c < HEX_ROW_LENGTHS[r] else -1

    table = np.full((HEX_N, 7), -1, dtype=np.int64)
    for i, (r, c) in enumerate(hex_row_col()):
        table[i, 0] = i
        table[i, 1] = node(r, 2 * c + 2)
        table[i, 4] = node(r, 2 * c - 2)
        for dr, (d_plus, d_minus) in ((1, (2, 3)), (-1, (6, 5))):
            if not 0 <= r + dr < n_rows:
                continue
            # neighbour columns c + (L' - L)/2 +- 1/2, in doubled units to stay integer
            shift2 = HEX_ROW_LENGTHS[r + dr] - HEX_ROW_LENGTHS[r]
            table[i, d_plus] = node(r + dr, 2 * c + shift2 + 1)
            table[i, d_minus] = node(r + dr, 2 * c + shift2 - 1)
    dst, direction = np.nonzero(table >= 0)
    src = table[dst, direction]
    degree = (table[:, 1:] >= 0).sum(axis=1)
    return HexGraph(
        src=_readonly(src.astype(np.int64)),
        dst=_readonly(dst.astype(np.int64)),
        direction=_readonly(direction.astype(np.int64)),
        table=_readonly(table),
        degree=_readonly(degree.astype(np.int64)),
    )


# ------------------------------------------------------------------------------------------
# 3D model
# ------------------------------------------------------------------------------------------


def _cyl(r: np.ndarray | float, phi_deg: np.ndarray, z: np.ndarray) -> np.ndarray:
    phi = np.deg2rad(phi_deg)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)


def _radial(phi_deg: np.ndarray) -> np.ndarray:
    phi = np.deg2rad(phi_deg)
    return np.stack([np.cos(phi), np.sin(phi), np.zeros_like(phi)], axis=-1)


@cache
def _model() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos = np.zeros((N_CHANNELS, 3))
    nrm = np.zeros((N_CHANNELS, 3))
    area = np.zeros(N_CHANNELS)

    # inner: xenon lies outside the cylinder, so the normal is radially outward
    row, col = np.divmod(np.arange(4092), INNER_SHAPE[1])
    phi = INNER_PHI0 + INNER_DPHI * row
    pos[:4092] = _cyl(INNER_R, phi, INNER_Z0 + INNER_DZ * col)
    nrm[:4092] = _radial(phi)
    area[:4092] = 4 * INNER_CHIP**2

    # outer: coarse grid, then the centre patch overrides the 12 cells it replaces
    ids = OUTER_FIRST + np.arange(OUTER_NPHI * OUTER_NZ)
    pcol, zrow = np.divmod(ids - OUTER_FIRST, OUTER_NZ)
    phi_o = np.empty(N_CHANNELS)
    z_o = np.empty(N_CHANNELS)
    phi_o[ids] = OUTER_PHI0 + OUTER_DPHI * pcol
    z_o[ids] = OUTER_Z0 + OUTER_DZ * zrow
    prow, pz = np.indices(OUTER_PATCH_IDS.shape)
    phi_o[OUTER_PATCH_IDS] = PATCH_PHI0 + PATCH_DPHI * prow
    z_o[OUTER_PATCH_IDS] = PATCH_Z0 + PATCH_DZ * pz
    out = face_ids("outer")
    pos[out] = _cyl(OUTER_R, phi_o[out], z_o[out])
    nrm[out] = -_radial(phi_o[out])
    area[out] = np.pi * PMT_RADIUS**2

    # us/ds: a cone; stepping outward a sensor moves (+dr, further from z = 0), so the in-plane
    # normal towards the xenon has a radial part dz/slope and a z part dr/slope towards z = 0
    slope = np.hypot(END_DR, END_DZ)
    for face, sign in (("us", -1.0), ("ds", 1.0)):
        fid = face_ids(face)
        pc, rs = np.divmod(fid - fid[0], END_SHAPE[1])
        phi_e = OUTER_PHI0 + OUTER_DPHI * pc
        r = END_R0 + END_DR * rs
        pos[fid] = _cyl(r, phi_e, sign * (END_Z0 + END_DZ * rs))
        nrm[fid] = (END_DZ / slope) * _radial(phi_e) - sign * (END_DR / slope) * np.array([0, 0, 1.0])
        area[fid] = np.pi * PMT_RADIUS**2

    # top/bottom: planes through the z axis; the xenon lies towards phi = 180 deg
    zr = hex_local_coords()
    for face, phi_h in (("top", HEX_PHI), ("bottom", -HEX_PHI)):
        fid = face_ids(face)
        phis = np.full(HEX_N, phi_h)
        pos[fid] = _cyl(zr[:, 1], phis, zr[:, 0])
        p = np.deg2rad(phi_h)
        e_phi = np.array([-np.sin(p), np.cos(p), 0.0])
        nrm[fid] = e_phi if phi_h > 0 else -e_phi
        area[fid] = np.pi * PMT_RADIUS**2
    return _readonly(pos), _readonly(nrm), _readonly(area)


def sensor_positions() -> np.ndarray:
    """``(4760, 3)`` sensor centres (x, y, z) in cm."""
    return _model()[0]


def sensor_normals() -> np.ndarray:
    """``(4760, 3)`` unit normals pointing from each sensor into the xenon."""
    return _model()[1]


def sensor_areas() -> np.ndarray:
    """``(4760,)`` sensitive area in cm^2 (four 5.9 mm chips per MPPC; 2-inch PMT photocathode)."""
    return _model()[2]


@cache
def face_centres() -> np.ndarray:
    """``(6, 3)`` mean sensor position of each face in :data:`FACES` order, cm."""
    pos = sensor_positions()
    return _readonly(np.stack([pos[face_ids(f)].mean(axis=0) for f in FACES]))


def phi_deg(xyz: np.ndarray) -> np.ndarray:
    """Azimuth in degrees in [0, 360) of points ``(..., 3)``; the calorimeter is around 180."""
    return np.rad2deg(np.arctan2(xyz[..., 1], xyz[..., 0])) % 360.0


def inside_xenon(xyz: np.ndarray) -> np.ndarray:
    """Whether points ``(..., 3)`` lie inside the active xenon volume bounded by the six faces."""
    r = np.hypot(xyz[..., 0], xyz[..., 1])
    z_limit = END_Z0 + (r - END_R0) * (END_DZ / END_DR)
    phi = phi_deg(xyz)
    return (r > INNER_R) & (r < OUTER_R) & (np.abs(xyz[..., 2]) < z_limit) & (phi > HEX_PHI) & (phi < 360.0 - HEX_PHI)


def xyz_to_uvw(xyz: np.ndarray) -> np.ndarray:
    """Local coordinates ``(..., 3)``: u = z, v = arc length along phi on the inner face measured
    from phi = 180 deg, w = depth beyond the inner face (all cm)."""
    r = np.hypot(xyz[..., 0], xyz[..., 1])
    v = INNER_R * np.deg2rad(phi_deg(xyz) - 180.0)
    return np.stack([xyz[..., 2], v, r - INNER_R], axis=-1)


def uvw_to_xyz(uvw: np.ndarray) -> np.ndarray:
    """The inverse of :func:`xyz_to_uvw`: ``(..., 3)`` local coordinates -> cartesian (cm)."""
    phi = np.pi + uvw[..., 1] / INNER_R
    r = INNER_R + uvw[..., 2]
    return np.stack([r * np.cos(phi), r * np.sin(phi), uvw[..., 0]], axis=-1)


FIDUCIAL_U, FIDUCIAL_V = 23.9, 67.9  # cm: the seed system's fiducial volume, |u| < 23.9, |v| < 67.9, w >= 0


def in_fiducial(uvw: np.ndarray) -> np.ndarray:
    """Whether first interactions ``(..., 3)`` in uvw lie in the fiducial volume."""
    return (np.abs(uvw[..., 0]) < FIDUCIAL_U) & (np.abs(uvw[..., 1]) < FIDUCIAL_V) & (uvw[..., 2] >= 0)


@cache
def _neighbours(radius: float, max_k: int) -> np.ndarray:
    pos = sensor_positions()
    out = np.full((N_CHANNELS, max_k), -1, dtype=np.int64)
    for face in FACES:
        fid = face_ids(face)
        k = min(max_k, len(fid) - 1)
        for start in range(0, len(fid), 512):  # 512 sensors at a time: 16 MB blocks, not 134 MB
            rows = slice(start, start + 512)
            out[fid[rows], :k] = _nearest(pos[fid[rows]], pos[fid], np.arange(len(fid))[rows], k, radius, fid)
    return _readonly(out)


def _nearest(
    a: np.ndarray, b: np.ndarray, self_index: np.ndarray, k: int, radius: float, ids: np.ndarray
) -> np.ndarray:
    """The ``k`` nearest of points ``b (m, 3)`` to each of ``a (n, 3)`` (point ``self_index[i]`` of
    ``b`` is ``a[i]`` itself and never counts), nearest first, ties by index, as ``ids`` of those
    within ``radius`` and -1 beyond -> ``(n, k)``."""
    if k == 0:
        return np.empty((len(a), 0), dtype=np.int64)
    # distances with the squares summed x, y, z in turn, as linalg.norm sums them
    d = np.zeros((len(a), len(b)))
    for c in range(3):
        step = a[:, None, c] - b[None, :, c]
        d += np.multiply(step, step, out=step)
    np.sqrt(d, out=d)
    d[np.arange(len(a)), self_index] = np.inf
    # a partial sort of a few candidates per sensor instead of a full sort of every row
    pool = np.argpartition(d, k, axis=1)[:, : k + 1]  # the k + 1 nearest, unordered
    order = np.lexsort((pool, np.take_along_axis(d, pool, axis=1)), axis=1)[:, :k]
    nearest = np.take_along_axis(pool, order, axis=1)
    # where the k-th and (k + 1)-th are equally far, the partition may have kept the wrong one
    kth = np.take_along_axis(d, nearest[:, -1:], axis=1)
    tied = np.flatnonzero((d <= kth).sum(1) > k)
    nearest[tied] = np.argsort(d[tied], axis=1, kind="stable")[:, :k]
    near = np.take_along_axis(d, nearest, axis=1) <= radius
    return np.where(near, ids[nearest], -1)


def neighbours(radius: float = 11.0, max_k: int = 8) -> np.ndarray:
    """Same-face neighbours of every sensor within ``radius`` cm (11 cm reaches the coarse outer PMTs,
    9.7-10.4 cm apart), nearest first.

    Returns ``(4760, max_k)`` channel ids, padded with -1. Used by the baselines.
    """
    return _neighbours(float(radius), int(max_k))


def summary() -> str:
    """One line per face: sensor count, id range, layout."""
    lines = []
    for face in FACES:
        fid = face_ids(face)
        layout = (
            "hex rows " + "/".join(map(str, HEX_ROW_LENGTHS))
            if face in HEX_FACES
            else ("x".join(map(str, grid_ids(face).shape)) + " grid")
        )
        if face == "outer":
            layout += " + 6x5 centre patch"
        lines.append(f"{face:>6}: {fid.size:4d} sensors, ids {id_ranges(fid)}, {layout}")
    return "\n".join(lines)


def id_ranges(ids: np.ndarray) -> str:
    """Channel ids as contiguous ranges: ``[4092..4307, 4742..4759]`` -> ``"4092-4307, 4742-4759"``."""
    ids = np.unique(ids)
    breaks = np.flatnonzero(np.diff(ids) != 1)
    starts, ends = np.r_[ids[:1], ids[breaks + 1]], np.r_[ids[breaks], ids[-1:]]
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in zip(starts, ends))
