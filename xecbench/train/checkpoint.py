"""Checkpoints: everything needed to resume exactly, written atomically.

A checkpoint is a dict: ``model`` (live weights), ``ema`` (EMA weights or None), ``optimizer``,
``scheduler``, ``scaler``, ``rng`` (python, numpy, torch, CUDA), ``epoch`` (last finished), ``step``
(optimiser steps so far), ``config`` (plain dict), ``history``. For inference, :func:`inference_weights`
returns the EMA weights when there are any.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.io import atomic_path


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
        raise ValueError(f"{path} cannot be read as a checkpoint: {exc}") from exc
    missing = {"model", "epoch", "step", "config"} - set(state)
    if missing:
        raise ValueError(f"{path} is not an xecbench checkpoint: missing {sorted(missing)}")
    return state


def inference_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights to use for inference: the EMA shadow when the run kept one, else the live model."""
    return state["ema"] if state.get("ema") is not None else state["model"]


def config_from_checkpoint(state: dict[str, Any]):
    """The :class:`.config.Config` a checkpoint was trained with."""
    from .config import config_from_dict

    return config_from_dict(state["config"])
