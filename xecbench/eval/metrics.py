"""Residual metrics per face and overall: MAE, RMSE, bias and the 68 % width.

The 68 % width is half the distance between the 16th and 84th percentiles of the residuals (the
sigma of a Gaussian, robust to tails).
"""

from __future__ import annotations

import numpy as np
import torch

from .. import geometry as geo


def residual_stats(residuals: np.ndarray | torch.Tensor) -> dict[str, float]:
    r = np.asarray(residuals, dtype=np.float64).ravel()
    if r.size == 0:
        return {"n": 0, "mae": float("nan"), "rmse": float("nan"), "bias": float("nan"), "width68": float("nan")}
    lo, hi = np.percentile(r, [15.865, 84.135])
    return {
        "n": int(r.size),
        "mae": float(np.abs(r).mean()),
        "rmse": float(np.sqrt((r**2).mean())),
        "bias": float(r.mean()),
        "width68": float((hi - lo) / 2),
    }


def metrics_by_face(pred: torch.Tensor, truth: torch.Tensor, scored: torch.Tensor) -> dict[str, dict[str, float]]:
    """``pred``, ``truth`` ``(B, 4760)``; ``scored`` ``(B, 4760)`` bool (e.g. masked and valid).
    Returns ``{face: stats, ..., "all": stats}`` of ``pred - truth`` over the scored sensors."""
    res = (pred - truth).detach().cpu().numpy()
    sc = scored.detach().cpu().numpy()
    out = {face: residual_stats(res[:, geo.face_ids(face)][sc[:, geo.face_ids(face)]]) for face in geo.FACES}
    out["all"] = residual_stats(res[sc])
    return out
