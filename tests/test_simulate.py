import numpy as np
import pytest

from xecbench import geometry as geo
from xecbench.data import INVALID, SimConfig, dead_channel_map, simulate

C_LXE = 29.9792458 / 1.61  # cm/ns


def test_same_seed_same_events_and_chunking_does_not_matter(events):
    again = simulate(300, seed=11)
    for k in events:
        assert np.array_equal(events[k], again[k]), k
    part = simulate(20, seed=11, start=250)  # crosses the 256-event block boundary
    for k in events:
        assert np.array_equal(part[k], events[k][250:270]), k
    other = simulate(5, seed=12)
    assert not np.array_equal(other["npho"], events["npho"][:5])


def test_output_form(events):
    assert events["npho"].shape == (300, 4760) and events["npho"].dtype == np.float32
    assert events["relative_time"].shape == (300, 4760)
    for k in ("xyzTruth", "uvwTruth", "emiVec", "xyzVTX"):
        assert events[k].shape == (300, 3)
    assert events["emiAng"].shape == (300, 2)
    assert np.array_equal(events["event"], np.arange(300))
    assert np.allclose(events["energyTruth"], 52.8)


def test_npho_are_non_negative_integers(events):
    n = events["npho"]
    valid = n < 9e9
    assert (n[valid] >= 0).all() and np.array_equal(n[valid], np.round(n[valid]))


def test_dead_channels_are_invalid_like_real_files(events):
    dead = dead_channel_map()
    assert 20 <= dead.size <= 60
    assert (events["npho"][:, dead] == INVALID).all() and (events["relative_time"][:, dead] == INVALID).all()
    alive = np.setdiff1d(np.arange(4760), dead)
    assert (events["npho"][:, alive] < 9e9).all()
    rnd = simulate(64, seed=1, config=SimConfig(random_dead_fraction=0.05, dead_channels=None))
    frac = (rnd["npho"] > 9e9).mean()
    assert 0.04 < frac < 0.06


def test_few_per_cent_of_sensors_have_a_valid_time(events):
    t_valid = events["relative_time"] < 9e9
    assert 0.01 < t_valid.mean() < 0.10
    n = events["npho"]
    assert (n[t_valid] >= 100).all() and not t_valid[(n < 100)].any()


def test_total_light_is_linear_in_energy():
    # same seed: same kinematics, only the light scales (and the Poisson draws)
    totals = []
    for e in (20.0, 40.0, 60.0):
        ev = simulate(256, seed=3, config=SimConfig(energy=e, dead_channels=None))
        totals.append(ev["npho"].sum(1).mean())
    totals = np.array(totals)
    assert totals / totals[0] == pytest.approx([1.0, 2.0, 3.0], rel=0.01)


def test_nearest_sensor_to_the_interaction_sees_the_most_light(events):
    pos = geo.sensor_positions()
    npho = np.where(events["npho"] > 9e9, np.nan, events["npho"])
    d = np.linalg.norm(pos[None] - events["xyzTruth"][:, None], axis=-1)  # (E, 4760)
    d = np.where(np.isnan(npho), np.inf, d)
    order = np.argsort(d, axis=1)
    by_rank = np.take_along_axis(npho, order, axis=1).mean(0)  # mean npho of the k-th nearest sensor
    assert by_rank[0] > by_rank[1:50].max() * 0.9  # the nearest is (about) the brightest on average
    assert by_rank[0] > 5 * by_rank[100]
    assert by_rank[:10].mean() > by_rank[10:100].mean() > by_rank[100:1000].mean()


def test_time_grows_with_distance_at_the_speed_of_light_in_lxe(events):
    pos = geo.sensor_positions()
    t = events["relative_time"]
    ok = t < 9e9
    d = np.linalg.norm(pos[None] - events["xyzTruth"][:, None], axis=-1)
    dt = (t - events["timeTruth"][:, None])[ok]
    slope, intercept = np.polyfit(d[ok], dt, 1)
    assert slope == pytest.approx(1 / C_LXE, rel=0.05)
    assert abs(intercept) < 0.1
    # the conversion time is the gamma's flight from the vertex
    flight = np.linalg.norm(events["xyzTruth"] - events["xyzVTX"], axis=1) / 29.9792458
    assert np.allclose(events["timeTruth"], flight, rtol=1e-5)


def test_truth_is_consistent(events):
    xyz = events["xyzTruth"]
    assert geo.inside_xenon(xyz).mean() > 0.99
    depth = events["uvwTruth"][:, 2]
    assert 2.0 < depth.mean() < 6.0  # ~ the 3.56 cm interaction length, slanted entries add a little
    assert np.allclose(np.linalg.norm(events["emiVec"], axis=1), 1.0, atol=1e-5)
    assert np.allclose(events["uvwTruth"][:, 0], xyz[:, 2])


def test_flat_spectrum_and_config_errors():
    ev = simulate(256, seed=0, config=SimConfig(spectrum="flat", energy_range=(10, 60)))
    e = ev["energyTruth"]
    assert 10 <= e.min() and e.max() <= 60 and e.std() > 10
    with pytest.raises(ValueError, match="spectrum must be 'mono' or 'flat'"):
        SimConfig(spectrum="gauss")
    with pytest.raises(ValueError, match="n_events and start must be >= 0"):
        simulate(-1)
    assert simulate(0)["npho"].shape == (0, 4760)


