"""Score-optimal schedules (Williams et al. 2024, arXiv 2412.07877; methods.md s.6): estimate the
Stein cost density delta(sigma) on a log-spaced grid, then walk at constant speed in
Lambda(sigma) = int sqrt(delta) (core.objectives.stein).

    opt = ScoreOptimalOptimizer(model, mixture, steps=10)
    for ev in opt.events(): ...        # one event per chunk of levels, then the schedule
    opt.result()                        # Schedule "score_optimal"
    schedule, info = score_optimal_schedule(model, mixture, 10)
"""
from __future__ import annotations

import math
import time

import numpy as np

from core.errors import ScheduleLabError
from core.objectives.stein import (METHODS, constant_speed_schedule, density_curves, interval_costs,
                                   iter_stein_density, log_grid)
from core.optimizers.base import Optimizer, ProgressEvent
from core.schedules import Schedule, make_schedule


class ScoreOptimalOptimizer(Optimizer):
    """Score-optimal schedule as an Optimizer.

    Args:
        model: any Denoiser (an exact mixture denoiser goes through the analytic mixture score).
        sampler: data sampler, sampler(n, generator) or an object with .sample(n, generator).
        steps: n; the n levels sigma_max .. sigma_min are spaced at equal Lambda (then 0).
        sigma_min, sigma_max: endpoints (default: the model's).
        levels: grid size (100-1000 recommended; default 200).
        n: data samples per level (the same x0 and noise at every level).
        method: "jvp" (forward mode in sigma) | "fd" (finite differences at the same x).
        v: speed, callable sigma -> v(sigma) (default v = sigma).
        seed: seeds the data and noise draws.
        chunk_points: points per denoiser batch (levels x samples); one event per chunk.
        precision: "auto" (jvp in the network's dtype, fd through a float64 copy) | "float64" | "model".
    State: the density values computed so far (resumes at the next chunk).
    """

    method = "score_optimal"

    def __init__(self, model, sampler, steps: int, sigma_min: float | None = None,
                 sigma_max: float | None = None, levels: int = 200, n: int = 256, method: str = "jvp",
                 v=None, seed: int = 0, chunk_points: int = 32768, precision: str = "auto"):
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
            raise ScheduleLabError(f"steps must be an integer >= 2; got {steps!r}")
        if method not in METHODS:
            raise ScheduleLabError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
        self.model, self.sampler, self.steps = model, sampler, int(steps)
        self.sigma_min = float(getattr(model, "sigma_min", 0.002) if sigma_min is None else sigma_min)
        self.sigma_max = float(getattr(model, "sigma_max", 80.0) if sigma_max is None else sigma_max)
        self.grid = log_grid(self.sigma_min, self.sigma_max, levels)
        self.n, self.method_name, self.v, self.seed = int(n), method, v, int(seed)
        self.chunk_points, self.precision = int(chunk_points), precision
        self.delta = np.full(self.grid.size, np.nan)
        self.levels_done = 0
        self.iteration = 0
        self.seconds = 0.0
        self._placeholder = make_schedule("loglinear", self.steps, self.sigma_min, self.sigma_max)
        from core.optimizers.resume import data_fingerprint
        self._data_hash = data_fingerprint(sampler)

    def _config(self) -> dict:
        return {"steps": self.steps, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "levels": int(self.grid.size), "n": self.n, "method": self.method_name, "seed": self.seed,
                "v": "sigma" if self.v is None else "custom", "model": getattr(self.model, "name", "model"),
                "data": self._data_hash}

    def events(self):
        t0 = time.perf_counter()
        it = iter_stein_density(self.model, self.sampler, self.grid, self.n, self.method_name, self.v,
                                self.seed, start=self.levels_done, chunk_points=self.chunk_points,
                                precision=self.precision)
        for end, d in it:
            self.delta[self.levels_done:end] = d
            self.levels_done = end
            self.iteration += 1
            self.seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            yield ProgressEvent(self.method, self.iteration, self._placeholder, math.nan,
                                message=f"Stein density: {end}/{self.grid.size} levels",
                                extra={"levels_done": end, "levels": int(self.grid.size)})
        sched = self.result()
        self.iteration += 1
        self.seconds += time.perf_counter() - t0
        info = self.info()
        yield ProgressEvent(self.method, self.iteration, sched, info["total_cost"], done=True,
                            message=f"score-optimal schedule: {self.steps} steps at constant Stein speed, "
                                    f"cost {info['total_cost']:.4g} per interval {info['cost'][0]:.4g}",
                            extra=info)

    def result(self) -> Schedule:
        if self.levels_done < self.grid.size:
            raise ScheduleLabError(f"the Stein density is estimated on {self.levels_done}/{self.grid.size} "
                                   "levels; iterate events() to the end first")
        return constant_speed_schedule(self.grid, self.delta, self.steps, self.sigma_min, self.sigma_max,
                                       params=self._config())

    def info(self) -> dict:
        """interval_costs + density_curves of the result (see core.objectives.stein) and the settings."""
        out = interval_costs(self.grid, self.delta, self.result())
        out.update(density_curves(self.grid, self.delta))
        out.update(self._config())
        out["seconds"] = self.seconds
        return out

    def state_dict(self) -> dict:
        return {"method": self.method, "config": self._config(), "iteration": self.iteration,
                "levels_done": self.levels_done, "delta": self.delta[:self.levels_done].tolist()}

    def load_state_dict(self, state: dict) -> None:
        from core import readers as rd
        if not isinstance(state, dict) or state.get("method") != self.method or state.get("config") != self._config():
            raise ScheduleLabError("this state belongs to a different score-optimal run (steps, range, grid, "
                                   "n, method, seed, v, model or data differ); start afresh")
        k = rd.integer(state.get("levels_done"), "score-optimal state 'levels_done'", 0, int(self.grid.size))
        delta = rd.number_list(state.get("delta"), "score-optimal state 'delta'", k, k)
        it = rd.integer(state.get("iteration"), "score-optimal state 'iteration'", 0)
        self.delta[:k] = np.asarray(delta, dtype=np.float64)
        self.levels_done, self.iteration = k, it


def score_optimal_schedule(model, sampler, steps: int, sigma_min: float | None = None,
                           sigma_max: float | None = None, levels: int = 200, n: int = 256,
                           method: str = "jvp", v=None, seed: int = 0, **kw):
    """(Schedule "score_optimal", info) — see ScoreOptimalOptimizer and its info()."""
    opt = ScoreOptimalOptimizer(model, sampler, steps, sigma_min, sigma_max, levels, n, method, v, seed, **kw)
    for _ in opt.events():
        pass
    return opt.result(), opt.info()
