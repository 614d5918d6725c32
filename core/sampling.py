"""Drive a solver: initial noise from a seed, NFE counting, trajectories, wall time."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from core.errors import ScheduleLabError
from core.models.base import Denoiser
from core.schedules import Schedule
from core.solvers import get_solver


class CountingDenoiser:
    """Wraps a Denoiser and counts its network calls (NFE counts model calls, not steps): a guided
    denoiser (core.models.guidance) costs `calls_per_eval` = 2 per evaluation, else 1. With `sigmas`
    (the schedule) every output is checked to be finite: a NaN / inf stops the run with a
    ScheduleLabError naming the call, the step and sigma (one isfinite reduction per call)."""

    def __init__(self, model, sigmas=None):
        self.model, self.calls, self.sigmas = model, 0, sigmas
        self.per_eval = int(getattr(model, "calls_per_eval", 1))

    def __call__(self, x, sigma):
        self.calls += self.per_eval
        out = self.model(x, sigma)
        if self.sigmas is not None and not bool(torch.isfinite(out).all()):
            raise non_finite_output(self.model, out, sigma, self.sigmas, self.calls)
        return out


def non_finite_output(model, out, sigma, sigmas, call: int) -> ScheduleLabError:
    """The error for a denoiser output with NaN / inf: which call, step (nearest schedule level) and sigma."""
    s = float(torch.as_tensor(sigma).reshape(-1)[0])
    step = min(range(len(sigmas)), key=lambda i: abs(float(sigmas[i]) - s))
    rows = int((~torch.isfinite(out)).reshape(out.shape[0], -1).any(1).sum())
    return ScheduleLabError(
        f"{getattr(model, 'name', 'the model')} returned NaN or inf for {rows} of {out.shape[0]} samples at "
        f"step {step} of {len(sigmas) - 1} (sigma = {s:.6g}, model call {call}); the run is stopped. "
        "Check the model's weights and its sigma range (a sigma outside the range it was trained on?)")


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
    counter = CountingDenoiser(model, schedule.sigmas)
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
    if not bool(torch.isfinite(out).all()):
        raise ScheduleLabError(f"the {spec.name} samples of {getattr(model, 'name', 'the model')} over "
                               f"{schedule.label()} contain NaN or inf (the solver diverged); try another "
                               "solver or schedule")
    traj = torch.stack(states + [out[:keep_trajectory].detach().cpu()]) if keep_trajectory else None
    return SampleResult(out, counter.calls, secs, traj, torch.stack(dens) if keep_trajectory else None)
