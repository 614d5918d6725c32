"""Stand-ins for engine modules that other branches deliver (objectives, optimizers, image
registry), written to their documented contracts. The app tests install them with
`install(monkeypatch, ...)` to check the pages' wiring (start / stop / resume, plotted numbers
equal the engine's numbers) independently of the real modules, whose own tests live with them.
They are simple closed forms so a test can recompute every number it asserts on."""
from __future__ import annotations

import math
import sys
import types

import numpy as np
import torch

from core.models.base import Denoiser
from core.optimizers.base import Optimizer, ProgressEvent
from core.schedules import Schedule, make_schedule


# ---------------------------------------------------------------- objectives
def fake_klub_curves(model, sampler, schedule, n_samples=1024, c=0.5, seed=0):
    """KLUB stand-in: interval cost = log(hi / lo)^2 (the last interval: log(hi / sigma_min))."""
    s = np.asarray(schedule.sigmas, dtype=np.float64)
    hi, lo = s[:-1], s[1:]
    lo_eff = np.where(lo > 0, lo, model.sigma_min)
    cost = np.log(hi / lo_eff) ** 2
    grid = np.geomspace(s[-2], s[0], 50)
    return {"sigma_lo": lo, "sigma_hi": hi, "klub": cost, "klub_se": 0.1 * cost, "share": cost / cost.sum(),
            "density_sigma": grid, "density": 1.0 / grid}


def fake_truncation_curve(schedule, p=1):
    s = np.asarray(schedule.sigmas, dtype=np.float64)
    contrib = (s[:-1] - s[1:]) ** p
    return {"sigma_lo": s[1:], "sigma_hi": s[:-1], "contribution": contrib, "share": contrib / contrib.sum()}


# ---------------------------------------------------------------- an optimizer
class FakeOptimizer(Optimizer):
    """Moves log-sigma of the interior points halfway to the log-linear schedule per iteration.

    objective_k = sum (log s - log s_loglinear)^2 halves every iteration (x 1/4), heldout =
    objective + 0.01 * iteration (so the early-stopping point is a real minimum)."""

    method = "ays"

    def __init__(self, model, sampler, steps=10, max_iters=6, seed=0, n_samples=64):
        self.steps, self.max_iters, self.seed = steps, max_iters, seed
        self.target = np.log(np.asarray(make_schedule("loglinear", steps, model.sigma_min, model.sigma_max).sigmas[:-1]))
        self.logs = np.log(np.asarray(make_schedule("karras", steps, model.sigma_min, model.sigma_max).sigmas[:-1]))
        self.iteration, self.best = -1, (math.inf, None)
        self.constructed_with = dict(steps=steps, max_iters=max_iters, seed=seed, n_samples=n_samples)

    def _schedule(self):
        return Schedule(tuple(np.exp(self.logs).tolist()) + (0.0,), name="fake_ays")

    def objective(self):
        return float(((self.logs - self.target) ** 2).sum())

    def events(self):
        while self.iteration + 1 < self.max_iters:
            self.iteration += 1
            self.logs[1:-1] = 0.5 * (self.logs[1:-1] + self.target[1:-1])
            obj = self.objective()
            held = obj + 0.01 * self.iteration
            if held < self.best[0]:
                self.best = (held, self.iteration)
            done = self.iteration + 1 >= self.max_iters
            yield ProgressEvent("ays", self.iteration, self._schedule(), obj, heldout=held, done=done,
                                message=f"sweep {self.iteration}", extra={"best_iteration": self.best[1]})

    def state_dict(self):
        return {"iteration": self.iteration, "logs": self.logs.tolist(), "best": list(self.best)}

    def load_state_dict(self, state):
        self.iteration, self.logs, self.best = state["iteration"], np.asarray(state["logs"]), tuple(state["best"])

    def result(self):
        return self._schedule()


# ---------------------------------------------------------------- an image model
class GaussianImages(Denoiser):
    """Exact denoiser of N(0, c^2 I) images [1, 8, 8]: D(x, s) = c^2 / (c^2 + s^2) x."""

    def __init__(self, c: float = 0.5):
        super().__init__()
        self.c, self.name, self.event_shape = c, "gauss8", (1, 8, 8)
        self.sigma_min, self.sigma_max, self.sigma_data = 0.002, 80.0, c
        self.register_buffer("_anchor", torch.zeros(()))

    def denoise(self, x, sigma):
        s2 = sigma.reshape(-1, 1, 1, 1) ** 2
        return self.c ** 2 / (self.c ** 2 + s2) * x


def _module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    return m


MODULES = {
    "core.objectives.klub": lambda: _module("core.objectives.klub", klub_curves=fake_klub_curves),
    "core.objectives.truncation": lambda: _module("core.objectives.truncation", truncation_curve=fake_truncation_curve),
    "core.optimizers.ays": lambda: _module("core.optimizers.ays", AYSOptimizer=FakeOptimizer),
    "core.models.registry": lambda: _module("core.models.registry", model_names=lambda: ["gauss8"],
                                            load_model=lambda name, device="cpu": GaussianImages().to(device)),
}


def install(monkeypatch, *names):
    """Put the named fake modules into sys.modules for one test (and clear the app's caches)."""
    import streamlit as st
    st.cache_data.clear()
    st.cache_resource.clear()
    for n in names:
        monkeypatch.setitem(sys.modules, n, MODULES[n]())
