"""Experiment helpers the notebooks call: run config variants over seeds on events simulated once,
summarise them (mean and standard error over the seeds), give paired verdicts that say "within
noise" unless a difference passes a named test, sanity checks for runs, and ``result.json``.

Every run goes through :func:`xecbench.train.run_training`, so a notebook comparison is the same
training a command-line run or a sweep would do.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .data import SimConfig, simulate
from .data.io import atomic_path, save_npz
from .eval.stats import PairedComparison, holm, paired_verdict
from .nn import SensorMask
from .sweep import RESULT_FILE
from .train import NonFiniteLossError, Trainer, load_config, run_training
from .train.config import PACKAGED_CONFIGS

CONFIGS = PACKAGED_CONFIGS  # the packaged configs, e.g. CONFIGS / "mae_tiny.yaml"


def simulate_once(
    out_dir: str | Path, n_train: int, n_val: int, seed: int = 0, config: SimConfig | None = None
) -> list[str]:
    """Simulate a training and a validation set once, write them to ``out_dir/train.npz`` and
    ``out_dir/val.npz``, and return the ``data.*`` overrides that point a run at them: every variant
    and seed of a comparison then trains and validates on the same events, and the notebook pays
    for the simulation once. The validation set uses another seed (``seed + 1_000_003``, as
    ``data.source=simulate`` does)."""
    out = Path(out_dir)
    paths = {}
    for name, n, s in (("train", n_train, seed), ("val", n_val, seed + 1_000_003)):
        paths[name] = save_npz(out / f"{name}.npz", simulate(n, seed=s, config=config))
    return [f"data.source={paths['train']}", f"data.val_source={paths['val']}", f"data.n_train={n_train}"]


@dataclass(frozen=True)
class FailedRun:
    """A run that stopped on a NaN/inf loss or weights (:class:`~xecbench.train.NonFiniteLossError`):
    a comparison names it and leaves it out instead of stopping."""

    run_dir: Path
    error: str
    history: tuple = ()  # nothing to plot


def _train(cfg: Any) -> Trainer | FailedRun:
    try:
        return run_training(cfg)
    except NonFiniteLossError as exc:
        return FailedRun(Path(cfg.training.run_dir), str(exc))


def run_variants(
    variants: dict[str, list[str]],
    common: list[str] | None = None,
    config: str | Path = CONFIGS / "mae_tiny.yaml",
    run_root: str | Path = "runs/variants",
    seeds: list[int] | tuple[int, ...] = (0,),
) -> dict[str, dict[int, Trainer]]:
    """Train one model per variant and seed: ``variants[name]`` are ``key=value`` overrides on top of
    ``config`` and ``common``, and seed ``s`` sets ``training.seed`` (initial weights, masks, batch
    order), the same for every variant, so runs with one seed are paired. Each run writes into
    ``run_root/name/seed_s``. Returns the trainers as ``runs[name][seed]``; a run that stopped on a
    NaN/inf loss is a :class:`FailedRun` there (the others still train)."""
    if not seeds:
        raise ValueError("run_variants: seeds is empty; give at least one seed")
    out: dict[str, dict[int, Trainer]] = {}
    for name, overrides in variants.items():
        out[name] = {}
        for seed in seeds:
            run_dir = Path(run_root) / name / f"seed_{seed}"
            extra = [f"training.seed={seed}", f"training.run_dir={run_dir}"]
            out[name][seed] = _train(load_config(config, [*(common or []), *overrides, *extra]))
    return out


def variant_rows(
    runs: dict[str, dict[int, Trainer | FailedRun]], score: Callable[[Trainer], dict[str, float]] | None = None
) -> list[dict[str, Any]]:
    """One row per run of :func:`run_variants`: ``variant``, ``seed``, ``problem`` (what
    :func:`training_problem` found, or None) and the run's numbers, ``score(trainer)`` (default: its
    last epoch, :func:`final_metrics`; none for a :class:`FailedRun`)."""
    score = score or final_metrics
    return [
        {"variant": name, "seed": seed, "problem": training_problem(t)}
        | ({} if isinstance(t, FailedRun) else score(t))
        for name, by_seed in runs.items()
        for seed, t in by_seed.items()
    ]


DIVERGED = 1.5  # a last epoch's training loss this many times the first step's: the run diverged


def training_problem(trainer: Trainer | FailedRun) -> str | None:
    """What makes a run unusable, or None: it stopped on a NaN/inf loss (:class:`FailedRun`), a
    logged loss is NaN/inf, it has no finished epoch, or it diverged (the last epoch's training loss
    above :data:`DIVERGED` times the first logged step's: nearly the initial weights' loss on one
    batch, exactly that with ``training.log_every=1``; a run that blew up and partly recovered still
    ends far above it).

    A comparison leaves such runs out. A run that merely learned little is a result, not a problem:
    leaving it out would flatter its variant."""
    if isinstance(trainer, FailedRun):
        return f"{trainer.run_dir}: {trainer.error}"
    steps = [r["loss"] for r in trainer.history if r["kind"] == "step"]
    epochs = [r for r in trainer.history if r["kind"] == "epoch"]
    losses = steps + [v for r in epochs for k, v in r.items() if "loss" in k]
    if not all(math.isfinite(v) for v in losses):
        return f"{trainer.run_dir}: a logged loss is NaN/inf"
    if not epochs:
        return f"{trainer.run_dir}: no epoch finished"
    last = epochs[-1]["train_loss"]
    if steps and last > DIVERGED * steps[0]:
        return f"{trainer.run_dir}: training loss diverged (first step {steps[0]:.4g}, last epoch {last:.4g})"
    return None


def check_training(trainer: Trainer) -> None:
    """Sanity checks for a run whose exact numbers are not portable across CPUs (the notebook cells
    that print them are not compared by nbval): no :func:`training_problem`, and with two epochs or
    more the last epoch's mean training loss below the first epoch's (epoch means, not single
    batches: one small batch's loss can sit a few per cent either side of the mean, as much as a
    short run improves). Raises AssertionError naming the run."""
    problem = training_problem(trainer)
    if problem is not None:
        raise AssertionError(problem)
    epochs = [r["train_loss"] for r in trainer.history if r["kind"] == "epoch"]
    if len(epochs) > 1 and not epochs[-1] < epochs[0]:
        raise AssertionError(
            f"{trainer.run_dir}: training loss did not fall (first epoch {epochs[0]:.4g}, last epoch {epochs[-1]:.4g})"
        )


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


@torch.no_grad()
def mean_fusion_attention(model: torch.nn.Module, batch: dict, layer: int = -1) -> np.ndarray:
    """Face-to-face attention ``(6, 6)`` of one fusion layer, averaged over heads and events (row =
    query face, column = key face): an MAE at its configured mask ratio, any other model (the
    regressor, the inpainter) seeing every valid sensor."""
    model.eval()
    if hasattr(model, "draw_masks"):
        masks = model.draw_masks(batch["valid"], batch["time_valid"], generator=torch.Generator().manual_seed(0))
    else:
        masks = SensorMask(batch["valid"], batch["time_valid"], torch.zeros_like(batch["valid"]))
    model(batch["x"], masks)
    return model.encoder.fusion.attention_maps()[layer].mean(dim=(0, 1)).numpy()


def lr_reductions(trainer: Trainer) -> int:
    """How many times the learning rate fell between logged optimiser steps (for ``plateau``: how
    often it acted with an effect; a cut after the last step changed nothing and is not counted)."""
    lrs = [r["lr"] for r in trainer.history if r["kind"] == "step"]
    return sum(b < a for a, b in zip(lrs, lrs[1:]))


def write_result(out_dir: str | Path, metrics: dict[str, Any]) -> Path:
    """``out_dir/result.json`` (atomic): the numbers a papermill sweep collects from each point (a
    name of its own, never the trainer's ``metrics.json`` in a run folder). Strict JSON: a NaN or
    infinite number (the standard error of one seed) is written as ``null``."""
    path = Path(out_dir) / RESULT_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_json_safe(metrics), indent=1, allow_nan=False))
    return path


def _json_safe(value: Any) -> Any:
    """Numbers as plain floats (non-finite ones as None), containers walked, anything else ``float``-ed."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    number = float(value)
    return number if math.isfinite(number) else None


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
    frozen or fine-tuned) x number of labelled events x seed, each for whole epochs adding up to at
    least ``steps`` optimiser steps (``ceil(steps * batch / n)`` epochs: a small labelled set is seen
    for more epochs, and ends a little past ``steps``), and score its EMA weights on the
    same ``held_out`` events. Seed ``s`` draws the labelled events (``data.seed``) and the training
    randomness (``training.seed``), the same for every mode: runs with one seed are paired.

    Returns one row per run (``mode``, ``n_labelled``, ``seed``, ``problem`` (:func:`training_problem`),
    ``seconds`` and the 68 % widths of :data:`HEADLINE`, keyed by their labels) and the trained
    models (:func:`trained_model`) by ``(mode, n_labelled, seed)`` (none for a :class:`FailedRun`)."""
    import time

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
                trainer = _train(cfg)
                row = {"mode": mode, "n_labelled": n, "seed": seed, "problem": training_problem(trainer)}
                if not isinstance(trainer, FailedRun):
                    models[(mode, n, seed)] = trained_model(trainer)
                    row |= regression_scores(models[(mode, n, seed)], held_out)
                rows.append(row | {"seconds": time.perf_counter() - start})
    return rows, models


def trained_model(trainer: Trainer) -> torch.nn.Module:
    """What a run hands on (what ``xecbench evaluate`` scores): its EMA weights when it kept an EMA,
    else the live ones, moved to the CPU (the trainer's own module, not a copy)."""
    return (trainer.ema.module if trainer.ema is not None else trainer.model).cpu()


def regression_scores(model: torch.nn.Module, held_out: Any) -> dict[str, float]:
    """The 68 % widths of :data:`HEADLINE` of a regressor on ``held_out`` events, keyed by their
    labels (the targets the model has)."""
    from .eval.regress import predict_targets
    from .eval.resolution import regression_metrics

    metrics = regression_metrics(*predict_targets(model, held_out))
    return {label: metrics[key]["width68"] for key, label in HEADLINE.items() if key in metrics}


class MeanError(NamedTuple):
    """A metric over seeds: its mean, the standard error of the mean (NaN with one seed), how many
    seeds and their values. Prints as ``0.004120 ± 3.1e-05``."""

    mean: float
    se: float
    n: int
    values: tuple[float, ...]

    def __str__(self) -> str:
        """The mean to the precision of its error (two digits of the error)."""
        if not (math.isfinite(self.se) and self.se > 0):
            return f"{self.mean:.3g} ± {self.se:.2g}"
        digits = max(0, 1 - math.floor(math.log10(self.se)))
        return f"{self.mean:.{digits}f} ± {self.se:.2g}"


def mean_error(values: list[float] | np.ndarray) -> MeanError:
    """Mean, standard error ``std(ddof=1) / sqrt(n)``, count and values of the finite ``values``."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return MeanError(math.nan, math.nan, 0, ())
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan
    return MeanError(float(v.mean()), se, int(v.size), tuple(float(x) for x in v))


def _value(row: dict[str, Any], metric: str) -> float:
    """A row's ``metric``, NaN for a run with a problem (so summaries and pairs leave it out)."""
    return math.nan if row.get("problem") else float(row[metric])


def _by_seed(rows: list[dict[str, Any]], metric: str, key: str, where: dict[str, Any]) -> dict[Any, dict]:
    """``{row[key]: {seed: value}}`` among the rows matching ``where``; a (key, seed) pair twice means
    the rows differ in a column ``where`` should have fixed (e.g. ``n_labelled``)."""
    out: dict[Any, dict] = {}
    for r in rows:
        if all(r[k] == v for k, v in where.items()):
            seeds = out.setdefault(r[key], {})
            if r["seed"] in seeds:
                raise ValueError(
                    f"{key}={r[key]!r} has seed {r['seed']} twice among the rows matching {where}: "
                    f"fix the other columns with keyword filters (e.g. n_labelled=...)"
                )
            seeds[r["seed"]] = _value(r, metric)
    return out


def summarise(rows: list[dict[str, Any]], metric: str, key: str = "variant", **where: Any) -> dict[Any, MeanError]:
    """``{row[key]: MeanError}`` of ``metric`` over the seeds, for the rows matching ``where`` (e.g.
    ``n_labelled=64``); runs with a problem are left out."""
    return {name: mean_error(list(v.values())) for name, v in _by_seed(rows, metric, key, where).items()}


def mean_and_error(rows: list[dict[str, Any]], metric: str) -> dict[str, dict[int, MeanError]]:
    """``{mode: {n_labelled: MeanError}}`` of ``metric`` over the seeds of :func:`label_efficiency`."""
    return {
        mode: summarise(rows, metric, key="n_labelled", mode=mode) for mode in dict.fromkeys(r["mode"] for r in rows)
    }


def seed_paired(
    rows: list[dict[str, Any]], metric: str, a: str, b: str, key: str = "variant", **where: Any
) -> tuple[list[float], list[float]]:
    """The ``metric`` of ``a`` and ``b`` (values of ``row[key]``) among the rows matching ``where``,
    paired by seed (for :func:`xecbench.eval.paired_verdict`; a run with a problem gives NaN, which
    drops its pair)."""
    by = _by_seed(rows, metric, key, where)
    seeds = sorted(set(by.get(a, {})) & set(by.get(b, {})))
    return [by[a][s] for s in seeds], [by[b][s] for s in seeds]


def _paired(a: list[float], b: list[float], names: tuple[str, str]) -> PairedComparison:
    """:func:`paired_verdict` over seeds, or a verdict that says why there is none (fewer than two
    seeds where both runs trained)."""
    n = int(np.sum(np.isfinite(a) & np.isfinite(b))) if a else 0
    if n < 2:
        verdict = f"{names[0]} and {names[1]} not compared: {n} seed(s) where both trained, a paired test needs 2"
        return PairedComparison(math.nan, math.nan, n, math.nan, math.nan, None, verdict)
    return paired_verdict(np.asarray(a), np.asarray(b), names, unit="seeds")


def compare_to(
    rows: list[dict[str, Any]], metric: str, reference: str, key: str = "variant", correct: bool = True, **where: Any
) -> dict[str, PairedComparison]:
    """Every other ``row[key]`` against ``reference`` in ``metric`` (lower is better), each a paired
    t-test across seeds (:func:`xecbench.eval.paired_verdict`): ``verdict`` says "within noise"
    unless the difference passes it. With ``correct`` (default) the comparisons are decided as one
    family by Holm's method (:func:`xecbench.eval.holm`), so the chance that any of them calls a
    non-difference "better" stays at 5 %; without it, each is a test at 95 % on its own."""
    names = list(_by_seed(rows, metric, key, where))
    if reference not in names:
        raise ValueError(f"compare_to: no rows with {key}={reference!r} (among {names})")
    names.remove(reference)
    out = {n: _paired(*seed_paired(rows, metric, n, reference, key, **where), (n, reference)) for n in names}
    return holm(out) if correct else out


def compare_metrics(
    rows: list[dict[str, Any]], a: str, b: str, names: tuple[str, str], **where: Any
) -> PairedComparison:
    """Two metrics of the same runs, paired by seed (e.g. ``val_ema_loss`` against ``val_loss``: the
    EMA weights against the live ones), among the rows matching ``where``; one test at 95 % (pass
    several to :func:`xecbench.eval.holm` to decide them as a family)."""
    first, second = _per_seed(rows, a, where), _per_seed(rows, b, where)
    seeds = sorted(first)
    return _paired([first[s] for s in seeds], [second[s] for s in seeds], names)


def _per_seed(rows: list[dict[str, Any]], metric: str, where: dict[str, Any]) -> dict[Any, float]:
    """``{seed: value}`` among the rows matching ``where`` (one row per seed, else an error)."""
    return {seed: by_seed[seed] for seed, by_seed in _by_seed(rows, metric, "seed", where).items()}
