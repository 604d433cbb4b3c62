"""The inpainter against the baselines on the same hidden sensors, per face.

:func:`compare_inpainting` hides ``mask_ratio`` of the valid sensors of every event (a fixed seed),
asks the model, the neighbour average and the solid-angle estimate for their npho there, and
reports :func:`.metrics.metrics_by_face` for each, in normalised and in raw (photon) units.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data import EventDataset
from ..nn import SensorMask, random_hidden
from .baselines import neighbour_average, solid_angle_estimate
from .metrics import metrics_by_face


@torch.no_grad()
def compare_inpainting(
    model: nn.Module, data: EventDataset, mask_ratio: float = 0.05, seed: int = 0, batch_size: int = 64
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Returns ``{units: {method: {face: stats}}}`` with units ``normalised`` / ``raw`` and methods
    ``model``, ``neighbour_average``, ``solid_angle``, plus ``residuals_normalised``: ``{method: (n,)}``
    residuals at every scored sensor. npho only (the quantity every sensor has)."""
    g = torch.Generator().manual_seed(seed)
    norm = data.normalizer
    model.eval()
    device = next(model.parameters()).device
    preds = {"model": [], "neighbour_average": [], "solid_angle": []}
    truths, scored_all = [], []
    for start in range(0, len(data), batch_size):
        b = data[start : start + batch_size]
        x, valid, tv = b["x"], b["valid"], b["time_valid"]
        masks = SensorMask(valid, tv, random_hidden(valid, mask_ratio, g))
        out = model(x.to(device), masks.to(device), capacity=1)
        raw = norm.npho_inverse(torch.where(valid, x[..., 0], 0.0).double())
        usable = masks.visible
        preds["model"].append(norm.npho_inverse(out.dense[..., 0].double().cpu()))
        preds["neighbour_average"].append(neighbour_average(raw, usable)[0])
        preds["solid_angle"].append(solid_angle_estimate(raw, usable)[0])
        truths.append(raw)
        scored_all.append(masks.scored)
    truth = torch.cat(truths)
    scored = torch.cat(scored_all)
    out_raw = {m: metrics_by_face(torch.cat(p), truth, scored) for m, p in preds.items()}
    truth_n = norm.npho(truth)
    out_norm = {m: metrics_by_face(norm.npho(torch.cat(p).clamp(min=0)), truth_n, scored) for m, p in preds.items()}
    residuals = {m: (norm.npho(torch.cat(p).clamp(min=0)) - truth_n)[scored].numpy() for m, p in preds.items()}
    return {"normalised": out_norm, "raw": out_raw, "residuals_normalised": residuals}


def format_table(result: dict[str, dict[str, dict[str, float]]], stat: str = "rmse") -> str:
    """One row per method, one column per face (and all) of ``stat``."""
    methods = list(result)
    faces = list(next(iter(result.values())))
    lines = [f"{stat:<18}" + "".join(f"{f:>10}" for f in faces)]
    for m in methods:
        lines.append(f"{m:<18}" + "".join(f"{result[m][f][stat]:>10.4g}" for f in faces))
    return "\n".join(lines)
