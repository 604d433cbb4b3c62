"""Training: configs, the Trainer (EMA, accumulation, schedulers, AMP, exact resume), checkpoints, DDP."""

from .checkpoint import config_from_checkpoint, inference_weights, load_checkpoint, save_checkpoint
from .config import Config, ConfigError, DataConfig, ModelConfig, TrainingConfig, load_config, save_config
from .loop import NonFiniteLossError, Trainer, resolve_amp, resolve_device
from .optim import build_optimizer, build_scheduler, cosine_factor
from .run import make_trainer, run_training
from .tasks import (
    build_datasets,
    build_model,
    build_normalizer,
    build_sim_config,
    build_task,
    inpaint_task,
    load_trained,
    mae_task,
)

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "NonFiniteLossError",
    "Trainer",
    "TrainingConfig",
    "build_datasets",
    "build_model",
    "build_normalizer",
    "build_sim_config",
    "build_optimizer",
    "build_scheduler",
    "build_task",
    "config_from_checkpoint",
    "cosine_factor",
    "inference_weights",
    "inpaint_task",
    "load_checkpoint",
    "load_config",
    "load_trained",
    "mae_task",
    "make_trainer",
    "resolve_amp",
    "resolve_device",
    "run_training",
    "save_checkpoint",
    "save_config",
]
