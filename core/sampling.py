"""Drive a solver: initial noise from a seed, NFE counting, trajectories, wall time."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from core.models.base import Denoiser
from core.schedules import Schedule
from core.solvers import get_solver


class CountingDenoiser:
    """Wraps a Denoiser and counts its network calls (NFE counts model calls, not steps): a
    guided denoiser (core.models.guidance) costs `calls_per_eval` = 2 per evaluation, else 1."""

    def __init__(self, model):
        self.model, self.calls = model, 0
        self.per_eval = int(getattr(model, "calls_per_eval", 1))

    def __call__(self, x, sigma):
        self.calls += self.per_eval
        return self.model(x, sigma)


@dataclass
class SampleResult:
    x: torch.Tensor                 # [n, *event_shape] final samples
    nfe: int                        # model calls
    seconds: float
    trajectory: torch.Tensor | None = None   # [steps + 1, n_keep, *event_shape] states at each level
    denoised: torch.Tensor | None = None     # [steps, n_keep, *event_shape] D at each level


def initial_noise(model: Denoiser, n: int, sigma_max: float, seed: int = 0, device=None,
                  dtype=None) -> torch.Tensor:
    """x = sigma_0 * randn([n, *event_shape]) from a seeded CPU generator (same on every device)."""
    g = torch.Generator().manual_seed(int(seed))
    z = torch.randn((n, *model.event_shape), generator=g, dtype=torch.float64)
    return (sigma_max * z).to(device=device or model.device, dtype=dtype or model.dtype)


def generate(model: Denoiser, schedule: Schedule, n: int, solver: str = "dpmpp_2m", seed: int = 0,
             keep_trajectory: int = 0, noise: torch.Tensor | None = None) -> SampleResult:
    """Sample n points with `solver` over `schedule`.

    Args:
        keep_trajectory: keep the path of the first k samples (states and denoised per step).
        noise: optional x at sigma_0 (overrides seed-drawn noise); [n, *event_shape].
    The solver's own random draws use a generator seeded with seed + 1.
    """
    spec = get_solver(solver)
    x = initial_noise(model, n, schedule.sigma_max, seed) if noise is None else noise
    counter = CountingDenoiser(model)
    g = torch.Generator(device=x.device).manual_seed(int(seed) + 1)
    states, dens = [], []
    cb = None
    if keep_trajectory:
        def cb(info):
            states.append(info["x"][:keep_trajectory].detach().cpu())
            dens.append(info["denoised"][:keep_trajectory].detach().cpu())
    t0 = time.perf_counter()
    out = spec.fn(counter, x, schedule.tensor(), callback=cb, generator=g)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    traj = torch.stack(states + [out[:keep_trajectory].detach().cpu()]) if keep_trajectory else None
    return SampleResult(out, counter.calls, secs, traj, torch.stack(dens) if keep_trajectory else None)
