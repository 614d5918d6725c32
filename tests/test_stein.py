"""Score-optimal schedules (Williams et al. 2024): the Stein density against the Gaussian closed
form (per sample and in expectation, through the mixture path and a generic Denoiser), jvp == fd,
Lambda and its constant-speed inverse against the closed forms, equal per-interval costs,
events / resume, CLI and bad inputs."""
import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from core.cli import main
from core.errors import ScheduleLabError
from core.models import MixtureDenoiser
from core.models.base import Denoiser
from core.models.mlp import MLPDenoiser, ToyMLP
from core.objectives.stein import (constant_speed_schedule, cumulative_cost, interval_costs, log_grid,
                                   transport_costs,
                                   mixture_score, stein_curves, stein_density)
from core.optimizers.score_optimal import ScoreOptimalOptimizer, score_optimal_schedule
from core.schedules import Schedule, make_schedule
from toy_data import gaussian, get_toy

C, D = 0.5, 3


class GaussianDenoiser(Denoiser):
    """D(x, s) = c^2 / (c^2 + s^2) x for N(0, c^2 I): a Denoiser with no `.mixture` (generic path)."""

    def __init__(self, c, dim):
        super().__init__()
        self.c, self.event_shape = c, (dim,)
        self.register_buffer("_anchor", torch.zeros((), dtype=torch.float64))

    @property
    def dtype(self):
        return torch.float64

    def denoise(self, x, sigma):
        return x * (self.c ** 2 / (self.c ** 2 + sigma ** 2)).reshape(-1, 1)


def sqrt_delta_exact(s, c=C, d=D):
    return 2 * math.sqrt(d) * s ** 2 / (c ** 2 + s ** 2) ** 1.5


def lambda_exact(s, c=C, d=D):
    return 2 * math.sqrt(d) * (np.arcsinh(s / c) - s / np.sqrt(c ** 2 + s ** 2))


def test_lambda_closed_form_is_the_integral_of_sqrt_delta():
    """d/ds [asinh(s/c) - s/sqrt(c^2+s^2)] = s^2/(c^2+s^2)^(3/2), checked numerically."""
    s = np.exp(np.linspace(np.log(1e-3), np.log(100), 50))
    h = 1e-6 * s
    deriv = (lambda_exact(s + h) - lambda_exact(s - h)) / (2 * h)
    assert np.allclose(deriv, sqrt_delta_exact(s), rtol=1e-6)
    assert lambda_exact(np.array(0.0)) == 0.0


@pytest.mark.parametrize("kind", ["mixture", "generic"])
@pytest.mark.parametrize("method", ["jvp", "fd"])
def test_gaussian_density_exact_per_sample(kind, method):
    """With the estimator's own draws x = x0 + s eps, E_hat||d/ds score||^2 = 4 s^2 mean||x||^2/(c^2+s^2)^4
    exactly (no Monte Carlo slack), so delta = s^2 times that."""
    mix = gaussian(C, D)
    model = MixtureDenoiser(mix) if kind == "mixture" else GaussianDenoiser(C, D)
    grid = log_grid(0.002, 80.0, 40)
    n = 64
    delta = stein_density(model, mix, grid, n=n, method=method, seed=7)
    g = torch.Generator().manual_seed(7)
    x0 = mix.sample(n, g)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    for s, dl in zip(grid, delta):
        msq = float(((x0 + s * eps) ** 2).sum(1).mean())
        expect = s ** 2 * 4 * s ** 2 * msq / (C ** 2 + s ** 2) ** 4
        # fd (h = 1e-4): h^2 truncation plus the generic path's round-off 1e-16 c^4 / (4 h s^4)
        # (see score_sigma_derivative; an order-of-magnitude estimate, x10), doubled for the square
        tol = 1e-12 if method == "jvp" else 2 * (1e-8 + 10 * 1e-16 * C ** 4 / (4e-4 * s ** 4))
        assert dl == pytest.approx(expect, rel=tol)


