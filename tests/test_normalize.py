import math

import numpy as np
import pytest
import torch

from xecbench.data import NPHO_SCHEMES, Normalizer, raw_invalid

RAW = torch.tensor([0.0, 1.0, 57.0, 250.0, 1e4, 1e5], dtype=torch.float64)


@pytest.mark.parametrize("scheme", NPHO_SCHEMES)
def test_npho_inverse_is_exact(scheme):
    n = Normalizer(npho_scheme=scheme, npho_scale=37.0, npho_scale2=1.7)
    assert torch.allclose(n.npho_inverse(n.npho(RAW)), RAW, rtol=1e-12, atol=1e-9)


def test_npho_formulas_by_hand():
    s1, s2 = 100.0, 2.5
    x = 250.0
    expect = {
        "log1p": math.log1p(x / s1) / s2,
        "sqrt": math.sqrt(x / s1) / s2,
        "anscombe": 2 * math.sqrt(x + 3 / 8) / math.sqrt(s1) / s2,
        "linear": x / s1 / s2,
    }
    for scheme, value in expect.items():
        n = Normalizer(npho_scheme=scheme, npho_scale=s1, npho_scale2=s2)
        assert n.npho(torch.tensor(x, dtype=torch.float64)).item() == pytest.approx(value, rel=1e-12)


def poisson_variance_of(f, mean: float) -> float:
    """Exact variance of f(X) for X ~ Poisson(mean), summed over the pmf (+-15 sigma)."""
    lo, hi = max(0, int(mean - 15 * mean**0.5) - 10), int(mean + 15 * mean**0.5) + 10
    k = torch.arange(lo, hi + 1, dtype=torch.float64)
    p = torch.exp(k * math.log(mean) - mean - torch.lgamma(k + 1))
    y = f(k)
    m = (p * y).sum() / p.sum()
    return float((p * (y - m) ** 2).sum() / p.sum())


def test_anscombe_is_variance_stabilising():
    s1, s2 = 100.0, 2.5
    n = Normalizer(npho_scheme="anscombe", npho_scale=s1, npho_scale2=s2)
    var = [poisson_variance_of(n.npho, m) * s1 * s2**2 for m in (3, 10, 30, 100, 1e3, 1e4)]
    assert max(var) / min(var) < 1.05  # the old transform of npho / scale varied 13.6x here
    assert all(abs(v - 1) < 0.05 for v in var)  # the documented variance 1 / (s1 s2^2)


@pytest.mark.parametrize("scheme", NPHO_SCHEMES)
def test_negative_counts_are_kept_and_invert_exactly(scheme):
    n = Normalizer(npho_scheme=scheme, npho_scale=37.0, npho_scale2=1.7)
    raw = torch.tensor([-5000.0, -40.0, -1.0, -0.375, -0.2, 0.0, 0.2, 3.0, 900.0], dtype=torch.float64)
    y = n.npho(raw)
    assert torch.isfinite(y).all()
    assert (y.diff() > 0).all()  # monotonic through the domain edge
    assert torch.allclose(n.npho_inverse(y), raw, rtol=1e-12, atol=1e-9)
    x, valid, _ = n(raw.float()[None], torch.zeros(1, raw.numel()))
    assert valid.all()
    back = n.npho_inverse(x[0, :, 0].double())
    assert torch.allclose(back, raw, rtol=1e-5, atol=1e-4)  # not clamped to 0


def test_time_round_trip_and_formula():
    n = Normalizer(time_scale=10.0, time_shift=0.5)
    t = torch.tensor([0.0, 3.3, 12.0], dtype=torch.float64)
    assert torch.allclose(n.time(t), t / 10 - 0.5)
    assert torch.allclose(n.time_inverse(n.time(t)), t, rtol=1e-12)


def test_invalid_markers_and_sentinels():
    npho = np.array([[10.0, 500.0, 1e10, np.nan, 200.0, np.inf]], dtype=np.float32)
    time = np.array([[1e10, 4.0, 1e10, 3.0, np.nan, 2.0]], dtype=np.float32)
    assert raw_invalid(npho).tolist() == [[False, False, True, True, False, True]]
    n = Normalizer(sentinel=-7.0)
    x, valid, time_valid = n(npho, time)
    assert x.shape == (1, 6, 2) and x.dtype == torch.float32
    assert valid.tolist() == [[True, True, False, False, True, False]]
    assert time_valid.tolist() == [[False, True, False, False, False, False]]  # dead -> no valid time either
    assert (x[0, ~valid[0], 0] == -7.0).all() and (x[0, ~time_valid[0], 1] == -7.0).all()
    assert torch.isfinite(x).all()
    assert x[0, 1, 0].item() == pytest.approx(math.log1p(5.0) / 2.5, rel=1e-6)
    back_npho, back_time = n.inverse(x.double())
    assert back_npho[0, 1].item() == pytest.approx(500.0, rel=1e-5)
    assert back_time[0, 1].item() == pytest.approx(4.0, rel=1e-5)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match=r"npho_scheme must be one of \('log1p', 'sqrt', 'anscombe', 'linear'\)"):
        Normalizer(npho_scheme="log")
    with pytest.raises(ValueError, match="time_scale must be > 0"):
        Normalizer(time_scale=0)
    with pytest.raises(ValueError, match="same shape"):
        Normalizer()(np.zeros((2, 4760)), np.zeros((2, 4759)))
