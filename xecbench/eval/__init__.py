"""Evaluation: models against the classical baselines (inpainting per face, regression per target),
residual and resolution metrics, paired verdicts (one, or a family with Holm's correction)."""

from ..baselines import estimate_source, neighbour_average, solid_angle_estimate, solid_angles
from ..reco import ClassicalReco
from .compare import compare_inpainting, format_table, gap_closed
from .metrics import metrics_by_face, residual_stats
from .reconstruct import reconstruct
from .regress import compare_regression, predict_targets
from .resolution import energy_in_bins, format_regression_table, regression_metrics
from .stats import PairedComparison, holm, paired_verdict, t_sf

__all__ = [
    "ClassicalReco",
    "compare_regression",
    "energy_in_bins",
    "format_regression_table",
    "predict_targets",
    "regression_metrics",
    "compare_inpainting",
    "format_table",
    "gap_closed",
    "holm",
    "estimate_source",
    "metrics_by_face",
    "neighbour_average",
    "PairedComparison",
    "paired_verdict",
    "reconstruct",
    "residual_stats",
    "solid_angle_estimate",
    "solid_angles",
    "t_sf",
]
