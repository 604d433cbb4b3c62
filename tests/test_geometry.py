import numpy as np
import pytest

from xecbench import geometry as geo


def test_face_counts_and_partition():
    counts = {f: geo.face_ids(f).size for f in geo.FACES}
    assert counts == {"inner": 4092, "us": 144, "ds": 144, "outer": 234, "top": 73, "bottom": 73}
    every = np.concatenate([geo.face_ids(f) for f in geo.FACES])
    assert np.array_equal(np.sort(every), np.arange(4760))  # each id exactly once
    assert np.array_equal(np.bincount(geo.channel_face(), minlength=6), [4092, 144, 144, 234, 73, 73])


def test_unknown_face_is_named():
    with pytest.raises(ValueError, match="unknown face 'side'"):
        geo.face_ids("side")
    with pytest.raises(ValueError, match="not rectangular"):
        geo.grid_ids("top")


def test_outer_ids_run_z_fastest():
    pos = geo.sensor_positions()
    # 4092 and 4093 share a phi column and differ by one coarse z step
    assert np.isclose(geo.phi_deg(pos[4092]), geo.phi_deg(pos[4093]))
    assert np.isclose(pos[4093, 2] - pos[4092, 2], geo.OUTER_DZ)
    g = geo.grid_ids("outer")
    assert g.shape == (9, 24)
    off_patch = ~np.isin(g, geo.OUTER_PATCH_IDS)
    z = pos[g, 2]
    # along each row z is constant and rows are ordered in z (away from the centre patch)
    assert np.allclose(
        z[off_patch], (geo.OUTER_Z0 + geo.OUTER_DZ * np.arange(9)[:, None] * np.ones((1, 24)))[off_patch]
    )


def test_outer_patch_positions():
    pos = geo.sensor_positions()
    ids = geo.OUTER_PATCH_IDS
    assert ids.size == 30 and len(set(ids.ravel())) == 30
    assert np.allclose(geo.phi_deg(pos[ids[:, 0]]), 171.3 + 3.49 * np.arange(6))
    assert np.allclose(pos[ids[0], 2], [-12.4, -6.2, 0.0, 6.2, 12.4])


def test_positions_lie_on_their_surfaces():
    pos = geo.sensor_positions()
    r = np.hypot(pos[:, 0], pos[:, 1])
    assert np.allclose(r[geo.face_ids("inner")], 64.97)
    assert np.allclose(r[geo.face_ids("outer")], 106.27)
    for face, sign in (("us", -1), ("ds", 1)):
        ids = geo.face_ids(face)
        # the cone line from (r, |z|) = (69.53, 35.15) to (102.95, 46.84)
        expected_z = sign * (35.15 + (r[ids] - 69.53) * (46.84 - 35.15) / (102.95 - 69.53))
        assert np.allclose(pos[ids, 2], expected_z, atol=0.01)  # the published figures are rounded
        assert r[ids].min() == pytest.approx(69.53) and r[ids].max() == pytest.approx(102.95)
    for face, phi in (("top", 117.24), ("bottom", 360 - 117.24)):
        ids = geo.face_ids(face)
        assert np.allclose(geo.phi_deg(pos[ids]), phi)
        assert np.allclose(np.sort(np.unique(r[ids].round(3))), 68.27 + 6.91 * np.arange(6))


def test_normals_are_unit_and_point_into_the_xenon():
    pos, nrm = geo.sensor_positions(), geo.sensor_normals()
    assert np.allclose(np.linalg.norm(nrm, axis=1), 1.0)
    assert geo.inside_xenon(pos + 1.0 * nrm).all()
    assert not geo.inside_xenon(pos - 1.0 * nrm).any()
    # the middle of the xenon at each sensor's own azimuth (r = 85.6 cm, z = 0) is in front of it
    phi = np.deg2rad(np.clip(geo.phi_deg(pos), 120.0, 240.0))
    middle = np.stack([85.6 * np.cos(phi), 85.6 * np.sin(phi), np.zeros_like(phi)], 1)
    assert (np.einsum("ij,ij->i", middle - pos, nrm) > 0).all()


def test_inner_pitch_is_about_1p5_cm():
    pos = geo.sensor_positions()
    ids = np.arange(4092).reshape(93, 44)
    dz = np.linalg.norm(pos[ids[:, 1:]] - pos[ids[:, :-1]], axis=-1)
    dphi = np.linalg.norm(pos[ids[1:]] - pos[ids[:-1]], axis=-1)
    assert np.allclose(dz, 1.5098)
    assert np.allclose(dphi, 2 * 64.97 * np.sin(np.deg2rad(1.3497) / 2))  # chord, ~1.53 cm


def test_hex_graph_matches_positions():
    g = geo.hex_graph()
    pos = geo.sensor_positions()[geo.face_ids("top")]
    nbr = g.dst != g.src
    assert nbr.sum() == 366 and (~nbr).sum() == 73
    assert g.degree.max() == 6 and g.degree.min() >= 2
    # independent reference: neighbours are exactly the nodes within 8 cm in 3D
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    ref = {(i, j) for i, j in zip(*np.nonzero((d < 8.0) & (d > 0)))}
    assert set(zip(g.dst[nbr].tolist(), g.src[nbr].tolist())) == ref
    lengths = np.unique(d[g.dst[nbr], g.src[nbr]].round(2))
    assert lengths.tolist() == [6.12, 7.56]


def test_hex_graph_symmetric_with_opposite_directions():
    g = geo.hex_graph()
    edges = {(int(s), int(t)): int(k) for s, t, k in zip(g.src, g.dst, g.direction)}
    for (s, t), k in edges.items():
        if k == 0:
            assert s == t
            continue
        assert edges[(t, s)] == (k + 2) % 6 + 1  # d and d+3 are opposite
    # one direction per neighbour: the in-plane angle of each direction label is a single value
    zr = geo.hex_local_coords()
    v = zr[g.src] - zr[g.dst]
    ang = np.degrees(np.arctan2(v[:, 1], v[:, 0])) % 360
    for k in range(1, 7):
        assert np.ptp(ang[g.direction == k]) < 1e-6
    assert np.array_equal(g.table[:, 0], np.arange(73))


def test_face_centres_and_neighbours():
    c = geo.face_centres()
    assert c.shape == (6, 3)
    assert np.allclose(c[geo.FACES.index("inner")], [-52.7, 0, 0], atol=0.5)
    nb = geo.neighbours(radius=5.0, max_k=8)
    pos = geo.sensor_positions()
    face = geo.channel_face()
    for i in (0, 2000, 4100, 4400, 4600, 4700):
        js = nb[i][nb[i] >= 0]
        d = np.linalg.norm(pos[js] - pos[i], axis=1)
        assert (face[js] == face[i]).all() and (d <= 5.0).all() and np.all(np.diff(d) >= 0)
    # inner interior sensor: 8 neighbours within 5 cm include its 4 grid neighbours
    assert {1, 44}.issubset(set(nb[0].tolist()))
    assert {1999, 2001, 2000 - 44, 2000 + 44}.issubset(set(nb[2000].tolist()))