@pytest.mark.parametrize("method", ["jvp", "fd"])
def test_gaussian_sqrt_delta_matches_closed_form(method):
    grid = log_grid(0.002, 80.0, 100)
    mix = gaussian(C, D)
    n = 4000
    delta = stein_density(MixtureDenoiser(mix), mix, grid, n=n, method=method)
    rel = np.abs(np.sqrt(delta) / sqrt_delta_exact(grid) - 1)
    assert rel.max() < 4 * math.sqrt(2 / (n * D))          # Monte Carlo: std of mean||x||^2 / E is sqrt(2/(n d))


@pytest.mark.parametrize("toy", ["moons", "grid8x8"])
def test_jvp_equals_finite_differences_on_mixtures(toy):
    mix = get_toy(toy)
    grid = log_grid(0.002, 80.0, 30)
    a = stein_density(MixtureDenoiser(mix), mix, grid, n=128, method="jvp")
    b = stein_density(MixtureDenoiser(mix), mix, grid, n=128, method="fd")
    assert np.allclose(a, b, rtol=1e-7)


@pytest.mark.parametrize("toy", ["moons", "ring8"])
def test_mixture_score_equals_the_exact_denoisers_score(toy):
    mix = get_toy(toy)
    x = 2 * torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = torch.exp(torch.linspace(math.log(0.01), math.log(50), 500, dtype=torch.float64))
    assert torch.allclose(mixture_score(mix, x, s), MixtureDenoiser(mix).score(x, s), rtol=1e-9, atol=1e-9)


def test_float32_network_is_estimated_in_float64_and_fd_converges_to_jvp_at_second_order():
    torch.manual_seed(0)
    model = MLPDenoiser(ToyMLP(width=32, depth=2)).eval()
    mix = get_toy("moons")
    grid = log_grid(0.01, 80.0, 20)
    a = stein_density(model, mix, grid, n=64, method="jvp", precision="float64")
    assert np.all(a > 0)
    a32 = stein_density(model, mix, grid, n=64, method="jvp")          # auto: jvp in the network's float32
    assert np.abs(a32 / a - 1).max() < 1e-3 and not np.array_equal(a32, a)
    err = [np.abs(stein_density(model, mix, grid, n=64, method="fd", fd_step=h) / a - 1).max()
           for h in (1e-3, 1e-4, 1e-5)]
    assert 50 < err[0] / err[1] < 200 and err[2] < 1e-6                  # central differences: O(h^2)
    assert next(model.parameters()).dtype == torch.float32              # the caller's model is untouched


def test_speed_parameter_rescales_delta():
    mix = get_toy("ring8")
    grid = log_grid(0.002, 80.0, 20)
    a = stein_density(MixtureDenoiser(mix), mix, grid, n=64)
    b = stein_density(MixtureDenoiser(mix), mix, grid, n=64, v=lambda s: np.ones_like(s))
    assert np.allclose(b * grid ** 2, a, rtol=1e-12)


def test_cumulative_cost_matches_closed_form_lambda():
    grid = log_grid(0.002, 80.0, 400)
    Lam = cumulative_cost(grid, sqrt_delta_exact(grid) ** 2)
    expect = lambda_exact(grid) - lambda_exact(grid[0])
    du = np.log(grid[1] / grid[0])
    assert np.allclose(Lam[1:], expect[1:], rtol=(3 * du) ** 2 / 12 * 1.1)   # trapezoid error of e^{3u} near 0


def _closed_form_schedule(steps, smin=0.002, smax=80.0):
    lo, hi = lambda_exact(smin), lambda_exact(smax)
    targets = hi - np.arange(steps) / (steps - 1) * (hi - lo)
    return np.array([brentq(lambda s: lambda_exact(s) - t, smin * 0.5, smax * 2) for t in targets])


@pytest.mark.parametrize("steps", [5, 10, 20])
def test_schedule_matches_closed_form_inverse(steps):
    grid = log_grid(0.002, 80.0, 200)
    exact = _closed_form_schedule(steps)
    s_exact_density = constant_speed_schedule(grid, sqrt_delta_exact(grid) ** 2, steps)
    assert np.allclose(np.log(s_exact_density.sigmas[:-1]), np.log(exact), atol=2e-3)
    mix = gaussian(C, D)
    est = stein_density(MixtureDenoiser(mix), mix, grid, n=2000)
    s_est = constant_speed_schedule(grid, est, steps)
    assert np.allclose(np.log(s_est.sigmas[:-1]), np.log(exact), atol=0.03)
    # the optimal schedule's per-interval costs are equal under the closed-form Lambda too
    length = -np.diff(lambda_exact(np.asarray(s_est.sigmas[:-1])))
    assert length.std() / length.mean() < 0.03


