"""DM-NonUniform (Xue et al. 2024): the bound against an independent closed-form derivation and
against the dpmpp_3m_lagrange solver's own linear response, exact gradients, KKT / constraints, one
optimum from every start, discretization error, and the per-step truncation curve."""
import json
import math
import warnings

import numpy as np
import pytest
import torch

from core.cli import main
from core.errors import ScheduleLabError
from core.models import load_toy_model
from core.objectives.truncation import (bound, bound_parts, error_model, quadrature_steps, schedule_lambdas,
                                        truncation_curve)
from core.optimizers.nonuniform import (STARTS, NonUniformOptimizer, optimize_nonuniform, solve_from,
                                        start_levels)
from core.sampling import generate
from core.schedules import Schedule, make_schedule
from core.solvers import get_solver
from core.solvers.lagrange import multistep_orders

# The discretization-error test runs on the shipped toy MLP (checkpoints/toy_mlp/moons.safetensors).
MODEL_KIND = "mlp"


# ---- an independent derivation of the bound (paper Eq. 10 weights, written out by hand) ----------
def _H(h):
    e = math.exp(h)
    H0 = e - 1
    H1 = h * e - H0
    H2 = h * h * e - 2 * H1
    return H0, H1, H2


def _J(lam, s, k):
    """{node: J_{s,node}} = int_{lam_s}^{lam_{s+1}} e^lam l_node(lam) dlam for the order-k step s."""
    h = lam[s + 1] - lam[s]
    H0, H1, H2 = _H(h)
    e = math.exp(lam[s])
    if k == 1:
        return {s: e * H0}
    h1 = lam[s] - lam[s - 1]
    if k == 2:   # l_s = (u + h1)/h1, l_{s-1} = -u/h1 with u = lam - lam_s
        return {s: e * (H1 + h1 * H0) / h1, s - 1: -e * H1 / h1}
    h2 = lam[s - 1] - lam[s - 2]
    return {s: e * (H2 + (2 * h1 + h2) * H1 + h1 * (h1 + h2) * H0) / (h1 * (h1 + h2)),
            s - 1: -e * (H2 + (h1 + h2) * H1) / (h1 * h2),
            s - 2: e * (H2 + h1 * H1) / (h2 * (h1 + h2))}


def _bound_by_hand(sigmas, p, quad):
    """B = sum_quad-steps sqrt(sum_j (smin J eps_j)^2) + sum_j |sum_s smin J_{s,j} eps_j| + eps(smin)."""
    lam = [-math.log(s) for s in sigmas]
    n = len(lam)
    smin = sigmas[-1]
    eps = [float(error_model(np.float64(s), p)) for s in sigmas]
    orders = [min(3, s + 1, n - s) for s in range(n - 1)]
    c = [0.0] * n
    total = 0.0
    for s in range(n - 1):
        a = {j: smin * J * eps[j] for j, J in _J(lam, s, orders[s]).items()}
        if s in quad:
            total += math.sqrt(sum(v * v for v in a.values()))
        else:
            for j, v in a.items():
                c[j] += v
    c[n - 1] += eps[n - 1]
    return total + sum(abs(v) for v in c)


@pytest.mark.parametrize("n,p,quadrature", [(5, 1, "auto"), (7, 2, "auto"), (9, 1, "auto"),
                                            (9, 1, "reference"), (6, 1, 0), (12, 2, "all")])
def test_bound_equals_hand_derived_paper_weights(n, p, quadrature):
    rng = np.random.default_rng(n)
    lev = np.sort(np.exp(rng.uniform(math.log(0.002), math.log(80), n - 2)))[::-1]
    sigmas = [80.0] + lev.tolist() + [0.002]
    quad = set(quadrature_steps(n, quadrature))
    expect = _bound_by_hand(sigmas, p, quad)
    got = float(bound(torch.tensor([-math.log(s) for s in sigmas], dtype=torch.float64), p, quadrature))
    assert got == pytest.approx(expect, rel=1e-10)


