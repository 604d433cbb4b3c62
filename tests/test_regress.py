import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xecbench import geometry as geo
from xecbench.data import EventDataset, SimConfig
from xecbench.eval import ClassicalReco, energy_in_bins, regression_metrics
from xecbench.nn import XECMAE, SensorMask
from xecbench.nn.regress import XECRegressor, truth_of
from xecbench.reco import corrected_time, light_centroid, uvw_to_xyz


def test_metrics_against_hand_computed_cases():
    truth = {
        "energy": torch.tensor([[50.0], [40.0], [20.0]]),
        "uvw": torch.zeros(3, 3),
        "direction": torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0]]),
        "time": torch.tensor([[1.0], [2.0], [3.0]]),
    }
    pred = {
        "energy": torch.tensor([[55.0], [40.0], [19.0]]),  # relative residuals 0.1, 0, -0.05
        "uvw": torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0], [0.0, 2.0, 0.0]]),  # distances 5, 1, 2
        "direction": torch.tensor([[0.0, 2.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),  # 90, 45, 0 deg
        "time": torch.tensor([[1.010], [1.990], [3.0]]),  # +10, -10, 0 ps
    }
    rows = regression_metrics(pred, truth)
    e = np.array([0.1, 0.0, -0.05])
    assert rows["energy rel."]["bias"] == pytest.approx(e.mean())
    lo, hi = np.percentile(e, [15.865, 84.135])
    assert rows["energy rel."]["width68"] == pytest.approx((hi - lo) / 2)
    assert rows["u [cm]"]["bias"] == pytest.approx(1.0) and rows["v [cm]"]["bias"] == pytest.approx(2.0)
    assert rows["uvw 3D [cm]"]["bias"] == pytest.approx(8 / 3)
    assert rows["uvw 3D [cm]"]["width68"] == pytest.approx(np.quantile([5.0, 1.0, 2.0], 0.68))
    assert rows["angle [deg]"]["bias"] == pytest.approx(45.0, abs=1e-6)
    assert rows["angle [deg]"]["width68"] == pytest.approx(np.quantile([90.0, 45.0, 0.0], 0.68))
    assert rows["time [ps]"]["bias"] == pytest.approx(0.0, abs=1e-3)
    assert rows["time [ps]"]["n"] == 3


def test_energy_in_bins():
    truth = np.array([10.0, 12.0, 30.0, 34.0])
    pred = np.array([11.0, 12.0, 27.0, 34.0])
    rows = energy_in_bins(pred, truth, [0, 20, 40])
    assert [r["n"] for r in rows] == [2, 2]
    assert rows[0]["bias"] == pytest.approx(0.05) and rows[1]["bias"] == pytest.approx(-0.05)


def test_uvw_round_trip_and_fiducial():
    rng = np.random.default_rng(0)
    uvw = np.stack([rng.uniform(-30, 30, 50), rng.uniform(-80, 80, 50), rng.uniform(-2, 30, 50)], 1)
    assert np.allclose(geo.xyz_to_uvw(geo.uvw_to_xyz(uvw)), uvw, atol=1e-9)
    assert np.allclose(uvw_to_xyz(torch.tensor(uvw)).numpy(), geo.uvw_to_xyz(uvw), atol=1e-9)
    inside = geo.in_fiducial(uvw)
    ref = [abs(u) < 23.9 and abs(v) < 67.9 and w >= 0 for u, v, w in uvw]
    assert inside.tolist() == ref


def test_light_centroid_is_the_weighted_mean_of_the_brightest():
    npho = torch.zeros(1, 4760, dtype=torch.float64)
    inner = geo.face_ids("inner")
    chosen, weights = inner[[100, 101, 145]], [300.0, 100.0, 200.0]
    npho[0, chosen] = torch.tensor(weights, dtype=torch.float64)
    npho[0, torch.as_tensor(np.array(geo.face_ids("outer")[:5]))] = 1e4  # bright PMTs elsewhere do not count
    uv = geo.xyz_to_uvw(geo.sensor_positions()[chosen])[:, :2]
    ref = (uv * np.array(weights)[:, None]).sum(0) / sum(weights)
    assert np.allclose(light_centroid(npho, top_k=3)[0].numpy(), ref)


def test_corrected_time_recovers_a_known_emission_time():
    xyz = torch.tensor([[-70.0, 5.0, 3.0]], dtype=torch.float64)
    pos = torch.tensor(geo.sensor_positions(), dtype=torch.float64)
    t0 = 2.345
    time = t0 + (pos - xyz).norm(dim=-1)[None] / geo.LXE_LIGHT_SPEED
    npho = torch.rand(1, 4760, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 100
    tv = torch.rand(1, 4760, generator=torch.Generator().manual_seed(1)) < 0.1
    assert corrected_time(npho, time, tv, xyz).item() == pytest.approx(t0)
    assert math.isnan(corrected_time(npho, time, torch.zeros_like(tv), xyz).item())


def test_classical_reco_is_calibrated():
    cfg = SimConfig(spectrum="flat")
    calib = EventDataset.from_simulation(256, seed=5, config=cfg)
    test = EventDataset.from_simulation(256, seed=6, config=cfg)
    pred = ClassicalReco.fit(calib).predict(test)
    truth = {t: truth_of(test.tensors, t) for t in ("energy", "uvw", "direction", "time")}
    rows = regression_metrics(pred, truth)
    assert abs(rows["energy rel."]["bias"]) < 0.02 and rows["energy rel."]["width68"] < 0.1
    assert abs(rows["u [cm]"]["bias"]) < 1.0 and abs(rows["v [cm]"]["bias"]) < 1.0
    assert abs(rows["w [cm]"]["bias"]) < 1.0 and abs(rows["time [ps]"]["bias"]) < 20
    assert rows["angle [deg]"]["width68"] < 5.0


def _regressor(loss="smooth_l1", targets=("energy", "uvw", "direction", "time")):
    torch.manual_seed(0)
    return XECRegressor(XECMAE().encoder, targets=targets, loss=loss)


def _no_hidden(b):
    return SensorMask(b["valid"], b["time_valid"], torch.zeros_like(b["valid"]))


def test_an_untrained_regressor_is_the_classical_reconstruction_and_the_loss_by_hand():
    data = EventDataset.from_simulation(32, seed=1, config=SimConfig(spectrum="flat"))
    model = _regressor()
    model.calibrate(data)
    # the targets' scale is the spread of the training truth
    e = data.tensors["energyTruth"].double()
    assert model.centre_energy.item() == pytest.approx(e.mean().item(), rel=1e-6)
    assert model.scale_energy.item() == pytest.approx(e.std(unbiased=False).item(), rel=1e-5)
    b = data[0:32]
    truth = {t: truth_of(b, t) for t in model.targets}
    out = model(b["x"], _no_hidden(b), truth)
    ref = ClassicalReco.fit(data).predict(data)  # float64, computed apart
    for t in model.targets:
        assert torch.allclose(out.pred[t].double(), ref[t], rtol=1e-4, atol=1e-3), t
    # the loss: smooth L1 between the standardised prediction and truth, summed over targets
    total = 0.0
    for t in model.targets:
        centre, scale = getattr(model, f"centre_{t}"), getattr(model, f"scale_{t}")
        mu = (ref[t].float() - centre) / scale
        want = F.smooth_l1_loss(mu, (truth[t] - centre) / scale).item()
        assert out.loss_per_target[t].item() == pytest.approx(want, rel=1e-3, abs=1e-6), t
        total += want
    assert out.loss.item() == pytest.approx(total, rel=1e-3)
    assert torch.allclose(out.pred["direction"].norm(dim=-1), torch.ones(32), atol=1e-5)


def test_training_moves_the_heads_and_the_encoder():
    data = EventDataset.from_simulation(16, seed=1, config=SimConfig(spectrum="flat"))
    model = _regressor()
    model.calibrate(data)
    b = data[0:16]
    truth = {t: truth_of(b, t) for t in model.targets}
    model(b["x"], _no_hidden(b), truth).loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()  # the zero output layers move first
    model.zero_grad()
    model(b["x"], _no_hidden(b), truth).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.heads.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_gaussian_nll_predicts_a_positive_sigma_and_learns():
    data = EventDataset.from_simulation(16, seed=1, config=SimConfig(spectrum="flat"))
    model = _regressor("gaussian_nll", ("energy",))
    model.calibrate(data)
    b = data[0:16]
    truth = {"energy": truth_of(b, "energy")}
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(20):
        out = model(b["x"], _no_hidden(b), truth)
        first = first if first is not None else out.loss.item()
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert (out.sigma["energy"] > 0).all() and out.loss.item() < first


def test_bad_targets_are_named():
    with pytest.raises(ValueError, match="energy.*got \\['mass'\\]"):
        XECRegressor(XECMAE().encoder, targets=("mass",))
    with pytest.raises(ValueError, match="2 target weights for 1 targets"):
        XECRegressor(XECMAE().encoder, targets=("energy",), weights=(1.0, 2.0))


def test_train_and_evaluate_a_regressor_from_the_command_line(tmp_path, capsys, uproot_reads):
    import json

    from xecbench.cli import main
    from xecbench.experiments import CONFIGS

    run = tmp_path / "reg"
    sets = [
        "data.n_train=48",
        "data.n_val=16",
        "training.epochs=1",
        "training.batch_size=16",
        "data.fiducial=true",
        f"training.run_dir={run}",
        "training.progress=false",
    ]
    main(["train", str(CONFIGS / "regress_tiny.yaml"), *[w for s in sets for w in ("--set", s)]])
    last = [r for r in json.loads((run / "metrics.json").read_text()) if r["kind"] == "epoch"][-1]
    for key in ("val_energy_res68", "val_uvw_dist68_cm", "val_angle68_deg", "val_time_res68_ps", "val_loss_uvw"):
        assert math.isfinite(last[key]), key
    capsys.readouterr()
    main(["evaluate", str(run / "checkpoint.pt"), "--events", "64", "--out", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert "model   classical" in out and "uvw 3D [cm]" in out and "energy resolution (68 % width) in bins" in out
    result = json.loads((tmp_path / "r.json").read_text())
    assert set(result["metrics"]) == {"model", "classical"}
    # data.fiducial: only events inside the fiducial volume were evaluated
    n = result["metrics"]["model"]["u [cm]"]["n"]
    from xecbench.data import simulate

    uvw = simulate(64, seed=2024, config=SimConfig(spectrum="flat"))["uvwTruth"]
    assert n == int(geo.in_fiducial(uvw).sum()) < 64
    # the same 64 events as the first of a file: --events reads those and no others, same result
    from xecbench.data import write_root

    events = simulate(100, seed=2024, config=SimConfig(spectrum="flat"))
    assert np.array_equal(events["uvwTruth"][:64], uvw)
    data = write_root(tmp_path / "eval.root", events)
    asked = uproot_reads
    args = ["evaluate", str(run / "checkpoint.pt"), "--data", str(data), "--events", "64"]
    main([*args, "--out", str(tmp_path / "f.json")])
    assert asked == [(0, 64)]
    assert json.loads((tmp_path / "f.json").read_text())["metrics"] == result["metrics"]
