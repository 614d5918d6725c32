"""GITS (core.optimizers.gits) and the one-jump steppers it and OSS use (core.optimizers.steppers).

- a stepper run over a whole schedule is the solver users run (core.solvers), bit for bit;
- dpmpp_3m is k-diffusion's DPM-Solver++(3M), i.e. core.solvers' dpmpp_3m (pinned to k-diffusion's
  recorded output in tests/test_samplers_reference.py);
- the DP equals brute-force enumeration of every n-level path, and the reference's `dp` on saved
  cost matrices (tests/fixtures/gits_reference.json, zju-pi/diff-sampler).
"""
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import ScheduleLabError
from core.models import MixtureDenoiser
from core.optimizers.gits import GITSOptimizer, gits_dp, optimize_gits, path_cost
from core.optimizers.steppers import get_stepper, run_stepper
from core.sampling import initial_noise
from core.schedules import Schedule, make_schedule
from core.solvers import get_solver
from toy_data import get_toy

pytestmark = pytest.mark.usefixtures("one_thread")
FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def ring():
    return MixtureDenoiser(get_toy("ring8"))


SCHEDULES = [make_schedule("karras", 7, 0.002, 80.0),
             Schedule((80.0, 9.0, 2.5, 1.1, 0.3, 0.05, 0.002, 0.0))]


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m", "ipndm", "dpmpp_3m"])
@pytest.mark.parametrize("sched", SCHEDULES, ids=["karras", "uneven"])
def test_stepper_run_is_the_solver(ring, name, sched):
    """The optimizers' stepper, run over a schedule, gives what core.solvers gives from the same noise
    (float64, exact denoiser): the optimized schedule is for exactly the solver users run."""
    x = initial_noise(ring, 64, sched.sigma_max, seed=3)
    ours = run_stepper(get_stepper(name), ring, x.clone(), sched.sigmas)
    theirs = get_solver(name).fn(ring, x.clone(), sched.tensor())
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-12)


def test_dpmpp_3m_is_not_2m(ring):
    """dpmpp_3m (k-diffusion's DPM-Solver++(3M), pinned by tests/test_samplers_reference.py) is a
    different method from DPM-Solver++(2M) on an uneven schedule."""
    sched = SCHEDULES[1]
    x = initial_noise(ring, 64, sched.sigma_max, seed=4)
    ours = run_stepper(get_stepper("dpmpp_3m"), ring, x.clone(), sched.sigmas)
    other = run_stepper(get_stepper("dpmpp_2m"), ring, x.clone(), sched.sigmas)
    assert (ours - other).abs().max() > 1e-4


def _random_cost(G, seed):
    rng = np.random.default_rng(seed)
    C = np.zeros((G, G))
    iu = np.triu_indices(G, 1)
    C[iu] = rng.random(len(iu[0])) * (1 + (iu[1] - iu[0])) ** 1.5
    return C


@pytest.mark.parametrize("coeff", [1.0, 1.15, 0.8])
def test_dp_equals_brute_force(coeff):
    """Every n-level path 0 < i_1 < ... < G-1 enumerated: the DP's path has the least weighted cost."""
    G = 11
    for seed in range(3):
        C = _random_cost(G, seed)
        for n in range(2, 8):
            best = min(itertools.combinations(range(1, G - 1), n - 2),
                       key=lambda mid: path_cost(C, (0, *mid, G - 1), coeff))
            best_path = [0, *best, G - 1]
            path = gits_dp(C, n, coeff)
            assert len(path) == n and path[0] == 0 and path[-1] == G - 1
            assert path_cost(C, path, coeff) == pytest.approx(path_cost(C, best_path, coeff), rel=1e-12)
            assert path == best_path          # continuous random costs: the optimum is unique