def test_quadrature_rule_follows_the_reference_up_to_seven_steps():
    assert quadrature_steps(5) == quadrature_steps(7) == (0, 1, 2)
    assert quadrature_steps(8) == tuple(range(7))                     # auto: all steps beyond NFE 7
    assert quadrature_steps(8, "reference") == (0,)                    # reference: only the first
    assert quadrature_steps(4, 3) == (0, 1, 2)


@pytest.mark.parametrize("n", [5, 8])
def test_propagated_weights_are_the_dpmpp_3m_solvers_linear_response(n):
    """An error e at node j alone (model returns e at sigma_j, 0 elsewhere; x starts at 0) reaches
    x_{n-1} (the state the jump to 0 denoises) as sigma_min * sum_s J_{s,j} e: the bound's
    propagation constant, measured on the solver itself."""
    sig = make_schedule("karras", n, 0.002, 80.0).sigmas
    lam = [-math.log(s) for s in sig[:-1]]
    orders = multistep_orders(n, 3)
    for j in range(n - 1):
        def model(x, sigma, j=j):
            return torch.ones_like(x) if abs(float(sigma) - sig[j]) < 1e-12 * sig[j] else torch.zeros_like(x)
        keep = {}

        def at_sigma_min(info):
            if info["sigma_next"] == 0:
                keep["x"] = info["x"]
        get_solver("dpmpp_3m_lagrange").fn(model, torch.zeros(1, 1, dtype=torch.float64),
                                           torch.tensor(sig, dtype=torch.float64), callback=at_sigma_min)
        terms = [sig[-2] * _J(lam, s, orders[s]).get(j, 0.0) for s in range(n - 1)]
        assert float(keep["x"]) == pytest.approx(sum(terms), abs=1e-12 * sum(map(abs, terms)))


@pytest.mark.parametrize("n,p,quadrature", [(5, 1, "auto"), (7, 2, "auto"), (10, 1, "auto"), (16, 2, "all")])
def test_gradient_equals_finite_differences(n, p, quadrature):
    lam = torch.from_numpy(start_levels("uniform_lambda", n, 0.002, 80.0))
    lam = lam + torch.cat([torch.zeros(1), 0.1 * torch.sin(torch.arange(1.0, n - 1)), torch.zeros(1)]).double()
    x = lam.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(bound(x, p, quadrature), x)
    h = 1e-6
    for i in range(1, n - 1):
        e = torch.zeros(n, dtype=torch.float64)
        e[i] = h
        fd = (bound(lam + e, p, quadrature) - bound(lam - e, p, quadrature)) / (2 * h)
        assert float(g[i]) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("n", [5, 7, 8, 12])
def test_solution_satisfies_constraints_kkt_and_is_a_local_minimum(n):
    sched, info = optimize_nonuniform(n, 0.002, 80.0, p=1)
    assert info["converged"] and info["optimality"] <= 1e-5 and info["constr_violation"] <= 1e-8
    assert sched.solver == "dpmpp_3m_lagrange" and sched.sigmas[0] == 80.0 and sched.sigmas[-2] == pytest.approx(0.002)
    lam = schedule_lambdas(sched)
    gaps = torch.diff(lam)
    assert float(gaps.min()) > 1e-3 * float(lam[-1] - lam[0]) / (n - 1)      # ordering margin kept
    b0 = float(bound(lam, 1.0))
    assert b0 == pytest.approx(info["objective"], rel=1e-12)
    for i in range(1, n - 1):                                                 # no coordinate descends
        for d in (1e-4, -1e-4):
            e = torch.zeros(n, dtype=torch.float64)
            e[i] = d
            assert float(bound(lam + e, 1.0)) >= b0 * (1 - 1e-9)


