"""What a training step computes, per task, and how a config becomes a model and data sets.

A *task* is a callable ``task(model, batch) -> (loss, loss_per_face)``; the :class:`.loop.Trainer`
calls it on every micro-batch. Masks are drawn from the global torch RNG, so a resumed run that
restores the RNG state draws the same masks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..data import EventDataset, Normalizer, SimConfig, count_events, load_events, simulate
from ..geometry import FACES, N_CHANNELS, in_fiducial
from ..nn import XECMAE, MAEConfig, SensorMask, XECInpainter, encoder_config, random_hidden_by_face
from ..nn.regress import XECRegressor, truth_of
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


class RegressTask:
    """Regression: the encoder sees every valid sensor (nothing hidden); the loss is the weighted sum
    of the targets' losses. :meth:`summary` adds the resolutions to the Trainer's validation."""

    def __call__(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        reg = getattr(model, "module", model)
        masks = SensorMask(batch["valid"], batch["time_valid"], torch.zeros_like(batch["valid"]))
        out = model(batch["x"], masks, {t: truth_of(batch, t) for t in reg.targets})
        return out.loss, out.loss_per_target

    @torch.no_grad()
    def summary(self, model: nn.Module, data: Dataset) -> dict[str, float]:
        """The headline resolutions on ``data`` (68 % widths; see :mod:`xecbench.eval.resolution`)."""
        from ..eval.regress import predict_targets
        from ..eval.resolution import regression_metrics

        reg = getattr(model, "module", model)
        pred, truth = predict_targets(reg, data)
        rows = regression_metrics(pred, truth)
        keys = {
            "energy rel.": "energy_res68",
            "uvw 3D [cm]": "uvw_dist68_cm",
            "angle [deg]": "angle68_deg",
            "time [ps]": "time_res68_ps",
        }
        return {name: rows[row]["width68"] for row, name in keys.items() if row in rows}


def build_model(mcfg: ModelConfig, normalizer: Normalizer | None = None) -> nn.Module:
    """The model a config's model section describes, given the data's ``normalizer`` (the refiner
    heads of both the MAE and the inpainter make their classical estimates on raw photon counts)."""
    overrides = {"posenc": mcfg.posenc, "hex_op": mcfg.hex_op}
    if mcfg.token_dim is not None:
        overrides["token_dim"] = mcfg.token_dim
    enc = encoder_config(mcfg.preset, **overrides)

    def mae_with(head_width: int) -> XECMAE:
        cfg = MAEConfig(enc, mcfg.mask_ratio, mcfg.loss, mcfg.channel_weights, mcfg.mask_unit, head_width=head_width)
        return XECMAE(cfg, normalizer)

    if mcfg.task == "mae" or not mcfg.init_from:
        mae = mae_with(mcfg.head_width)
        if mcfg.task == "mae":
            return mae
    else:
        state = load_checkpoint(mcfg.init_from)
        weights = inference_weights(state)
        # only the encoder is used: the MAE's decoder is built as the checkpoint's own config says
        mae = mae_with(config_from_checkpoint(state).model.head_width)
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
    if mcfg.task == "regress":
        return XECRegressor(
            mae.encoder,
            targets=mcfg.targets,
            loss=mcfg.regress_loss,
            weights=mcfg.target_weights,
            freeze_encoder=mcfg.freeze_encoder,
            hidden=mcfg.regress_hidden,
            normalizer=normalizer,
        )
    return XECInpainter(
        mae.encoder,
        head_width=mcfg.head_width,
        freeze_encoder=mcfg.freeze_encoder,
        loss=mcfg.loss,
        channel_weights=mcfg.channel_weights,
        normalizer=normalizer,
    )


def build_task(mcfg: ModelConfig) -> Task:
    if mcfg.task == "regress":
        return RegressTask()
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
    if cfg.model.task == "regress":
        from ..nn.regress import TARGETS

        for name, ds in (("data.source", train), ("validation data", val)):
            if len(ds) == 0:
                raise ConfigError(f"{name}: no events left after data.fiducial")
            missing = [TARGETS[t][1] for t in cfg.model.targets if TARGETS[t][1] not in ds.tensors]
            if missing:
                raise ConfigError(
                    f"{name} ({cfg.data.source}) lacks the truth branch {missing[0]} that model.targets "
                    f"{list(cfg.model.targets)} needs"
                )
    return train, val


def fiducial(events: dict[str, np.ndarray], source: str = "data") -> dict[str, np.ndarray]:
    """The events whose first interaction (``uvwTruth``) lies in the fiducial volume."""
    if "uvwTruth" not in events:
        raise ConfigError(f"data.fiducial needs the truth branch uvwTruth, which {source} does not have")
    keep = in_fiducial(events["uvwTruth"])
    return {k: v[keep] for k, v in events.items()}


def _datasets(cfg: Config) -> tuple[EventDataset, EventDataset]:
    train, val = _event_dicts(cfg)
    if cfg.data.fiducial:
        train, val = fiducial(train, cfg.data.source), fiducial(val, cfg.data.val_source or cfg.data.source)
    norm = build_normalizer(cfg.data)
    return EventDataset(train, norm), EventDataset(val, norm)


def _event_dicts(cfg: Config) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    d = cfg.data
    if d.source == "simulate":
        sim = build_sim_config(d)
        return simulate(d.n_train, seed=d.seed, config=sim), simulate(d.n_val, seed=d.seed + 1_000_003, config=sim)
    # only the events a run uses are read: the first n_train (before the validation tail) and the
    # validation events, not a whole file of millions. Training never needs the per-sensor truth
    # (nphoExpected, as large as npho); the validation set keeps it for the Poisson floor.
    if d.val_source:
        return load_events(d.source, entry_stop=d.n_train, sensor_truth=False), load_events(d.val_source)
    n = count_events(d.source)
    if n < 2:
        raise ConfigError(f"data.source {d.source} has {n} events; need at least 2 to split off validation")
    n_val = min(d.n_val, n // 2)
    train = load_events(d.source, entry_stop=min(d.n_train, n - n_val), sensor_truth=False)
    return train, load_events(d.source, entry_start=n - n_val)


def load_trained(path: str, weights: str | None = None, state: dict | None = None) -> tuple[nn.Module, Config, str]:
    """The model of a checkpoint, ready for inference: ``(model in eval mode, its config, which weights)``.

    ``weights``: ``"ema"``, ``"live"`` or ``None`` (the EMA shadow when the run kept one, else live).
    ``state``: the checkpoint when the caller has already read it. The model is rebuilt from the
    checkpoint's own config (``init_from`` is not followed: the checkpoint holds every weight)."""
    from dataclasses import replace

    state = load_checkpoint(path) if state is None else state
    cfg = config_from_checkpoint(state)
    has_ema = state.get("ema") is not None
    weights = weights or ("ema" if has_ema else "live")
    if weights not in ("ema", "live"):
        raise ValueError(f"weights must be 'ema', 'live' or None, got {weights!r}")
    if weights == "ema" and not has_ema:
        raise ConfigError(f"--weights ema: {path} has no EMA weights (training.ema_decay was null); use live")
    model = build_model(replace(cfg.model, init_from=None), build_normalizer(cfg.data))
    model.load_state_dict(state["ema"] if weights == "ema" else state["model"])
    label = f"EMA (decay {cfg.training.ema_decay})" if weights == "ema" else "live"
    return model.eval(), cfg, f"the {label} weights of {path} (epoch {state['epoch']}, step {state['step']})"
