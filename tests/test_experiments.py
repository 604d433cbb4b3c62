import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from xecbench.experiments import (
    check_training,
    compare_metrics,
    compare_to,
    lr_reductions,
    mean_error,
    seed_paired,
    summarise,
    training_problem,
)


def _run(step_losses, epoch_losses):
    history = [{"kind": "step", "loss": v} for v in step_losses]
    history += [{"kind": "epoch", "train_loss": v, "val_loss": v} for v in epoch_losses]
    return SimpleNamespace(history=history, run_dir="runs/x")


def test_a_run_that_learned_passes():
    run = _run([1.0, 0.8, 0.5], [0.6, 0.4])
    assert training_problem(run) is None
    check_training(run)
    # small noisy batches: the first one happened to be easy, the epochs' means still fell
    assert training_problem(_run([0.00410, 0.00452, 0.00430], [0.00431, 0.00424])) is None
    # one epoch: nothing to compare but the start
    assert training_problem(_run([0.0041, 0.0044], [0.0042])) is None


@pytest.mark.parametrize(
    "steps, epochs, message",
    [
        ([0.0047, 36.4, 1.2], [4.7, 0.64], "diverged (first step 0.0047, last epoch 0.64)"),  # partly came back
        ([1.0, float("nan")], [0.5], "NaN/inf"),
        ([1.0, 0.5], [float("inf")], "NaN/inf"),
    ],
)
def test_a_failed_run_is_named(steps, epochs, message):
    run = _run(steps, epochs)
    assert message in training_problem(run) and "runs/x" in training_problem(run)
    with pytest.raises(AssertionError, match="runs/x"):
        check_training(run)


def test_a_run_that_did_not_learn_is_usable_but_fails_the_check():
    run = _run([0.0041, 0.0044, 0.0043], [0.0044, 0.0045])  # flat: a poor result, not a broken run
    assert training_problem(run) is None
    with pytest.raises(AssertionError, match=r"runs/x: .*did not fall \(first epoch 0.0044, last epoch 0.0045\)"):
        check_training(run)


# ------------------------------------------------------------------ seeds, error bars and verdicts
def test_mean_error_by_hand():
    m = mean_error([1.0, 2.0, 4.0, float("nan")])  # NaN (a failed run) is left out
    assert m.n == 3 and m.values == (1.0, 2.0, 4.0)
    assert m.mean == pytest.approx(7 / 3)
    # sample variance ((4/3)^2 + (1/3)^2 + (5/3)^2) / 2 = 7/3; se = sqrt(7/3 / 3)
    assert m.se == pytest.approx(math.sqrt(7 / 9))
    assert str(m) == "2.33 ± 0.88"
    # the mean to the precision of its error
    assert str(mean_error([0.00409, 0.00413, 0.00417])) == "0.004130 ± 2.3e-05"
    assert str(mean_error([41.0, 43.0, 44.6])) == "42.9 ± 1"
    one = mean_error([5.0])
    assert one.mean == 5.0 and math.isnan(one.se) and one.n == 1
    assert mean_error([]).n == 0 and math.isnan(mean_error([]).mean)


def _rows():
    """Three seeds: 'fast' is 0.10 below 'ref' with a little seed noise, 'same' is ref plus noise
    of both signs, 'broken' trained in one seed only."""
    ref = {0: 1.00, 1: 1.20, 2: 0.90}
    rows = []
    for seed, r in ref.items():
        rows.append({"variant": "ref", "seed": seed, "problem": None, "loss": r, "ema": r - 0.01})
        rows.append({"variant": "fast", "seed": seed, "problem": None, "loss": r - 0.10 + 0.002 * seed, "ema": r})
        noise = (0.01, -0.02, 0.012)[seed]
        rows.append({"variant": "same", "seed": seed, "problem": None, "loss": r + noise, "ema": r})
        bad = "runs/x: a logged loss is NaN/inf" if seed else None
        rows.append({"variant": "broken", "seed": seed, "problem": bad, "loss": math.nan if seed else r, "ema": r})
    return rows


