"""Toy mixtures: the exact denoiser, score and density checked against independent estimates."""
import json
import math

import pytest
import torch

from core.errors import ScheduleLabError
from toy_data import TOYS, gaussian, get_toy
from toy_data.mixture import GaussianMixture


@pytest.mark.parametrize("name", ["grid8x8", "moons", "ring8"])
@pytest.mark.parametrize("sigma", [0.05, 0.3, 1.5])
def test_exact_denoiser_equals_monte_carlo_posterior_mean(name, sigma):
    """D(x, sigma) = E[x0 | x]: self-normalised importance estimate with x0 ~ p, weights N(x; x0, sigma^2)."""
    mix = get_toy(name)
    g = torch.Generator().manual_seed(1)
    x0 = mix.sample(400_000, g)
    x = mix.sample(6, g, sigma=sigma)
    logw = -((x[:, None, :] - x0[None]) ** 2).sum(-1) / (2 * sigma ** 2)           # [6, N]
    w = torch.softmax(logw, dim=1)
    mc = w @ x0
    ess = 1 / (w ** 2).sum(1)
    # standard error of a self-normalised estimate ~ posterior std / sqrt(ESS)
    post_var = (w * ((x0[None] - mc[:, None]) ** 2).sum(-1)).sum(1)
    tol = 5 * (post_var / ess).sqrt() + 1e-6
    err = (mix.denoise(x, sigma) - mc).norm(dim=1)
    assert (ess > 200).all()
    assert (err < tol).all(), (err, tol)


@pytest.mark.parametrize("name", TOYS)
def test_score_is_gradient_of_log_density(name):
    """autograd of log p_sigma(x) equals (D - x) / sigma^2 (Tweedie), per-sample sigma."""
    mix = get_toy(name)
    g = torch.Generator().manual_seed(2)
    sigma = torch.tensor([0.01, 0.1, 0.5, 2.0, 10.0], dtype=torch.float64)
    x = mix.sample(5, g) + sigma[:, None] * torch.randn(5, mix.dim, generator=g, dtype=torch.float64)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(mix.log_prob(x, sigma).sum(), x)
    tweedie = (mix.denoise(x.detach(), sigma) - x.detach()) / sigma[:, None] ** 2
    torch.testing.assert_close(grad, tweedie, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("sigma", [0.0, 0.2])
def test_density_integrates_to_one(sigma):
    mix = get_toy("moons")
    u = torch.linspace(-3, 3, 601, dtype=torch.float64)
    grid = torch.cartesian_prod(u, u)
    mass = mix.log_prob(grid, sigma).exp().sum() * (u[1] - u[0]) ** 2
    assert abs(float(mass) - 1) < 1e-3


@pytest.mark.parametrize("name", TOYS)
def test_toys_have_std_half_and_sampler_matches_moments(name):
    mix = get_toy(name)
    assert abs(mix.std() - 0.5) < 0.01
    x = mix.sample(200_000, torch.Generator().manual_seed(3))
    torch.testing.assert_close(x.mean(0), mix.mean(), atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), mix.covariance(), atol=0.01, rtol=0)


def test_gaussian_denoiser_closed_form_any_dimension():
    c, d = 0.7, 16
    mix = gaussian(c, d)
    x = torch.randn(4, d, dtype=torch.float64)
    s = torch.tensor([0.1, 1.0, 3.0, 50.0], dtype=torch.float64)
    torch.testing.assert_close(mix.denoise(x, s), c ** 2 / (c ** 2 + s[:, None] ** 2) * x)
    lp = -0.5 * (x ** 2).sum(1) / (c ** 2 + s ** 2) - 0.5 * d * torch.log(2 * math.pi * (c ** 2 + s ** 2))
    torch.testing.assert_close(mix.log_prob(x, s), lp)


def test_user_mixture_file_works_like_a_name(tmp_path):
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({"weights": [0.25, 0.75], "means": [[0, 0], [1, 1]],
                             "covariances": [[[0.1, 0], [0, 0.1]], [[0.2, 0.05], [0.05, 0.1]]]}))
    mix = get_toy(str(f))
    assert mix.n_components == 2 and mix.dim == 2
    assert torch.isfinite(mix.log_prob(mix.sample(10))).all()


@pytest.mark.parametrize("payload,match", [
    ({"weights": [0.5, 0.6], "means": [[0, 0], [1, 1]], "covariances": [[[1, 0], [0, 1]]] * 2}, "sum to"),
    ({"weights": [-0.5, 1.5], "means": [[0, 0], [1, 1]], "covariances": [[[1, 0], [0, 1]]] * 2}, "positive"),
    ({"weights": [1.0], "means": [[0, 0]], "covariances": [[[1, 2], [2, 1]]]}, "positive-definite"),
    ({"weights": [1.0], "means": [[0, 0]], "covariances": [[[1, 0.5], [0, 1]]]}, "symmetric"),
    ({"weights": [1.0], "means": [[0, 0, 0]], "covariances": [[[1, 0], [0, 1]]]}, "do not agree"),
    ({"weights": [1.0], "means": [[0, float("nan")]], "covariances": [[[1, 0], [0, 1]]]}, "NaN"),
    ({"weights": [1.0], "means": [[0, 0]]}, "lacks"),
    ({"weights": [1.0], "means": [[0, 0], [1]], "covariances": [[[1, 0], [0, 1]]]}, "malformed"),
])
def test_bad_mixture_files_give_clear_errors(tmp_path, payload, match):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(payload))
    with pytest.raises(ScheduleLabError, match=match):
        GaussianMixture.from_json(f)


def test_missing_and_corrupt_mixture_files(tmp_path):
    with pytest.raises(ScheduleLabError, match="not found"):
        GaussianMixture.from_json(tmp_path / "nope.json")
    f = tmp_path / "corrupt.json"
    f.write_text("{weights: ")
    with pytest.raises(ScheduleLabError, match="not valid JSON"):
        get_toy(str(f))
    with pytest.raises(ScheduleLabError, match="unknown toy 'grid9'.*grid8x8"):
        get_toy("grid9")
