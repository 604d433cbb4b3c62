"""Verdicts a difference can carry: paired t-tests, named in the verdict.

Two methods scored on the same units (the same events, or the same seeds) are compared through the
per-unit differences ``d = a - b``: their mean, its standard error ``std(d, ddof=1) / sqrt(n)`` and
``t = mean / se``. A method is called better only where ``|t|`` exceeds the two-sided 95 % quantile
of Student's t with ``n - 1`` degrees of freedom (12.7 for 2 seeds, 2.78 for 5, 1.96 for many
events); otherwise the verdict says "within noise". Pairing removes what the units share (a hard
event is hard for both methods), so it resolves differences far smaller than either method's spread.

Several comparisons at 95 % each call about one in twenty non-differences "better". :func:`holm`
decides a family of them together (Holm's step-down correction on the two-sided p-values, from
:func:`t_sf`): the chance of any false "better" in the family stays at 5 %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

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


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(a * math.log(x) + b * math.log1p(-x) + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b))
    if x < (a + 1.0) / (a + b + 2.0):  # where the fraction converges fast; else by symmetry
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, dof: int) -> float:
    """P(T > t) for Student's t with ``dof`` degrees of freedom: ``I_x(dof/2, 1/2) / 2`` with
    ``x = dof / (dof + t^2)`` for t >= 0, by symmetry below."""
    if dof < 1:
        raise ValueError(f"t_sf: needs at least 1 degree of freedom, got {dof}")
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * _betainc(dof / 2.0, 0.5, dof / (dof + t * t))
    return tail if t >= 0 else 1.0 - tail


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
    p: float = math.nan  # two-sided p-value of t
    names: tuple[str, str] = ("a", "b")
    unit: str = "events"


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
    p = 2.0 * t_sf(abs(t), n - 1)
    return PairedComparison(mean, se, n, t, crit, better, verdict, p, tuple(names), unit)


def holm(comparisons: dict[str, PairedComparison], level: float = 0.05) -> dict[str, PairedComparison]:
    """Decide a family of comparisons together (Holm's step-down method): sorted by p-value, the k-th
    smallest of m (k = 0, 1, ...) is a difference if ``p <= level / (m - k)`` and every smaller one
    was; the first that is not, and all after it, are within noise. The chance of any false "better"
    in the family is at most ``level``. Comparisons without a test (NaN p) pass through unchanged
    and do not count in m. Each verdict names the correction and the threshold it met or missed."""
    tested = sorted((c.p, name) for name, c in comparisons.items() if math.isfinite(c.p))
    m, out, rejecting = len(tested), dict(comparisons), True
    for k, (p, name) in enumerate(tested):
        c = comparisons[name]
        threshold = level / (m - k)
        rejecting = rejecting and p <= threshold
        test = (
            f"paired t-test over {c.n} {c.unit}, Holm-corrected over {m} comparison{'s' * (m != 1)} at "
            f"{100 * (1 - level):.0f} %: p = {p:.2g} {'<=' if rejecting else '>'} {threshold:.2g}"
        )
        if rejecting:
            better, worse = (c.names[1], c.names[0]) if c.mean > 0 else c.names
            verdict = f"{better} is better than {worse} ({test})"
        else:
            better, verdict = None, f"{c.names[0]} and {c.names[1]} are within noise ({test})"
        out[name] = replace(c, better=better, verdict=verdict)
    return out
