"""Held-out quality metrics for early stopping (methods.md sections 4 and 7); lower is better.

    nll        toys: mean -log p(x) of samples under the exact mixture density. It ranks a collapsed
               sample best (spiral, dpmpp_2m_sde, 2 steps: one blob, NLL -0.22 against 12.3 at 10 steps).
    kde_nll    toys / any data sampler: mean -log q(y) of fixed fresh data y under a KDE q of the samples
               (core.metrics.toy.kde_nll; 13567 against 1.46 in that case): a collapsed sample cannot
               win it, so AYS's "auto" early stopping uses it whenever the data can be sampled.
    swd        toys / any data sampler: sliced Wasserstein-2 to fixed fresh data samples.
    ref_error  any model: RMS distance of the n-step ODE sample to a many-step reference
               solution from the SAME initial noise (the discretization error itself).
    FDHeldout  models with the digits metrics: FD of n samples to the TRAINING split's classifier
               features (the held-out split stays unseen).  On digits it is the right early-stopping
               target for AYS: the first KLUB sweep lowers FD (0.37 -> 0.30) while raising ref_error
               (1.41 -> 1.52), so ref_error stopped AYS at its start (docs/ays.md).

Every metric uses fixed seeds, so successive schedules are compared on the same noise.
"""
from __future__ import annotations

import math

import torch

from core.errors import ScheduleLabError, unknown_name
from core.metrics.toy import kde_nll, nll, sliced_wasserstein
from core.sampling import generate, initial_noise
from core.schedules import Schedule, make_schedule
from core.solvers import get_solver

HELDOUT = ("kde_nll", "nll", "swd", "ref_error")
REF_SOLVER, REF_STEPS = "heun", 128


def sampling_model(model):
    """An exact mixture is sampled in its float64 matmul form (same maths, several times faster)."""
    from core.objectives.fast_denoiser import mc_denoiser
    return mc_denoiser(model, torch.float64)


class HeldoutMetric:
    """A callable schedule -> float (lower is better) built from a metric name.

    Args:
        name: "kde_nll" | "nll" | "swd" | "ref_error".
        model: the Denoiser being optimized (samples are drawn with it).
        solver: sampler for nll / swd (default SDE-DPM-Solver++(2M), the paper's Table 4 choice);
            ref_error needs a deterministic solver: a stochastic one is replaced by dpmpp_2m.
        n: samples per evaluation; seed: the fixed seed of every evaluation.
        mixture: the exact GaussianMixture (needed for nll).
        sampler: (n, generator) -> data (needed for swd and kde_nll; kde_nll falls back to the mixture's).
    """

    def __init__(self, name: str, model, solver: str = "dpmpp_2m_sde", n: int = 8192, seed: int = 0,
                 mixture=None, sampler=None):
        if name not in HELDOUT:
            raise unknown_name("held-out metric", name, HELDOUT)
        if not isinstance(n, int) or n < 2:
            raise ScheduleLabError(f"held-out sample count must be an integer >= 2; got {n!r}")
        spec = get_solver(solver)
        if name == "nll" and mixture is None:
            raise ScheduleLabError("held-out metric 'nll' needs the exact data density (a toy); use "
                                   "'ref_error' or 'swd' for other models, or pass heldout_fn")
        if name == "kde_nll" and sampler is None and mixture is not None:
            sampler = mixture.sample
        if name in ("swd", "kde_nll") and sampler is None:
            raise ScheduleLabError(f"held-out metric {name!r} needs a data sampler (or the toy's mixture)")
        if name == "ref_error" and spec.stochastic:
            spec = get_solver("dpmpp_2m")
        self.name, self.solver, self.n, self.seed = name, spec.name, n, int(seed)
        self.model, self.mixture = sampling_model(model), mixture
        self._ref_data = None
        if name in ("swd", "kde_nll"):
            self._ref_data = torch.as_tensor(sampler(n, torch.Generator().manual_seed(self.seed + 10_000)))
        self._ref = {}

    def __call__(self, schedule: Schedule) -> float:
        if self.name == "ref_error":
            return self._ref_error(schedule)
        x = generate(self.model, schedule, self.n, solver=self.solver, seed=self.seed).x.double().cpu()
        if not torch.isfinite(x).all():
            return math.inf
        if self.name == "nll":
            return nll(x, self.mixture)
        if self.name == "kde_nll":
            return kde_nll(x, self._ref_data.double(), seed=self.seed)
        return sliced_wasserstein(x, self._ref_data.double(), seed=self.seed)

    def _ref_error(self, schedule: Schedule) -> float:
        key = (schedule.sigma_max, schedule.sigma_min)
        noise = initial_noise(self.model, self.n, schedule.sigma_max, self.seed)
        if key not in self._ref:
            ref = make_schedule("karras", REF_STEPS, schedule.sigma_min, schedule.sigma_max)
            self._ref[key] = generate(self.model, ref, self.n, REF_SOLVER, noise=noise).x.double()
        x = generate(self.model, schedule, self.n, self.solver, noise=noise).x.double()
        d = (x - self._ref[key]).flatten(1).pow(2).sum(1)
        return float(d.mean().sqrt()) if torch.isfinite(d).all() else math.inf


class FDHeldout:
    """schedule -> Frechet distance of `n` `solver` samples (fixed noise `seed`) to the digit
    classifier's features of the TRAINING split (core.metrics.images); lower is better."""

    name = "fd"                   # AYS's events call the metric by it (extra["heldout_name"])

    def __init__(self, model, n: int = 1000, seed: int = 1234, solver: str = "dpmpp_2m"):
        from core.metrics import images as im
        if get_solver(solver).stochastic:
            raise ScheduleLabError(f"the FD held-out metric samples with a deterministic solver; got {solver!r}")
        self.model, self.n, self.seed, self.solver, self._im = model, int(n), int(seed), solver, im
        self.real = im.real_features("train")[1]

    def __call__(self, schedule: Schedule) -> float:
        x, _, _ = self._im.sample_images(self.model, schedule, self.solver, self.n, self.seed)
        return self._im.frechet_distance(self._im.classify(x)[1], self.real)
