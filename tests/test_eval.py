import math

import numpy as np
import pytest
import torch

from xecbench import geometry as geo
from xecbench.baselines import estimate_source, neighbour_sums, npho_estimates
from xecbench.eval import metrics_by_face, neighbour_average, residual_stats, solid_angle_estimate, solid_angles


def test_neighbour_average_on_a_flat_and_a_linear_event():
    flat = torch.full((1, 4760), 100.0, dtype=torch.float64)
    usable = torch.ones(1, 4760, dtype=torch.bool)
    usable[0, [2000, 2001, 4600]] = False
    est, ok = neighbour_average(flat, usable)
    assert ok.all() and torch.allclose(est, flat)
    # a field linear in z on the inner face: an interior sensor's 8 neighbours are symmetric in z
    z = torch.tensor(geo.sensor_positions()[:, 2])[None]
    est, _ = neighbour_average(3.0 * z + 50.0, usable, radius=2.2, max_k=8)
    i = 2010  # row 45, column 30: interior, all neighbours usable
    assert est[0, i].item() == pytest.approx(3.0 * z[0, i].item() + 50.0, abs=1e-9)


def test_estimates_at_a_subset_of_sensors_equal_the_full_ones_there():
    """``sensors=`` (inference computes the estimates only where the heads look) gives the full
    computation's values bit for bit at those sensors, across faces and at face edges."""
    g = torch.Generator().manual_seed(3)
    npho = torch.rand(3, 4760, generator=g) * 500.0
    usable = torch.rand(3, 4760, generator=g) > 0.2
    sensors = torch.tensor([0, 43, 2010, 4091, 4092, 4300, 4500, 4600, 4700, 4759, 4742])
    full = npho_estimates(npho, usable)
    part = npho_estimates(npho, usable, sensors=sensors)
    for f, p in zip(full, part):
        assert p.shape == (3, len(sensors)) and torch.equal(f[:, sensors], p)
    full_t, has_t = neighbour_average(npho, usable)
    part_t, part_has = neighbour_average(npho, usable, sensors=sensors)
    assert torch.equal(full_t[:, sensors], part_t) and torch.equal(has_t[:, sensors], part_has)


def test_estimates_sum_in_the_widest_dtype_of_their_inputs():
    """A float64 shower position with float32 counts: the sums run in float64, as if the counts were
    float64 (the neighbour sums hold the counts and the solid angles side by side), at every sensor
    and at a subset; values with no quantity give an empty sum."""
    g = torch.Generator().manual_seed(5)
    npho = torch.rand(2, 4760, generator=g) * 300.0
    usable = torch.rand(2, 4760, generator=g) > 0.25
    source = estimate_source(npho, usable).double()
    sensors = torch.tensor([7, 2010, 4300, 4700])
    for at in (None, sensors):
        got = npho_estimates(npho, usable, source, sensors=at)
        want = npho_estimates(npho.double(), usable, source, sensors=at)
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and torch.equal(a, b)
    assert neighbour_sums(npho[..., None][..., :0]).shape == (2, 4760, 0)
    assert neighbour_sums(npho[..., None][..., :0], sensors=sensors).shape == (2, 4, 0)


def test_neighbour_average_skips_hidden_and_reports_missing():
    v = torch.arange(4760, dtype=torch.float64)[None]
    usable = torch.ones(1, 4760, dtype=torch.bool)
    usable[0, 1] = False  # sensor 0's neighbours at radius 1.6 cm are 1 (hidden) and 44
    est, ok = neighbour_average(v, usable, radius=1.6, max_k=4)
    assert est[0, 0].item() == pytest.approx(44.0)
    usable[0, 44] = False
    est, ok = neighbour_average(v, usable, radius=1.6, max_k=4)
    assert not ok[0, 0] and est[0, 0].item() == 0.0


def test_neighbour_estimates_match_a_loop_over_the_neighbour_lists():
    """The vectorised gathers against a plain loop over geometry.neighbours, with NaN and the raw
    invalid marker at unusable sensors (they must not leak into any estimate)."""
    g = torch.Generator().manual_seed(1)
    npho = torch.rand(2, 4760, generator=g, dtype=torch.float64) * 1000.0
    usable = torch.rand(2, 4760, generator=g) > 0.3
    npho[~usable] = float("nan")
    npho[0, ~usable[0]] = 1e10
    source = torch.tensor([[-75.0, 5.0, 3.0], [-70.0, -20.0, -10.0]], dtype=torch.float64)
    omega = solid_angles(source)
    average, by_angle, has = npho_estimates(npho, usable, source)
    nb_avg, nb_has = neighbour_average(npho, usable)
    table = geo.neighbours(11.0, 8)
    for b in range(2):
        for i in list(range(0, 4760, 37)) + [4742, 4759]:
            js = [j for j in table[i] if j >= 0 and usable[b, j]]
            if not js:
                assert not has[b, i] and not nb_has[b, i] and average[b, i] == 0.0
                continue
            light, seen = sum(npho[b, j].item() for j in js), sum(omega[b, j].item() for j in js)
            assert average[b, i].item() == pytest.approx(light / len(js), rel=1e-12)
            assert nb_avg[b, i].item() == pytest.approx(light / len(js), rel=1e-12)
            expected = omega[b, i].item() * light / seen if seen > 0 else light / len(js)
            assert by_angle[b, i].item() == pytest.approx(expected, rel=1e-12)


