"""Small experiment helpers the notebooks call: run config variants, tabulate them, write metrics.

Every run goes through :func:`xecbench.train.run_training`, so a notebook comparison is the same
training a command-line run or a sweep would do.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import geometry as geo
from .data.io import atomic_path
from .nn import SensorMask
from .sweep import RESULT_FILE
from .train import Trainer, load_config, run_training
from .train.config import PACKAGED_CONFIGS

CONFIGS = PACKAGED_CONFIGS  # the packaged configs, e.g. CONFIGS / "mae_tiny.yaml"


def run_variants(
    variants: dict[str, list[str]],
    common: list[str] | None = None,
    config: str | Path = CONFIGS / "mae_tiny.yaml",
    run_root: str | Path = "runs/variants",
) -> dict[str, Trainer]:
    """Train one model per variant: ``variants[name]`` are ``key=value`` overrides on top of
    ``config`` and ``common``. Each run writes into ``run_root/name``. Returns the trainers."""
    out = {}
    for name, overrides in variants.items():
        cfg = load_config(config, [*(common or []), *overrides, f"training.run_dir={Path(run_root) / name}"])
        out[name] = run_training(cfg)
    return out


def training_problem(trainer: Trainer) -> str | None:
    """What is wrong with a finished run, or None: a logged loss that is NaN/inf, or a last epoch's
    training loss that is not below the first logged one (a run that diverged or never learned)."""
    steps = [r["loss"] for r in trainer.history if r["kind"] == "step"]
    epochs = [r for r in trainer.history if r["kind"] == "epoch"]
    losses = steps + [v for r in epochs for k, v in r.items() if "loss" in k]
    if not all(math.isfinite(v) for v in losses):
        return f"{trainer.run_dir}: a logged loss is NaN/inf"
    first = steps[0] if steps else epochs[0]["train_loss"]
    if len(steps) + len(epochs) > 1 and not epochs[-1]["train_loss"] < first:
        return f"{trainer.run_dir}: training loss did not fall ({first:.4g} -> {epochs[-1]['train_loss']:.4g})"
    return None


def check_training(trainer: Trainer) -> None:
    """Sanity checks for a run whose exact numbers are not portable across CPUs (the notebook cells
    that print them are not compared by nbval): raises AssertionError with :func:`training_problem`."""
    problem = training_problem(trainer)
    if problem is not None:
        raise AssertionError(problem)


def final_metrics(trainer: Trainer) -> dict[str, float]:
    """The last epoch's numbers of a run."""
    return {k: v for k, v in [r for r in trainer.history if r["kind"] == "epoch"][-1].items() if k != "kind"}


def results_table(rows: dict[str, dict[str, float]], keys: list[str], digits: int = 4) -> str:
    """A fixed-width text table: one row per run, one column per key (numbers to ``digits``
    significant digits, so re-runs print the same text)."""
    width = max(12, *(len(k) + 2 for k in keys))
    name_w = max(len(n) for n in rows) + 2
    lines = [" " * name_w + "".join(f"{k:>{width}}" for k in keys)]
    for name, r in rows.items():
        lines.append(f"{name:<{name_w}}" + "".join(f"{r[k]:>{width}.{digits}g}" for k in keys))
    return "\n".join(lines)


def best(rows: dict[str, dict[str, float]], key: str) -> tuple[str, float]:
    """The run with the lowest ``key``."""
    name = min(rows, key=lambda n: rows[n][key])
    return name, rows[name][key]


def per_face(row: dict[str, float], prefix: str = "val_loss_") -> dict[str, float]:
    return {f: row[f"{prefix}{f}"] for f in geo.FACES}


@torch.no_grad()
def mean_fusion_attention(model: torch.nn.Module, batch: dict, layer: int = -1) -> np.ndarray:
    """Face-to-face attention ``(6, 6)`` of one fusion layer, averaged over heads and events, for
    an MAE at its configured mask ratio (row = query face, column = key face)."""
    model.eval()
    g = torch.Generator().manual_seed(0)
    model(batch["x"], model.draw_masks(batch["valid"], batch["time_valid"], generator=g))
    return model.encoder.fusion.attention_maps()[layer].mean(dim=(0, 1)).numpy()


def write_result(out_dir: str | Path, metrics: dict[str, Any]) -> Path:
    """``out_dir/result.json`` (atomic): the numbers a papermill sweep collects from each point (a
    name of its own, never the trainer's ``metrics.json`` in a run folder)."""
    path = Path(out_dir) / RESULT_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(metrics, indent=1, default=float))
    return path


