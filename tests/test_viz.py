import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import LogNorm

from xecbench import geometry as geo
from xecbench.data import raw_invalid
from xecbench.viz import draw_face, event_display, face_panels, flat_coords


@pytest.fixture()
def event(events):
    return events["npho"][0], events["relative_time"][0]


def test_unfolded_display_draws_every_sensor(event):
    npho, _ = event
    dead = raw_invalid(npho).numpy()
    hidden = np.zeros(4760, bool)
    hidden[np.random.default_rng(0).choice(4760, 500, replace=False)] = True
    fig = event_display(npho, dead=dead, hidden=hidden, title="t")
    arts = fig.face_artists
    assert arts["inner"].main.get_array().shape == (93, 44)
    assert arts["us"].main.get_array().shape == (24, 6) and arts["ds"].main.get_array().shape == (24, 6)
    assert len(arts["top"].main.get_paths()) == 73 and len(arts["bottom"].main.get_paths()) == 73
    assert len(arts["outer"].main.get_paths()) == 234
    for face in geo.FACES:
        ids = geo.face_ids(face)
        assert len(arts[face].hidden.get_offsets()) == hidden[ids].sum()
        assert len(arts[face].dead.get_offsets()) == dead[ids].sum()
    assert isinstance(arts["inner"].main.norm, LogNorm)
    assert len(fig.axes) == 7  # six faces and a colour bar
    plt.close(fig)


def test_image_places_each_sensor_in_its_cell(event):
    npho, _ = event
    fig, ax = plt.subplots()
    art = draw_face(ax, npho, "inner")
    img = art.main.get_array()
    # cell (row, col) of the image holds sensor 44 * row + col, invalid ones masked
    assert img[5, 7] == npho[44 * 5 + 7]
    dead = np.flatnonzero(npho > 9e9)
    dead = dead[dead < 4092]
    assert np.isnan(np.asarray(img, dtype=float)[dead // 44, dead % 44]).all()
    # the image extent is in cm with the real pitch (true aspect)
    x0, x1, y0, y1 = art.main.get_extent()
    assert (x1 - x0) == pytest.approx(44 * 1.5098, rel=1e-3)
    assert abs(y1 - y0) == pytest.approx(93 * 64.97 * np.deg2rad(1.3497), rel=1e-3)
    plt.close(fig)


def test_time_uses_a_linear_scale_and_invalid_is_masked(event):
    _, time = event
    fig, ax = plt.subplots()
    art = draw_face(ax, time, "top", quantity="time")
    assert not isinstance(art.main.norm, LogNorm)
    values = art.main.get_array()
    assert np.ma.count_masked(values) == (time[geo.face_ids("top")] > 9e9).sum()
    plt.close(fig)
    with pytest.raises(ValueError, match=r"values must have shape \(4760,\)"):
        draw_face(ax, time[:10], "top")
    with pytest.raises(ValueError, match="quantity must be one of"):
        draw_face(ax, time, "top", quantity="charge")


def test_face_panels_share_one_scale(event):
    npho, _ = event
    fig = face_panels({"a": npho, "b": npho * 2}, "top")
    a, b = fig.face_artists
    assert a.main.norm is b.main.norm and a.main.norm.vmax == pytest.approx(
        np.nanmax(np.where(npho > 9e9, np.nan, npho)[geo.face_ids("top")]) * 2
    )
    plt.close(fig)


def test_flat_coordinates_keep_distances():
    xy = flat_coords("top")
    g = geo.hex_graph()
    nbr = g.src != g.dst
    d = np.linalg.norm(xy[g.src[nbr]] - xy[g.dst[nbr]], axis=1)
    assert np.unique(d.round(2)).tolist() == [6.12, 7.56]
