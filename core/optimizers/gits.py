"""GITS: geometry-inspired time scheduling (Chen et al., ICML 2024, "On the Trajectory Regularity of
ODE-based Diffusion Sampling", Sec. 4; reference code zju-pi/diff-sampler, gits-main/gits_utils.py;
methods.md s.8).

1. Teacher: `n_samples` trajectories of the teacher solver (reference default iPNDM) on a fine grid
   of G = 61 levels, EDM's polynomial grid with rho = 7 from sigma_max to sigma_min (the
   reference's `num_steps_tea=61`, `schedule_type=polynomial`, `schedule_rho=7`).
2. Cost matrix over pairs i < j of grid levels: the distance between the solver's one jump from the
   teacher state at g_i to g_j and the teacher state at g_j, averaged over samples. The jump is
   the solver's first step (no history): Euler for euler / dpmpp_2m / dpmpp_3m / ipndm (the
   reference's `x_cur + (t_next - t_cur) * d_cur` for every solver; DPM-Solver++(1) is the same
   step), a full Heun step (one more model call per pair) for heun.
   metric "l2" (default here: the Euclidean distance of the jump's end point from the teacher's),
   "l1", or "dev" (the released code's default: the change in distance from the straight line
   between the teacher's first and last states, averaged over samples).
3. Dynamic programming for the n-level path 0 = i_0 < ... < i_{n-1} = G - 1, exactly as the
   reference's `dp`:  V[j][1] = C[j][G-1],  V[j][k] = min_{j < i < G-1} C[j][i] + coeff * V[i][k-1],
   so the m-th jump from sigma_max is weighted coeff^(m-1) (coeff = 1.15 favours accuracy late).

Our convention: the reference's `num_steps` timestamps end at sigma_min and give num_steps - 1
model calls (no `denoise_to_zero`); here the same n levels are followed by 0, and the n-th model
call is the solver's step from sigma_min to 0, common to every path. So reference `num_steps = n`
is our `steps = n` (NFE n; Heun 2n - 1).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from core.errors import ScheduleLabError
from core.optimizers.base import Optimizer, ProgressEvent
from core.optimizers.trajectory import check_common, polynomial_grid, schedule_from_path, teacher_trajectory
from core.sampling import initial_noise
from core.schedules import Schedule, make_schedule

METRICS = ("l2", "l1", "dev")


def gits_dp(cost: np.ndarray, num_steps: int, coeff: float = 1.15) -> list:
    """GITS' dynamic programming (reference `dp`, same recursion, same tie-breaking).

    Args:
        cost: [G, G] cost of a jump from level i to level j > i (lower triangle unused).
        num_steps: n, the number of levels on the path (n - 1 jumps), 2 <= n <= G.
        coeff: weight of the rest of the path relative to the current jump.
    Returns:
        [n] grid indices 0 = i_0 < ... < i_{n-1} = G - 1.
    """
    C = np.asarray(cost, dtype=np.float64)
    G, K = C.shape[0], num_steps - 1
    if not 2 <= num_steps <= G:
        raise ScheduleLabError(f"num_steps must be in 2..{G} for a {G}-level grid; got {num_steps}")
    V = np.full((G, K + 1), np.inf)
    V[:, 1] = C[:, -1]
    for k in range(2, K + 1):
        for j in range(G - 1):
            if j + 1 < G - 1:              # V[j][k] = min_{j < i < G-1} C[j][i] + coeff V[i][k-1]
                V[j, k] = min(np.inf, float(np.min(C[j, j + 1:G - 1] + coeff * V[j + 1:G - 1, k - 1])))
    phi, w = [0], 0
    for k in range(K, 1, -1):            # backtrack: the first j that attains V[w][k]
        for j in range(w + 1, G):
            if V[w, k] == C[w, j] + coeff * V[j, k - 1]:
                phi.append(j)
                w = j
                break
    phi.append(G - 1)
    return phi


def path_cost(cost: np.ndarray, path, coeff: float = 1.15) -> float:
    """The DP's objective for a path: sum_m coeff^m C[i_m][i_{m+1}]."""
    return float(sum(coeff ** m * cost[a, b] for m, (a, b) in enumerate(zip(path, path[1:]))))


