"""``training.log_to``: the rows of metrics.json reach TensorBoard (read back from its event files) and
MLflow (read back from a local store)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from xecbench.train import load_config, run_training
from xecbench.train.tracking import flat_params, local_store, tracker


def _cfg(tmp_path, log_to: str):
    return load_config(
        "mae_tiny",
        [
            "training.epochs=2",
            "data.n_train=32",
            "data.n_val=16",
            "training.batch_size=16",
            "training.log_every=1",
            "training.progress=false",
            f"training.run_dir={tmp_path / 'run'}",
            f"training.log_to={log_to}",
        ],
    )


def _numbers(history, kind):
    return [(r["step"], r) for r in history if r["kind"] == kind]


def test_tensorboard_gets_every_logged_number(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = run_training(_cfg(tmp_path, "tensorboard"))
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    for kind in ("step", "epoch"):
        for step, row in _numbers(trainer.history, kind):
            for key in ("train_loss", "lr", "val_loss", "val_ema_loss") if kind == "epoch" else ("loss", "lr"):
                tag = f"{kind}/{key}"
                assert tag in scalars, (tag, scalars)
                logged = {e.step: e.value for e in acc.Scalars(tag)}
                assert logged[step] == pytest.approx(row[key], rel=1e-6)  # float32 in the event file
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert 'training.log_to = "tensorboard"' in text and 'model.preset = "tiny"' in text


def test_no_tracking_by_default_and_unknown_values_refused(tmp_path):
    assert tracker("none", tmp_path) is None
    assert load_config(None).training.log_to == "none"
    with pytest.raises(ValueError, match="tensorboard"):
        load_config(None, ["training.log_to=wandb"])


def test_flat_params():
    assert flat_params({"a": {"b": 1, "c": (1.0, 2.0)}, "d": None}) == {"a.b": "1", "a.c": "[1.0, 2.0]", "d": "null"}


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed (pip install mlflow)")
def test_mlflow_gets_params_and_metrics_in_a_local_store(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    trainer = run_training(_cfg(tmp_path, "mlflow"))
    mlflow.set_tracking_uri(local_store(tmp_path / "run"))
    client = mlflow.tracking.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("xecbench").experiment_id])
    assert run.data.params["training.lr"] == json.dumps(trainer.cfg.lr)
    history = client.get_metric_history(run.info.run_id, "epoch/val_loss")
    expected = [(step, row["val_loss"]) for step, row in _numbers(trainer.history, "epoch")]
    assert [(m.step, pytest.approx(m.value)) for m in history] == expected
    assert run.info.status == "FINISHED"
