"""Checkpoints: everything needed to resume exactly, written atomically.

A checkpoint is a dict: ``model`` (live weights), ``ema`` (EMA weights or None), ``optimizer``,
``scheduler``, ``scaler``, ``rng`` (python, numpy, torch, CUDA), ``epoch`` (last finished), ``step``
(optimiser steps so far), ``config`` (plain dict), ``history``. For inference, :func:`inference_weights`
returns the EMA weights when there are any.

Resuming restores the model, optimiser, scheduler and random state, so a resumed run must have the
checkpoint's config except for :data:`RESUME_MAY_CHANGE`; :func:`check_resumable` refuses the rest.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.io import DataFormatError, atomic_path
from .config import ConfigError

# keys a resumed run honours when they differ from the checkpoint's config (read afresh every epoch or step)
RESUME_MAY_CHANGE = (
    "training.epochs",
    "training.run_dir",
    "training.progress",
    "training.log_every",
    "training.checkpoint_every",
    "training.device",
    "training.grad_clip",
    "training.compile",
    "data.num_workers",
)


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """``torch.save`` to a temporary file next to ``path``, then rename: never a half-written file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise DataFormatError(f"{path} cannot be read as a checkpoint: {exc}") from exc
    if not isinstance(state, dict):
        raise DataFormatError(f"{path} is not an xecbench checkpoint: it holds a {type(state).__name__}")
    missing = {"model", "epoch", "step", "config"} - set(state)
    if missing:
        raise DataFormatError(f"{path} is not an xecbench checkpoint: missing {sorted(missing)}")
    return state


def inference_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights to use for inference: the EMA shadow when the run kept one, else the live model."""
    return state["ema"] if state.get("ema") is not None else state["model"]


def config_from_checkpoint(state: dict[str, Any]):
    """The :class:`.config.Config` a checkpoint was trained with."""
    from .config import config_from_dict

    return config_from_dict(state["config"], strict=False)


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def model_mismatch(saved: dict[str, torch.Tensor], current: dict[str, torch.Tensor]) -> str:
    """Empty when two state dicts have the same tensor names and shapes, else one phrase saying how
    they differ (counts, then a few examples)."""
    shape = [k for k in saved.keys() & current.keys() if tuple(saved[k].shape) != tuple(current[k].shape)]
    missing = sorted(current.keys() - saved.keys())
    unexpected = sorted(saved.keys() - current.keys())
    if not (shape or missing or unexpected):
        return ""
    examples = [f"{k}: {tuple(saved[k].shape)} vs {tuple(current[k].shape)}" for k in sorted(shape)[:3]]
    examples += [f"{k} missing" for k in missing[:2]] + [f"{k} unexpected" for k in unexpected[:2]]
    more = ", ..." if len(shape) + len(missing) + len(unexpected) > len(examples) else ""
    return (
        f"{len(shape)} tensors differ in shape, {len(missing)} are missing and {len(unexpected)} are unexpected "
        f"(checkpoint vs now: {', '.join(examples)}{more})"
    )


def check_resumable(
    path: str | Path, state: dict[str, Any], model_state: dict[str, torch.Tensor], config: dict[str, Any]
) -> None:
    """Refuse (:class:`.config.ConfigError`) to resume from the checkpoint ``state`` at ``path`` a run
    of another model, or one whose ``config`` (plain dict) differs in keys resume would ignore."""
    saved, now = _flat(state.get("config") or {}), _flat(config)
    changed = [k for k in now if k in saved and saved[k] != now[k]]
    scheduler = now.get("training.scheduler")
    may_change = [k for k in RESUME_MAY_CHANGE if not (k == "training.epochs" and scheduler == "onecycle")]
    ignored = [f"{k} (checkpoint {saved[k]!r}, now {now[k]!r})" for k in changed if k not in may_change]
    shapes = model_mismatch(state["model"], model_state)
    if shapes:
        differs = f"; the configs differ in {', '.join(ignored)}" if ignored else ""
        raise ConfigError(
            f"checkpoint {path} was trained with a different model: {shapes}{differs}; "
            "resume with the config it was trained with"
        )
    if ignored:
        raise ConfigError(
            f"cannot resume from {path} with a changed config: {', '.join(ignored)}; resume restores the model, "
            f"data, optimiser and scheduler, so only {', '.join(may_change)} may change (start a new run in "
            "another training.run_dir to change the rest)"
        )
    epochs, done = now.get("training.epochs"), state["epoch"]
    if isinstance(epochs, int) and epochs < done:
        raise ConfigError(
            f"training.epochs={epochs} but checkpoint {path} has already finished {done} epochs; "
            f"give training.epochs >= {done} to continue"
        )
