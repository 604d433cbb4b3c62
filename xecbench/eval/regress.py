"""A regressor against the classical reconstruction on the same events.

:func:`compare_regression` calibrates :class:`.classical.ClassicalReco` on a calibration set (the
regressor's training events), predicts both on held-out events and returns
:func:`.resolution.regression_metrics` for each, side by side, with the energy resolution in bins.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data import EventDataset
from ..nn import SensorMask
from ..nn.regress import truth_of
from ..reco import ClassicalReco
from .resolution import energy_in_bins, regression_metrics


@torch.no_grad()
def predict_targets(
    model: nn.Module, data: EventDataset, batch_size: int = 64
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The regressor's predictions and the truth of its targets on every event of ``data``, each
    ``{target: (n, dims)}`` in physical units on the CPU. Nothing is hidden."""
    model.eval()
    device = next(model.parameters()).device
    preds: dict[str, list[torch.Tensor]] = {t: [] for t in model.targets}
    for start in range(0, len(data), batch_size):
        b = data[start : start + batch_size]
        masks = SensorMask(b["valid"], b["time_valid"], torch.zeros_like(b["valid"]))
        out = model(b["x"].to(device), masks.to(device))
        for t in model.targets:
            preds[t].append(out.pred[t].float().cpu())
    truth = {t: truth_of(data.tensors, t) for t in model.targets}
    return {t: torch.cat(v) for t, v in preds.items()}, truth


def compare_regression(
    model: nn.Module, data: EventDataset, calibration: EventDataset, energy_edges: list[float] | None = None
) -> dict:
    """``{"metrics": {"model": rows, "classical": rows}, "energy_bins": {method: [bin rows]},
    "pred": {method: {target: (n, dims)}}, "truth": {target: (n, dims)}}``; the classical estimates are
    calibrated on ``calibration``. Energy bins (MeV edges) default to 5 equal bins over the truth's range
    when the energies differ, else none."""
    pred, truth = predict_targets(model, data)
    classical = ClassicalReco.fit(calibration).predict(data)
    classical = {t: classical[t] for t in pred}
    out = {
        "metrics": {"model": regression_metrics(pred, truth), "classical": regression_metrics(classical, truth)},
        "pred": {"model": pred, "classical": classical},
        "truth": truth,
        "energy_bins": {},
    }
    if "energy" in truth:
        e = truth["energy"].numpy().ravel()
        if energy_edges is None and np.ptp(e) > 0:
            energy_edges = np.linspace(e.min(), e.max() + 1e-6, 6).tolist()
        if energy_edges is not None:
            out["energy_bins"] = {
                m: energy_in_bins(p["energy"], truth["energy"], energy_edges) for m, p in out["pred"].items()
            }
    return out
