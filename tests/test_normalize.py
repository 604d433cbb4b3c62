import math

import numpy as np
import pytest
import torch

from xecbench.data import NPHO_SCHEMES, Normalizer, raw_invalid
from xecbench.data.normalize import INVALID_THRESHOLD

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


def test_invalid_markers_of_numpy_arrays_equal_those_of_tensors():
    """raw_invalid reads numpy arrays with numpy's operators: the same flags as the tensor path, for
    ROOT's big-endian arrays, float64, a 0-d array, the threshold's neighbours, NaN and both infinities."""
    values = [0.0, -1e12, 9e9, np.nextafter(9e9, np.inf), 1e10, np.nan, np.inf, -np.inf, 5.0]
    for dtype in (np.float32, ">f4", np.float64, ">f8"):
        a = np.array([values, values[::-1]], dtype=dtype)
        got = raw_invalid(a)
        assert got.dtype == torch.bool and got.shape == a.shape
        assert torch.equal(got, raw_invalid(torch.tensor(a.astype(np.float64))))
    assert raw_invalid(np.array(np.nan)).item() and not raw_invalid(np.array(3.0, dtype=np.float32)).item()


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


# ------------------------------------------------------------------------------------------
# the fast CPU path (Normalizer.normalize / normalize_into) against the reference, bit for bit
# ------------------------------------------------------------------------------------------


def _bits(x: torch.Tensor) -> torch.Tensor:
    """float32 values as their bit patterns: equal bits, not just equal values (-0.0 != 0.0 here)."""
    return x.contiguous().view(torch.int32)


def _raw_events(n: int, dtype=np.float32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 4760)`` npho and time with everything the data can hold: counts from 0 to 1e5, negative
    counts (baseline subtraction), +-0, tiny and huge values, the invalid markers and the float32
    neighbours of the 9e9 threshold."""
    rng = np.random.default_rng(seed)
    npho = rng.exponential(300.0, size=(n, 4760)) * rng.choice([1.0, -0.05], size=(n, 4760), p=[0.9, 0.1])
    time = rng.normal(30.0, 20.0, size=(n, 4760))
    t32 = np.float32(INVALID_THRESHOLD)
    special = np.array(
        [0.0, -0.0, 1e-30, -1e-30, 0.375, -0.375, -0.2, 1e10, 9e9, np.nan, np.inf, -np.inf, -1e30, 3e38,
         t32, np.nextafter(t32, np.float32(0)), np.nextafter(t32, np.float32(np.inf))],
        dtype=np.float64,
    )  # fmt: skip
    for a in (npho, time):
        hit = rng.random(a.shape) < 0.05
        a[hit] = rng.choice(special, size=int(hit.sum()))
        a[0, : len(special)] = special  # every special value at least once
    return npho.astype(dtype), time.astype(dtype)


def _reference_one_event(npho: np.ndarray, time: np.ndarray, n: Normalizer) -> tuple[torch.Tensor, ...]:
    """One event ``(4760,)`` normalised by the formulas of the module docstring, written out here
    independently of the class: float64, odd continuation ``sign(v) f(|v|)``, sentinel where invalid."""
    raw_n = torch.as_tensor(npho).double()
    raw_t = torch.as_tensor(time).double()
    valid = torch.isfinite(raw_n) & (raw_n <= 9e9)
    time_valid = valid & torch.isfinite(raw_t) & (raw_t <= 9e9)
    s1, s2 = n.npho_scale, n.npho_scale2
    v = raw_n + 3.0 / 8.0 if n.npho_scheme == "anscombe" else raw_n / s1
    f = {"log1p": torch.log1p, "sqrt": torch.sqrt, "anscombe": torch.sqrt, "linear": None}[n.npho_scheme]
    if f is None:
        y = v / s2
    elif n.npho_scheme == "anscombe":
        y = 2.0 * (torch.sign(v) * f(v.abs())) / (math.sqrt(s1) * s2)
    else:
        y = torch.sign(v) * f(v.abs()) / s2
    t = raw_t / n.time_scale - n.time_shift
    x = torch.stack([torch.where(valid, y, n.sentinel), torch.where(time_valid, t, n.sentinel)], dim=-1)
    return x.float(), valid, time_valid


@pytest.mark.parametrize("scheme", NPHO_SCHEMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_path_is_bit_identical_to_the_reference_and_to_a_per_event_one(scheme, dtype, monkeypatch):
    # small blocks, so that several blocks and a short last one are exercised
    monkeypatch.setattr("xecbench.data.normalize.BLOCK_ROWS", 3)
    n = Normalizer(npho_scheme=scheme, npho_scale=37.0, npho_scale2=1.7, time_scale=7.0, time_shift=0.3, sentinel=-3.5)
    npho, time = _raw_events(11, dtype)
    x, valid, time_valid = n.normalize(npho, time)
    ref_x, ref_valid, ref_time_valid = n(npho, time)
    assert torch.equal(_bits(x), _bits(ref_x))
    assert torch.equal(valid, ref_valid) and torch.equal(time_valid, ref_time_valid)
    for i in range(len(npho)):
        one_x, one_valid, one_time_valid = _reference_one_event(npho[i], time[i], n)
        assert torch.equal(_bits(x[i]), _bits(one_x)), i
        assert torch.equal(valid[i], one_valid) and torch.equal(time_valid[i], one_time_valid), i
    assert torch.equal(valid, ~raw_invalid(npho))  # the masks' own definition, threshold neighbours included


def test_normalize_into_rows_of_a_batch_and_other_shapes():
    n = Normalizer()
    npho, time = _raw_events(5)
    ref_x, ref_valid, ref_time_valid = n(npho, time)
    x = torch.full((8, 4760, 2), 7.0)
    valid = torch.zeros(8, 4760, dtype=torch.bool)
    time_valid = torch.zeros(8, 4760, dtype=torch.bool)
    n.normalize_into(npho[1:4], time[1:4], x[2:5], valid[2:5], time_valid[2:5])  # rows 2-4 of a batch
    assert torch.equal(_bits(x[2:5]), _bits(ref_x[1:4])) and torch.equal(valid[2:5], ref_valid[1:4])
    assert torch.equal(time_valid[2:5], ref_time_valid[1:4])
    assert (x[:2] == 7.0).all() and (x[5:] == 7.0).all() and not valid[5:].any()  # nothing else touched
    one = n.normalize(npho[0], time[0])  # a single event (4760,), and tensors in
    assert torch.equal(_bits(one[0]), _bits(ref_x[0]))
    both = n.normalize(torch.from_numpy(npho[None, :2]), torch.from_numpy(time[None, :2]))  # (1, 2, 4760)
    assert both[0].shape == (1, 2, 4760, 2) and torch.equal(_bits(both[0][0]), _bits(ref_x[:2]))
    assert n.normalize(npho[:0], time[:0])[0].shape == (0, 4760, 2)
    with pytest.raises(ValueError, match="same shape"):
        n.normalize(npho, time[:2])
    with pytest.raises(ValueError, match=r"outputs must be x \(3, 4760, 2\)"):
        n.normalize_into(npho[:3], time[:3], x[:2], valid[:3], time_valid[:3])
