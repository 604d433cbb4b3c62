"""A model (inpainter or MAE) against the baselines on the same hidden sensors, per face.

:func:`compare_inpainting` hides ``mask_ratio`` of the valid sensors of every event (a fixed seed),
asks the model, the neighbour average and the solid-angle estimate for their npho there, and
reports :func:`.metrics.metrics_by_face` for each, in normalised and in raw (photon) units.

Where the data carry each sensor's expected count (``nphoExpected``: simulated data), an
``oracle`` row predicts every hidden sensor by it: the Poisson floor, below which no estimate can go
on average. The fraction of the neighbour-average-to-floor gap a model closes is then
``(MSE_nb - MSE_model) / (MSE_nb - MSE_floor)`` in normalised npho (:func:`gap_closed`): 0 = no better
than the neighbour average, 1 = at the floor, negative = worse than the neighbour average.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..baselines import npho_estimates
from ..data import EventDataset
from ..nn import SensorMask, random_hidden
from .metrics import metrics_by_face


@torch.no_grad()
def compare_inpainting(
    model: nn.Module, data: EventDataset, mask_ratio: float = 0.05, seed: int = 0, batch_size: int = 64
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``model``: anything with ``predict(x, masks) -> (B, 4760, 2)`` (the inpainter, the MAE).
    Returns ``{units: {method: {face: stats}}}`` with units ``normalised`` / ``raw`` and methods
    ``model``, ``neighbour_average``, ``solid_angle`` (and ``oracle`` when the data carry
    ``nphoExpected``), ``residuals_normalised``: ``{method: (n,)}`` residuals at every scored sensor,
    ``event_mse_normalised``: ``{method: (n_events,)}`` each event's mean squared residual over its
    scored sensors (NaN where it has none; the unit of a paired test, :func:`.stats.paired_verdict`),
    and ``gap_closed``: ``{face: fraction}`` (empty without the floor). npho only."""
    g = torch.Generator().manual_seed(seed)
    norm = data.normalizer
    model.eval()
    device = next(model.parameters()).device
    floor = "nphoExpected" in data.tensors
    preds = {"model": [], "neighbour_average": [], "solid_angle": []} | ({"oracle": []} if floor else {})
    truths, scored_all = [], []
    for start in range(0, len(data), batch_size):
        b = data[start : start + batch_size]
        x, valid, tv = b["x"], b["valid"], b["time_valid"]
        masks = SensorMask(valid, tv, random_hidden(valid, mask_ratio, g))
        pred = model.predict(x.to(device), masks.to(device))
        raw = norm.npho_inverse(torch.where(valid, x[..., 0], 0.0).double())
        usable = masks.visible
        preds["model"].append(norm.npho_inverse(pred[..., 0].double().cpu()))
        average, by_angle, _ = npho_estimates(raw, usable)
        preds["neighbour_average"].append(average)
        preds["solid_angle"].append(by_angle)
        if floor:
            preds["oracle"].append(b["nphoExpected"].double())
        truths.append(raw)
        scored_all.append(masks.scored)
    truth = torch.cat(truths)
    scored = torch.cat(scored_all)
    out_raw = {m: metrics_by_face(torch.cat(p), truth, scored) for m, p in preds.items()}
    truth_n = norm.npho(truth)
    out_norm = {m: metrics_by_face(norm.npho(torch.cat(p)), truth_n, scored) for m, p in preds.items()}
    err = {m: norm.npho(torch.cat(p)) - truth_n for m, p in preds.items()}
    residuals = {m: e[scored].numpy() for m, e in err.items()}
    n_scored = scored.sum(1)
    event_mse = {
        m: torch.where(n_scored > 0, (e.square() * scored).sum(1) / n_scored.clamp(min=1), torch.nan).numpy()
        for m, e in err.items()
    }
    gaps = gap_closed(out_norm) if floor else {}
    return {
        "normalised": out_norm,
        "raw": out_raw,
        "residuals_normalised": residuals,
        "event_mse_normalised": event_mse,
        "gap_closed": gaps,
    }


def gap_closed(table: dict[str, dict[str, dict[str, float]]], method: str = "model") -> dict[str, float]:
    """Per face: the fraction of the neighbour-average-to-oracle gap in MSE that ``method`` closes,
    from a ``{method: {face: stats}}`` table (MSE = RMSE squared)."""
    out = {}
    for face in table[method]:
        nb, m, fl = (table[k][face]["rmse"] ** 2 for k in ("neighbour_average", method, "oracle"))
        out[face] = (nb - m) / (nb - fl) if nb > fl else float("nan")
    return out


def _number(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else "-"


def format_table(result: dict[str, dict[str, dict[str, float]]], stat: str = "rmse") -> str:
    """One row per method, one column per face (and all) of ``stat``; columns are right-aligned and
    at least two spaces apart, however long the numbers; ``-`` where a face had nothing scored."""
    methods = list(result)
    faces = list(next(iter(result.values())))
    cells = {m: [_number(result[m][f][stat]) for f in faces] for m in methods}
    widths = [max(10, len(f) + 2, *(len(cells[m][i]) + 2 for m in methods)) for i, f in enumerate(faces)]
    name_w = max(18, len(stat) + 2, *(len(m) + 2 for m in methods))
    lines = [f"{stat:<{name_w}}" + "".join(f"{f:>{w}}" for f, w in zip(faces, widths))]
    for m in methods:
        lines.append(f"{m:<{name_w}}" + "".join(f"{c:>{w}}" for c, w in zip(cells[m], widths)))
    return "\n".join(lines)
