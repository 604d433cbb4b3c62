"""What a training step computes, per task, and how a config becomes a model and data sets.

A *task* is a callable ``task(model, batch) -> (loss, loss_per_face)``; the :class:`.loop.Trainer`
calls it on every micro-batch. Masks are drawn from the global torch RNG, so a resumed run that
restores the RNG state draws the same masks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data import EventDataset, Normalizer, SimConfig, load_events, simulate
from ..geometry import FACES, N_CHANNELS
from ..nn import XECMAE, MAEConfig, SensorMask, XECInpainter, encoder_config, random_hidden_by_face
from .checkpoint import config_from_checkpoint, inference_weights, load_checkpoint, model_mismatch
from .config import Config, ConfigError, DataConfig, ModelConfig

Task = Callable[[nn.Module, dict], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def mae_task(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Hide sensors at the MAE's ratio and unit, reconstruct, score the hidden valid ones."""
    mae = getattr(model, "module", model)  # the model inside a DistributedDataParallel wrapper
    out = model(batch["x"], mae.draw_masks(batch["valid"], batch["time_valid"]))
    return out.loss, out.loss_per_face


def inpaint_task(mask_ratio: float, pmt_mask_ratio: float | None = None) -> Task:
    """Hide ``mask_ratio`` of each event's valid sensors (``pmt_mask_ratio`` on the PMT faces, when
    given); the model fills those and the dead ones and is scored on the hidden valid ones."""
    ratios = {f: mask_ratio if f == "inner" or pmt_mask_ratio is None else pmt_mask_ratio for f in FACES}
    capacity = math.ceil(max(ratios.values()) * N_CHANNELS) + 64  # the hidden fit; dead ones may overflow

    def task(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        masks = SensorMask.of(batch, random_hidden_by_face(batch["valid"], ratios))
        out = model(batch["x"], masks, capacity=capacity)
        return out.loss, out.loss_per_face

    return task


def build_model(mcfg: ModelConfig, normalizer: Normalizer | None = None) -> nn.Module:
    """The model a config's model section describes, given the data's ``normalizer`` (the refiner
    heads of both the MAE and the inpainter make their classical estimates on raw photon counts)."""
    overrides = {"posenc": mcfg.posenc, "hex_op": mcfg.hex_op}
    if mcfg.token_dim is not None:
        overrides["token_dim"] = mcfg.token_dim
    enc = encoder_config(mcfg.preset, **overrides)
    mae = XECMAE(
        MAEConfig(
            encoder=enc,
            mask_ratio=mcfg.mask_ratio,
            loss=mcfg.loss,
            channel_weights=mcfg.channel_weights,
            mask_unit=mcfg.mask_unit,
            head_width=mcfg.head_width,
        ),
        normalizer,
    )
    if mcfg.task == "mae":
        return mae
    if mcfg.init_from:
        state = load_checkpoint(mcfg.init_from)
        weights = inference_weights(state)
        problem = model_mismatch(weights, mae.state_dict())
        if problem:
            raise ConfigError(f"model.init_from={mcfg.init_from} is not a checkpoint of this MAE: {problem}")
        trained_with = build_normalizer(config_from_checkpoint(state).data)
        if normalizer is not None and trained_with != normalizer:
            raise ConfigError(
                f"model.init_from={mcfg.init_from} was trained on data normalised as {trained_with}, this run's "
                f"data section gives {normalizer}: set the data.npho_* and data.time_* keys as in that run"
            )
        mae.load_state_dict(weights)
    return XECInpainter(
        mae.encoder,
        head_width=mcfg.head_width,
        freeze_encoder=mcfg.freeze_encoder,
        loss=mcfg.loss,
        channel_weights=mcfg.channel_weights,
        normalizer=normalizer,
    )


def build_task(mcfg: ModelConfig) -> Task:
    return mae_task if mcfg.task == "mae" else inpaint_task(mcfg.inpaint_mask_ratio, mcfg.inpaint_pmt_mask_ratio)


def build_normalizer(d: DataConfig) -> Normalizer:
    """The normalisation a run's data section describes (also what ``evaluate`` must reuse)."""
    return Normalizer(d.npho_scheme, d.npho_scale, d.npho_scale2, d.time_scale, d.time_shift)


def build_sim_config(d: DataConfig) -> SimConfig:
    """The simulation settings a run's data section describes."""
    return SimConfig(spectrum=d.spectrum, random_dead_fraction=d.random_dead_fraction)


def build_datasets(cfg: Config) -> tuple[Dataset, Dataset]:
    """Training and validation sets from ``cfg.data``: simulated (validation from another seed) or a
    file (validation from ``val_source``, else the last ``n_val`` events of ``source``). A training
    set without a single valid sensor is refused (it would train on nothing, silently)."""
    train, val = _datasets(cfg)
    if not bool(train.tensors["valid"].any()):
        raise ConfigError(f"data.source {cfg.data.source}: no event has a valid sensor (every npho is invalid)")
    return train, val


def _datasets(cfg: Config) -> tuple[EventDataset, EventDataset]:
    d = cfg.data
    norm = build_normalizer(d)
    if d.source == "simulate":
        sim = build_sim_config(d)
        train = simulate(d.n_train, seed=d.seed, config=sim)
        val = simulate(d.n_val, seed=d.seed + 1_000_003, config=sim)
        return EventDataset(train, norm), EventDataset(val, norm)
    events = load_events(d.source)
    if d.val_source:
        val = load_events(d.val_source)
    else:
        n = len(events["npho"])
        if n < 2:
            raise ConfigError(f"data.source {d.source} has {n} events; need at least 2 to split off validation")
        n_val = min(d.n_val, n // 2)
        val = {k: v[n - n_val :] for k, v in events.items()}
        events = {k: v[: n - n_val] for k, v in events.items()}
    train = {k: v[: d.n_train] for k, v in events.items()}
    return EventDataset(train, norm), EventDataset(val, norm)
