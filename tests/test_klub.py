"""KLUB estimator (AYS, methods.md s.4): closed forms, inverse CDF, unbiasedness, CRN, curves."""
import math

import pytest
import torch
from scipy import integrate

from core.errors import ScheduleLabError
from core.models import MixtureDenoiser
from core.objectives.fast_denoiser import FastMixtureDenoiser
from core.objectives.klub import (draw_noise, importance_density, klub, klub_curves, klub_normalizer,
                                  klub_samples, mean_se, sample_sigma)
from core.schedules import make_schedule
from toy_data import gaussian, get_toy

A = torch.tensor([0.002, 0.05, 0.3, 1.0, 40.0], dtype=torch.float64)
B = torch.tensor([0.0031, 0.2, 0.35, 3.0, 80.0], dtype=torch.float64)


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread for this module


def _quad(f, a, b):
    """Adaptive quadrature in log-sigma (the integrands span many decades)."""
    return integrate.quad(lambda t: f(math.exp(t)) * math.exp(t), math.log(a), math.log(b),
                          epsabs=0, epsrel=1e-12, limit=500)[0]


@pytest.mark.parametrize("c", [0.5, 1.3])
def test_normalizer_equals_quadrature_and_methods_md_form(c):
    z = klub_normalizer(A, B, c)
    for a, b, zi in zip(A.tolist(), B.tolist(), z.tolist()):
        q = _quad(lambda s: s ** -3 * (1 / (s * s + c * c) - 1 / (b * b + c * c)), a, b)
        assert zi == pytest.approx(q, rel=1e-9)
        if b < 10:  # methods.md's G form cancels catastrophically at large sigma; ours does not
            G = lambda s: -1 / (2 * c * c * s * s) - math.log(s) / c ** 4 + math.log(s * s + c * c) / (2 * c ** 4)
            zm = G(b) - G(a) - (1 / (b * b + c * c)) * (1 / (2 * a * a) - 1 / (2 * b * b))
            assert zi == pytest.approx(zm, rel=1e-8)


def test_inverse_cdf_hits_the_requested_quantiles():
    """P(s >= sample_sigma(u)) = u under pi, for every interval (incl. 4 decades wide)."""
    a = torch.tensor([0.002, 0.1, 40.0], dtype=torch.float64)
    b = torch.tensor([80.0, 0.2, 80.0], dtype=torch.float64)
    u = torch.tensor([1.0, 0.9, 0.5, 0.1, 1e-3, 1e-9], dtype=torch.float64)
    s = sample_sigma(u, a, b, 0.5)
    z = klub_normalizer(a, b, 0.5)
    assert torch.all(s[:, 0] == a) and torch.all(s < b.unsqueeze(1))
    assert torch.all(s[:, 1:] > s[:, :-1])                      # u decreasing -> s increasing
    for m in range(3):
        for k in range(1, len(u)):
            tail = _quad(lambda x: float(importance_density(x, b[m], 0.5)), float(s[m, k]), float(b[m]))
            assert tail / float(z[m]) == pytest.approx(float(u[k]), rel=1e-7, abs=1e-15)


@pytest.mark.parametrize("coupling", ["bridge", "forward"])
def test_gaussian_data_closed_form_with_only_chi_square_noise(coupling):
    """Data N(0, c^2 I_d), exact D, same c: E||dD||^2 = c^4 d g(s), so the weights are constant in s
    and KLUB = Z d c^4; the only noise left is ||dD||^2 / g = c^4 chi^2_d (relative SE sqrt(2/(d n)))."""
    c, d, n = 0.5, 64, 2048
    mix = gaussian(c, d)
    r = klub(MixtureDenoiser(mix), mix.sample, A, B, n_samples=n, c=c, seed=3, dtype=torch.float64,
             coupling=coupling)
    exact = klub_normalizer(A, B, c) * d * c ** 4
    rel_se = math.sqrt(2 / d) / math.sqrt(n)
    assert torch.allclose(r.se / exact, torch.full_like(exact, rel_se), rtol=0.1)   # no variance from s
    assert torch.all((r.estimate - exact).abs() < 4 * r.se)
    d_big, n_big = 256, 1024         # near-zero variance: relative SE 0.3 % at d = 256, n = 1024
    big = gaussian(c, d_big)
    rb = klub(MixtureDenoiser(big), lambda k, g: c * torch.randn(k, d_big, generator=g, dtype=torch.float64),
              A, B, n_samples=n_big, c=c, seed=4, dtype=torch.float64, coupling=coupling)
    assert torch.allclose(rb.estimate, klub_normalizer(A, B, c) * d_big * c ** 4, rtol=0.015)


def test_gaussian_data_other_c_is_unbiased_against_quadrature():
    """Data std 0.9 but importance c = 0.5: still unbiased (vs quadrature of c_d^4 d g_{c_d}(s) s^-3),
    and the reported SE equals the exact one, sqrt(((1 + 2/d) E_pi[m(s)^2] - KLUB^2) / n) with
    m(s) = Z c_d^4 d g_{c_d}(s) / g_c(s) the conditional mean (variance from s and from chi^2_d)."""
    c, cd, d, n = 0.5, 0.9, 2, 8192
    mix = gaussian(cd, d)
    r = klub(MixtureDenoiser(mix), mix.sample, A, B, n_samples=n, c=c, seed=5, dtype=torch.float64)
    z = klub_normalizer(A, B, c)
    for m, (a, b) in enumerate(zip(A.tolist(), B.tolist())):
        gc = lambda s: 1 / (s * s + c * c) - 1 / (b * b + c * c)
        gd = lambda s: 1 / (s * s + cd * cd) - 1 / (b * b + cd * cd)
        mean = lambda s: float(z[m]) * cd ** 4 * d * gd(s) / gc(s)
        pdf = lambda s: s ** -3 * gc(s) / float(z[m])
        truth = _quad(lambda s: s ** -3 * cd ** 4 * d * gd(s), a, b)
        second = (1 + 2 / d) * _quad(lambda s: pdf(s) * mean(s) ** 2, a, b)
        assert abs(float(r.estimate[m]) - truth) < 4 * float(r.se[m])
        assert float(r.se[m]) == pytest.approx(math.sqrt((second - truth ** 2) / n), rel=0.1)


