"""Build everything a config describes and train it: the entry point of ``xecbench train``."""

from __future__ import annotations

from pathlib import Path

from .config import Config, save_config
from .distributed import init_distributed, shutdown
from .loop import Callback, Trainer, resolve_device, seed_everything
from .tasks import build_datasets, build_model, build_normalizer, build_task
from .tracking import tracker


def make_trainer(cfg: Config, callbacks: list[Callback] | None = None) -> Trainer:
    """Model, task, data and trainer for ``cfg`` (joins a torchrun process group if there is one)."""
    dist = init_distributed(str(resolve_device(cfg.training.device)))
    train, val = build_datasets(cfg)
    seed_everything(cfg.training.seed)  # the initial weights depend on the seed, nothing else
    model = build_model(cfg.model, build_normalizer(cfg.data))
    if cfg.model.task == "regress":  # classical start and standardisation from the training set (saved)
        model.calibrate(train)
    callbacks = list(callbacks or [])
    if dist.is_main and cfg.training.log_to != "none":
        callbacks.append(tracker(cfg.training.log_to, cfg.training.run_dir, cfg.to_dict()))
    return Trainer(model, build_task(cfg.model), train, val, cfg.training, callbacks, cfg, dist)


def run_training(cfg: Config, resume: str | Path | None = None, callbacks: list[Callback] | None = None) -> Trainer:
    """Train as configured; the run directory gets ``config.yaml``, metrics and ``checkpoint.pt``.
    ``config.yaml`` is written once the run has started (after a resume's checkpoint loaded)."""
    if resume is not None and not Path(resume).is_file():  # before the data are built
        raise FileNotFoundError(f"checkpoint {resume} not found")
    trainer = make_trainer(cfg, callbacks)
    if resume is not None:
        trainer.load(resume)
    if trainer.dist.is_main:
        save_config(cfg, Path(cfg.training.run_dir) / "config.yaml")
    trainer.fit()
    if trainer.dist.enabled:  # only after success: a failed rank must not wait at the barrier
        shutdown()
    return trainer