def test_solid_angle_estimate_is_exact_for_a_point_source():
    source = torch.tensor([[-75.0, 5.0, 3.0]], dtype=torch.float64)
    npho = 1e6 * solid_angles(source)  # light exactly proportional to the solid angle
    usable = torch.ones(1, 4760, dtype=torch.bool)
    hidden = torch.tensor([2000, 2050, 2100, 4200, 4650])
    usable[0, hidden] = False
    est, ok = solid_angle_estimate(npho, usable, source=source)
    assert torch.allclose(est[0, hidden], npho[0, hidden], rtol=1e-9)
    avg, _ = neighbour_average(npho, usable)
    assert (avg[0, hidden] - npho[0, hidden]).abs().sum() > 1.0  # the plain average is not exact


def test_solid_angle_formula():
    pos = geo.sensor_positions()[0]
    nrm = geo.sensor_normals()[0]
    src = torch.tensor(pos + 10.0 * nrm)[None]  # 10 cm straight in front of sensor 0
    om = solid_angles(src)
    assert om[0, 0].item() == pytest.approx(geo.sensor_areas()[0] / 100.0, rel=1e-9)


def test_residual_stats_by_hand():
    s = residual_stats(np.array([1.0, -1.0, 2.0, 0.0]))
    assert s["n"] == 4 and s["mae"] == 1.0 and s["bias"] == 0.5
    assert s["rmse"] == pytest.approx(math.sqrt(1.5))
    g = residual_stats(np.random.default_rng(0).normal(0.0, 2.0, 200_000))
    assert g["width68"] == pytest.approx(2.0, rel=0.01)
    assert math.isnan(residual_stats(np.array([]))["mae"])


def test_metrics_by_face_selects_scored_sensors():
    pred = torch.zeros(1, 4760)
    truth = torch.zeros(1, 4760)
    truth[0, geo.face_ids("top")] = 2.0
    scored = torch.zeros(1, 4760, dtype=torch.bool)
    scored[0, geo.face_ids("top")[:10]] = True
    scored[0, :5] = True
    m = metrics_by_face(pred, truth, scored)
    assert m["top"]["n"] == 10 and m["top"]["bias"] == -2.0
    assert m["inner"]["n"] == 5 and m["inner"]["mae"] == 0.0
    assert m["all"]["n"] == 15 and m["outer"]["n"] == 0


def test_oracle_row_and_gap_closed_by_hand():
    from xecbench.data import EventDataset, simulate
    from xecbench.eval import compare_inpainting
    from xecbench.nn import XECMAE, XECInpainter

    torch.manual_seed(0)
    model = XECInpainter(XECMAE().encoder, freeze_encoder=False)
    data = EventDataset.from_simulation(16, seed=3)
    result = compare_inpainting(model, data, mask_ratio=0.1, seed=1)
    table = result["normalised"]
    assert set(table) == {"model", "neighbour_average", "solid_angle", "oracle"}
    # the oracle is the floor: below both baselines
    for face in ("inner", "all"):
        assert table["oracle"][face]["rmse"] < min(table[m][face]["rmse"] for m in ("neighbour_average", "solid_angle"))
    nb, m, fl = (table[k]["all"]["rmse"] ** 2 for k in ("neighbour_average", "model", "oracle"))
    assert result["gap_closed"]["all"] == pytest.approx((nb - m) / (nb - fl))
    # per-event MSE by a loop over the events: the same masks (one batch, the same generator) cut
    # the flat residuals into each event's run
    from xecbench.nn import SensorMask, random_hidden

    b = data[0:16]
    masks = SensorMask(b["valid"], b["time_valid"], random_hidden(b["valid"], 0.1, torch.Generator().manual_seed(1)))
    counts = masks.scored.sum(1).tolist()
    flat = result["residuals_normalised"]["model"]
    assert len(flat) == sum(counts)
    starts = np.cumsum([0, *counts])
    ref = [float(np.mean(flat[starts[i] : starts[i + 1]] ** 2)) for i in range(16)]
    assert result["event_mse_normalised"]["model"] == pytest.approx(ref, rel=1e-9)
    # data without the expected counts: no oracle row, no gap
    events = {k: v for k, v in simulate(8, seed=3).items() if k != "nphoExpected"}
    plain = compare_inpainting(model, EventDataset(events), mask_ratio=0.1, seed=1)
    assert "oracle" not in plain["normalised"] and plain["gap_closed"] == {}


def test_format_table_shows_a_dash_where_nothing_was_scored():
    from xecbench.eval import format_table

    table = {"model": {"inner": {"rmse": 0.0123}, "top": {"rmse": float("nan")}}}
    lines = format_table(table, "rmse").splitlines()
    assert lines[1].split() == ["model", "0.0123", "-"]


def test_neighbour_sums_with_and_without_gradients_agree():
    """neighbour_sums gathers into a reused buffer without gradients, out of place with them; the
    gradient of the sum of all sums is, per sensor, how many sensors count it as a neighbour."""
    from xecbench.baselines import _table, neighbour_sums

    v = torch.randn(2, geo.N_CHANNELS, 3, dtype=torch.float64, requires_grad=True)
    with_grad = neighbour_sums(v)
    with torch.no_grad():
        without = neighbour_sums(v)
    torch.testing.assert_close(with_grad, without, rtol=0, atol=1e-12)
    with_grad.sum().backward()
    table = _table(11.0, 8, torch.device("cpu"))
    counted = torch.bincount(table.flatten(), minlength=geo.N_CHANNELS + 1)[: geo.N_CHANNELS].double()
    torch.testing.assert_close(v.grad, counted[None, :, None].expand_as(v), rtol=0, atol=0)
