"""Toy metrics against closed forms and known orderings."""
import math

import numpy as np
import pytest
import torch

from core.errors import ScheduleLabError
from core.metrics import mean_ci, mmd_rbf, nll, sliced_wasserstein
from toy_data import gaussian, get_toy


def test_nll_of_true_samples_is_the_entropy_of_a_gaussian():
    c, d = 0.5, 2
    mix = gaussian(c, d)
    x = mix.sample(200_000, torch.Generator().manual_seed(0))
    entropy = 0.5 * d * math.log(2 * math.pi * math.e * c ** 2)
    assert abs(nll(x, mix) - entropy) < 0.01


def test_sliced_wasserstein_between_shifted_gaussians():
    """SW2 of N(0, I) and N(m, I): each projection's W2 is |theta . m|, E[(theta.m)^2] = |m|^2 / d.
    The sets have unequal sizes, so this goes through the interpolated-quantile path."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20_000, 2, generator=g, dtype=torch.float64)
    m = torch.tensor([0.6, -0.3], dtype=torch.float64)
    y = torch.randn(15_000, 2, generator=g, dtype=torch.float64) + m
    expected = float(m.norm()) / math.sqrt(2)
    assert abs(sliced_wasserstein(x, y, n_proj=300) - expected) < 0.02
    assert sliced_wasserstein(x, x) < 1e-12


def test_mmd_is_near_zero_for_same_distribution_and_grows_with_shift():
    mix = get_toy("moons")
    g = torch.Generator().manual_seed(2)
    a, b = mix.sample(3000, g), mix.sample(3000, g)
    same = mmd_rbf(a, b)
    shifted = mmd_rbf(a, b + 0.2)
    assert abs(same) < 2e-3 and shifted > 10 * abs(same) + 1e-3


def test_mean_ci_matches_student_t():
    m, h = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and h == pytest.approx(3.182446 * np.std([1, 2, 3, 4], ddof=1) / 2, rel=1e-5)
    assert math.isnan(mean_ci([1.0])[1])


def test_nan_samples_are_reported():
    x = torch.zeros(10, 2, dtype=torch.float64)
    x[3, 1] = float("nan")
    with pytest.raises(ScheduleLabError, match="1 samples are NaN"):
        nll(x, get_toy("moons"))
