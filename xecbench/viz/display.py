"""Event display: each face in its own flat coordinates (cm, true aspect), and all six unfolded.

Flat coordinates of each face (x, y in cm):

* inner: x = z, y = arc length r_in (180 deg - phi), so the top face is up; drawn as a 93 x 44 image.
* us / ds: x = distance along the slanted face from its inner edge (us mirrored so the inner face is
  to its right), y = arc length at mid radius; a 24 x 6 image.
* outer: x = z, y = arc length r_out (180 deg - phi); a rectangle per PMT (coarse grid + patch).
* top / bottom: x = z, y = distance from the beam axis (the bottom panel's y axis points down, away
  from the inner face); a hexagon per PMT.

npho is drawn on a log colour scale, time on a linear one with another colour map. Invalid values
(raw > 9e9 or NaN) are drawn grey. Dead sensors get a black cross, hidden sensors a white dot.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import PatchCollection, PathCollection
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle, RegularPolygon

from .. import geometry as geo

UNFOLDED = [[".", "top", ".", "."], ["us", "inner", "ds", "outer"], [".", "bottom", ".", "."]]
CMAPS = {"npho": "viridis", "time": "plasma"}


def _arc(r: float, phi_deg: np.ndarray | float) -> np.ndarray:
    return r * np.deg2rad(180.0 - np.asarray(phi_deg))


def flat_coords(face: str) -> np.ndarray:
    """``(n_face, 2)`` flat (x, y) in cm of the face's sensors, in :func:`geometry.face_ids` order."""
    pos = geo.sensor_positions()[geo.face_ids(face)]
    phi = geo.phi_deg(pos)
    if face == "inner":
        return np.stack([pos[:, 2], _arc(geo.INNER_R, phi)], 1)
    if face == "outer":
        return np.stack([pos[:, 2], _arc(geo.OUTER_R, phi)], 1)
    if face in ("us", "ds"):
        r = np.hypot(pos[:, 0], pos[:, 1])
        s = (r - geo.END_R0) * np.hypot(geo.END_DR, geo.END_DZ) / geo.END_DR
        r_mid = geo.END_R0 + 2.5 * geo.END_DR
        return np.stack([-s if face == "us" else s, _arc(r_mid, phi)], 1)
    return geo.hex_local_coords().copy()


def _values_norm(values: np.ndarray, quantity: str, vmin: float | None, vmax: float | None) -> Normalize:
    good = values[np.isfinite(values)]
    if quantity == "npho":
        hi = vmax if vmax is not None else max(float(good.max()) if good.size else 10.0, 10.0)
        return LogNorm(vmin=vmin if vmin is not None else 1.0, vmax=hi, clip=True)
    lo = vmin if vmin is not None else (float(good.min()) if good.size else 0.0)
    hi = vmax if vmax is not None else (float(good.max()) if good.size else 1.0)
    return Normalize(vmin=lo, vmax=max(hi, lo + 1e-6))


@dataclass
class FaceArtists:
    """What :func:`draw_face` put on the axes (handy for tests and for updating a widget)."""

    main: AxesImage | PatchCollection
    dead: PathCollection | None
    hidden: PathCollection | None


