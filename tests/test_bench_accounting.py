"""The side-by-side benchmark's accounting (``benchmarks/bench_models.py``): FLOPs of a convolution's
backward pass, counted against the hand formula, and the interval of a speed ratio."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
spec = importlib.util.spec_from_file_location("bench_models", BENCH / "bench_models.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def conv_step(groups: int):
    """Forward and backward of one 7x7 convolution, 12 -> 12 channels, on (2, 12, 9, 5)."""
    conv = torch.nn.Conv2d(12, 12, 7, padding=3, groups=groups)
    x = torch.randn(2, 12, 9, 5, requires_grad=True)
    return lambda: conv(x).sum().backward()


@pytest.mark.parametrize("groups", [1, 3, 12])
def test_a_convolution_step_counts_three_times_its_forward(groups):
    # by hand: every output value is a sum over (12 / groups) input channels x 49 taps, 2 FLOPs a tap
    forward = 2 * (2 * 12 * 9 * 5) * (12 // groups) * 49
    assert bench.step_flops(conv_step(groups)) == 3 * forward  # forward, input gradient, weight gradient


def test_torch_alone_overcounts_the_depthwise_weight_gradient():
    # what made the step's count too high: the reason the benchmark brings its own formula
    counter = FlopCounterMode(display=False)
    with counter:
        conv_step(12)()
    forward = 2 * (2 * 12 * 9 * 5) * 49
    assert counter.get_total_flops() == 2 * forward + 12 * forward


def test_only_the_gradients_asked_for_are_counted():
    conv = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4)
    x = torch.randn(1, 4, 6, 6)  # no input gradient: the weight's only
    formula = {torch.ops.aten.convolution_backward: bench.conv_backward_flops}
    counter = FlopCounterMode(display=False, custom_mapping=formula)
    with counter:
        conv(x).sum().backward()
    forward = 2 * (4 * 6 * 6) * 9
    assert counter.get_total_flops() == 2 * forward


def test_pair_ratio_interval_against_a_hand_computed_case():
    slow, fast = [2.0, 4.0, 2.0], [1.0, 1.0, 1.0]  # log ratios: ln 2, ln 4, ln 2
    logs = [math.log(2), math.log(4), math.log(2)]
    mean, sd = sum(logs) / 3, math.sqrt(sum((v - sum(logs) / 3) ** 2 for v in logs) / 2)
    half = 4.302653 * sd / math.sqrt(3)  # Student's t, 2 degrees of freedom, 97.5 % (its table: 4.303)
    low, high = bench.pair_ratio_interval(slow, fast)
    assert low == pytest.approx(math.exp(mean - half), rel=2e-4)
    assert high == pytest.approx(math.exp(mean + half), rel=2e-4)
    assert low < 2 ** (4 / 3) < high  # the geometric mean of the ratios lies inside
    # identical ratios: no spread, the interval is the ratio itself
    assert bench.pair_ratio_interval([3.0, 6.0], [1.0, 2.0]) == pytest.approx((3.0, 3.0))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        bench.pair_ratio_interval([1.0], [1.0])
    with pytest.raises(ValueError, match="do not pair up"):
        bench.pair_ratio_interval([1.0, 2.0, 3.0], [1.0, 2.0])
