"""``xecbench export``: the exported file computes what the eager model computes, at another batch size
than the one it was traced with."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from xecbench.cli import main
from xecbench.data import simulate
from xecbench.export import deployable, export_model, load_exported
from xecbench.nn.deploy import RawInpainter, RawRegressor
from xecbench.train import build_model, load_config

ONNX_MISSING = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]


def _checkpoint(path, *sets):
    """A checkpoint whose heads are not at their zero start (so the export has something to get wrong)."""
    cfg = load_config(None, ["model.freeze_encoder=false", "training.ema_decay=null", *sets])
    torch.manual_seed(1)
    model = build_model(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    torch.save({"model": model.state_dict(), "ema": None, "epoch": 1, "step": 1, "config": cfg.to_dict()}, path)
    return path


def _inputs(batch: int = 3):
    ev = simulate(batch, seed=4)
    sensors = torch.stack([torch.from_numpy(ev["npho"]), torch.from_numpy(ev["relative_time"])], dim=-1)
    fill = torch.zeros(batch, 4760)
    fill[:, 11::53] = 1.0
    fill[0, :200] = 1.0
    return sensors, fill


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    return {
        "inpaint": _checkpoint(d / "inpaint.pt", "model.task=inpaint"),
        "regress": _checkpoint(d / "regress.pt", "model.task=regress", "model.targets=[energy,uvw,time]"),
    }


def test_raw_inpainter_fills_only_the_asked_sensors(ckpts):
    module, info = deployable(ckpts["inpaint"])
    assert isinstance(module, RawInpainter) and info["task"] == "inpaint"
    sensors, fill = _inputs()
    with torch.no_grad():
        out = module(sensors, fill)
    keep = fill == 0
    assert torch.equal(out[keep], sensors[keep])
    assert torch.isfinite(out[fill > 0]).all() and not torch.equal(out[fill > 0], sensors[fill > 0])
    with pytest.raises(ValueError, match=r"sensors must have shape \(B, 4760, 2\)"):
        module(sensors[..., :1], fill)


@pytest.mark.parametrize("fill_time", [True, False])
def test_raw_inpainter_writes_back_what_the_dense_path_writes(ckpts, fill_time):
    """On a CPU the sparse path converts back to raw units at the filled sensors only; the dense path
    (what an export runs) converts every sensor and picks with the fill mask. From the same predictions
    both give the same values, in float32 and float64: the model's where filled (its time only where
    it fills times), the input, in its own precision, everywhere else."""
    module, _ = deployable(ckpts["inpaint"])
    inpainter = RawInpainter(module.model, module.normalizer, fill_time=fill_time)
    sensors, fill = _inputs()
    sensors[1, 5] = float("nan")  # an invalid sensor to fill
    fill[1, 5] = 1.0
    filled = fill > 0
    pred = torch.randn(*sensors.shape, generator=torch.Generator().manual_seed(0))
    for dtype in (torch.float32, torch.float64):
        s = sensors.to(dtype) + (1e-9 if dtype == torch.float64 else 0.0)  # float64 digits float32 lacks
        sparse, dense = (inpainter.raw_filled(s, filled, pred, at_fill_only=a) for a in (True, False))
        assert sparse.dtype == dtype and torch.equal(sparse.nan_to_num(-1.0), dense.nan_to_num(-1.0))
        assert torch.equal(sparse[~filled], s[~filled])
        npho, time = module.normalizer.inverse(pred)
        assert torch.equal(sparse[..., 0][filled], npho[filled].to(dtype))
        want_time = time[filled].to(dtype) if fill_time else s[..., 1][filled]
        assert torch.equal(sparse[..., 1][filled].nan_to_num(-1.0), want_time.nan_to_num(-1.0))
    with torch.no_grad():  # and the whole model, sparse heads against dense ones
        got = inpainter(sensors, fill)
        want = RawInpainter(module.model, module.normalizer, fill_time=fill_time, sparse=False)(sensors, fill)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4, equal_nan=True)


def test_torchscript_inpainter_matches_eager(ckpts, tmp_path):
    path, info = export_model(ckpts["inpaint"], tmp_path / "inpainter.pt", "torchscript")
    eager, _ = deployable(ckpts["inpaint"])
    loaded = load_exported(path)
    sensors, fill = _inputs(3)  # traced with 4 events
    with torch.no_grad():
        torch.testing.assert_close(loaded(sensors, fill), eager(sensors, fill), rtol=1e-5, atol=1e-5)
    extra = {"xecbench.json": ""}
    torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["xecbench.json"])["outputs"] == {"filled": ["B", 4760, 2]} == info["outputs"]


def test_torchscript_regressor_matches_eager(ckpts, tmp_path, capsys):
    out = tmp_path / "regressor.pt"
    main(["export", str(ckpts["regress"]), "--out", str(out)])
    assert "targets ['energy', 'uvw.u', 'uvw.v', 'uvw.w', 'time']" in capsys.readouterr().out
    eager, _ = deployable(ckpts["regress"])
    assert isinstance(eager, RawRegressor)
    sensors, _ = _inputs(5)
    with torch.no_grad():
        expected = eager(sensors)
        torch.testing.assert_close(load_exported(out)(sensors), expected, rtol=1e-5, atol=1e-5)
    assert expected.shape == (5, 5)


@pytest.mark.slow
@pytest.mark.skipif(bool(ONNX_MISSING), reason=f"ONNX export needs {ONNX_MISSING} (pip install -e '.[onnx]')")
def test_onnx_inpainter_matches_eager_through_onnxruntime(ckpts, tmp_path):
    import onnx

    path, _ = export_model(ckpts["inpaint"], tmp_path / "inpainter.onnx", "onnx")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["xecbench"])["inputs"] == {"sensors": ["B", 4760, 2], "fill": ["B", 4760]}
    eager, _ = deployable(ckpts["inpaint"])
    sensors, fill = _inputs(3)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(path)(sensors, fill), eager(sensors, fill), rtol=1e-5, atol=1e-4)
    # tracing again in the same process must not pick up what the first export cached
    again, _ = export_model(ckpts["inpaint"], tmp_path / "again.pt", "torchscript")
    with torch.no_grad():
        torch.testing.assert_close(load_exported(again)(sensors, fill), eager(sensors, fill), rtol=1e-5, atol=1e-5)


def test_export_refuses_what_it_cannot_write(ckpts, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", str(ckpts["inpaint"]), "--out", str(tmp_path / "x.pt"), "--format", "tflite"])
    assert exc.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.pt")])
    assert exc.value.code == 2 and "missing.pt not found" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