def accumulation_gap(model: torch.nn.Module, batch: dict, masks: SensorMask, n_micro: int) -> tuple[float, float]:
    """Gradients of one MAE batch against ``n_micro`` equal micro-batches accumulated with loss / n.

    Uses fixed ``masks``; the loss is a mean over events, so equal micro-batches weigh the same.
    Returns (max |difference|, max |gradient|)."""

    def grads(chunks: int) -> list[torch.Tensor]:
        model.zero_grad()
        size = -(-len(batch["x"]) // chunks)
        for start in range(0, len(batch["x"]), size):
            part = slice(start, start + size)
            out = model(batch["x"][part], masks[part])
            (out.loss / chunks).backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    full, acc = grads(1), grads(n_micro)
    gap = max(float((a - b).abs().max()) for a, b in zip(full, acc))
    return gap, max(float(a.abs().max()) for a in full)


def time_training_step(
    model: torch.nn.Module, batch: dict, amp: torch.dtype | None, repeats: int = 3
) -> tuple[float, float]:
    """Seconds per MAE training step (best of ``repeats``) and the loss, with autocast to ``amp``
    (None = fp32). The weights are restored afterwards."""
    import copy
    import time

    saved = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the step costs the same, changes nothing
    device = next(model.parameters()).device.type
    best_s, loss = float("inf"), float("nan")
    for _ in range(repeats):
        g = torch.Generator().manual_seed(0)
        t = time.perf_counter()
        with torch.autocast(device_type=device, dtype=amp or torch.float32, enabled=amp is not None):
            out = model(batch["x"], model.draw_masks(batch["valid"], batch["time_valid"], generator=g))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        loss = float(out.loss.detach())
        best_s = min(best_s, time.perf_counter() - t)
    model.load_state_dict(saved)
    return best_s, loss


# ---------------------------------------------------------------------------- label efficiency
HEADLINE = {
    "uvw 3D [cm]": "position 68 % [cm]",
    "energy rel.": "energy resolution",
    "angle [deg]": "angle 68 % [deg]",
    "time [ps]": "time 68 % [ps]",
}


def label_efficiency(
    modes: dict[str, list[str]],
    n_labelled: list[int],
    seeds: list[int],
    held_out: Any,
    common: list[str] | None = None,
    steps: int = 48,
    run_root: str | Path = "runs/label_efficiency",
    config: str | Path = CONFIGS / "regress_tiny.yaml",
) -> tuple[list[dict[str, Any]], dict[tuple[str, int, int], torch.nn.Module]]:
    """Train a regressor for every mode (``key=value`` overrides, e.g. from scratch or from an MAE,
    frozen or fine-tuned) x number of labelled events x seed, each for the same number of optimiser
    ``steps`` (so a small labelled set is seen for more epochs), and score its EMA weights on the
    same ``held_out`` events. Seed ``s`` draws the labelled events (``data.seed``) and the training
    randomness (``training.seed``), the same for every mode: runs with one seed are paired.

    Returns one row per run (``mode``, ``n_labelled``, ``seed``, ``seconds`` and the 68 % widths of
    :data:`HEADLINE`, keyed by their labels) and the trained models (EMA weights, on the CPU) by
    ``(mode, n_labelled, seed)``."""
    import time

    from .eval.regress import predict_targets
    from .eval.resolution import regression_metrics

    rows, models = [], {}
    for mode, overrides in modes.items():
        for n in n_labelled:
            for seed in seeds:
                cfg = load_config(config, [*(common or []), *overrides])
                epochs = max(1, math.ceil(steps * cfg.training.batch_size / n))
                cfg = load_config(
                    config,
                    [
                        *(common or []),
                        *overrides,
                        f"data.n_train={n}",
                        f"data.seed={seed}",
                        f"training.seed={seed}",
                        f"training.epochs={epochs}",
                        f"training.run_dir={Path(run_root) / f'{mode}_{n}_{seed}'}",
                    ],
                )
                start = time.perf_counter()
                trainer = run_training(cfg)
                model = (trainer.ema.module if trainer.ema is not None else trainer.model).cpu()
                metrics = regression_metrics(*predict_targets(model, held_out))
                row = {"mode": mode, "n_labelled": n, "seed": seed, "seconds": time.perf_counter() - start}
                row |= {label: metrics[key]["width68"] for key, label in HEADLINE.items() if key in metrics}
                rows.append(row)
                models[(mode, n, seed)] = model
    return rows, models


def mean_and_error(rows: list[dict[str, Any]], metric: str) -> dict[str, dict[int, tuple[float, float, int]]]:
    """``{mode: {n_labelled: (mean, standard error, seeds)}}`` of ``metric`` over the seeds (the error is
    NaN with one seed)."""
    out: dict[str, dict[int, tuple[float, float, int]]] = {}
    for r in rows:
        out.setdefault(r["mode"], {}).setdefault(r["n_labelled"], []).append(r[metric])
    return {
        m: {
            n: (float(np.mean(v)), float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan, len(v))
            for n, v in by_n.items()
        }
        for m, by_n in out.items()
    }


def seed_paired(rows: list[dict[str, Any]], metric: str, a: str, b: str, n_labelled: int) -> tuple[list, list]:
    """The ``metric`` of modes ``a`` and ``b`` at ``n_labelled``, paired by seed (for
    :func:`xecbench.eval.paired_verdict`)."""
    pick = {(r["mode"], r["seed"]): r[metric] for r in rows if r["n_labelled"] == n_labelled}
    seeds = sorted({s for m, s in pick if m == a} & {s for m, s in pick if m == b})
    return [pick[(a, s)] for s in seeds], [pick[(b, s)] for s in seeds]
