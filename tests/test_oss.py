"""OSS (core.optimizers.oss).

- Gaussian data N(0, c^2 I): the ODE has the closed form x(sigma) = x_T sqrt(c^2 + sigma^2) /
  sqrt(c^2 + sigma_T^2). With that exact teacher, OSS's levels give the least true global error
  of the solver users run among ALL paths on the grid (brute force).
- The DP carries the student's own state and history: its recorded error at sigma_min is the error
  of running the solver over the chosen levels (multistep solvers included).
- The reference's search_OSS (bebebe666/OptimalSteps), run outside the repo on saved noises and a
  saved model, picked the recorded per-sample levels and median; our DP under its rules picks the same.
"""
import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from core.errors import ScheduleLabError
from core.models import MixtureDenoiser
from core.models.base import Denoiser
from core.optimizers.oss import OSSOptimizer, iter_oss, median_path, optimize_oss, oss_search
from core.optimizers.steppers import Stepper, _b, call_model, get_stepper
from core.optimizers.trajectory import polynomial_grid, teacher_trajectory
from core.sampling import initial_noise
from core.schedules import Schedule
from core.solvers import get_solver
from toy_data import get_toy, gaussian

pytestmark = pytest.mark.usefixtures("one_thread")
FIX = Path(__file__).parent / "fixtures"
C = 0.5


def _exact(grid, xT):
    """Closed-form ODE states [G, B, 2] for N(0, c^2 I) data, from x_T at grid[0]."""
    g = torch.as_tensor(grid, dtype=torch.float64)
    r = torch.sqrt(C ** 2 + g ** 2) / math.sqrt(C ** 2 + float(g[0]) ** 2)
    return r[:, None, None] * xT[None]


@pytest.mark.parametrize("per_sample", [False, True])
def test_gaussian_oss_levels_minimise_true_global_error(per_sample):
    """Euler on Gaussian data: every path's final error is |x_T| times a path factor, so the brute-force
    optimum over all C(12, 3) = 220 five-level paths is one path; OSS (exact teacher) finds it."""
    model = MixtureDenoiser(gaussian(C))
    G, n = 14, 5
    grid = polynomial_grid(G, 0.002, 80.0)
    xT = initial_noise(model, 8, 80.0, seed=1)
    teacher = _exact(grid, xT)
    paths, _ = oss_search(model, get_stepper("euler"), grid, teacher, n - 1, per_sample)
    x0_true = xT * C / math.sqrt(C ** 2 + 80.0 ** 2)
    euler = get_solver("euler").fn

    def global_error(path):
        sched = Schedule(tuple(float(grid[i]) for i in path) + (0.0,))
        return (euler(model, xT.clone(), sched.tensor()) - x0_true).pow(2).mean().item()

    errors = {(0, *mid, G - 1): global_error((0, *mid, G - 1))
              for mid in itertools.combinations(range(1, G - 1), n - 2)}
    best = min(errors.values())
    for p in paths.tolist():
        assert errors[tuple(p)] == pytest.approx(best, rel=1e-9)
    # not a trivial optimum: the spread over paths is large
    assert max(errors.values()) > 10 * best


