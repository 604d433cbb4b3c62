import math

import numpy as np
import pytest

from xecbench.eval import paired_verdict


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
