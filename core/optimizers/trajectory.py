"""What GITS and OSS share: the teacher grid, teacher trajectories on it, argument checks, and the
map from grid indices to a Schedule (methods.md s.8).

Convention (methods.md s.2): a schedule of n steps is n levels sigma_max = sigma_0 > ... >
sigma_{n-1} = sigma_min, then 0; the n-th model call is at sigma_min and makes the solver's own
final step to 0. The optimizers choose the n levels on a fine descending grid g_0 = sigma_max > ...
> g_{G-1} = sigma_min (n - 1 jumps between grid levels); the final step from sigma_min to 0 is the
same for every path.
"""
from __future__ import annotations

import numpy as np
import torch

from core.errors import ScheduleLabError
from core.optimizers.steppers import call_model, get_stepper
from core.schedules import Schedule


def polynomial_grid(levels: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """EDM's polynomial grid (Karras et al. 2022 Eq. 5; GITS' `schedule_type='polynomial'`, rho = 7):
    `levels` sigmas from sigma_max down to sigma_min, float64, endpoints exact."""
    r = np.linspace(0.0, 1.0, levels)
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    g = (a + r * (b - a)) ** rho
    g[0], g[-1] = sigma_max, sigma_min
    return g


def check_common(model, steps, solver, sigma_min, sigma_max, n_samples, grid_levels, what="grid levels"):
    """Validate the shared arguments before any work; return (stepper, sigma_min, sigma_max)."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
        raise ScheduleLabError(f"steps must be an integer >= 2 (n levels from sigma_max to sigma_min, then 0); "
                               f"got {steps!r}")
    stepper = get_stepper(solver)
    lo = float(getattr(model, "sigma_min", 0.002) if sigma_min is None else sigma_min)
    hi = float(getattr(model, "sigma_max", 80.0) if sigma_max is None else sigma_max)
    if not (0 < lo < hi):
        raise ScheduleLabError(f"need 0 < sigma_min < sigma_max; got sigma_min={lo}, sigma_max={hi}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ScheduleLabError(f"n_samples must be a positive integer; got {n_samples!r}")
    if grid_levels < steps:
        raise ScheduleLabError(f"{steps} steps need at least {steps} {what}; got {grid_levels} "
                               "(raise the grid size or lower steps)")
    return stepper, lo, hi


@torch.no_grad()
def teacher_trajectory(model, stepper, grid, x_start: torch.Tensor):
    """Run `stepper` through every grid level (no final step to 0).

    Args:
        grid: [G] descending sigmas (float64 numpy).
        x_start: [B, *event] state at grid[0].
    Returns:
        states [G, B, *event] (float64; states[0] = x_start) and denoised [G - 1, B, *event]
        (D(states[i], grid[i]) for i < G - 1, the model outputs the teacher stepped with).
    """
    G = len(grid)
    x = x_start.to(torch.float64)
    hist = stepper.empty(x)
    states, dens = [x], []
    for k in range(G - 1):
        D = call_model(model, x, float(grid[k]))
        if not bool(torch.isfinite(D).all()):
            raise ScheduleLabError(f"the model returned NaN or inf at sigma = {float(grid[k]):.4g} on the teacher "
                                   "trajectory; check the model and its sigma range (--sigma-min / --sigma-max)")
        x, hist = stepper.step(model, x, float(grid[k]), float(grid[k + 1]), D, hist, k, G)
        states.append(x)
        dens.append(D)
    return torch.stack(states), torch.stack(dens)


def schedule_from_path(grid, path, name: str, solver: str, params: dict) -> Schedule:
    """Grid indices (0 first, G - 1 last) -> Schedule of grid[path] then 0."""
    path = [int(i) for i in path]
    if path[0] != 0 or path[-1] != len(grid) - 1 or any(b <= a for a, b in zip(path, path[1:])):
        raise ScheduleLabError(f"internal: a path must run 0 < ... < {len(grid) - 1}; got {path}")
    return Schedule(tuple(float(grid[i]) for i in path) + (0.0,), name=name, params=params,
                    solver=solver)
