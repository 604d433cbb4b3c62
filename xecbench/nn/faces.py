"""Sensors <-> face tensors: the bridge between the flat ``(B, 4760, C)`` layout and the networks.

Grid faces become images ``(B, C, H, W)``: every sensor sits in one cell. inner, us and ds map one
sensor to one cell. The outer face uses its 9 x 24 coarse grid; each of the 30 centre-patch sensors
goes to the coarse cell nearest to it, so a patch cell averages 2-3 sensors on the way in and hands
its prediction to each of them on the way out. Hex faces stay node lists ``(B, 73, C)``.

Masks follow the package convention: True = masked or dead (not seen by the encoder).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from .. import geometry as geo


@cache
def cell_of_sensor(face: str) -> np.ndarray:
    """For a grid face: the flat cell index (row-major in ``geometry.grid_ids(face)``) of each of its
    sensors, in ``geometry.face_ids(face)`` order."""
    ids = geo.face_ids(face)
    grid = geo.grid_ids(face)
    lookup = np.full(geo.N_CHANNELS, -1, dtype=np.int64)
    lookup[grid.ravel()] = np.arange(grid.size)
    cells = lookup[ids]
    if face == "outer":
        # patch sensors off the coarse grid: nearest coarse cell centre in (z, phi)
        off = cells < 0
        pos = geo.sensor_positions()
        zr, pc = np.divmod(np.arange(grid.size), grid.shape[1])
        cz = geo.OUTER_Z0 + geo.OUTER_DZ * zr
        cphi = geo.OUTER_PHI0 + geo.OUTER_DPHI * pc
        sz = pos[ids[off], 2]
        sphi = geo.phi_deg(pos[ids[off]])
        d = ((sz[:, None] - cz) / geo.OUTER_DZ) ** 2 + ((sphi[:, None] - cphi) / geo.OUTER_DPHI) ** 2
        cells[off] = d.argmin(1)
    return cells


class FaceLayout(torch.nn.Module):
    """Index buffers that scatter ``(B, 4760, C)`` onto each face and gather back (no loops over
    events or sensors, no host synchronisation)."""

    def __init__(self) -> None:
        super().__init__()
        for face in geo.FACES:
            self.register_buffer(f"ids_{face}", torch.as_tensor(np.array(geo.face_ids(face))), persistent=False)
        # plain ints and bools, so torch.compile never traces into the numpy geometry
        self.shapes: dict[str, tuple[int, int]] = {
            f: tuple(int(n) for n in geo.grid_ids(f).shape) for f in geo.GRID_FACES
        }
        self.one_to_one: dict[str, bool] = {}
        for face in geo.GRID_FACES:
            cell = cell_of_sensor(face)
            self.register_buffer(f"cell_{face}", torch.as_tensor(cell), persistent=False)
            # inner, us and ds: one sensor per cell, so an image is a permutation of the sensors
            # (a gather, no sums or counts); the outer face's patch cells average several
            H, W = self.shapes[face]
            self.one_to_one[face] = bool(np.array_equal(np.sort(cell), np.arange(H * W)))
            if self.one_to_one[face]:
                order = np.argsort(cell)  # position within the face of each cell's sensor
                sensor_of_cell = np.array(geo.face_ids(face))[order]
                self.register_buffer(f"sensor_of_cell_{face}", torch.as_tensor(sensor_of_cell), persistent=False)
                # for each cell, the sensor ids of its 5x5 neighbourhood; N_CHANNELS (a spare row) off the face
                pos = np.pad(sensor_of_cell.reshape(H, W), 2, constant_values=geo.N_CHANNELS)
                win = np.lib.stride_tricks.sliding_window_view(pos, (5, 5))  # (H, W, 5, 5)
                self.register_buffer(f"patch_{face}", torch.as_tensor(np.ascontiguousarray(win)), persistent=False)

    def ids(self, face: str) -> torch.Tensor:
        return getattr(self, f"ids_{face}")

    def cell_of(self, face: str) -> torch.Tensor:
        """``(n_face,)``: the flat cell index of each of the face's sensors (face-id order)."""
        return getattr(self, f"cell_{face}")

    def patch_sensors(self, face: str) -> torch.Tensor:
        """One-sensor-per-cell faces: ``(H, W, 5, 5)``, the channel ids of the sensors in the 5x5
        window around each cell; ``N_CHANNELS`` (4760) off the face."""
        return getattr(self, f"patch_{face}")

    def grid_shape(self, face: str) -> tuple[int, int]:
        return self.shapes[face]

    def to_grid(self, x: torch.Tensor, visible: torch.Tensor, face: str) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``(B, 4760, C)``, visible ``(B, 4760)`` bool -> image ``(B, C, H, W)`` (mean over the
        visible sensors of each cell, 0 where none) and cell mask ``(B, 1, H, W)`` (True = no visible
        sensor). The image is a channels-last view (strides of ``(B, H, W, C)``), the layout the
        networks run on."""
        H, W = self.grid_shape(face)
        B, _, C = x.shape
        # (compiled graphs take the general path: torch 2.13's inductor miscompiles the gather's mask
        # once it is padded, and fuses the sums and counts anyway)
        if self.one_to_one[face] and not torch.compiler.is_compiling():
            ids = getattr(self, f"sensor_of_cell_{face}")  # (H * W,) in row-major cell order
            v = visible.index_select(1, ids)  # (B, H * W)
            img = x.index_select(1, ids) * v[..., None].to(x.dtype)  # (B, H * W, C)
            mask = ~v
        else:
            ids, cell = self.ids(face), self.cell_of(face)
            # index_select: several times faster than x[:, ids] on CPU
            v = visible.index_select(1, ids).to(x.dtype)  # (B, n)
            xs = x.index_select(1, ids) * v[..., None]  # (B, n, C)
            total = x.new_zeros(B, H * W, C).index_add_(1, cell, xs)
            count = x.new_zeros(B, H * W).index_add_(1, cell, v)
            img = total / count.clamp(min=1.0)[..., None]
            mask = count == 0
        return img.view(B, H, W, C).permute(0, 3, 1, 2), mask.view(B, 1, H, W)

    def grid_mask(self, visible: torch.Tensor, face: str) -> torch.Tensor:
        """The cell mask of :meth:`to_grid` alone: ``(B, 1, H, W)``, True = no visible sensor."""
        H, W = self.grid_shape(face)
        B = visible.shape[0]
        if self.one_to_one[face]:
            return ~visible.index_select(1, getattr(self, f"sensor_of_cell_{face}")).view(B, 1, H, W)
        count = visible.new_zeros(B, H * W, dtype=torch.int32)
        count.index_add_(1, self.cell_of(face), visible.index_select(1, self.ids(face)).to(torch.int32))
        return (count == 0).view(B, 1, H, W)

    def from_grid(self, img: torch.Tensor, face: str) -> torch.Tensor:
        """Image ``(B, C, H, W)`` -> per-sensor values ``(B, n_face, C)`` in face-id order."""
        B, C = img.shape[:2]
        # a view for a channels-last image (what the networks return), a copy otherwise
        cells = img.permute(0, 2, 3, 1).reshape(B, img.shape[2] * img.shape[3], C)
        return cells.index_select(1, self.cell_of(face))

    def to_nodes(self, x: torch.Tensor, visible: torch.Tensor, face: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Hex face: ``(B, 73, C)`` features zeroed where hidden, and mask ``(B, 73)`` (True = hidden)."""
        ids = self.ids(face)
        vis = visible.index_select(1, ids)
        return x.index_select(1, ids) * vis[..., None].to(x.dtype), ~vis

    def scatter(self, per_face: dict[str, torch.Tensor]) -> torch.Tensor:
        """``{face: (B, n_face, C)}`` for all six faces -> ``(B, 4760, C)`` in channel order."""
        first = next(iter(per_face.values()))
        out = first.new_zeros(first.shape[0], geo.N_CHANNELS, first.shape[-1])
        for face, v in per_face.items():
            out.index_copy_(1, self.ids(face), v.to(out.dtype))
        return out