def test_summaries_and_pairs_leave_failed_runs_out():
    rows = _rows()
    s = summarise(rows, "loss")
    assert list(s) == ["ref", "fast", "same", "broken"]
    assert s["ref"].mean == pytest.approx(31 / 30) and s["ref"].n == 3
    assert s["broken"].n == 1
    a, b = seed_paired(rows, "loss", "fast", "ref")
    assert a == pytest.approx([0.90, 1.102, 0.804]) and b == [1.00, 1.20, 0.90]
    a, b = seed_paired(rows, "loss", "broken", "ref")
    assert a[0] == 1.00 and all(math.isnan(v) for v in a[1:])
    # a filter on another column, and a seed only one side has
    rows.append({"variant": "fast", "seed": 7, "problem": None, "loss": 0.5, "ema": 0.5})
    assert len(seed_paired(rows, "loss", "fast", "ref")[0]) == 3
    assert summarise(rows, "loss", seed=7) == {"fast": mean_error([0.5])}


def test_pairs_refuse_rows_a_filter_should_have_separated():
    rows = _rows() + [{"variant": "fast", "seed": 0, "problem": None, "loss": 0.3, "ema": 0.3, "n": 2}]
    for call in (lambda: seed_paired(rows, "loss", "fast", "ref"), lambda: summarise(rows, "loss")):
        with pytest.raises(ValueError, match="variant='fast' has seed 0 twice"):
            call()
    with pytest.raises(ValueError, match=r"no rows with variant='fixed' \(among \['ref', 'fast'"):
        compare_to(_rows(), "loss", "fixed")


def test_verdicts_name_the_test_and_call_only_real_differences():
    verdicts = compare_to(_rows(), "loss", "ref")
    assert list(verdicts) == ["fast", "same", "broken"]
    fast = verdicts["fast"]
    # differences -0.100, -0.098, -0.096: mean -0.098, se 0.002 / sqrt(3), t = -84.9 > 4.303
    assert fast.better == "fast" and fast.n == 3
    assert fast.t == pytest.approx(-0.098 / (0.002 / math.sqrt(3)))
    assert fast.p == pytest.approx(1 - abs(fast.t) / math.sqrt(2 + fast.t**2))  # two-sided, 2 degrees of freedom
    # decided as a family of the two tested comparisons (broken has no test): Holm's threshold 0.05 / 2
    assert "paired t-test over 3 seeds, Holm-corrected over 2 comparisons at 95 %: p = 0.00014 <= 0.025" in fast.verdict
    alone = compare_to(_rows(), "loss", "ref", correct=False)["fast"]
    assert "paired t-test over 3 seeds, 95 %: |t| = 84.87 > 4.30" in alone.verdict
    assert verdicts["same"].better is None and "within noise" in verdicts["same"].verdict
    assert verdicts["broken"].better is None and "not compared" in verdicts["broken"].verdict
    ema = compare_metrics(_rows(), "ema", "loss", ("EMA", "live"), variant="ref")
    assert ema.better == "EMA" and ema.mean == pytest.approx(-0.01)


def test_lr_reductions_count_the_cuts_that_took_effect():
    history = [{"kind": "step", "lr": v} for v in (1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4)]
    # plateau's cut after the last epoch shows in the epoch row only: it changed no step
    history += [{"kind": "epoch", "lr": 1e-3}, {"kind": "epoch", "lr": 1.25e-4}]
    assert lr_reductions(SimpleNamespace(history=history)) == 2


def test_ema_warm_step_against_the_step_by_step_decay():
    from xecbench.train.optim import ema_decay_at, ema_warm_step

    for decay in (0.0, 0.1, 0.5, 0.8, 0.85, 0.9, 0.95, 0.99, 0.999, 0.9999):
        first = next(t for t in range(1, 10**6) if ema_decay_at(t, decay) >= decay)
        assert ema_warm_step(decay) == first, decay
    for bad in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="decay must be in"):
            ema_warm_step(bad)


