"""Plots: single faces, the unfolded six-face event display, comparison panels, training curves, and
the mask explorer widget."""

from .curves import (
    plot_attention,
    plot_label_efficiency,
    plot_loss_curves,
    plot_lr_curves,
    plot_residuals,
    plot_resolution_vs,
    plot_seed_means,
)
from .display import FaceArtists, draw_face, event_display, face_panels, flat_coords
from .explorer import mask_explorer, render
from .masks import fully_hidden_cells, plot_mask_units

__all__ = [
    "FaceArtists",
    "draw_face",
    "event_display",
    "face_panels",
    "flat_coords",
    "fully_hidden_cells",
    "mask_explorer",
    "plot_attention",
    "plot_loss_curves",
    "plot_lr_curves",
    "plot_mask_units",
    "plot_residuals",
    "plot_seed_means",
    "plot_resolution_vs",
    "plot_label_efficiency",
    "render",
]