def test_optimal_intervals_have_equal_cost_and_others_do_not():
    mix = get_toy("grid8x8")
    model = MixtureDenoiser(mix)
    sched, info = score_optimal_schedule(model, mix, 10, levels=200, n=128)
    cost = np.array(info["cost"])
    assert len(cost) == 9 and cost.std() / cost.mean() < 2e-3
    assert info["efficiency"] == pytest.approx(1.0, abs=1e-3)
    assert info["total_cost"] == pytest.approx(info["Lambda_total"] ** 2 / 9, rel=2e-3)
    dens = (info["grid_sigma"], info["delta"])
    karras = stein_curves(model, mix, make_schedule("karras", 10, 0.002, 80.0), density=dens)
    assert karras["efficiency"] < 0.97 and karras["total_cost"] > info["total_cost"]
    assert sum(karras["share"]) == pytest.approx(1.0)
    assert karras["Lambda_total"] == pytest.approx(info["Lambda_total"], rel=1e-9)
    for k in ("sigma_hi", "sigma_lo", "length", "cost", "share"):
        assert len(karras[k]) == 9
    assert len(karras["density_log"]) == len(karras["Lambda"]) == 200


def test_optimizer_events_and_resume():
    mix = get_toy("ring8")
    model = MixtureDenoiser(mix)
    kw = dict(levels=100, n=64, chunk_points=64 * 25)
    opt = ScoreOptimalOptimizer(model, mix, 8, **kw)
    evs = list(opt.events())
    assert len(evs) == 5 and evs[-1].done and [e.extra.get("levels_done") for e in evs[:-1]] == [25, 50, 75, 100]
    part = ScoreOptimalOptimizer(model, mix, 8, **kw)
    it = part.events()
    next(it), next(it)
    state = json.loads(json.dumps(part.state_dict()))
    resumed = ScoreOptimalOptimizer(model, mix, 8, **kw)
    resumed.load_state_dict(state)
    rest = list(resumed.events())
    assert len(rest) == 3 and rest[-1].done
    assert np.allclose(resumed.result().sigmas, opt.result().sigmas, rtol=1e-12)
    with pytest.raises(ScheduleLabError, match="different"):
        ScoreOptimalOptimizer(model, mix, 9, **kw).load_state_dict(state)


@pytest.mark.parametrize("call", [
    lambda m, x: log_grid(0.002, 80.0, 5),
    lambda m, x: log_grid(1.0, 0.5, 100),
    lambda m, x: stein_density(m, x, log_grid(0.002, 80.0, 20), n=1),
    lambda m, x: stein_density(m, x, log_grid(0.002, 80.0, 20), method="bogus"),
    lambda m, x: stein_density(m, lambda n, g: torch.zeros(n, 3), log_grid(0.002, 80.0, 20)),
    lambda m, x: stein_density(m, x, [1.0, -1.0]),
    lambda m, x: stein_density(m, x, log_grid(0.002, 80.0, 20), precision="half"),
    lambda m, x: constant_speed_schedule(log_grid(0.01, 1.0, 20), np.ones(20), 5, 0.002, 1.0),
    lambda m, x: interval_costs(log_grid(0.01, 1.0, 20), np.ones(20), make_schedule("karras", 5, 0.002, 80.0)),
    lambda m, x: ScoreOptimalOptimizer(m, x, 1),
    lambda m, x: ScoreOptimalOptimizer(m, x, 5).result(),
    lambda m, x: stein_curves(m, x, [80.0, 0.0]),
])
def test_bad_inputs_raise_schedule_lab_error(call):
    mix = get_toy("ring8")
    with pytest.raises(ScheduleLabError):
        call(MixtureDenoiser(mix), mix)


