"""LD3 (core.optimizers.ld3).

- The differentiable run is the solver users run (core.solvers), and its autograd gradient w.r.t.
  the level parameters and the start latent equals central finite differences.
- xi = 0 is the log-linear schedule (the reference's `ones` start).
- Gaussian data N(0, c^2 I): the ODE has the closed form x(0) = x_T c / sqrt(c^2 + sigma_max^2);
  LD3's levels cut the TRUE global error on held-out noise below its start (= log-linear) and karras.
- Resume after a kill equals the uninterrupted run; bad input is refused before any work.
"""
import json
import math

import pytest
import torch

from core.errors import ScheduleLabError
from core.models import MixtureDenoiser
from core.optimizers.ld3 import LD3Optimizer, ld3_levels, ld3_solve, optimize_ld3, sample_loss
from core.optimizers.steppers import get_stepper
from core.sampling import initial_noise
from core.schedules import Schedule, make_schedule
from core.solvers import get_solver
from toy_data import gaussian, get_toy

pytestmark = pytest.mark.usefixtures("one_thread")
C = 0.5


def test_xi_zero_is_loglinear_and_endpoints_are_exact():
    lv = ld3_levels(torch.zeros(5), 0.002, 80.0)
    ll = make_schedule("loglinear", 6, 0.002, 80.0).sigmas[:-1]
    assert lv.tolist() == pytest.approx(list(ll), rel=1e-12)
    lv = ld3_levels(torch.randn(5, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 0.002, 80.0)
    assert float(lv[0]) == 80.0 and float(lv[-1]) == 0.002 and bool((lv[1:] < lv[:-1]).all())


@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp_2m", "dpmpp_3m", "ipndm"])
def test_differentiable_run_is_the_solver(solver):
    model = MixtureDenoiser(get_toy("moons"))
    xi = torch.randn(5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lv = ld3_levels(xi, 0.002, 80.0)
    x = initial_noise(model, 16, 80.0, seed=3, dtype=torch.float64)
    sched = Schedule(tuple(float(s) for s in lv) + (0.0,))
    want = get_solver(solver).fn(model, x.clone(), sched.tensor().to(torch.float64))
    got = ld3_solve(model, get_stepper(solver), lv, x)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("solver", ["dpmpp_2m", "heun", "euler"])
def test_gradient_through_solver_matches_finite_differences(solver):
    model = MixtureDenoiser(get_toy("moons"))
    st = get_stepper(solver)
    g = torch.Generator().manual_seed(5)
    xi0 = 0.5 * torch.randn(5, generator=g, dtype=torch.float64)
    z0 = torch.randn(8, 2, generator=g, dtype=torch.float64)
    target = torch.randn(8, 2, generator=g, dtype=torch.float64)

    def f(xi, z):
        return sample_loss(ld3_solve(model, st, ld3_levels(xi, 0.002, 80.0), 80.0 * z), target).mean()

    xi, z = xi0.clone().requires_grad_(True), z0.clone().requires_grad_(True)
    g_xi, g_z = torch.autograd.grad(f(xi, z), [xi, z])
    eps = 1e-6
    fd_xi = torch.stack([(f(xi0 + eps * e, z0) - f(xi0 - eps * e, z0)) / (2 * eps) for e in torch.eye(5).double()])
    assert torch.allclose(g_xi, fd_xi, rtol=1e-5, atol=1e-9)
    assert float(g_xi.abs().max()) > 1e-4                      # not a vacuous comparison
    E = torch.zeros(8, 2, dtype=torch.float64)
    E[3, 1] = 1.0
    fd_z = (f(xi0, z0 + eps * E) - f(xi0, z0 - eps * E)) / (2 * eps)
    assert float(g_z[3, 1]) == pytest.approx(float(fd_z), rel=1e-5, abs=1e-10)


def test_gaussian_ld3_lowers_true_global_error_on_heldout_noise():
    model = MixtureDenoiser(gaussian(C))
    n = 5
    sched = optimize_ld3(model, n, "dpmpp_2m", n_samples=40, seed=0, teacher_steps=60)
    xT = initial_noise(model, 400, 80.0, seed=987, dtype=torch.float64)        # held out
    x0_true = xT * C / math.sqrt(C ** 2 + 80.0 ** 2)
    solve = get_solver("dpmpp_2m").fn

    def err(s):
        return float((solve(model, xT.clone(), s.tensor().to(torch.float64)) - x0_true).pow(2).mean())

    e_ld3 = err(sched)
    e_ll = err(make_schedule("loglinear", n, 0.002, 80.0))
    e_k = err(make_schedule("karras", n, 0.002, 80.0))
    assert e_ld3 < 0.1 * e_ll and e_ld3 < 0.1 * e_k     # measured: 400x and 1000x lower
    assert sched.solver == "dpmpp_2m" and sched.steps == n


def test_resume_equals_uninterrupted():
    model = MixtureDenoiser(get_toy("moons"))
    kw = dict(n_samples=12, rounds=3, patience=2, prior_bound=0.05, seed=4, teacher_steps=30)
    full = LD3Optimizer(model, 4, "dpmpp_2m", **kw)
    evs = list(full.events())
    assert evs[-1].done and full.iteration == 9
    part = LD3Optimizer(model, 4, "dpmpp_2m", **kw)
    for i, _ in enumerate(part.events()):
        if i == 5:
            break
    state = json.loads(json.dumps(part.state_dict()))
    again = LD3Optimizer(model, 4, "dpmpp_2m", **kw)
    again.load_state_dict(state)
    for _ in again.events():
        pass
    assert again.result().sigmas == full.result().sigmas
    assert again.best_loss == full.best_loss and torch.equal(again.z_cur, full.z_cur)
    assert not torch.equal(full.z_cur, initial_noise(model, 12, 1.0, 4, dtype=torch.float64))  # slack moved
    other = LD3Optimizer(model, 4, "dpmpp_2m", **{**kw, "seed": 5})
    with pytest.raises(ScheduleLabError, match="different LD3 run"):
        other.load_state_dict(state)


@pytest.mark.parametrize("kw, match", [
    (dict(steps=2), "steps must be >= 3"),
    (dict(steps=2.5), "steps must be an integer"),
    (dict(n_samples=1), "n_samples must be >= 2"),
    (dict(solver="nope"), "nope"),
    (dict(lr=-1.0), "lr must be a positive"),
    (dict(prior_bound=-0.1), "prior_bound must be"),
    (dict(iters=0), "iters must be"),
    (dict(sigma_min=1.0, sigma_max=0.5), "sigma_min < sigma_max"),
    (dict(momentum=1.0), "momentum"),
])
def test_bad_input_refused(kw, match):
    model = MixtureDenoiser(gaussian(C))
    args = {"steps": 5, **kw}
    steps = args.pop("steps")
    with pytest.raises(ScheduleLabError, match=match):
        LD3Optimizer(model, steps, **args)


def test_cli_optimize_ld3_mlp_and_resume(tmp_path, capsys):
    """`python -m core optimize ld3` on a toy MLP (gradients through a network; its weights untouched)
    writes a Schedule for the solver asked, and --resume of a finished run gives the same schedule."""
    from core.cli import main
    out = tmp_path / "l.json"
    args = ["optimize", "ld3", "--toy", "moons", "--model", "mlp", "--steps", "4", "--n-samples", "8",
            "--teacher-steps", "30", "--iters", "6", "--out", str(out), "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    s = Schedule.load(out)
    assert s.name == "ld3" and s.solver == "dpmpp_2m" and s.steps == 4 and first["iterations"] == 6
    assert main(args + ["--resume", str(tmp_path / "l.state.json")]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["sigmas"] == first["sigmas"] and again["resumed"] is True
    assert main(["optimize", "ld3", "--toy", "moons", "--steps", "2", "--out", str(out)]) == 2
    assert "steps must be >= 3" in capsys.readouterr().err


def test_xi_update_is_torch_rmsprop_after_clipping():
    """The hand-written update (JSON-resumable state) equals clip_grad_norm_(1.0) + torch.optim.RMSprop
    (lr 5e-3, momentum 0.9), the reference's optimizer for the level parameters."""
    opt = LD3Optimizer(MixtureDenoiser(gaussian(C)), 5)
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    ref = torch.optim.RMSprop([p], lr=5e-3, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for i in range(20):
        gr = torch.randn(4, generator=g, dtype=torch.float64) * (3.0 if i % 2 else 0.3)   # clipped and not
        p.grad = gr.clone()
        torch.nn.utils.clip_grad_norm_(p, 1.0)
        ref.step()
        opt._rmsprop(gr)
    assert torch.allclose(opt.xi, p.detach(), rtol=0, atol=1e-14) and float(p.detach().abs().max()) > 1e-2