def _deviation(x: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Distance of x [T, B, *event] from the line through start and end [B, *event] (reference
    `cal_deviation`) -> [T, B]."""
    ev = tuple(range(2, x.ndim))
    bc = end - start
    unit = bc / bc.flatten(1).norm(dim=1).reshape(-1, *([1] * (bc.ndim - 1)))
    ac = end - x
    proj = (ac * unit).sum(dim=ev, keepdim=True) * unit
    return (ac - proj).flatten(2).norm(dim=-1)


@torch.no_grad()
def cost_sum(model, stepper, grid, states, dens, metric: str = "l2") -> np.ndarray:
    """[G, G] sum over the batch of the one-jump cost from states[i] to states[j] (0 where j <= i)."""
    G, B = states.shape[0], states.shape[1]
    ev = tuple(range(2, states.ndim))
    out = np.zeros((G, G))
    if metric == "dev":
        dev_tea = _deviation(states[1:-1], states[0], states[-1])           # [G-2, B]
        dev_tea = torch.cat([torch.zeros_like(dev_tea[:1]), dev_tea, torch.zeros_like(dev_tea[:1])])
    g = torch.as_tensor(grid, dtype=torch.float64)
    for i in range(G - 1):
        T = G - 1 - i                                                        # targets i+1 .. G-1
        x = states[i].expand(T, *states[i].shape)
        D = dens[i].expand_as(x)
        s_next = g[i + 1:, None].expand(T, B)
        x_pred, _ = stepper.step(model, x, float(grid[i]), s_next, D, stepper.empty(x), 0, G)
        diff = x_pred - states[i + 1:]
        if metric == "l2":
            c = diff.pow(2).sum(dim=ev).sqrt()
        elif metric == "l1":
            c = diff.abs().sum(dim=ev)
        else:
            c = _deviation(x_pred, states[0], states[-1]) - dev_tea[i + 1:]
        out[i, i + 1:] = c.sum(dim=1).cpu().numpy()
    if not np.isfinite(out).all():
        raise ScheduleLabError("a one-jump cost is NaN or inf (the model failed on a jumped-to state); "
                               "check the model and its sigma range")
    return out


class GITSOptimizer(Optimizer):
    """GITS as an Optimizer: one event per chunk of teacher samples (teacher + its costs), then the DP.

    Args:
        model: any Denoiser.
        steps: n (schedule levels before the final 0; NFE n, Heun 2n - 1).
        solver: the solver the schedule is for (euler, heun, dpmpp_2m, ipndm, dpmpp_3m).
        sigma_min, sigma_max: path endpoints (default: the model's).
        n_samples: teacher trajectories (reference `num_warmup` = 256).
        coeff: DP coefficient (reference default 1.15).
        grid: teacher grid levels (reference `num_steps_tea` = 61), polynomial with `rho`.
        teacher: teacher solver (reference `solver_tea` = ipndm).
        metric: "l2" | "l1" | "dev" (see the module docstring).
        seed: noise seed (core.sampling.initial_noise).
        chunk: samples per event.
    State: the cost sum over the samples done so far (resumes at the next chunk).
    """

    method = "gits"

    def __init__(self, model, steps: int, solver: str = "dpmpp_2m", *, sigma_min=None, sigma_max=None,
                 n_samples: int = 256, coeff: float = 1.15, grid: int = 61, rho: float = 7.0,
                 teacher: str = "ipndm", metric: str = "l2", seed: int = 0, chunk: int = 64):
        if metric not in METRICS:
            raise ScheduleLabError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")
        if not (isinstance(coeff, (int, float)) and math.isfinite(coeff) and coeff > 0):
            raise ScheduleLabError(f"coeff must be a positive number (reference default 1.15); got {coeff!r}")
        if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or grid < 3:
            raise ScheduleLabError(f"grid must be an integer >= 3 levels (reference 61); got {grid!r}")
        self.stepper, self.sigma_min, self.sigma_max = check_common(model, steps, solver, sigma_min, sigma_max,
                                                                    n_samples, grid)
        self.teacher_stepper = check_common(model, steps, teacher, sigma_min, sigma_max, n_samples, grid)[0]
        self.model, self.steps, self.n_samples, self.coeff = model, int(steps), int(n_samples), float(coeff)
        self.grid_levels, self.rho, self.metric, self.seed = int(grid), float(rho), metric, int(seed)
        self.chunk = max(1, int(chunk))
        self.grid = polynomial_grid(self.grid_levels, self.sigma_min, self.sigma_max, self.rho)
        self.cost_total = np.zeros((self.grid_levels, self.grid_levels))
        self.samples_done, self.iteration, self.seconds = 0, 0, 0.0
        self.path = None
        self._placeholder = make_schedule("karras", self.steps, self.sigma_min, self.sigma_max)

    def _config(self) -> dict:
        return {"steps": self.steps, "solver": self.stepper.name, "sigma_min": self.sigma_min,
                "sigma_max": self.sigma_max, "n_samples": self.n_samples, "coeff": self.coeff,
                "grid": self.grid_levels, "rho": self.rho, "teacher": self.teacher_stepper.name,
                "metric": self.metric, "seed": self.seed, "model": getattr(self.model, "name", "model")}

    def cost(self) -> np.ndarray:
        """[G, G] cost matrix averaged over the samples done (0 on and below the diagonal)."""
        return self.cost_total / max(1, self.samples_done)

    def events(self):
        t0 = time.perf_counter()
        x_all = None
        while self.samples_done < self.n_samples:
            if x_all is None:
                x_all = initial_noise(self.model, self.n_samples, self.sigma_max, self.seed,
                                      dtype=torch.float64)
            b = min(self.chunk, self.n_samples - self.samples_done)
            x = x_all[self.samples_done:self.samples_done + b]
            states, dens = teacher_trajectory(self.model, self.teacher_stepper, self.grid, x)
            self.cost_total += cost_sum(self.model, self.stepper, self.grid, states, dens, self.metric)
            self.samples_done += b
            self.iteration += 1
            self.seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            yield ProgressEvent(self.method, self.iteration, self._placeholder, math.nan,
                                message=f"teacher + cost matrix: {self.samples_done}/{self.n_samples} samples",
                                extra={"samples_done": self.samples_done, "n_samples": self.n_samples})
        self.path = gits_dp(self.cost(), self.steps, self.coeff)
        self.iteration += 1
        self.seconds += time.perf_counter() - t0
        sched = self.result()
        obj = path_cost(self.cost(), self.path, self.coeff)
        yield ProgressEvent(self.method, self.iteration, sched, obj, done=True,
                            message=f"GITS: {self.steps} levels on a {self.grid_levels}-level grid, "
                                    f"weighted cost {obj:.4g} ({self.seconds:.2f} s)",
                            extra=self.info())

    def result(self) -> Schedule:
        if self.path is None:
            if self.samples_done < self.n_samples:
                raise ScheduleLabError(f"GITS has the costs of {self.samples_done}/{self.n_samples} samples; "
                                       "iterate events() to the end first")
            self.path = gits_dp(self.cost(), self.steps, self.coeff)
        return schedule_from_path(self.grid, self.path, "gits", self.stepper.name,
                                  {**self._config(), "grid_indices": list(self.path)})

    def info(self) -> dict:
        c = self.cost()
        return {"grid_indices": list(self.path or []), "grid_sigmas": self.grid.tolist(),
                "jump_costs": [float(c[a, b]) for a, b in zip(self.path or [], (self.path or [])[1:])],
                "seconds": self.seconds, **self._config()}

    def state_dict(self) -> dict:
        return {"method": self.method, "config": self._config(), "iteration": self.iteration,
                "samples_done": self.samples_done, "cost_total": self.cost_total.tolist()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("method") != self.method or state.get("config") != self._config():
            raise ScheduleLabError("this state belongs to a different GITS run (steps, solver, range, grid, "
                                   "samples, coeff, metric, seed or model differ); start afresh")
        self.cost_total = np.asarray(state["cost_total"], dtype=np.float64)
        self.samples_done, self.iteration = int(state["samples_done"]), int(state["iteration"])
        self.path = None


def optimize_gits(model, steps, solver="dpmpp_2m", *, sigma_min=None, sigma_max=None, n_samples=256,
                  coeff=1.15, seed=0, progress=None, **kw) -> Schedule:
    """GITS schedule "gits" for `solver` (see GITSOptimizer; kw: grid, rho, teacher, metric, chunk).
    progress: optional callable(ProgressEvent) after each event."""
    opt = GITSOptimizer(model, steps, solver, sigma_min=sigma_min, sigma_max=sigma_max, n_samples=n_samples,
                        coeff=coeff, seed=seed, **kw)
    for ev in opt.events():
        if progress is not None:
            progress(ev)
    return opt.result()