@pytest.mark.parametrize("n", [5, 6])
def test_vp_linear_latent_same_optimum_from_every_start(n):
    """Linear VP (beta 0.1..20, eps 1e-3), p = 2: the bound drops below every start and all starts agree."""
    opt = NonUniformOptimizer(n, p=2, process="vp-linear")
    for _ in opt.events():
        pass
    info = opt.info()
    assert info["converged"] and len(info["runs"]) == len(STARTS)
    smin = float(np.sqrt(np.expm1(0.5 * 19.9 * 1e-6 + 0.1 * 1e-3)))
    assert opt.sigma_min == pytest.approx(smin) and opt.sigma_max == pytest.approx(math.sqrt(math.expm1(10.05)))
    logs = [np.log(r["sigmas"]) for r in info["runs"]]
    for r, lg in zip(info["runs"], logs):
        assert r["converged"]
        assert r["objective"] < r["start_objective"]
        assert np.abs(lg - logs[0]).max() < 1e-4
    lam_u = start_levels("uniform_lambda", n, opt.sigma_min, opt.sigma_max, "vp-linear")
    lam_t = start_levels("uniform_t", n, opt.sigma_min, opt.sigma_max, "vp-linear")
    for lam0 in (lam_u, lam_t):
        assert info["objective"] <= float(bound(torch.from_numpy(lam0), 2.0))


def test_reference_rule_rewards_collapsed_levels_beyond_seven_steps():
    """Why 'auto' leaves the reference rule after NFE 7: with signed accumulation over many steps
    the bound is driven down by levels collapsing in pairs (huge cancelling Lagrange weights)."""
    sensible, _ = optimize_nonuniform(8)                                   # auto = all steps in quadrature
    r = solve_from(start_levels("uniform_lambda", 8, 0.002, 80.0), 1.0, "reference", maxiter=300)
    b_sensible = float(bound(schedule_lambdas(sensible), 1.0, "reference"))
    assert r.objective < 0.2 * b_sensible
    gaps = np.diff(r.lam)
    assert gaps.min() < 0.02 * gaps.mean()                                 # collapsed levels
    assert np.diff(schedule_lambdas(sensible).numpy()).min() > 0.3 * gaps.mean()


@pytest.mark.parametrize("process", ["edm", "vp-cosine", "flow", "discrete"])
def test_every_process_converges(process):
    sched, info = optimize_nonuniform(6, process=process, p=1)
    assert info["converged"] and info["process"] == process
    assert all(r["converged"] for r in info["runs"])


def test_unconverged_run_is_never_silent():
    with pytest.raises(ScheduleLabError, match="did not converge"):
        optimize_nonuniform(10, maxiter=2)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        sched, info = optimize_nonuniform(10, maxiter=2, strict=False)
    assert not info["converged"] and sched.params["converged"] is False
    assert any("did not converge" in str(x.message) for x in w)


def test_events_state_and_resume():
    opt = NonUniformOptimizer(6)
    evs = []
    for ev in opt.events():
        evs.append(ev)
        if ev.extra.get("start") == "uniform_lambda" and "converged" in ev.extra:   # that start finished
            state = json.loads(json.dumps(opt.state_dict()))
            break
    assert all(e.schedule.steps == 6 and e.objective > 0 for e in evs)
    resumed = NonUniformOptimizer(6)
    resumed.load_state_dict(state)
    rest = list(resumed.events())
    assert rest[-1].done and not any(e.extra.get("start") == "uniform_lambda" for e in rest[:-1])
    assert [r["start"] for r in resumed.info()["runs"]] == list(STARTS)
    assert resumed.converged and resumed.status in (1, 2) and resumed.message
    full, _ = optimize_nonuniform(6)
    assert np.allclose(resumed.result().sigmas, full.sigmas, rtol=1e-9)
    with pytest.raises(ScheduleLabError, match="different"):
        NonUniformOptimizer(7).load_state_dict(state)