def test_cli_score_optimal_and_stein_curve(tmp_path, capsys):
    out = tmp_path / "so.json"
    assert main(["optimize", "score-optimal", "--toy", "ring8", "--steps", "6", "--levels", "100", "--n", "64",
                 "--out", str(out), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert len(d["sigmas"]) == 7 and np.std(d["cost"]) / np.mean(d["cost"]) < 5e-3
    assert main(["curves", "stein", "--toy", "ring8", "--schedule", str(out), "--levels", "100", "--n", "64",
                 "--json"]) == 0
    c = json.loads(capsys.readouterr().out)
    assert c["efficiency"] == pytest.approx(1.0, abs=5e-3) and len(c["cost"]) == 5
    assert main(["optimize", "score-optimal", "--toy", "nope", "--steps", "6", "--out", str(out)]) == 2
    assert "nope" in capsys.readouterr().err


# ---- the paper's finite transport cost L(sigma, sigma') (not its local approximation) -----------
def _transport_exact(sig, c=C, d=D):
    """N(0, c^2 I_d): L(s, s') = s'^2 d (c^2 + s^2) (1/(c^2 + s'^2) - 1/(c^2 + s^2))^2 with v = sigma."""
    s, t = np.asarray(sig[:-1]), np.asarray(sig[1:])
    return t ** 2 * d * (c ** 2 + s ** 2) * (1 / (c ** 2 + t ** 2) - 1 / (c ** 2 + s ** 2)) ** 2


@pytest.mark.parametrize("kind", ["mixture", "generic"])
def test_transport_cost_matches_gaussian_closed_form(kind):
    mix = gaussian(C, D)
    model = MixtureDenoiser(mix) if kind == "mixture" else GaussianDenoiser(C, D)
    sched = make_schedule("karras", 8, 0.01, 20.0)
    out = transport_costs(model, mix, sched, n=20000, seed=4)
    exact = _transport_exact(sched.sigmas[:-1])
    got, err = np.array(out["cost"]), np.array(out["stderr"])
    assert len(got) == 7 and np.all(np.abs(got - exact) < 5 * err + 1e-12), (got, exact, err)
    assert out["total_cost"] == pytest.approx(got.sum())
    # for short intervals the finite cost tends to the local cost Delta Lambda^2 (closed-form Lambda)
    fine = make_schedule("loglinear", 400, 0.05, 5.0)
    lam = lambda_exact(np.asarray(fine.sigmas[:-1]))
    local = np.diff(lam) ** 2
    assert np.allclose(_transport_exact(fine.sigmas[:-1]), local, rtol=0.02)


def test_score_optimal_is_a_local_minimum_of_the_papers_transport_cost():
    """Sum of the finite costs L(sigma_i, sigma_{i+1}) (Monte Carlo, fresh draws) at 20 steps on
    moons: the constant-speed schedule beats log-linear, EDM and every random perturbation of its
    own levels; the schedule built with the wrong speed (v = 1) costs more.  (At <= 10 steps the
    local expansion breaks down: one long jump down to small sigma costs at most ~d under v = sigma,
    so schedules with a giant last step, such as time-uniform, score lower there.)"""
    mix = get_toy("moons")
    model = MixtureDenoiser(mix)
    sched, _ = score_optimal_schedule(model, mix, 20, levels=200, n=256)
    cost = lambda s: transport_costs(model, mix, s, n=2048, seed=1)["total_cost"]
    best = cost(sched)
    for name in ("loglinear", "karras"):
        assert cost(make_schedule(name, 20, 0.002, 80.0)) > 1.2 * best, name
    wrong_v, _ = score_optimal_schedule(model, mix, 20, levels=200, n=256, v=lambda s: np.ones_like(s))
    assert cost(wrong_v) > 1.2 * best
    rng = np.random.default_rng(0)
    lo = np.log(np.asarray(sched.sigmas[:-1]))
    step = abs(np.diff(lo).mean())
    for _ in range(8):
        lp = lo.copy()
        lp[1:-1] += rng.normal(0.0, 0.2 * step, lp.size - 2)
        perturbed = Schedule(tuple(np.exp(np.sort(lp)[::-1]).tolist()) + (0.0,))
        assert cost(perturbed) > best
