"""Mask an event and let a trained MAE fill it in: the shared step of the demo, the explorer and
the notebooks."""

from __future__ import annotations

import numpy as np
import torch

from ..baselines import neighbour_average
from ..data import EventDataset
from ..nn import XECMAE


def reconstruct(model: XECMAE, dataset: EventDataset, index: int, mask_ratio: float, seed: int = 0) -> dict:
    """Hide ``mask_ratio`` of one event's valid sensors (the model's unit) and reconstruct them.
    Returns raw ``(4760,)`` npho arrays: ``truth`` (NaN where dead), ``masked_input`` (NaN where
    hidden or dead), ``reconstruction`` (the model at hidden sensors, the input elsewhere),
    ``neighbour_average`` (the classical baseline at hidden sensors, the input elsewhere: what the
    model has to beat), and the ``hidden`` and ``dead`` booleans (disjoint: only valid sensors are
    hidden)."""
    item = dataset[index : index + 1]
    g = torch.Generator().manual_seed(seed)
    model.eval()
    with torch.no_grad():
        out = model(item["x"], model.draw_masks(item["valid"], item["time_valid"], mask_ratio, g))
    norm = dataset.normalizer
    truth = norm.npho_inverse(item["x"][0, :, 0].double()).numpy()
    pred = norm.npho_inverse(out.pred[0, :, 0].double()).clamp(min=0).numpy()
    hidden = out.masks.hidden[0].numpy()
    dead = ~item["valid"][0].numpy()
    visible = out.masks.visible
    nb = neighbour_average(torch.where(visible, torch.as_tensor(truth)[None], 0.0), visible)[0][0].numpy()
    truth[dead] = np.nan
    return {
        "truth": truth,
        "masked_input": np.where(hidden, np.nan, truth),
        "reconstruction": np.where(hidden, pred, truth),
        "neighbour_average": np.where(hidden, nb, truth),
        "hidden": hidden,
        "dead": dead,
    }