@pytest.mark.parametrize("solver", ["dpmpp_2m", "ipndm", "dpmpp_3m", "heun"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_dp_error_is_the_solvers_error_on_its_path(solver, per_sample):
    """The DP's state at (last step, sigma_min) is the student's: re-running the solver over the chosen
    levels (its history included) lands exactly there."""
    model = MixtureDenoiser(get_toy("ring8"))
    G, n = 25, 6
    grid = polynomial_grid(G, 0.002, 80.0)
    st = get_stepper(solver)
    xT = initial_noise(model, 6, 80.0, seed=2)
    teacher, _ = teacher_trajectory(model, st, grid, xT)
    for out in iter_oss(model, st, grid, teacher, n - 1, per_sample, n_total=n):
        pass
    paths, mse = out["paths"], out["mse"][G - 1]
    if not per_sample:
        assert (paths == paths[0]).all()
    for b in range(xT.shape[0]):
        lv = [float(grid[i]) for i in paths[b].tolist()]
        x, hist = xT[b:b + 1].clone(), st.empty(xT[b:b + 1])
        for k in range(n - 1):
            x, hist = st.step(model, x, lv[k], lv[k + 1], call_model(model, x, lv[k]), hist, k, n)
        assert (x - teacher[G - 1, b]).pow(2).mean().item() == pytest.approx(mse[b].item(), rel=1e-9, abs=1e-15)


class _FMEuler(Stepper):
    """Flow-matching Euler in t with a velocity model (the reference's only solver)."""
    name = "fm_euler"

    def step(self, model, x, s, s_next, D, hist, k, n):
        return x + (_b(s_next, x) - _b(s, x)) * D, hist


class _FMView(torch.nn.Module):
    """The fixture's model: v(z, t) = (z - D(z / (1 - t), t / (1 - t))) / t for the exact toy D."""
    event_shape, dtype = (2,), torch.float64

    def __init__(self, den):
        super().__init__()
        self.den = den

    def forward(self, z, t):
        tt = t.reshape(-1, 1)
        return (z - self.den(z / (1 - tt), (tt / (1 - tt)).reshape(-1))) / tt


def test_reference_rules_reproduce_search_oss():
    """Under the released code's rules (reference=True), our DP picks the recorded per-sample levels of
    search_OSS and their cal_medium, on 3 toys x 6 noises; under ours it keeps sigma_max as the start."""
    fx = json.loads((FIX / "oss_reference.json").read_text())
    assert fx["repo"] == "bebebe666/OptimalSteps" and len(fx["commit"]) == 40
    for c in fx["cases"]:
        N = c["teacher_steps"]
        model, st = _FMView(MixtureDenoiser(get_toy(c["toy"]))), _FMEuler()
        levels = torch.tensor(c["fm_steps"][::-1], dtype=torch.float64)      # ours descend: index 0 = t_max
        z = torch.tensor(c["z"], dtype=torch.float64)
        teacher, _ = teacher_trajectory(model, st, levels.numpy(), z)
        for out in iter_oss(model, st, levels, teacher, c["student_steps"], True, reference=True):
            pass
        paths = out["paths"].tolist()
        ref_lists = [[N - i for i in p[:-1]][::-1] for p in paths]            # the reference's index lists
        assert ref_lists == c["oss_steps"]
        assert median_path(paths, N + 1)[:-1] == [N - i for i in c["cal_medium"]][::-1]
        ours, _ = oss_search(model, st, levels, teacher, c["student_steps"], True)
        assert (ours[:, 0] == 0).all() and (ours[:, -1] == N).all()


def test_optimize_oss_api():
    model = MixtureDenoiser(get_toy("grid8x8"))
    evs = []
    s = optimize_oss(model, 5, "dpmpp_2m", n_samples=8, teacher_steps=40, progress=evs.append)
    assert s.name == "oss" and s.solver == "dpmpp_2m" and s.steps == 5
    assert s.sigmas[0] == 80.0 and s.sigmas[-2] == 0.002 and s.sigmas[-1] == 0.0
    assert s.params["teacher_steps"] == 40 and s.params["per_sample"] is False and s.params["n_samples"] == 8
    assert [e.extra.get("row") for e in evs[:-1]] == [0, 1, 2, 3] and evs[-1].done
    ps = OSSOptimizer(model, 5, "dpmpp_2m", n_samples=8, teacher_steps=40, per_sample=True)
    list(ps.events())
    assert len(ps.info()["per_sample_indices"]) == 8
    assert ps.result().params["grid_indices"] == median_path(ps.paths, 41)
    # a finished state restores the result
    again = OSSOptimizer(model, 5, "dpmpp_2m", n_samples=8, teacher_steps=40, per_sample=True)
    again.load_state_dict(json.loads(json.dumps(ps.state_dict())))
    assert again.result().sigmas == ps.result().sigmas


@pytest.mark.parametrize("kw,msg", [({"solver": "ddim_sde"}, "solver"), ({"steps": 0}, "steps"),
                                    ({"teacher_steps": 3}, "teacher levels"), ({"n_samples": -1}, "n_samples"),
                                    ({"sigma_min": 90.0}, "sigma_min")])
def test_oss_bad_input(kw, msg):
    args = {"steps": 5, "solver": "euler", **kw}
    with pytest.raises(ScheduleLabError, match=msg):
        OSSOptimizer(MixtureDenoiser(get_toy("ring8")), args.pop("steps"), args.pop("solver"), **args)


def test_cli_optimize_gits_and_oss(tmp_path, capsys):
    """`python -m core optimize gits|oss` write a Schedule JSON for the solver asked; a bad solver exits 2."""
    from core.cli import main
    g, o = tmp_path / "g.json", tmp_path / "o.json"
    assert main(["optimize", "gits", "--toy", "ring8", "--steps", "5", "--solver", "ipndm", "--n-samples", "16",
                 "--grid", "21", "--out", str(g), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    s = Schedule.load(g)
    assert s.name == "gits" and s.solver == "ipndm" and s.steps == 5 and out["sigmas"] == list(s.sigmas)
    assert main(["optimize", "oss", "--toy", "ring8", "--model", "mlp", "--steps", "4", "--n-samples", "4",
                 "--teacher-steps", "30", "--per-sample", "--out", str(o), "--json"]) == 0
    s = Schedule.load(o)
    assert s.name == "oss" and s.solver == "dpmpp_2m" and s.params["per_sample"] is True and s.params["model"] == "mlp"
    capsys.readouterr()
    assert main(["optimize", "oss", "--toy", "ring8", "--steps", "4", "--solver", "dpmpp_2m_sde",
                 "--out", str(o)]) == 2
    assert "dpmpp_2m_sde" in capsys.readouterr().err


def test_cli_gits_and_oss_take_guidance(tmp_path, capsys):
    """--label / --cfg reach the trajectory optimizers: the schedule is fitted to the guided ODE of the
    labelled toy (it records both, and differs from the unguided one on the same noise)."""
    from core.cli import main
    common = ["optimize", "oss", "--toy", "grid8x8", "--steps", "4", "--n-samples", "8", "--teacher-steps", "30"]
    assert main(common + ["--label", "0", "--cfg", "4", "--out", str(tmp_path / "g.json")]) == 0
    assert main(common + ["--out", str(tmp_path / "u.json")]) == 0
    g, u = Schedule.load(tmp_path / "g.json"), Schedule.load(tmp_path / "u.json")
    assert str(g.params["label"]) == "0" and g.params["cfg"] == 4.0 and "label" not in u.params
    assert g.sigmas != u.sigmas


class _NaNBelow(Denoiser):
    """A broken model: NaN below sigma = 1."""
    name = "broken"

    def denoise(self, x, s):
        return torch.where(s.reshape(-1, 1) < 1, math.nan, 0.0 * x)


def test_nan_model_is_refused_not_reported():
    from core.optimizers.gits import optimize_gits
    for fn in (lambda m: optimize_gits(m, 5, n_samples=4, grid=21), lambda m: optimize_oss(m, 4, n_samples=4, teacher_steps=20)):
        with pytest.raises(ScheduleLabError, match="NaN"):
            fn(_NaNBelow())


@pytest.mark.parametrize("solver,per_sample", [("dpmpp_2m", False), ("ipndm", True)])
def test_oss_resumes_from_its_state(solver, per_sample):
    """Stopped after two DP rows, saved as JSON and resumed in a new optimizer: the rows done are replayed
    (the carried states and solver history rebuilt) and the schedule is the uninterrupted one."""
    model = MixtureDenoiser(get_toy("moons"))
    kw = dict(n_samples=6, teacher_steps=40, per_sample=per_sample)
    whole = OSSOptimizer(model, 6, solver, **kw)
    list(whole.events())
    a = OSSOptimizer(model, 6, solver, **kw)
    it = a.events()
    for _ in range(3):                       # teacher, rows 1 and 2
        next(it)
    state = json.loads(json.dumps(a.state_dict()))
    assert len(state["trace"]) == 2
    b = OSSOptimizer(model, 6, solver, **kw)
    b.load_state_dict(state)
    evs = list(b.events())
    assert evs[-1].done and b.result().sigmas == whole.result().sigmas and b.paths == whole.paths
    assert b.final_error == pytest.approx(whole.final_error, rel=1e-12)
