"""Plots for the notebooks: learning-rate and loss curves, attention maps, residuals,
means over seeds with error bars."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from .. import geometry as geo
from ..eval.metrics import residual_stats


def _rows(history: list[dict], kind: str) -> list[dict]:
    return [r for r in history if r["kind"] == kind]


def plot_lr_curves(histories: dict[str, list[dict]], steps_per_epoch: int | None = None) -> Figure:
    """Learning rate of every logged optimiser step, one line per run (log scale)."""
    fig, ax = plt.subplots(figsize=(7, 3.6), layout="constrained")
    for name, h in histories.items():
        rows = _rows(h, "step")
        x = np.array([r["step"] for r in rows], dtype=float)
        if steps_per_epoch:
            x = x / steps_per_epoch
        ax.plot(x, [r["lr"] for r in rows], label=name)
    ax.set_yscale("log")
    ax.set_xlabel("epoch" if steps_per_epoch else "optimiser step")
    ax.set_ylabel("learning rate")
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("Learning rate per optimiser step")
    return fig


def plot_loss_curves(histories: dict[str, list[dict]], key: str = "val_loss") -> Figure:
    """Training loss per logged step (left) and ``key`` per epoch (right), one colour per run."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for name, h in histories.items():
        steps = _rows(h, "step")
        line = a.plot([r["step"] for r in steps], [r["loss"] for r in steps], label=name, alpha=0.8)[0]
        epochs = _rows(h, "epoch")
        b.plot([r["epoch"] for r in epochs], [r[key] for r in epochs], "o-", color=line.get_color(), label=name)
    a.set(xlabel="optimiser step", ylabel="training loss", yscale="log", title="Training loss")
    b.set(xlabel="epoch", ylabel=key.replace("_", " "), yscale="log", title="Validation loss")
    b.legend(fontsize=8)
    return fig


def plot_attention(maps: dict[str, np.ndarray]) -> Figure:
    """Face-to-face attention ``(6, 6)`` per run (rows attend to columns), one colour scale spanning
    all runs (uniform attention would be 1/6 everywhere)."""
    n = len(maps)
    lo = min(float(np.min(m)) for m in maps.values())
    hi = max(float(np.max(m)) for m in maps.values())
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9), layout="constrained", squeeze=False)
    for ax, (name, m) in zip(axes[0], maps.items()):
        im = ax.imshow(m, vmin=lo, vmax=hi, cmap="magma")
        ax.set_xticks(range(6), geo.FACES, rotation=90, fontsize=7)
        ax.set_yticks(range(6), geo.FACES, fontsize=7)
        ax.set_title(name, fontsize=9)
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label="attention weight")
    return fig


def plot_residuals(
    residuals: dict[str, np.ndarray], bins: Sequence[float] | int = 60, xlabel: str = "residual"
) -> Figure:
    """Overlaid residual histograms, one per method."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6), layout="constrained")
    for name, r in residuals.items():
        ax.hist(np.asarray(r), bins=bins, histtype="step", label=name, density=True)
    ax.set(xlabel=xlabel, ylabel="density", yscale="log")
    ax.legend(fontsize=8)
    return fig


def plot_label_efficiency(summary: dict[str, dict[int, Any]], ylabel: str) -> Figure:
    """One line per mode: the metric's mean against the number of labelled events (log x), with
    standard-error bars (from :func:`xecbench.experiments.mean_and_error`)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6), layout="constrained")
    for k, (mode, by_n) in enumerate(summary.items()):
        n = np.array(sorted(by_n), dtype=float)
        mean = np.array([by_n[int(v)].mean for v in n])
        err = np.nan_to_num(np.array([by_n[int(v)].se for v in n]))
        ax.errorbar(n * (1 + 0.04 * (k - 1)), mean, yerr=err, marker="o", capsize=3, label=mode)  # offset to separate
    ax.set(xscale="log", xlabel="labelled training events", ylabel=ylabel)
    ax.legend(fontsize=8)
    return fig


def plot_seed_means(panels: dict[str, dict[str, dict[str, Any]]]) -> Figure:
    """Means over seeds with standard-error bars and each seed's value as a small dot: one panel per
    metric (its title), in each one series per entry (e.g. live and EMA weights), one x position per
    variant. ``panels[metric][series][variant]`` is a :class:`xecbench.experiments.MeanError`
    (``mean``, ``se``, ``n``, ``values``; from :func:`xecbench.experiments.summarise`)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), layout="constrained", squeeze=False)
    for ax, (metric, series) in zip(axes[0], panels.items()):
        variants = list(dict.fromkeys(v for s in series.values() for v in s))
        x = np.arange(len(variants), dtype=float)
        step = 0.25 if len(series) > 1 else 0.0
        for k, (name, summary) in enumerate(series.items()):
            dx = step * (k - (len(series) - 1) / 2)
            mean = np.array([summary[v].mean if v in summary else np.nan for v in variants])
            err = np.nan_to_num(np.array([summary[v].se if v in summary else np.nan for v in variants]))
            bars = ax.errorbar(x + dx, mean, yerr=err, fmt="o", capsize=4, label=name)
            for i, v in enumerate(variants):
                dots = summary[v].values if v in summary else ()
                ax.plot(np.full(len(dots), x[i] + dx + 0.07), dots, ".", color=bars[0].get_color(), alpha=0.4, ms=4)
        ax.set_xticks(x, variants, rotation=30, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=10)
        if len(series) > 1:
            ax.legend(fontsize=8)
    return fig


def plot_resolution_vs(
    x: np.ndarray, residuals: dict[str, np.ndarray], edges: Sequence[float], xlabel: str, ylabel: str
) -> Figure:
    """68 % width of each method's residuals in bins of ``x`` (e.g. true energy, true depth)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4), layout="constrained")
    centres = 0.5 * (np.asarray(edges[:-1]) + np.asarray(edges[1:]))
    for name, r in residuals.items():
        widths = [residual_stats(r[(x >= lo) & (x < hi)])["width68"] for lo, hi in zip(edges[:-1], edges[1:])]
        ax.plot(centres, widths, "o-", label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.legend(fontsize=8)
    return fig
