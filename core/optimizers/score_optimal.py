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
import torch

from core.errors import ScheduleLabError
from core.objectives.stein import (METHODS, constant_speed_schedule, density_curves, interval_costs,
                                   iter_stein_density, log_grid)
from core.optimizers.base import Optimizer, ProgressEvent
from core.schedules import Schedule, make_schedule


MAX_CHUNK = 32768          # points per batch for small models (2-D toys)
# Peak memory of one Stein point (forward-mode JVP in sigma, float64 score) per byte of one forward pass's
# leaf-module outputs.  Measured (peak RSS, CPU, torch 2.13) on 28x28 UNet-like nets with channels
# 16/32, 32/64, 64/128: 4.4, 6.7, 12.3 MB per point for 0.25, 0.49, 0.97 MB of activations (ratio 13-18).
JVP_FACTOR = 24


def activation_bytes(model, event_shape=None) -> int:
    """Bytes of the activations of one forward pass on ONE sample: the outputs of every leaf module
    (forward hooks) plus the input, measured by a probe call at sigma = 1 (float64 input, no grad)."""
    shape = tuple(event_shape if event_shape is not None else getattr(model, "event_shape", (2,)))
    total = [0]

    def hook(_mod, _inp, out):
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                total[0] += t.numel() * t.element_size()

    mods = [mod for mod in model.modules() if not list(mod.children())] if isinstance(model, torch.nn.Module) else []
    handles = [mod.register_forward_hook(hook) for mod in mods]
    dev = getattr(model, "device", torch.device("cpu"))
    dt = getattr(model, "dtype", torch.float32)
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape, dtype=dt, device=dev), torch.ones(1, dtype=dt, device=dev))
    finally:
        for h in handles:
            h.remove()
    return int(total[0]) + int(np.prod(shape)) * 8


def memory_budget(device=None) -> int:
    """Bytes a Stein batch may use: half the free GPU memory on CUDA; on CPU a quarter of the available
    memory (/proc/meminfo MemAvailable; 4 GiB when unknown), at most 8 GiB."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(dev)
        return int(0.5 * free)
    avail = 4 << 30
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    return int(min(0.25 * avail, 8 << 30))


def auto_chunk_points(model, budget_bytes: int | None = None) -> int:
    """Points (levels x samples) per denoiser batch that fit the memory budget: budget / (JVP_FACTOR x
    activation bytes per sample), in [1, MAX_CHUNK].  (A 28x28 UNet at a fixed 2560 points was killed at
    23.7 GB; a 2-D MLP gets MAX_CHUNK.)"""
    budget = memory_budget(getattr(model, "device", None)) if budget_bytes is None else int(budget_bytes)
    per = JVP_FACTOR * max(1, activation_bytes(model))
    return int(max(1, min(MAX_CHUNK, budget // per)))


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
        chunk_points: points per denoiser batch (levels x samples; fewer than n splits a level, with
            the same estimate); "auto" (default): `auto_chunk_points` from the model's memory per sample.
            One event per batch of levels.
        precision: "auto" (jvp in the network's dtype, fd through a float64 copy) | "float64" | "model".
    Events: one per batch of levels (extra: levels_done, levels, and the density so far on its grid,
        grid_sigma and density_log = sqrt(delta) sigma = dLambda / dlog sigma), then the schedule (extra:
        `info()`, with the whole density and Lambda).
    State: the density values computed so far (resumes at the next chunk).
    """

    method = "score_optimal"

    def __init__(self, model, sampler, steps: int, sigma_min: float | None = None,
                 sigma_max: float | None = None, levels: int = 200, n: int = 256, method: str = "jvp",
                 v=None, seed: int = 0, chunk_points="auto", precision: str = "auto"):
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
            raise ScheduleLabError(f"steps must be an integer >= 2; got {steps!r}")
        if method not in METHODS:
            raise ScheduleLabError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
        self.model, self.sampler, self.steps = model, sampler, int(steps)
        self.sigma_min = float(getattr(model, "sigma_min", 0.002) if sigma_min is None else sigma_min)
        self.sigma_max = float(getattr(model, "sigma_max", 80.0) if sigma_max is None else sigma_max)
        self.grid = log_grid(self.sigma_min, self.sigma_max, levels)
        self.n, self.method_name, self.v, self.seed = int(n), method, v, int(seed)
        if chunk_points == "auto":
            chunk_points = auto_chunk_points(model)
        if isinstance(chunk_points, bool) or not isinstance(chunk_points, (int, np.integer)) or chunk_points < 1:
            raise ScheduleLabError(f"chunk_points must be a positive integer or 'auto'; got {chunk_points!r}")
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
            part = density_curves(self.grid[:end], self.delta[:end])           # the density so far, for plots
            yield ProgressEvent(self.method, self.iteration, self._placeholder, math.nan,
                                message=f"Stein density: {end}/{self.grid.size} levels",
                                extra={"levels_done": end, "levels": int(self.grid.size),
                                       "grid_sigma": part["grid_sigma"], "density_log": part["density_log"]})
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