def test_npho_is_a_poisson_draw_of_the_expected_count(events):
    mu = events["nphoExpected"]
    n = events["npho"]
    assert mu.shape == n.shape and (mu >= 0).all()
    bright = (n < 9e9) & (mu > 50)
    pull = (n[bright] - mu[bright]) / np.sqrt(mu[bright])  # Poisson: mean 0, variance 1
    assert bright.sum() > 10_000
    assert abs(pull.mean()) < 0.05 and abs(pull.var() - 1) < 0.05
    dim = (n < 9e9) & (mu < 0.5)
    assert abs(n[dim].mean() - mu[dim].mean()) < 0.05 * max(mu[dim].mean(), 0.01) + 0.01


# --- independent references (numpy float64, straight from the physics the module docstring states)


def _sensor_geometry():
    return (
        geo.sensor_positions().astype(np.float64),
        geo.sensor_normals().astype(np.float64),
        geo.sensor_areas().astype(np.float64),
    )


def test_expected_light_is_the_solid_angle_formula():
    # one light point per shower: it is the conversion point, which the truth records
    cfg = SimConfig(n_points=1, dead_channels=None)
    ev = simulate(64, seed=5, config=cfg)
    pos, nrm, area = _sensor_geometry()
    diff = ev["xyzTruth"].astype(np.float64)[:, None, :] - pos[None]  # (E, N, 3) sensor -> point
    d2 = np.maximum((diff**2).sum(-1), 1.0)
    cos_d = np.maximum((diff * nrm[None]).sum(-1), 0.0)  # d cos(incidence); 0 for light from behind
    ref = cfg.light_yield * ev["energyTruth"][:, None] * area / (4 * np.pi) * cos_d / d2**1.5
    # float32 |s|^2 + |p|^2 - 2 p.s loses ~1e-3 relative on the nearest sensors
    assert np.allclose(ev["nphoExpected"], ref, rtol=5e-3, atol=1e-3 * ref.max())
    assert np.array_equal(ev["nphoExpected"] == 0, ref == 0)


def test_times_are_flight_from_the_conversion_plus_jitter_scaled_by_npho():
    cfg = SimConfig()
    ev = simulate(256, seed=7, config=cfg)
    pos, _, _ = _sensor_geometry()
    dist = np.sqrt(np.maximum(((ev["xyzTruth"].astype(np.float64)[:, None] - pos[None]) ** 2).sum(-1), 1.0))
    t_ref = ev["timeTruth"][:, None] + dist / C_LXE
    ok = ev["relative_time"] < 9e9
    sigma = cfg.time_jitter * np.sqrt(cfg.time_threshold / ev["npho"][ok])
    pull = (ev["relative_time"][ok] - t_ref[ok]) / sigma  # standard normal if sigma is right
    assert ok.sum() > 20_000
    assert abs(pull.mean()) < 0.02 and abs(pull.std() - 1) < 0.03
    # without jitter the time is exactly the conversion time plus the light's flight
    ev0 = simulate(64, seed=7, config=SimConfig(time_jitter=0.0))
    ok0 = ev0["relative_time"] < 9e9
    assert np.array_equal(ok0, ok[:64])  # the jitter does not change the counts
    assert np.allclose(ev0["relative_time"][ok0], t_ref[:64][ok0], rtol=0, atol=2e-4)


def test_fixed_and_random_dead_channels_combine():
    ev = simulate(128, seed=2, config=SimConfig(random_dead_fraction=0.1))
    dead = dead_channel_map()
    bad_n, bad_t = ev["npho"] > 9e9, ev["relative_time"] > 9e9
    assert bad_n[:, dead].all() and bad_t[:, dead].all()
    assert (bad_t | ~bad_n).all()  # a dead channel has no time either
    alive = np.setdiff1d(np.arange(4760), dead)
    frac = bad_n[:, alive].mean(1)  # the random ones, per event
    assert 0.08 < frac.min() and frac.max() < 0.12
    assert (bad_n[0, alive] != bad_n[1, alive]).any()  # drawn anew in every event
    assert (ev["nphoExpected"][bad_n] >= 0).all()  # the truth stays defined for dead channels


def test_any_start_and_length_give_the_same_events():
    cfg = SimConfig(n_points=3, spectrum="flat", run=4)
    whole = simulate(700, seed=4, config=cfg)  # blocks 0-2, the last one partial
    parts = [simulate(n, seed=4, config=cfg, start=s) for s, n in ((0, 1), (1, 300), (301, 211), (512, 188))]
    for k in whole:
        assert np.array_equal(np.concatenate([p[k] for p in parts]), whole[k]), k
    assert (whole["run"] == 4).all() and np.array_equal(whole["event"], np.arange(700))


def test_threads_simulating_at_once_get_their_own_events():
    # each thread has its own scratch buffers; shared ones would mix the events
    from concurrent.futures import ThreadPoolExecutor

    seeds = [1, 2, 3, 4]
    alone = [simulate(256, seed=s) for s in seeds]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda s: simulate(256, seed=s), seeds))
    for a, b in zip(alone, together):
        for k in a:
            assert np.array_equal(a[k], b[k]), k
