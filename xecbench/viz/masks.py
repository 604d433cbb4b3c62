"""The two granularities of random hiding, side by side on the inner face (notebook 06).

Top row: the sensors hidden per sensor and per last-stage cell at the same ratio. Bottom row: the
last-stage cells left with no visible sensor, which are the only cells the encoder's last stage
sees as masked.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from .. import geometry as geo
from ..nn import encoder_config, random_hidden
from .display import draw_face


def fully_hidden_cells(hidden: torch.Tensor, valid: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Per sensor ``(B, 4760)`` bool: its last-stage cell has valid sensors and all of them hidden."""
    counts = torch.zeros(hidden.shape, dtype=torch.float32)
    n_valid = counts.index_add(1, cells, valid.float())
    n_seen = counts.index_add(1, cells, (valid & ~hidden).float())
    return ((n_valid > 0) & (n_seen == 0))[:, cells]


def plot_mask_units(ratio: float = 0.6, seed: int = 0, preset: str = "tiny") -> tuple[Figure, dict[str, Any]]:
    """Figure and ``{unit: fraction of the inner face's last-stage cells fully hidden}`` for one
    all-valid event hidden per sensor and per cell at ``ratio``."""
    cells = encoder_config(preset).last_stage_cells()
    valid = torch.ones(1, geo.N_CHANNELS, dtype=torch.bool)
    inner = torch.as_tensor(np.array(geo.face_ids("inner")))
    fig, axes = plt.subplots(2, 2, figsize=(7.5, 7.6), layout="constrained")
    fractions = {}
    for col, unit in enumerate(("sensor", "cell")):
        g = torch.Generator().manual_seed(seed)
        hidden = random_hidden(valid, ratio, g, cells if unit == "cell" else None)
        whole = fully_hidden_cells(hidden, valid, cells)
        n_cells = len(torch.unique(cells[inner]))
        fractions[unit] = len(torch.unique(cells[inner][whole[0, inner]])) / n_cells
        for row, (values, title) in enumerate(
            (
                (hidden[0], f"hidden per {unit}: {int(hidden[0, inner].sum())} of {inner.numel()} sensors"),
                (whole[0], f"last-stage cells fully hidden: {fractions[unit]:.0%}"),
            )
        ):
            draw_face(axes[row, col], values.float().numpy(), "inner", norm=Normalize(0, 1), cmap="Greys", labels=False)
            axes[row, col].set_title(title, fontsize=9)
    fig.suptitle(f"Mask ratio {ratio:.0%}, inner face (black = hidden)")
    return fig, fractions
