"""The mask explorer: slide the mask ratio and watch a trained MAE fill in the hidden sensors.

:func:`render` draws one view (pure: figure + numbers); :func:`mask_explorer` wraps it in
ipywidgets (ratio slider, event and face selectors, a readout). The figure is appended to the
``Output`` as a PNG image after replacing the previous one, so one figure is shown at a time in
JupyterLab, under nbval and in papermill runs alike.
"""

from __future__ import annotations

import io
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from .. import geometry as geo
from ..data import EventDataset
from ..eval import reconstruct
from ..nn import XECMAE
from .display import _values_norm, draw_face


def render(
    model: XECMAE, dataset: EventDataset, event: int = 0, face: str = "inner", ratio: float = 0.6, seed: int = 0
) -> tuple[Figure, dict[str, Any]]:
    """Masked input (crosses: dead, white dots: hidden), the neighbour-average baseline, the model's
    reconstruction, the truth and the model's relative error on one face of one event.

    Returns the figure and ``{"ratio", "face", "event", "n_hidden", "n_sensors", "recon_sum",
    "rmse_model", "rmse_neighbour_average"}`` (RMSE in photons over the face's hidden sensors).
    """
    if face not in geo.FACES:
        raise ValueError(f"face must be one of {geo.FACES}, got {face!r}")
    rec = reconstruct(model, dataset, event, ratio, seed)
    ids = geo.face_ids(face)
    truth = rec["truth"]
    err = np.where(rec["hidden"], (rec["reconstruction"] - truth) / np.maximum(np.nan_to_num(truth), 10.0), np.nan)
    tall = face == "inner"
    fig, axes = plt.subplots(1, 5, figsize=(15, 4.6 if tall else 3.0), layout="constrained")
    shared = _values_norm(np.concatenate([rec["masked_input"][ids], truth[ids]]), "npho", None, None)
    panels = (
        ("masked input", rec["masked_input"]),
        ("neighbour average", rec["neighbour_average"]),
        ("model", rec["reconstruction"]),
        ("truth", truth),
    )
    for k, (ax, (name, values)) in enumerate(zip(axes, panels)):
        art = draw_face(ax, values, face, norm=shared, dead=rec["dead"], hidden=rec["hidden"] if k == 0 else None)
        ax.set_title(name, fontsize=9)
    fig.colorbar(art.main, ax=list(axes[:4]), shrink=0.8, label="npho (photons)")
    e = draw_face(axes[4], err, face, quantity="time", norm=Normalize(-1, 1), cmap="coolwarm")
    axes[4].set_title("(model - truth) / truth, hidden", fontsize=9)
    fig.colorbar(e.main, ax=axes[4], shrink=0.8)
    n_hidden = int(rec["hidden"][ids].sum())
    on_face = rec["hidden"][ids]

    def rmse(estimate: np.ndarray) -> float:
        return float(np.sqrt(np.mean((estimate[ids][on_face] - truth[ids][on_face]) ** 2))) if n_hidden else np.nan

    fig.suptitle(f"event {event}, {face} face: mask ratio {ratio:.2f} ({n_hidden} of {ids.size} sensors hidden)")
    info = {
        "ratio": ratio,
        "face": face,
        "event": event,
        "n_hidden": n_hidden,
        "n_sensors": int(ids.size),
        "recon_sum": float(np.nansum(rec["reconstruction"][ids][on_face])),
        "rmse_model": rmse(rec["reconstruction"]),
        "rmse_neighbour_average": rmse(rec["neighbour_average"]),
    }
    return fig, info


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def mask_explorer(
    model: XECMAE,
    dataset: EventDataset,
    ratio: float = 0.6,
    faces: tuple[str, ...] = ("inner", "top", "bottom", "outer", "us", "ds"),
):
    """An ipywidgets box: mask-ratio slider, event and face selectors, readout and the figure.

    ``box.last`` holds the numbers of the latest redraw (see :func:`render`).
    """
    import ipywidgets as w
    from IPython.display import Image

    slider = w.FloatSlider(
        value=ratio,
        min=0.05,
        max=0.95,
        step=0.05,
        description="mask ratio",
        continuous_update=False,
        readout_format=".2f",
    )
    event = w.BoundedIntText(value=0, min=0, max=len(dataset) - 1, description="event")
    face = w.Dropdown(options=list(faces), value=faces[0], description="face")
    readout = w.HTML()
    out = w.Output()
    box = w.VBox([w.HBox([slider, event, face]), readout, out])

    def redraw(_change: Any = None) -> None:
        fig, info = render(model, dataset, event.value, face.value, slider.value)
        out.outputs = ()
        out.append_display_data(Image(data=_png(fig), format="png"))
        readout.value = (
            f"<b>mask ratio {info['ratio']:.2f}</b>: {info['n_hidden']} of {info['n_sensors']}"
            f" sensors on the {info['face']} face hidden; RMSE over them: model {info['rmse_model']:.3g},"
            f" neighbour average {info['rmse_neighbour_average']:.3g} photons"
        )
        box.last = info

    for control in (slider, event, face):
        control.observe(redraw, names="value")
    box.controls = {"ratio": slider, "event": event, "face": face}
    box.output = out
    redraw()
    return box
