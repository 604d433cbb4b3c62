"""FaceLayout: sensors onto face images and back, against a slow loop over cells."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xecbench import geometry as geo
from xecbench.nn import FaceLayout
from xecbench.nn.faces import cell_of_sensor


def _slow_grid(x: np.ndarray, visible: np.ndarray, face: str) -> tuple[np.ndarray, np.ndarray]:
    """Image (B, C, H, W) as the mean of each cell's visible sensors, and the empty-cell mask."""
    H, W = geo.grid_ids(face).shape
    B, _, C = x.shape
    img, empty = np.zeros((B, C, H, W)), np.ones((B, 1, H, W), dtype=bool)
    ids, cells = np.array(geo.face_ids(face)), cell_of_sensor(face)
    for b in range(B):
        for cell in range(H * W):
            members = [i for i, c in zip(ids, cells) if c == cell and visible[b, i]]
            if members:
                img[b, :, cell // W, cell % W] = x[b, members].mean(0)
                empty[b, 0, cell // W, cell % W] = False
    return img, empty


@pytest.mark.parametrize("face", geo.GRID_FACES)
def test_to_grid_and_grid_mask_equal_a_loop_over_cells(face):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, geo.N_CHANNELS, 3, generator=g, dtype=torch.float64)
    visible = torch.rand(2, geo.N_CHANNELS, generator=g) > 0.4
    if face == "outer":  # a patch cell with all its sensors hidden, one with only some
        cells = cell_of_sensor(face)
        ids = np.array(geo.face_ids(face))
        shared = [c for c in np.unique(cells) if (cells == c).sum() > 1]
        visible[0, ids[cells == shared[0]]] = False
        visible[0, ids[cells == shared[1]][0]] = False
    layout = FaceLayout().double()
    img, mask = layout.to_grid(x, visible, face)
    want_img, want_mask = _slow_grid(x.numpy(), visible.numpy(), face)
    assert img.shape == want_img.shape and mask.shape == want_mask.shape
    np.testing.assert_allclose(img.numpy(), want_img, atol=1e-12)
    np.testing.assert_array_equal(mask.numpy(), want_mask)
    np.testing.assert_array_equal(layout.grid_mask(visible, face).numpy(), want_mask)


@pytest.mark.parametrize("face", ["inner", "us", "ds"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_from_grid_returns_each_sensor_its_cell(face, channels_last):
    layout = FaceLayout()
    x = torch.randn(3, geo.N_CHANNELS, 2)
    img, _ = layout.to_grid(x, torch.ones(3, geo.N_CHANNELS, dtype=torch.bool), face)
    img = img.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    back = layout.from_grid(img, face)
    torch.testing.assert_close(back, x[:, layout.ids(face)], rtol=0, atol=0)


def test_which_faces_have_one_sensor_per_cell():
    """inner, us and ds take the gather path (one sensor per cell); the outer face's patch cells do not."""
    assert FaceLayout().one_to_one == {"inner": True, "us": True, "ds": True, "outer": False}


@pytest.mark.parametrize("face", ["inner", "us", "ds"])
def test_patch_sensors_are_the_5x5_window_of_the_face_grid(face):
    layout = FaceLayout()
    grid = geo.grid_ids(face)  # (H, W) sensor ids
    H, W = grid.shape
    window = layout.patch_sensors(face).numpy()
    assert window.shape == (H, W, 5, 5)
    for r, c in [(0, 0), (H - 1, W - 1), (H // 2, W // 3), (1, W - 2)]:
        for i in range(5):
            for j in range(5):
                rr, cc = r + i - 2, c + j - 2
                if 0 <= rr < H and 0 <= cc < W:
                    assert window[r, c, i, j] == grid[rr, cc]
                else:
                    assert window[r, c, i, j] == geo.N_CHANNELS  # the spare zero row
