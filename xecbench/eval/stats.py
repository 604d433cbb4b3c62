"""Verdicts a difference can carry: paired comparisons with a stated test.

Two methods scored on the same units (the same events, or the same seeds) are compared through the
per-unit differences ``d = a - b``: their mean, its standard error ``std(d, ddof=1) / sqrt(n)`` and
``z = mean / se``. A method is called better only where ``|z| > n_sigma`` (default 2, about 95 %
two-sided for a normal mean); otherwise the verdict says "within noise". Pairing removes what the
units share (a hard event is hard for both methods), so it resolves differences far smaller than
either method's own spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedComparison:
    mean: float  # mean of a - b
    se: float  # its standard error
    n: int  # pairs used (both finite)
    z: float  # mean / se
    better: str | None  # the method with the lower score, or None within noise
    verdict: str  # one sentence that names the test


def paired_verdict(
    a: np.ndarray,
    b: np.ndarray,
    names: tuple[str, str] = ("a", "b"),
    unit: str = "events",
    n_sigma: float = 2.0,
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
    z = mean / se if se > 0 else (0.0 if mean == 0 else math.copysign(math.inf, mean))
    test = f"paired over {n} {unit}, {n_sigma:g} standard errors"
    if abs(z) > n_sigma:
        better, worse = (names[1], names[0]) if mean > 0 else names
        verdict = f"{better} is better than {worse} ({test}: z = {abs(z):.1f})"
    else:
        better = None
        verdict = f"{names[0]} and {names[1]} are within noise ({test}: |z| = {abs(z):.1f})"
    return PairedComparison(mean, se, n, z, better, verdict)