def test_dp_matches_reference_on_saved_costs():
    """The reference's `dp` (zju-pi/diff-sampler gits-main/gits_utils.py), run outside the repo on these
    cost matrices, picked these indices; ours picks the same, including the coefficient's effect."""
    fx = json.loads((FIX / "gits_reference.json").read_text())
    assert fx["repo"] == "zju-pi/diff-sampler" and len(fx["commit"]) == 40
    coeff_matters = 0
    for c in fx["cases"]:
        C = np.asarray(fx["matrices"][c["matrix"]])
        assert gits_dp(C, c["num_steps"], c["coeff"]) == c["dp_list"]
        coeff_matters += gits_dp(C, c["num_steps"], 1.0) != c["dp_list"]
    assert len(fx["cases"]) >= 100 and coeff_matters > 0


def test_gits_optimizer_schedule_and_resume():
    model = MixtureDenoiser(get_toy("grid8x8"))
    sched = optimize_gits(model, 6, "dpmpp_2m", n_samples=48, grid=31)
    assert sched.name == "gits" and sched.solver == "dpmpp_2m" and sched.steps == 6
    assert sched.sigmas[0] == 80.0 and sched.sigmas[-2] == 0.002 and sched.sigmas[-1] == 0.0
    p = sched.params
    assert p["coeff"] == 1.15 and p["n_samples"] == 48 and p["grid"] == 31 and p["teacher"] == "ipndm"
    assert len(p["grid_indices"]) == 6
    # stopped after the first chunk and resumed from its state: the same schedule
    a = GITSOptimizer(model, 6, "dpmpp_2m", n_samples=48, grid=31, chunk=16)
    next(iter(a.events()))
    b = GITSOptimizer(model, 6, "dpmpp_2m", n_samples=48, grid=31, chunk=16)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    evs = list(b.events())
    assert len(evs) == 3 and evs[-1].done
    assert b.result().sigmas == sched.sigmas
    # the DP's path is the best on its own cost matrix among evenly spaced alternatives
    C = b.cost()
    assert path_cost(C, b.path) <= path_cost(C, np.linspace(0, 30, 6).round().astype(int).tolist()) + 1e-12


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_cost_matrix_is_the_solvers_one_jump_from_the_teacher(solver):
    """C[i][j] = mean over samples of || one `solver` step g_i -> g_j from the teacher state - teacher
    state at g_j ||, rebuilt here from core.solvers alone: the teacher is core's iPNDM over the grid
    (states from its callback), the jump is core's solver over the two levels (Heun: with its
    correction, one more model call)."""
    model = MixtureDenoiser(get_toy("ring8"))
    opt = GITSOptimizer(model, 5, solver, n_samples=16, grid=21)
    list(opt.events())
    grid = torch.tensor(opt.grid)
    x = initial_noise(model, 16, 80.0, seed=0)
    states = []
    last = get_solver("ipndm").fn(model, x.clone(), grid, callback=lambda d: states.append(d["x"]))
    states.append(last)
    C = opt.cost()
    for i, j in [(0, 5), (3, 4), (8, 15), (12, 20), (17, 19)]:
        jump = get_solver(solver).fn(model, states[i].clone(), grid[[i, j]])
        direct = (jump - states[j]).norm(dim=1).mean().item()
        assert C[i, j] == pytest.approx(direct, rel=1e-9, abs=1e-12)
    assert np.all(C[np.tril_indices(21)] == 0)


@pytest.mark.parametrize("kw,msg", [({"solver": "dpmpp_2m_sde"}, "solver"), ({"steps": 1}, "steps"),
                                    ({"coeff": -1.0}, "coeff"), ({"metric": "l3"}, "metric"),
                                    ({"steps": 70}, "grid levels"), ({"n_samples": 0}, "n_samples")])
def test_gits_bad_input(kw, msg):
    args = {"steps": 6, "solver": "euler", **kw}
    with pytest.raises(ScheduleLabError, match=msg):
        GITSOptimizer(MixtureDenoiser(get_toy("ring8")), args.pop("steps"), args.pop("solver"), **args)


def test_gits_dp_bad_steps():
    with pytest.raises(ScheduleLabError):
        gits_dp(np.zeros((5, 5)), 6)
    assert math.isfinite(path_cost(_random_cost(5, 0), gits_dp(_random_cost(5, 0), 3)))
