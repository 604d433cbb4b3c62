import json
import math
import subprocess
import sys

import numpy as np
import pytest

from xecbench.cli import main
from xecbench.data import read_root, simulate, write_root


def test_info(capsys):
    main(["info"])
    out = capsys.readouterr().out
    assert "4092 sensors" in out and "hex rows 11/12/11/12/13/14" in out
    # each face's ids, as contiguous ranges (the outer face's are two)
    assert "outer:  234 sensors, ids 4092-4307, 4742-4759," in out and "us:  144 sensors, ids 4308-4451," in out
    assert "mae_tiny" in out
    assert "tiny: encoder" in out and "base: encoder" in out


def test_simulate_writes_a_readable_file(tmp_path, capsys):
    out = tmp_path / "s.root"
    main(["simulate", "50", "--out", str(out), "--seed", "4"])
    assert np.array_equal(read_root(out)["npho"], simulate(50, seed=4)["npho"])
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "5", "--out", str(tmp_path / "s.csv")])
    assert exc.value.code == 2
    assert capsys.readouterr().err == f"xecbench simulate: --out must end in .root or .npz, got {tmp_path / 's.csv'}\n"


def test_display_writes_a_png(tmp_path):
    data = tmp_path / "s.npz"
    main(["simulate", "3", "--out", str(data)])
    main(["display", str(data), "--event", "2", "--out", str(tmp_path / "e.png")])
    assert (tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG"


def test_display_reads_the_event_it_draws_and_no_other(tmp_path, monkeypatch, uproot_reads):
    import xecbench.viz

    events = simulate(40, seed=3)
    data = write_root(tmp_path / "s.root", events)
    asked, drawn = uproot_reads, {}
    real_display = xecbench.viz.event_display

    def display(values, **kwargs):
        drawn.update(values=values, **kwargs)
        return real_display(values, **kwargs)

    monkeypatch.setattr(xecbench.viz, "event_display", display)
    main(["display", str(data), "--event", "27", "--out", str(tmp_path / "e.png"), "--quantity", "time"])
    assert asked == [(27, 28)]
    assert np.array_equal(drawn["values"], events["relative_time"][27], equal_nan=True)
    assert np.array_equal(drawn["dead"], ~(events["npho"][27] <= 9e9))
    assert drawn["title"].endswith("event 27: time")
    with pytest.raises(SystemExit) as exc:
        main(["display", str(data), "--event", "40", "--out", str(tmp_path / "e.png")])
    assert exc.value.code == 2


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "xecbench.cli", "demo", "--epochs", "2", "--events", "128", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "[4/4]" in r.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 8  # 2 epochs of 128 events at batch 32
    # the MAE starts at the neighbour average (the refiner's correction is zero at first), so 8 steps
    # move its loss little: it must stay finite and not drift above where it started
    losses = [*summary["train_loss"], summary["val_loss"], summary["val_ema_loss"]]
    assert all(math.isfinite(v) for v in losses)
    assert max(summary["val_loss"], summary["train_loss"][-1]) < 1.1 * summary["train_loss"][0]
    for name in summary["figures"]:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_every_command_and_option_is_described():
    import argparse

    from xecbench.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    described = {c.dest: c.help for c in sub._choices_actions}
    assert set(described) == set(sub.choices) and all(described.values())
    for name, command in sub.choices.items():
        assert command.description, name
        for action in command._actions:
            assert action.help and action.help != argparse.SUPPRESS or action.dest == "help", (name, action.dest)
