"""Verdicts a difference can carry: paired t-tests, named in the verdict.

Two methods scored on the same units (the same events, or the same seeds) are compared through the
per-unit differences ``d = a - b``: their mean, its standard error ``std(d, ddof=1) / sqrt(n)`` and
``t = mean / se``. A method is called better only where ``|t|`` exceeds the two-sided 95 % quantile
of Student's t with ``n - 1`` degrees of freedom (12.7 for 2 seeds, 2.78 for 5, 1.96 for many
events); otherwise the verdict says "within noise". Pairing removes what the units share (a hard
event is hard for both methods), so it resolves differences far smaller than either method's spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t_critical(dof: int) -> float:
    """The two-sided 95 % quantile of Student's t with ``dof`` degrees of freedom (a table to 30;
    beyond, the normal quantile with the first two terms of its Cornish-Fisher expansion in 1/dof,
    within 1e-4 of the exact value)."""
    if dof < 1:
        raise ValueError(f"t_critical: needs at least 1 degree of freedom, got {dof}")
    return _T975[dof - 1] if dof <= len(_T975) else 1.95996 + 2.3716 / dof + 2.8224 / dof**2


@dataclass(frozen=True)
class PairedComparison:
    mean: float  # mean of a - b
    se: float  # its standard error
    n: int  # pairs used (both finite)
    t: float  # mean / se
    critical: float  # |t| above this is a difference (95 %, two-sided)
    better: str | None  # the method with the lower score, or None within noise
    verdict: str  # one sentence that names the test


def paired_verdict(
    a: np.ndarray,
    b: np.ndarray,
    names: tuple[str, str] = ("a", "b"),
    unit: str = "events",
) -> PairedComparison:
    """Compare scores ``a`` and ``b`` (lower is better; ``(n,)`` each, paired by position; pairs with a
    NaN are left out). Needs at least 2 pairs."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_verdict: a and b must be 1-D of the same length, got {a.shape} and {b.shape}")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    n = int(d.size)
    if n < 2:
        raise ValueError(f"paired_verdict: needs at least 2 pairs with finite scores, got {n}")
    mean = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(n))
    t = mean / se if se > 0 else (0.0 if mean == 0 else math.copysign(math.inf, mean))
    crit = t_critical(n - 1)
    test = f"paired t-test over {n} {unit}, 95 %"
    if abs(t) > crit:
        better, worse = (names[1], names[0]) if mean > 0 else names
        verdict = f"{better} is better than {worse} ({test}: |t| = {abs(t):.2f} > {crit:.2f})"
    else:
        better = None
        verdict = f"{names[0]} and {names[1]} are within noise ({test}: |t| = {abs(t):.2f} <= {crit:.2f})"
    return PairedComparison(mean, se, n, t, crit, better, verdict)