def test_estimate_equals_quadrature_of_the_mc_integrand():
    """Importance sampling (bridge coupling, seed 1) vs a 64-point log-sigma midpoint rule of
    s^-2 E||dD||^2 (forward coupling, seed 2): equal within their standard errors."""
    mix = get_toy("grid8x8")
    model = MixtureDenoiser(mix)
    sched = make_schedule("karras", 6)
    a = torch.tensor(sched.sigmas[1:-1]), torch.tensor(sched.sigmas[:-2])
    r = klub(model, mix.sample, *a, n_samples=4096, seed=1)
    q = klub_curves(model, mix.sample, sched, n_samples=2048, seed=2, grid=64, coupling="forward")
    for m in range(len(a[0])):
        tol = 4 * math.hypot(float(r.se[m]), q["klub_quadrature_se"][m])
        assert abs(float(r.estimate[m]) - q["klub_quadrature"][m]) < tol, m
        assert float(r.se[m]) < 0.1 * float(r.estimate[m])


def test_common_random_numbers_make_candidate_differences_precise():
    mix = get_toy("ring8")
    model = MixtureDenoiser(mix)
    g = torch.Generator().manual_seed(0)
    noise = draw_noise(mix.sample, 4096, g)
    a = torch.tensor([0.1, 0.1, 0.1], dtype=torch.float64)
    b = torch.tensor([0.5, 0.5, 0.52], dtype=torch.float64)
    v = klub_samples(FastMixtureDenoiser(mix, torch.float64), noise, a, b)
    assert torch.equal(v[0], v[1])                                 # same interval, same numbers
    _, se, _ = mean_se(v)
    _, se_diff, _ = mean_se(v[2:3] - v[0:1])
    assert float(se_diff) < 0.2 * math.hypot(float(se[0]), float(se[2]))   # vs independent draws


def test_float32_and_chunking_do_not_change_the_estimate():
    mix = get_toy("moons")
    model = MixtureDenoiser(mix)
    args = (model, mix.sample, A[:4], B[:4])
    r64 = klub(*args, n_samples=1024, seed=7, dtype=torch.float64)
    r64c = klub(*args, n_samples=1024, seed=7, dtype=torch.float64, chunk=100)
    r32 = klub(*args, n_samples=1024, seed=7, dtype=torch.float32)
    assert torch.allclose(r64.estimate, r64c.estimate, rtol=1e-12)
    assert torch.all((r32.estimate - r64.estimate).abs() < 0.01 * r64.se)


@pytest.mark.parametrize("toy", ["grid8x8", "moons"])
def test_fast_denoiser_matches_reference(toy):
    mix = get_toy(toy)
    x = torch.randn(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    s = torch.logspace(-3, 1.9, 500, dtype=torch.float64)
    ref = mix.denoise(x, s)
    assert torch.allclose(FastMixtureDenoiser(mix, torch.float64)(x, s), ref, atol=1e-12)
    assert torch.allclose(FastMixtureDenoiser(mix, torch.float32)(x, s).double(), ref, atol=2e-5)


def test_curves_keys_share_and_density_integral():
    mix = get_toy("ring8")
    r = klub_curves(MixtureDenoiser(mix), mix.sample, make_schedule("loglinear", 5), n_samples=1024, grid=16)
    for k in ("sigma_lo", "sigma_hi", "klub", "klub_se", "share", "density_sigma", "density"):
        assert isinstance(r[k], list)
    assert len(r["klub"]) == 4 and len(r["density"]) == 4 * 16 == len(r["density_sigma"])
    assert sum(r["share"]) == pytest.approx(1.0)
    assert all(lo < hi for lo, hi in zip(r["sigma_lo"], r["sigma_hi"]))
    ds = r["density_sigma"]
    assert all(x > y for x, y in zip(ds[:-1], ds[1:]))
    for m in range(4):   # same samples: the midpoint rule of the density reproduces the estimate
        assert abs(r["klub"][m] - r["klub_quadrature"][m]) < 3 * (r["klub_se"][m] + r["klub_quadrature_se"][m])


@pytest.mark.parametrize("a,b", [([0.5], [0.5]), ([0.6], [0.5]), ([0.0], [0.5]), ([-1.0], [0.5]),
                                 ([float("nan")], [0.5]), ([0.1], [float("inf")]), ([0.1, 0.2], [0.5])])
def test_bad_intervals_raise(a, b):
    mix = gaussian(0.5, 2)
    with pytest.raises(ScheduleLabError):
        klub(MixtureDenoiser(mix), mix.sample, a, b, n_samples=16)


def test_bad_settings_raise():
    mix = gaussian(0.5, 2)
    model = MixtureDenoiser(mix)
    with pytest.raises(ScheduleLabError):
        klub_normalizer([0.1], [0.2], c=0.0)
    with pytest.raises(ScheduleLabError):
        klub(model, mix.sample, [0.1], [0.2], n_samples=1)
    with pytest.raises(ScheduleLabError):
        klub(model, lambda n, g: torch.full((n, 2), float("nan")), [0.1], [0.2], n_samples=8)
    with pytest.raises(ScheduleLabError):
        klub(model, mix.sample, [0.1], [0.2], n_samples=8, coupling="uniform")
