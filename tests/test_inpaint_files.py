"""``xecbench inpaint``: ROOT files in, the same files out with the dead channels filled.

The reference for the filled values is independent of the model code: an untrained inpainter's
correction is exactly zero, so it must fill every sensor with :func:`baselines.neighbour_average` of
the sensors it may see, in raw units."""

from __future__ import annotations

import hashlib
import json

import awkward as ak
import numpy as np
import pytest
import torch
import uproot

from xecbench.baselines import neighbour_average
from xecbench.cli import main
from xecbench.data import DataFormatError, dead_channel_map, raw_invalid, simulate, write_root
from xecbench.inpaint_files import FLAG_BRANCH, IDENTITY_KEY, fill_mask, inpaint_arrays, inpaint_root, load_inpainter
from xecbench.train import build_model, load_config

N = 24


def _checkpoint(path, *sets):
    cfg = load_config(None, ["model.task=inpaint", "model.freeze_encoder=false", "training.ema_decay=null", *sets])
    torch.manual_seed(0)
    state = {"model": build_model(cfg.model).state_dict(), "ema": None, "epoch": 3, "step": 7, "config": cfg.to_dict()}
    torch.save(state, path)
    return path


def _typed(arrays: dict) -> dict:
    return {
        k: ak.type(v).content if isinstance(v, ak.Array) else ((v.dtype, v.shape[1:]) if v.ndim > 1 else v.dtype)
        for k, v in arrays.items()
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fill")
    ev = simulate(N, seed=5)
    ev["npho"][::3, 100:140] = np.nan  # more invalid sensors, flagged both ways the files do
    ev["npho"][1::3, 2000:2010] = 1e10
    write_root(d / "fixed.root", ev)
    # a file with jagged branches (npho as a variable-length array, and one of its own), times in float64
    jag = {
        "npho": ak.from_regular(ak.Array(ev["npho"]), axis=1),
        "relative_time": ev["relative_time"].astype(np.float64) + 1e-9,  # float64: must survive unrounded
        "hits": ak.Array([[float(i)] * (i % 4) for i in range(N)]),
        "energyTruth": ev["energyTruth"],
    }
    with uproot.recreate(d / "jagged.root") as f:
        t = f.mktree("tree", _typed(jag), counter_name=lambda name: "count_" + name)
        t.extend(jag)
    _checkpoint(d / "inpaint.pt")
    _checkpoint(d / "notime.pt", "model.channel_weights=[1.0,0.0]")
    return d, ev


def _tree(path):
    return uproot.open(path)["tree"]


def test_threads_and_sparse_heads_give_the_dense_model_s_values(files):
    """A model whose heads correct (random output layers): the threaded, sparse-head fill equals the
    dense model called on the whole array, and does not depend on the number of threads."""
    d, ev = files
    inpainter, _ = load_inpainter(d / "inpaint.pt")
    torch.manual_seed(1)
    for head in inpainter.model.refiner.heads.values():
        torch.nn.init.normal_(head.out.weight, std=0.2)
    fill = fill_mask(ev["npho"], "both")
    one = inpaint_arrays(inpainter, ev["npho"], ev["relative_time"], fill, batch_size=7, threads=1)
    three = inpaint_arrays(inpainter, ev["npho"], ev["relative_time"], fill, batch_size=7, threads=3)
    for a, b in zip(one, three):
        np.testing.assert_array_equal(a, b)
    inpainter.sparse = False
    with torch.no_grad():
        sensors = torch.from_numpy(np.stack([ev["npho"], ev["relative_time"]], axis=-1))
        dense = inpainter(sensors, torch.from_numpy(fill))[..., 0].numpy()
    moved = np.abs(dense[fill] - np.where(fill, ev["npho"], 0)[fill])
    assert np.nanmax(moved) > 0  # the values were filled
    np.testing.assert_allclose(one[0][fill], dense[fill], rtol=1e-4, atol=1e-2)


def test_untrained_inpainter_fills_with_the_neighbour_average(files):
    d, ev = files
    inpainter, _ = load_inpainter(d / "inpaint.pt")
    fill = fill_mask(ev["npho"], "both")
    npho, time = inpaint_arrays(inpainter, ev["npho"], ev["relative_time"], fill, batch_size=10)
    raw_n = torch.from_numpy(ev["npho"])
    visible = ~raw_invalid(raw_n) & ~torch.from_numpy(fill)
    expected, exists = neighbour_average(torch.where(visible, raw_n, 0.0), visible)
    ok = torch.from_numpy(fill) & exists
    assert ok.sum() > 36 * N  # the dead map and the invalid ones, every event
    torch.testing.assert_close(torch.from_numpy(npho)[ok], expected[ok].float(), rtol=1e-4, atol=1e-3)
    # everything not filled is the input, bit for bit (NaN included)
    np.testing.assert_array_equal(npho[~fill], ev["npho"][~fill])
    np.testing.assert_array_equal(time[~fill], ev["relative_time"][~fill])
    # times come from the visible valid times around the sensor
    raw_t = torch.from_numpy(ev["relative_time"])
    t_ok = visible & ~raw_invalid(raw_t)
    t_expected, t_exists = neighbour_average(torch.where(t_ok, raw_t, 0.0), t_ok)
    sel = torch.from_numpy(fill) & t_exists
    torch.testing.assert_close(torch.from_numpy(time)[sel], t_expected[sel].float(), rtol=1e-4, atol=1e-3)


def test_fill_modes_choose_the_sensors():
    npho = np.ones((2, 4760), np.float32)
    npho[0, 5] = np.nan
    npho[1, 9] = 2e10
    invalid = fill_mask(npho, "invalid")
    assert np.flatnonzero(invalid[0]).tolist() == [5] and np.flatnonzero(invalid[1]).tolist() == [9]
    dead = fill_mask(npho, "dead", [3, 4000])
    assert np.flatnonzero(dead[0]).tolist() == [3, 4000] == np.flatnonzero(dead[1]).tolist()
    both = fill_mask(npho, "both")
    assert set(np.flatnonzero(both[0])) == {5, *dead_channel_map().tolist()}
    with pytest.raises(ValueError, match="fill must be one of"):
        fill_mask(npho, "all")
    with pytest.raises(ValueError, match="0..4759"):
        fill_mask(npho, "dead", [4760])


@pytest.mark.parametrize("name", ["fixed.root", "jagged.root"])
def test_every_other_branch_is_copied_bit_for_bit(files, tmp_path, name):
    d, ev = files
    (written,) = inpaint_root(d / name, tmp_path, d / "inpaint.pt", fill="both", step_size=7, progress=False)
    assert written == tmp_path / name
    src, out = _tree(d / name), _tree(written)
    # same branches and types (fixed-size stays fixed, jagged stays jagged with its counter), plus the flag
    assert {k: b.typename for k, b in src.items()} == {k: b.typename for k, b in out.items() if k != FLAG_BRANCH}
    assert out[FLAG_BRANCH].typename == "bool[4760]"
    a, b = src.arrays(library="np"), out.arrays(library="np")
    for key in src.keys():
        if key in ("npho", "relative_time"):
            continue
        for x, y in zip(a[key], b[key]):
            assert np.asarray(x).dtype == np.asarray(y).dtype
            np.testing.assert_array_equal(x, y)  # bit for bit, NaN where NaN
    flag = np.stack(b[FLAG_BRANCH])
    np.testing.assert_array_equal(flag, fill_mask(ev["npho"], "both"))
    npho_in, npho_out = np.stack(a["npho"]), np.stack(b["npho"])
    np.testing.assert_array_equal(npho_out[~flag], npho_in[~flag])
    assert np.isfinite(npho_out[flag]).all()
    time_in, time_out = np.stack(a["relative_time"]), np.stack(b["relative_time"])
    np.testing.assert_array_equal(time_out[~flag], time_in[~flag])
    # the checkpoint's identity travels with the file
    ident = json.loads(str(uproot.open(written)[IDENTITY_KEY]))
    assert ident["sha256"] == hashlib.sha256((d / "inpaint.pt").read_bytes()).hexdigest()
    assert (ident["epoch"], ident["step"], ident["fill"], ident["time_filled"]) == (3, 7, "both", True)
    assert ident["dead_channels"] == dead_channel_map().tolist()


def test_chunking_does_not_change_the_output(files, tmp_path):
    d, _ = files
    one = inpaint_root(d / "fixed.root", tmp_path / "a.root", d / "inpaint.pt", step_size=1000, progress=False)[0]
    many = inpaint_root(
        d / "fixed.root", tmp_path / "b.root", d / "inpaint.pt", step_size=5, batch_size=3, progress=False
    )[0]
    np.testing.assert_array_equal(_tree(one)["npho"].array(library="np"), _tree(many)["npho"].array(library="np"))


def test_several_files_into_one_file_in_order(files, tmp_path):
    d, ev = files
    write_root(d / "second.root", simulate(5, seed=9))
    (out,) = inpaint_root(
        [d / "fixed.root", d / "second.root"], tmp_path / "all.root", d / "inpaint.pt", progress=False
    )
    t = _tree(out)
    assert t.num_entries == N + 5
    np.testing.assert_array_equal(t["event"].array(library="np"), np.r_[ev["event"], simulate(5, seed=9)["event"]])
    assert json.loads(str(uproot.open(out)[IDENTITY_KEY]))["inputs"] == [str(d / "fixed.root"), str(d / "second.root")]
    with pytest.raises(DataFormatError, match="branches differ"):
        inpaint_root([d / "fixed.root", d / "jagged.root"], tmp_path / "mixed.root", d / "inpaint.pt", progress=False)
    assert not (tmp_path / "mixed.root").exists()
    assert not list(tmp_path.glob(".*tmp*"))  # the failed write left nothing behind


def test_a_model_without_a_time_loss_keeps_the_times(files, tmp_path):
    d, ev = files
    (out,) = inpaint_root(d / "fixed.root", tmp_path, d / "notime.pt", fill="both", progress=False)
    np.testing.assert_array_equal(np.stack(_tree(out)["relative_time"].array(library="np")), ev["relative_time"])
    assert json.loads(str(uproot.open(out)[IDENTITY_KEY]))["time_filled"] is False


def test_cli_inpaint_and_its_errors(files, tmp_path, capsys):
    d, _ = files
    out = tmp_path / "cli.root"
    main(["inpaint", str(d / "fixed.root"), "--checkpoint", str(d / "inpaint.pt"), "--out", str(out), "--quiet"])
    assert f"wrote {out}" in capsys.readouterr().out
    assert _tree(out).num_entries == N

    def fails(argv, message):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert message in capsys.readouterr().err

    ck = ["--checkpoint", str(d / "inpaint.pt")]
    fails(["inpaint", str(d / "fixed.root"), *ck, "--out", str(d / "fixed.root")], "is also an input")
    fails(["inpaint", str(d / "fixed.root"), *ck, "--out", str(tmp_path), "--npho-branch", "nph"], "no branch 'nph'")
    fails(["inpaint", str(tmp_path / "nope.root"), *ck, "--out", str(tmp_path)], "nope.root not found")
    fails(["inpaint", str(out), *ck, "--out", str(tmp_path / "again")], "already has a branch 'inpainted'")
    fails(["inpaint", str(d / "fixed.root"), *ck, "--out", str(tmp_path), "--dead-channels", "x.txt"], "--fill dead")
    ev = simulate(2, seed=1)
    with uproot.recreate(tmp_path / "empty.root") as f:  # a tree with the right branches and no entries
        f.mktree("tree", {k: (v.dtype, v.shape[1:]) for k, v in ev.items() if k in ("npho", "relative_time")})
    fails(["inpaint", str(tmp_path / "empty.root"), *ck, "--out", str(tmp_path / "e.root")], "has no events")
    assert not (tmp_path / "e.root").exists()
    reg = load_config(None, ["model.task=regress", "model.freeze_encoder=false"])
    state = {"model": build_model(reg.model).state_dict(), "ema": None, "epoch": 1, "step": 1, "config": reg.to_dict()}
    torch.save(state, tmp_path / "regress.pt")
    fails(
        ["inpaint", str(d / "fixed.root"), "--checkpoint", str(tmp_path / "regress.pt"), "--out", str(tmp_path)],
        "holds a regress model",
    )


@pytest.mark.parametrize("task", ["inpaint", "mae"])
def test_traced_dense_part_gives_the_eager_model_s_bits(task):
    """RawInpainter traces the model's dense part (the encoder; for an MAE the decoders too) at its
    first CPU call. On other events and other batch sizes, from several threads, the values are the
    eager model's bit for bit. Weights loaded in place afterwards reach the trace, and the trace is
    no part of the state dict. Every weight random, so the tokens change the filled values."""
    from xecbench.nn.deploy import RawInpainter
    from xecbench.train import build_normalizer

    cfg = load_config(None, [f"model.task={task}", "model.freeze_encoder=false"])
    torch.manual_seed(2)
    model = build_model(cfg.model).eval()

    def randomise():
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.1)

    randomise()
    normalizer = build_normalizer(cfg.data)
    eager = RawInpainter(model, normalizer, trace=False)
    traced = RawInpainter(model, normalizer)
    ev = simulate(30, seed=11)
    fill = fill_mask(ev["npho"], "both")
    fill[::4, 300:700] = True  # more to fill in some events: other shapes in the refiner
    with torch.inference_mode():  # the first call, the one traced: 5 events
        sensors = torch.from_numpy(np.stack([ev["npho"][:5], ev["relative_time"][:5]], axis=-1))
        traced(sensors, torch.from_numpy(fill[:5]))
    assert len(traced._traces) == 1
    first = next(iter(traced._traces.values()))
    for _ in range(2):
        want = inpaint_arrays(eager, ev["npho"], ev["relative_time"], fill, batch_size=9, threads=1)
        got = inpaint_arrays(traced, ev["npho"], ev["relative_time"], fill, batch_size=9, threads=2)
        assert not np.array_equal(want[0][fill], ev["npho"][fill])  # the model filled something
        for a, b in zip(want, got):
            np.testing.assert_array_equal(a, b)
        randomise()  # new weights, in place: the same trace must follow them
    # most sensors to fill, as in MAE training: the eager encoder still runs the trace's operators
    heavy = np.random.default_rng(0).random(fill.shape) < 0.6
    want = inpaint_arrays(eager, ev["npho"], ev["relative_time"], heavy, batch_size=9, threads=1)
    got = inpaint_arrays(traced, ev["npho"], ev["relative_time"], heavy, batch_size=9, threads=2)
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)
    assert list(traced._traces.values()) == [first]
    assert traced.state_dict().keys() == eager.state_dict().keys()
