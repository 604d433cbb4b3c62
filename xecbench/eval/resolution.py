"""Regression metrics as physicists quote them: bias and 68 % width per target.

* energy: the relative residual ``(E_reco - E_true) / E_true``: bias (mean) and 68 % width
  (half the 16th-84th percentile spread), also in bins of true energy (:func:`energy_in_bins`);
* uvw: the residual per axis (cm), and the 68 % quantile of the 3D distance;
* direction: the 68 % quantile of the opening angle between true and reconstructed direction (deg);
* time: the residual in ps.

Every row is ``{"n", "bias", "width68"}`` (for the distance and the angle, ``bias`` is their mean
and ``width68`` their 68 % quantile: they have no sign).
"""

from __future__ import annotations

import numpy as np
import torch

from .metrics import residual_stats

ROWS = {
    "energy": ["energy rel."],
    "uvw": ["u [cm]", "v [cm]", "w [cm]", "uvw 3D [cm]"],
    "direction": ["angle [deg]"],
    "time": ["time [ps]"],
}


def _np(a: torch.Tensor | np.ndarray) -> np.ndarray:
    return a.detach().cpu().double().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, dtype=np.float64)


def _signed(r: np.ndarray) -> dict[str, float]:
    s = residual_stats(r[np.isfinite(r)])
    return {"n": s["n"], "bias": s["bias"], "width68": s["width68"]}


def _unsigned(d: np.ndarray) -> dict[str, float]:
    d = d[np.isfinite(d)]
    if d.size == 0:
        return {"n": 0, "bias": float("nan"), "width68": float("nan")}
    return {"n": int(d.size), "bias": float(d.mean()), "width68": float(np.quantile(d, 0.68))}


def opening_angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle between vectors ``(n, 3)`` in degrees (they need not be unit)."""
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def regression_metrics(
    pred: dict[str, torch.Tensor | np.ndarray], truth: dict[str, torch.Tensor | np.ndarray]
) -> dict[str, dict[str, float]]:
    """``{row: {"n", "bias", "width68"}}`` for the targets in ``pred`` (target -> ``(n, dims)``
    physical units, as :class:`~xecbench.nn.regress.XECRegressor` and
    :class:`.classical.ClassicalReco` return them), against ``truth`` of the same shapes."""
    out = {}
    for target in pred:
        p, t = _np(pred[target]), _np(truth[target])
        p, t = p.reshape(len(p), -1), t.reshape(len(t), -1)
        if target == "energy":
            out["energy rel."] = _signed((p[:, 0] - t[:, 0]) / t[:, 0])
        elif target == "uvw":
            for k, axis in enumerate("uvw"):
                out[f"{axis} [cm]"] = _signed(p[:, k] - t[:, k])
            out["uvw 3D [cm]"] = _unsigned(np.linalg.norm(p - t, axis=1))
        elif target == "direction":
            out["angle [deg]"] = _unsigned(opening_angle_deg(p, t))
        elif target == "time":
            out["time [ps]"] = _signed(1000.0 * (p[:, 0] - t[:, 0]))
        else:
            raise KeyError(f"no metric for target {target!r}; targets are {tuple(ROWS)}")
    return out


def energy_in_bins(
    pred: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray, edges: list[float] | np.ndarray
) -> list[dict[str, float]]:
    """The relative energy residual's bias and 68 % width in bins of true energy (``edges`` in MeV):
    one row per bin with ``lo``, ``hi``, ``n``, ``bias``, ``width68``."""
    p, t = _np(pred).ravel(), _np(truth).ravel()
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (t >= lo) & (t < hi)
        rows.append({"lo": float(lo), "hi": float(hi), **_signed((p[sel] - t[sel]) / t[sel])})
    return rows


def format_regression_table(by_method: dict[str, dict[str, dict[str, float]]], stat: str = "width68") -> str:
    """One row per metric row, one column per method, of ``stat``."""
    methods = list(by_method)
    rows = list(next(iter(by_method.values())))
    name_w = max(16, *(len(r) + 2 for r in rows))
    widths = [max(12, len(m) + 2) for m in methods]
    lines = [f"{stat:<{name_w}}" + "".join(f"{m:>{w}}" for m, w in zip(methods, widths))]
    for r in rows:
        cells = [by_method[m].get(r, {}).get(stat, float("nan")) for m in methods]
        lines.append(f"{r:<{name_w}}" + "".join(f"{c:>{w}.4g}" for c, w in zip(cells, widths)))
    return "\n".join(lines)