def draw_face(
    ax: Axes,
    values: np.ndarray,
    face: str,
    *,
    quantity: str = "npho",
    dead: np.ndarray | None = None,
    hidden: np.ndarray | None = None,
    norm: Normalize | None = None,
    cmap: str | None = None,
    labels: bool = True,
) -> FaceArtists:
    """Draw one face of one event.

    values: ``(4760,)`` raw values (npho or time; invalid > 9e9 or NaN shown grey).
    dead, hidden: ``(4760,)`` bool (True = dead / hidden), drawn as overlays.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (geo.N_CHANNELS,):
        raise ValueError(f"draw_face: values must have shape ({geo.N_CHANNELS},), got {values.shape}")
    if quantity not in CMAPS:
        raise ValueError(f"draw_face: quantity must be one of {tuple(CMAPS)}, got {quantity!r}")
    values = np.where(values > 9e9, np.nan, values)
    ids = geo.face_ids(face)
    norm = norm or _values_norm(values[ids], quantity, None, None)
    cm = plt.get_cmap(cmap or CMAPS[quantity]).with_extremes(bad="0.75")
    xy = flat_coords(face)

    if face in ("inner", "us", "ds"):
        grid = geo.grid_ids(face)
        img = values[grid]  # inner: (phi_row, z_col); us/ds: (phi_col, radial_step)
        cell = flat_coords(face)[np.searchsorted(ids, grid)]  # (rows, cols, 2) flat coords per cell
        if cell[0, 0, 0] > cell[0, -1, 0]:  # us is mirrored: flip so x grows to the right
            img, cell = img[:, ::-1], cell[:, ::-1]
        x0, x1 = cell[0, 0, 0], cell[0, -1, 0]
        y0, y1 = cell[0, 0, 1], cell[-1, 0, 1]  # row 0 is the top of the image
        dx = (x1 - x0) / max(img.shape[1] - 1, 1) / 2
        dy = (y0 - y1) / max(img.shape[0] - 1, 1) / 2
        main = ax.imshow(
            img,
            extent=(x0 - dx, x1 + dx, y1 - dy, y0 + dy),
            origin="upper",
            norm=norm,
            cmap=cm,
            interpolation="nearest",
            aspect="equal",
        )
    else:
        if face == "outer":
            patch = np.isin(ids, geo.OUTER_PATCH_IDS)
            w = np.where(patch, geo.PATCH_DZ, geo.OUTER_DZ) * 0.95
            h = (
                np.where(
                    patch,
                    _arc(geo.OUTER_R, 0) - _arc(geo.OUTER_R, geo.PATCH_DPHI),
                    _arc(geo.OUTER_R, 0) - _arc(geo.OUTER_R, geo.OUTER_DPHI),
                )
                * 0.95
            )
            shapes = [Rectangle((x - a / 2, y - b / 2), a, b) for (x, y), a, b in zip(xy, w, h)]
        else:
            shapes = [RegularPolygon((x, y), numVertices=6, radius=geo.HEX_DZ / np.sqrt(3)) for x, y in xy]
        main = PatchCollection(shapes, cmap=cm, norm=norm, edgecolor="0.3", linewidth=0.3)
        main.set_array(np.ma.masked_invalid(values[ids]))
        ax.add_collection(main)
        ax.set_aspect("equal")
        ax.autoscale_view()
        if face == "bottom":  # drawn below the inner face: distance from the axis grows downwards
            ax.invert_yaxis()

    def overlay(mask: np.ndarray | None, **style) -> PathCollection | None:
        if mask is None:
            return None
        sel = np.asarray(mask, dtype=bool)[ids]
        return ax.scatter(xy[sel, 0], xy[sel, 1], **style)

    small = face == "inner"
    hidden_art = overlay(hidden, s=3 if small else 14, c="white", marker="o", linewidths=0)
    dead_art = overlay(dead, s=8 if small else 30, c="black", marker="x", linewidths=0.8)
    if labels:
        ax.set_title(face, fontsize=9)
        ax.tick_params(labelsize=6)
    return FaceArtists(main=main, dead=dead_art, hidden=hidden_art)


def event_display(
    values: np.ndarray,
    *,
    quantity: str = "npho",
    dead: np.ndarray | None = None,
    hidden: np.ndarray | None = None,
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    figsize: tuple[float, float] = (11, 7.5),
) -> Figure:
    """All six faces of one event unfolded around the inner face, one shared colour scale.

    values: ``(4760,)`` raw npho or time. Returns the figure; ``fig.face_artists`` maps face name
    to its :class:`FaceArtists`.
    """
    values = np.asarray(values, dtype=np.float64)
    shown = np.where(values > 9e9, np.nan, values)
    norm = _values_norm(shown, quantity, vmin, vmax)
    fig, axes = plt.subplot_mosaic(
        UNFOLDED,
        figsize=figsize,
        width_ratios=[1.2, 3, 1.2, 3],
        height_ratios=[1.1, 3, 1.1],
        layout="constrained",
    )
    arts = {f: draw_face(axes[f], values, f, quantity=quantity, dead=dead, hidden=hidden, norm=norm) for f in geo.FACES}
    axes["inner"].set_xlabel("z (cm)", fontsize=7)
    axes["inner"].set_ylabel("arc length (cm)", fontsize=7)
    label = "npho (photons)" if quantity == "npho" else "time (ns)"
    fig.colorbar(arts["inner"].main, ax=[axes["outer"]], label=label, shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.face_artists = arts  # type: ignore[attr-defined]
    return fig


def face_panels(
    panels: dict[str, np.ndarray],
    face: str,
    *,
    quantity: str = "npho",
    hidden: np.ndarray | None = None,
    dead: np.ndarray | None = None,
    figsize: tuple[float, float] | None = None,
    title: str | None = None,
) -> Figure:
    """Several versions of one face side by side with one colour scale, e.g.
    ``{"masked input": ..., "reconstruction": ..., "truth": ...}``; each value ``(4760,)`` raw."""
    ids = geo.face_ids(face)
    stacked = np.stack([np.where(np.asarray(v) > 9e9, np.nan, v)[ids] for v in panels.values()])
    norm = _values_norm(stacked.ravel(), quantity, None, None)
    n = len(panels)
    fig, axes = plt.subplots(
        1, n, figsize=figsize or (3.2 * n, 4.2 if face == "inner" else 3.2), layout="constrained", squeeze=False
    )
    arts = []
    for ax, (name, v) in zip(axes[0], panels.items()):
        arts.append(draw_face(ax, v, face, quantity=quantity, norm=norm, hidden=hidden, dead=dead))
        ax.set_title(f"{face}: {name}", fontsize=9)
    fig.colorbar(
        arts[0].main, ax=list(axes[0]), shrink=0.8, label="npho (photons)" if quantity == "npho" else "time (ns)"
    )
    if title:
        fig.suptitle(title)
    fig.face_artists = arts  # type: ignore[attr-defined]
    return fig
