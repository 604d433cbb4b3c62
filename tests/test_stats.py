import math

import numpy as np
import pytest

from xecbench.eval import PairedComparison, holm, paired_verdict, t_sf


def test_hand_computed_case():
    # d = a - b = [1, 2, 3, 4, 5] - [0, 0, 0, 0, 0]: mean 3, sample std sqrt(2.5), se sqrt(2.5 / 5)
    a, b = np.array([1.0, 2, 3, 4, 5]), np.zeros(5)
    r = paired_verdict(a, b, ("slow", "fast"))
    assert r.n == 5 and r.mean == pytest.approx(3.0)
    assert r.se == pytest.approx(math.sqrt(0.5)) and r.t == pytest.approx(3 / math.sqrt(0.5))
    # t = 4.24 beyond Student's 95 % quantile for 4 degrees of freedom, 2.776
    assert r.critical == pytest.approx(2.776)
    assert r.better == "fast" and r.verdict.startswith("fast is better than slow (paired t-test over 5 events, 95 %")


def test_within_noise_and_the_order_of_the_names():
    a = np.array([1.0, -1, 1, -1, 0.5])  # mean 0.1, se about 0.40: t well inside 2.78
    r = paired_verdict(a, np.zeros(5), ("x", "y"), unit="seeds")
    assert r.better is None and "x and y are within noise (paired t-test over 5 seeds" in r.verdict
    assert paired_verdict(np.zeros(5), np.array([1.0, 2, 3, 4, 5]), ("x", "y")).better == "x"


def test_pairing_sees_a_small_shift_that_the_spread_would_hide():
    rng = np.random.default_rng(0)
    hard = rng.exponential(1.0, 400)  # the events' own difficulty, shared by both methods
    a, b = hard + 0.01 + rng.normal(0, 0.001, 400), hard
    assert paired_verdict(a, b, ("a", "b")).better == "b"
    # the same shift is far inside either method's own spread
    assert 0.01 < 0.1 * hard.std()


def test_nan_pairs_are_left_out_and_bad_input_is_named():
    a, b = np.array([1.0, np.nan, 3.0, 2.0]), np.array([0.0, 1.0, np.nan, 1.0])
    assert paired_verdict(a, b).n == 2
    with pytest.raises(ValueError, match="same length"):
        paired_verdict(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        paired_verdict(np.array([1.0, np.nan]), np.array([0.0, 0.0]))


def test_identical_scores_are_within_noise():
    r = paired_verdict(np.ones(4), np.ones(4))
    assert r.t == 0 and r.better is None


def test_two_seeds_need_a_large_t():
    # differences 1.0 and 1.2: t = 1.1 / 0.1 = 11, below the 12.71 of one degree of freedom
    r = paired_verdict(np.array([2.0, 2.2]), np.array([1.0, 1.0]), ("a", "b"), unit="seeds")
    assert r.t == pytest.approx(11.0) and r.better is None and "12.71" in r.verdict


@pytest.mark.parametrize("dof", [1, 2, 4, 9, 30, 31, 80, 500])
def test_t_quantiles_hold_95_percent_of_students_t(dof):
    import torch

    from xecbench.eval.stats import t_critical

    # integrate Student's t density over [-c, c] numerically: 95 % of the probability
    c = t_critical(dof)
    x = torch.linspace(-c, c, 200001, dtype=torch.float64)
    pdf = torch.distributions.StudentT(torch.tensor(float(dof), dtype=torch.float64)).log_prob(x).exp()
    assert torch.trapezoid(pdf, x).item() == pytest.approx(0.95, abs=2e-4)


def test_t_quantiles_against_known_values():
    from xecbench.eval.stats import t_critical

    # Student's t, two-sided 95 %: 1 dof 12.706, 10 dof 2.228, 60 dof 2.000, 120 dof 1.980, infinity 1.960
    for dof, ref in ((1, 12.706), (10, 2.228), (60, 2.000), (120, 1.980), (10**6, 1.960)):
        assert t_critical(dof) == pytest.approx(ref, abs=2e-3)
    with pytest.raises(ValueError, match="at least 1 degree"):
        t_critical(0)


def test_t_tail_against_closed_forms_and_the_quantile_table():
    from xecbench.eval.stats import t_critical

    for t in (0.0, 0.3, 1.0, 4.3, 50.0):
        assert t_sf(t, 1) == pytest.approx(0.5 - math.atan(t) / math.pi, rel=1e-12)  # Cauchy
        assert t_sf(t, 2) == pytest.approx(0.5 - t / (2 * math.sqrt(2 + t * t)), rel=1e-12)
        assert t_sf(-t, 7) == pytest.approx(1 - t_sf(t, 7), rel=1e-12)
    for dof in range(1, 31):  # the table's 95 % two-sided quantiles, to their 4 digits
        assert t_sf(t_critical(dof), dof) == pytest.approx(0.025, abs=3e-5)
    assert t_sf(1.959964, 10**7) == pytest.approx(0.025, abs=1e-6)  # the normal limit
    assert t_sf(math.inf, 3) == 0.0 and t_sf(-math.inf, 3) == 1.0
    with pytest.raises(ValueError, match="degree of freedom"):
        t_sf(1.0, 0)


def _with_p(p, name):
    return PairedComparison(-1.0, 0.1, 5, -10.0, 2.776, name, "unused", p, (name, "ref"), "seeds")


def test_holm_steps_down_and_stops_at_the_first_miss():
    # sorted p 0.01, 0.03, 0.04 against 0.05/3, 0.05/2, 0.05/1: the second misses, so the third is
    # not tested even though 0.04 <= 0.05
    out = holm({"a": _with_p(0.04, "a"), "b": _with_p(0.01, "b"), "c": _with_p(0.03, "c")})
    assert [out[k].better for k in "abc"] == [None, "b", None]
    assert "Holm-corrected over 3 comparisons at 95 %: p = 0.01 <= 0.017" in out["b"].verdict
    assert out["c"].verdict.startswith("c and ref are within noise") and "p = 0.03 > 0.025" in out["c"].verdict
    # more power than Bonferroni (0.05/3 for all): 0.02 and 0.04 pass Holm's 0.025 and 0.05
    out = holm({"a": _with_p(0.001, "a"), "b": _with_p(0.02, "b"), "c": _with_p(0.04, "c")})
    assert all(out[k].better == k for k in "abc")
    # an untested comparison passes through and does not count in m
    untested = _with_p(math.nan, "d")
    out = holm({"a": _with_p(0.04, "a"), "d": untested})
    assert out["d"] is untested and out["a"].better == "a" and "Holm-corrected over 1 comparison at" in out["a"].verdict
    # the direction comes from the mean difference
    worse = holm({"a": PairedComparison(2.0, 0.1, 5, 20.0, 2.776, "ref", "x", 1e-4, ("a", "ref"), "seeds")})
    assert worse["a"].better == "ref" and worse["a"].verdict.startswith("ref is better than a")
