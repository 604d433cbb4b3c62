from types import SimpleNamespace

import pytest

from xecbench.experiments import check_training, training_problem


def _run(step_losses, epoch_losses):
    history = [{"kind": "step", "loss": v} for v in step_losses]
    history += [{"kind": "epoch", "train_loss": v, "val_loss": v} for v in epoch_losses]
    return SimpleNamespace(history=history, run_dir="runs/x")


def test_a_run_that_learned_passes():
    run = _run([1.0, 0.8, 0.5], [0.6, 0.4])
    assert training_problem(run) is None
    check_training(run)


@pytest.mark.parametrize(
    "steps, epochs, message",
    [
        ([0.0047, 36.4, 1.2], [4.7, 0.64], "did not fall (0.0047 -> 0.64)"),  # diverged and never came back
        ([1.0, float("nan")], [0.5], "NaN/inf"),
        ([1.0, 0.5], [float("inf")], "NaN/inf"),
    ],
)
def test_a_failed_run_is_named(steps, epochs, message):
    run = _run(steps, epochs)
    assert message in training_problem(run) and "runs/x" in training_problem(run)
    with pytest.raises(AssertionError, match="runs/x"):
        check_training(run)
