"""The one training loop: MAE pretraining and inpainting, in notebooks, from the CLI and in sweeps.

Per micro-batch: forward under autocast, ``loss * b / n`` backward, where ``b`` is the micro-batch's
number of samples and ``n`` the group's (``grad_accum_steps`` batches, or fewer for the leftover
group at the end of an epoch, whose last batch may be short too): every sample weighs the same, so
an accumulated update equals the big-batch update on the same samples. Per group: unscale, clip,
optimiser step, EMA update (decay warmed up, :func:`.optim.ema_decay_at`), scheduler step. The only
host synchronisations are at ``log_every`` optimiser steps and at epoch ends (loss values, the
non-finite checks of the loss and of the weights).

Per epoch: validation of the live and the EMA weights (Schedule-Free switched to eval mode around
it), ``ReduceLROnPlateau`` step, metrics to memory / callbacks / ``metrics.csv`` / ``metrics.json``,
and an atomic checkpoint (rank 0 only) from which :meth:`Trainer.fit` resumes exactly.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset
from tqdm.auto import tqdm

from ..data.io import atomic_path
from ..memory import keep_freed_memory
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import Config, ConfigError, TrainingConfig
from .distributed import DistInfo, current
from .optim import build_optimizer, build_scheduler, ema_decay_at

Callback = Callable[[str, "Trainer", dict[str, Any]], None]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"training.device={name!r} but CUDA is not available; use 'auto' or 'cpu'")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("training.device='mps' but this PyTorch has no MPS (Apple GPU) support; use 'auto' or 'cpu'")
    return torch.device(name)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """autocast dtype: ``auto`` = bf16 on CUDA when supported, else fp16 (with a scaler); off on CPU
    (bf16 there is slower than fp32 on CPUs without native bf16, so it is opt-in)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("training.amp='fp16' needs CUDA (it uses a gradient scaler); use 'bf16' or 'off' on CPU")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _move(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class Trainer:
    """Train ``model`` on ``train_data`` with ``task(model, batch) -> (loss, per_face)``.

    ``history`` holds one dict per logged step (``kind='step'``) and per epoch (``kind='epoch'``);
    ``callbacks`` are called as ``cb(kind, trainer, metrics)`` with the same dicts (live plots).
    """

    def __init__(
        self,
        model: nn.Module,
        task: Callable,
        train_data: Dataset,
        val_data: Dataset | None,
        cfg: TrainingConfig,
        callbacks: Iterable[Callback] = (),
        config: Config | None = None,
        dist_info: DistInfo | None = None,
    ):
        self.cfg, self.task, self.full_config = cfg, task, config
        self.dist = dist_info or current()
        self.device = resolve_device(cfg.device)
        self.amp_dtype = resolve_amp(cfg.amp, self.device)
        seed_everything(cfg.seed)
        keep_freed_memory()  # about 13 % of a CPU step (xecbench.memory)
        self.model = model.to(self.device)
        self.ddp = DistributedDataParallel(self.model) if self.dist.enabled else None
        # what the training steps call; checkpoints, EMA and validation use the plain model
        self.net = self.ddp or self.model
        if cfg.compile:
            self.net = torch.compile(self.net)
        if isinstance(train_data, IterableDataset):
            raise TypeError(
                f"Trainer needs a map-style training set (e.g. EventDataset), got {type(train_data).__name__}: "
                "the shuffled, rank-sharded sampler indexes it"
            )
        self.train_data, self.val_data = train_data, val_data
        # DistributedSampler also for one process: the same permutation for any world size
        self.sampler = DistributedSampler(
            train_data, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True, seed=cfg.seed
        )
        workers = config.data.num_workers if config is not None else 0
        self.loader = DataLoader(
            train_data,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            # its own generator: making an iterator then never draws from the global RNG, which
            # draws the masks, so the masks (and resume) do not depend on data.num_workers
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        self.batches_per_epoch = len(self.loader)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.grad_accum_steps)
        self.optimizer = build_optimizer(self.model, cfg, self.steps_per_epoch)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = AveragedModel(self.model, multi_avg_fn=self._ema_update) if cfg.ema_decay is not None else None
        self.callbacks = list(callbacks)
        self.history: list[dict[str, Any]] = []
        self.epoch = 0  # epochs finished
        self.step = 0  # optimiser steps taken
        self.run_dir = Path(cfg.run_dir)
        self.last_checkpoint: Path | None = None

    # --------------------------------------------------------------------------------------- modes
    def _optimizer_mode(self, train: bool) -> None:
        """Schedule-Free keeps two weight sequences: train mode to step, eval mode to evaluate/save."""
        fn = getattr(self.optimizer, "train" if train else "eval", None)
        if callable(fn) and self.cfg.optimizer == "schedulefree_adamw":
            fn()

    def _ema_update(self, averaged: list, current: list, n_averaged: torch.Tensor) -> None:
        """torch's EMA update at the warmed-up decay of this optimiser step (``self.step + 1``)."""
        decay = ema_decay_at(self.step + 1, self.cfg.ema_decay, self.cfg.ema_warmup)
        get_ema_multi_avg_fn(decay)(averaged, current, n_averaged)

    def _batch_sizes(self) -> list[int]:
        """Samples in each batch of an epoch on this rank (the last batch may be short)."""
        n, bs = len(self.sampler), self.cfg.batch_size
        return [min(bs, n - start) for start in range(0, n, bs)]

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def lr(self) -> float:
        """The learning rate the last step used: ``lr`` for scheduled optimisers, Schedule-Free's
        warmed-up ``scheduled_lr``, D-Adaptation's ``lr * d`` (its estimated step size)."""
        group = self.optimizer.param_groups[0]
        if "scheduled_lr" in group:
            return float(group["scheduled_lr"])
        if "d" in group:
            return float(group["lr"] * group["d"])
        return float(group["lr"])

    # ---------------------------------------------------------------------------------- training
    def train_epoch(self) -> dict[str, Any]:
        cfg = self.cfg
        net = self.net
        self.model.train()
        self._optimizer_mode(True)
        self.sampler.set_epoch(self.epoch)
        n_batches, N = self.batches_per_epoch, cfg.grad_accum_steps
        sizes = self._batch_sizes()
        loss_sum = torch.zeros((), device=self.device)
        group_loss = torch.zeros((), device=self.device)
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        bar = tqdm(
            total=n_batches,
            desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
            leave=False,
            disable=not (cfg.progress and self.dist.is_main),
        )
        for i, batch in enumerate(self.loader):
            batch = _move(batch, self.device)
            group_start = (i // N) * N
            group_end = min(group_start + N, n_batches)  # the leftover group is shorter
            last_in_group = i == group_end - 1
            weight = sizes[i] / sum(sizes[group_start:group_end])  # this batch's share of the group's samples
            sync = contextlib.nullcontext() if (self.ddp is None or last_in_group) else self.ddp.no_sync()
            with sync:
                with self._autocast():
                    loss, _ = self.task(net, batch)
                self.scaler.scale(loss * weight).backward()
            loss = loss.detach().float()
            group_loss += loss * weight
            loss_sum += loss * sizes[i]
            bad = ~torch.isfinite(loss)
            first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, self.step), first_bad)
            bar.update()
            if not last_in_group:
                continue
            if cfg.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            else:
                grad_norm = None
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            if self.scheduler is not None and not isinstance(self.scheduler, ReduceLROnPlateau):
                self.scheduler.step()
            self.step += 1
            if self.step % cfg.log_every == 0:  # the only host syncs inside the epoch
                self._check_finite(first_bad)
                row = {
                    "kind": "step",
                    "epoch": self.epoch + 1,
                    "step": self.step,
                    "loss": float(group_loss),
                    "lr": self.lr(),
                }
                if grad_norm is not None:
                    row["grad_norm"] = float(grad_norm)
                if self.scaler.is_enabled():
                    row["fp16_scale"] = float(self.scaler.get_scale())
                self._log(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
            group_loss = torch.zeros((), device=self.device)
        bar.close()
        self._check_finite(first_bad)
        return {"train_loss": float(loss_sum) / max(sum(sizes), 1)}

    def _check_finite(self, first_bad: torch.Tensor) -> None:
        """Stop on a NaN/inf loss, or on NaN/inf weights behind a finite loss (a host sync: call it
        at logging intervals only)."""
        bad_step = int(first_bad)
        where = self.last_checkpoint or "none written yet"
        if bad_step >= 0:
            raise NonFiniteLossError(
                f"training loss became NaN/inf at optimiser step {bad_step + 1} (epoch {self.epoch + 1}); "
                f"last good checkpoint: {where}"
            )
        finite = torch.stack([torch.isfinite(p).all() for p in self.model.parameters()])
        if not bool(finite.all()):
            names = [n for (n, _), ok in zip(self.model.named_parameters(), finite.tolist()) if not ok]
            raise NonFiniteLossError(
                f"model weights became NaN/inf by optimiser step {self.step} (epoch {self.epoch + 1}) while the "
                f"loss stayed finite ({len(names)} tensors, first {names[0]}); check training.lr / max_lr and "
                f"grad_clip; last good checkpoint: {where}"
            )

    # -------------------------------------------------------------------------------- validation
    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Dataset, seed: int = 12345) -> dict[str, Any]:
        """Mean loss and per-face losses over ``data``; masks drawn from a fixed seed (the global RNG
        is saved and restored, so validating does not change the training randomness)."""
        state = torch.get_rng_state()
        cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        torch.manual_seed(seed)
        model.eval()
        total, faces, n = 0.0, {}, 0
        try:
            for batch in DataLoader(data, batch_size=self.cfg.batch_size):
                batch = _move(batch, self.device)
                with self._autocast():
                    loss, per_face = self.task(model, batch)
                b = len(batch["x"])
                total += float(loss) * b
                for f, v in per_face.items():
                    faces[f] = faces.get(f, 0.0) + float(v) * b
                n += b
        finally:
            torch.set_rng_state(state)
            if cuda_state is not None:
                torch.cuda.set_rng_state_all(cuda_state)
        return {"loss": total / max(n, 1), **{f"loss_{f}": v / max(n, 1) for f, v in faces.items()}}

    def validate(self) -> dict[str, Any]:
        if self.val_data is None:
            return {}
        self._optimizer_mode(False)
        out = {f"val_{k}": v for k, v in self.evaluate(self.model, self.val_data).items()}
        if self.ema is not None:
            out.update({f"val_ema_{k}": v for k, v in self.evaluate(self.ema.module, self.val_data).items()})
        summary = getattr(self.task, "summary", None)  # task metrics over the whole set (e.g. resolutions)
        if summary is not None:
            out.update({f"val_{k}": v for k, v in summary(self.model, self.val_data).items()})
            if self.ema is not None:
                out.update({f"val_ema_{k}": v for k, v in summary(self.ema.module, self.val_data).items()})
        self._optimizer_mode(True)
        return out

    # ------------------------------------------------------------------------------------- fit
    def fit(self, resume: str | Path | None = None) -> list[dict[str, Any]]:
        """Train until ``cfg.epochs`` (continuing from a checkpoint when ``resume`` is given)."""
        if resume is not None:
            self.load(resume)
        while self.epoch < self.cfg.epochs:
            metrics = self.train_epoch()
            metrics.update(self.validate())
            if isinstance(self.scheduler, ReduceLROnPlateau):
                self.scheduler.step(metrics.get("val_loss", metrics["train_loss"]))
            self.epoch += 1
            self._log({"kind": "epoch", "epoch": self.epoch, "step": self.step, "lr": self.lr(), **metrics})
            if self.dist.is_main:
                self.write_metrics()
                if self.epoch % self.cfg.checkpoint_every == 0 or self.epoch == self.cfg.epochs:
                    self.save(self.run_dir / "checkpoint.pt")
        return self.history

    def _log(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        for cb in self.callbacks:
            cb(row["kind"], self, row)

    # ------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        self._optimizer_mode(False)  # Schedule-Free: save the evaluation weights
        state = {
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "ema_n_averaged": self.ema.n_averaged if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "epoch": self.epoch,
            "step": self.step,
            "config": self.full_config.to_dict() if self.full_config else {"training": vars(self.cfg)},
            "history": self.history,
        }
        self._optimizer_mode(True)
        return state

    def save(self, path: str | Path) -> Path:
        self.last_checkpoint = save_checkpoint(path, self.state_dict())
        return self.last_checkpoint

    def load(self, path: str | Path) -> None:
        """Continue from a checkpoint of this model and config (see :func:`.checkpoint.check_resumable`)."""
        from .checkpoint import check_resumable

        state = load_checkpoint(path, map_location=self.device)
        config = self.full_config.to_dict() if self.full_config else {"training": vars(self.cfg)}
        check_resumable(path, state, self.model.state_dict(), config)
        self._optimizer_mode(False)  # the saved weights are Schedule-Free's evaluation weights
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._optimizer_mode(True)
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
            self.ema.n_averaged.copy_(state["ema_n_averaged"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.history = list(state.get("history", []))
        self.last_checkpoint = Path(path)

    # ---------------------------------------------------------------------------------- metrics
    def write_metrics(self) -> None:
        """``metrics.json`` (every row) and ``metrics.csv`` (epoch rows), both atomically."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.run_dir / "metrics.json") as tmp:
            tmp.write_text(json.dumps(self.history, indent=1))
        epochs = [r for r in self.history if r["kind"] == "epoch"]
        keys = sorted({k for r in epochs for k in r})
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(epochs)
        with atomic_path(self.run_dir / "metrics.csv") as tmp:
            tmp.write_text(buf.getvalue())
