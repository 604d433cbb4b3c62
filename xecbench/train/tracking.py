"""Experiment tracking: the Trainer's metrics and the run's config to TensorBoard or MLflow.

``training.log_to: tensorboard`` writes event files to ``<run_dir>/tensorboard`` (``tensorboard
--logdir runs``); ``training.log_to: mlflow`` logs to MLflow's tracking URI (``MLFLOW_TRACKING_URI``,
else a local store in the run folder: ``<run_dir>/mlflow.db`` where SQLAlchemy is installed (full
``mlflow``), the file store ``<run_dir>/mlruns`` otherwise (``mlflow-skinny``); view it with
``mlflow ui --backend-store-uri sqlite:///runs/NAME/mlflow.db``). Both are
Trainer callbacks ``cb(kind, trainer, row)``: they see exactly the rows that go to ``metrics.json``,
on the main process only, and log every number in them against the optimiser step.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

LOG_TO = ("none", "tensorboard", "mlflow")


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    skip = ("kind", "epoch", "step")
    return {k: float(v) for k, v in row.items() if k not in skip and isinstance(v, int | float) and v == v}


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as ``{"training.lr": "0.001", ...}`` (the form trackers take parameters in)."""
    out: dict[str, str] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(list(v) if isinstance(v, tuple) else v)
    return out


class TensorBoardLogger:
    """Scalars ``<kind>/<metric>`` (e.g. ``epoch/val_loss``, ``step/train_loss``) and the config as text."""

    def __init__(self, log_dir: str | Path, config: dict[str, Any] | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch's writer needs the tensorboard package
            raise ImportError(
                "training.log_to=tensorboard needs the tensorboard package: pip install tensorboard"
            ) from exc
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir))
        if config is not None:
            table = "\n".join(f"    {k} = {v}" for k, v in flat_params(config).items())
            self.writer.add_text("config", table)

    def __call__(self, kind: str, trainer, row: dict[str, Any]) -> None:
        for name, value in _numbers(row).items():
            self.writer.add_scalar(f"{kind}/{name}", value, global_step=row["step"])
        self.writer.flush()


class MLflowLogger:
    """Parameters (the flattened config) once, metrics per row, in one MLflow run per training run."""

    def __init__(self, run_dir: str | Path, config: dict[str, Any] | None = None, tracking_uri: str | None = None):
        try:
            import mlflow
        except ImportError as exc:
            raise ImportError("training.log_to=mlflow needs the mlflow package: pip install mlflow") from exc
        self.mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or local_store(run_dir))
        mlflow.set_experiment("xecbench")
        self.run = mlflow.start_run(run_name=Path(run_dir).name)
        if config is not None:
            mlflow.log_params(flat_params(config))

    def __call__(self, kind: str, trainer, row: dict[str, Any]) -> None:
        metrics = {f"{kind}/{k}": v for k, v in _numbers(row).items()}
        self.mlflow.log_metrics(metrics, step=row["step"], run_id=self.run.info.run_id)
        if kind == "epoch" and trainer.epoch >= trainer.cfg.epochs:
            self.mlflow.end_run()


def local_store(run_dir: str | Path) -> str:
    """The MLflow tracking URI of a store inside ``run_dir`` (see the module docstring)."""
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    if importlib.util.find_spec("sqlalchemy") is not None:
        return f"sqlite:///{run_dir / 'mlflow.db'}"
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow-skinny has only the file store
    return (run_dir / "mlruns").as_uri()


def tracker(log_to: str, run_dir: str | Path, config: dict[str, Any] | None = None):
    """The callback for ``training.log_to`` (``None`` for ``"none"``)."""
    if log_to == "none":
        return None
    if log_to == "tensorboard":
        return TensorBoardLogger(Path(run_dir) / "tensorboard", config)
    if log_to == "mlflow":
        return MLflowLogger(run_dir, config)
    raise ValueError(f"training.log_to must be one of {LOG_TO}, got {log_to!r}")