@pytest.fixture(scope="module")
def reference_solution():
    """(model, noise, x_500): a 500-step dpmpp_3m_lagrange solution of the probability-flow ODE on moons.
    One torch thread: on a busy machine OpenMP spin-waiting makes 600-point MLP batches crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = load_toy_model("moons", MODEL_KIND)
    noise = 80.0 * torch.randn(600, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    noise = noise.to(model.dtype)
    ref = generate(model, make_schedule("karras", 500, 0.002, 80.0), 600, solver="dpmpp_3m_lagrange", noise=noise).x
    yield model, noise, ref
    torch.set_num_threads(threads)


@pytest.mark.parametrize("nfe", [5, 6])
def test_optimized_schedule_reduces_discretization_error(nfe, reference_solution):
    """dpmpp_3m_lagrange over the optimized schedule vs over uniform lambda, against a 500-step solution of
    the same ODE from the same noise (methods.md s.7).  (Measured, MLP moons: 0.23 vs 0.35 at
    NFE 5, 0.22 vs 0.33 at NFE 6.)"""
    model, noise, ref = reference_solution
    sched, _ = optimize_nonuniform(nfe, 0.002, 80.0, p=1)
    err = {}
    for name, s in (("nonuniform", sched), ("uniform_lambda", make_schedule("loglinear", nfe, 0.002, 80.0))):
        x = generate(model, s, 600, solver=sched.solver, noise=noise.clone()).x
        err[name] = float((x - ref).norm(dim=1).mean())
    assert err["nonuniform"] < 0.85 * err["uniform_lambda"], err


def test_truncation_curve_keys_and_sums():
    sched, info = optimize_nonuniform(6)
    c = truncation_curve(sched, p=1)
    assert c["steps"] == 6 and c["solver"] == "dpmpp_3m_lagrange"
    for k in ("sigma_hi", "sigma_lo", "contribution", "share", "order", "quadrature", "node_error"):
        assert len(c[k]) == 6
    assert sum(c["contribution"]) == pytest.approx(c["objective"], rel=1e-12)
    assert sum(c["share"]) == pytest.approx(1.0)
    assert c["objective"] == pytest.approx(info["objective"], rel=1e-12)
    assert c["order"] == [1, 2, 3, 3, 2, 1] and c["sigma_lo"][-1] == 0.0
    assert c["quadrature"] == [True, True, True, False, False, False]
    assert c["contribution"][-1] == pytest.approx(float(error_model(np.float64(0.002), 1)))   # the jump's own error
    worse = truncation_curve(make_schedule("loglinear", 6, 0.002, 80.0), p=1)
    assert worse["objective"] > c["objective"]
    q, cc = bound_parts(schedule_lambdas(sched), 1.0)
    assert float(q.sum() + cc.abs().sum()) == pytest.approx(c["objective"], rel=1e-12)


@pytest.mark.parametrize("call", [
    lambda: optimize_nonuniform(0),
    lambda: optimize_nonuniform(1),
    lambda: optimize_nonuniform("5"),
    lambda: optimize_nonuniform(5, p=-1),
    lambda: optimize_nonuniform(5, process="nope"),
    lambda: optimize_nonuniform(5, starts=("uniform_lambda", "bogus")),
    lambda: optimize_nonuniform(5, starts=()),
    lambda: optimize_nonuniform(5, quadrature="sometimes"),
    lambda: optimize_nonuniform(5, sigma_min=1.0, sigma_max=0.5),
    lambda: solve_from(np.array([0.0, -1.0, 2.0]), 1.0),
    lambda: truncation_curve([80, 1, 0]),
    lambda: NonUniformOptimizer(5).result(),
])
def test_bad_inputs_raise_schedule_lab_error(call):
    with pytest.raises(ScheduleLabError):
        call()


def _cli(capsys, *args):
    """Run `python -m core ARGS` in process: (exit code, stdout, stderr)."""
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_optimize_and_curve(tmp_path, capsys):
    out = tmp_path / "nu.json"
    code, so, se = _cli(capsys, "optimize", "nonuniform", "--steps", "6", "--p", "2", "--process", "vp-linear",
                        "--out", str(out), "--json")
    assert code == 0, se
    d = json.loads(so)
    s = Schedule.load(out)
    assert d["converged"] and s.solver == "dpmpp_3m_lagrange" and s.steps == 6 and list(s.sigmas) == d["sigmas"]
    code, so, se = _cli(capsys, "curves", "truncation", "--schedule", str(out), "--p", "2", "--json")
    assert code == 0, se
    assert json.loads(so)["objective"] == pytest.approx(d["objective"], rel=1e-9)
    code, so, se = _cli(capsys, "optimize", "nonuniform", "--steps", "6", "--process", "nope", "--out", str(out))
    assert code == 2 and se.count("\n") == 1 and "nope" in se