def test_a_run_that_stops_on_nan_is_named_and_the_others_still_train(monkeypatch, tmp_path):
    from xecbench import experiments
    from xecbench.train import NonFiniteLossError

    def fake_training(cfg):
        if cfg.training.seed == 1:
            raise NonFiniteLossError("training loss became NaN/inf at optimiser step 3 (epoch 1)")
        history = [{"kind": "step", "loss": 1.0}, {"kind": "epoch", "train_loss": 0.5, "val_loss": 0.4}]
        return SimpleNamespace(history=history, run_dir=cfg.training.run_dir)

    monkeypatch.setattr(experiments, "run_training", fake_training)
    runs = experiments.run_variants({"a": []}, run_root=tmp_path, seeds=[0, 1, 2])
    assert isinstance(runs["a"][1], experiments.FailedRun) and runs["a"][1].history == ()
    rows = experiments.variant_rows(runs)
    assert [r["problem"] is None for r in rows] == [True, False, True]
    assert "seed_1: training loss became NaN/inf at optimiser step 3" in rows[1]["problem"]
    assert "val_loss" not in rows[1] and summarise(rows, "val_loss")["a"].n == 2


def test_plot_seed_means_draws_bars_and_every_seed():
    from xecbench.viz import plot_seed_means

    live = summarise(_rows(), "loss")
    ema = summarise(_rows(), "ema")
    fig = plot_seed_means({"loss": {"live": live, "EMA": ema}, "other": {"live": live}})
    first, second = fig.axes
    assert [t.get_text() for t in first.get_xticklabels()] == ["ref", "fast", "same", "broken"]
    dots = [line for line in first.get_lines() if line.get_marker() == "."]
    assert sum(len(d.get_xdata()) for d in dots) == sum(v.n for v in live.values()) + sum(v.n for v in ema.values())
    assert first.get_legend() is not None and second.get_legend() is None
    assert np.isclose(max(y for d in dots for y in d.get_ydata()), 1.20)


@pytest.mark.slow
def test_run_variants_pairs_the_seeds_and_simulates_once(tmp_path):
    from xecbench.data import load_events, simulate
    from xecbench.experiments import run_variants, simulate_once, variant_rows

    data = simulate_once(tmp_path / "data", 8, 4, seed=3)
    assert np.array_equal(load_events(tmp_path / "data" / "train.npz")["npho"], simulate(8, seed=3)["npho"])
    common = data + ["data.n_val=4", "training.epochs=1", "training.batch_size=4", "training.progress=false"]
    same = ["training.lr=1e-3"]
    runs = run_variants({"a": same, "b": same}, common, run_root=tmp_path / "runs", seeds=[0, 1])
    assert (tmp_path / "runs" / "b" / "seed_1" / "checkpoint.pt").is_file()
    rows = variant_rows(runs)
    assert [(r["variant"], r["seed"]) for r in rows] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    by = {(r["variant"], r["seed"]): r["val_loss"] for r in rows}
    assert by[("a", 0)] == by[("b", 0)] and by[("a", 1)] == by[("b", 1)]  # one seed, one start: paired
    assert by[("a", 0)] != by[("a", 1)]
    with pytest.raises(ValueError, match="seeds is empty"):
        run_variants({"a": []}, common, seeds=[])


def test_write_result_writes_strict_json_with_null_for_non_finite_numbers(tmp_path):
    from xecbench.experiments import mean_error, write_result

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    one_seed = mean_error([0.5])  # the standard error of one value is NaN
    path = write_result(tmp_path, {"loss": np.float32(0.25), "steps": 12, "one_seed": one_seed,
                                   "curve": [1.0, float("inf")], "nested": {"x": float("nan"), "name": "a"}})
    got = json.loads(path.read_text(), parse_constant=refuse)
    assert got == {"loss": 0.25, "steps": 12, "one_seed": [0.5, None, 1, [0.5]],
                   "curve": [1.0, None], "nested": {"x": None, "name": "a"}}
