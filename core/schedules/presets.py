"""Align Your Steps presets (AYS paper, Table 3) as ComfyUI's AlignYourStepsScheduler builds them.

SD 1.5 and SDXL: the model table's sigmas at the published AYS timesteps (ComfyUI's NOISE_LEVELS are
exactly these, to 1e-10), not the paper's 3-decimal sigmas (SD 1.5 0.39775 vs 0.399, SDXL 0.11142 vs
0.113). SVD is a continuous EDM model with no table: its published sigmas are used as they are.
"""
from __future__ import annotations

import numpy as np

from core.errors import ScheduleLabError
from core.schedules.schedule import Schedule

AYS_PAPER_SIGMAS = {  # AYS paper Table 3, 3 decimals (kept for reference; the presets use AYS_TIMESTEPS)
    "sd15": [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029],
    "sdxl": [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029],
}
AYS_TIMESTEPS = {  # 10 steps, 11 timesteps on the model's 1000-step table (the last level becomes 0)
    "sd15": [999, 850, 736, 645, 545, 455, 343, 233, 124, 24, 0],
    "sdxl": [999, 845, 730, 587, 443, 310, 193, 116, 53, 13, 0],
}
AYS_SVD_SIGMAS = [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002]


def ays_levels(model: str) -> list:
    """The 11 published levels of an AYS preset: table sigmas at AYS_TIMESTEPS, or SVD's sigmas."""
    if model == "svd":
        return list(AYS_SVD_SIGMAS)
    from core.schedules.tables import get_table
    return get_table(model).sigmas[AYS_TIMESTEPS[model]].tolist()


AYS_PRESETS = {k: ays_levels(k) for k in ("sd15", "sdxl", "svd")}


class PresetRangeWarning(UserWarning):
    """A published preset used on a model whose sigma range is not the preset's."""


def preset_range_mismatch(model: str, sigma_min: float, sigma_max: float, rtol: float = 0.02) -> str | None:
    """A message when the AYS preset's range [last level, first level] differs from the model's
    [sigma_min, sigma_max] by more than rtol (relative) at either end; None when they agree.  The preset
    keeps its own levels (as ComfyUI's node does), so on another model it starts or ends at the wrong noise."""
    lv = AYS_PRESETS[model]
    lo, hi = float(lv[-1]), float(lv[0])
    if abs(lo - sigma_min) <= rtol * sigma_min and abs(hi - sigma_max) <= rtol * sigma_max:
        return None
    return (f"ays_{model} is the published schedule for {model} over sigma {lo:g} .. {hi:g}; this model's range is "
            f"{sigma_min:g} .. {sigma_max:g}, so the preset starts{' above' if hi > sigma_max else ' below'} its "
            f"sigma_max and ends{' above' if lo > sigma_min else ' below'} its sigma_min (optimize a schedule for "
            "this model, or use a heuristic over its range)")


def loglinear_interp(levels, num_levels: int) -> np.ndarray:
    """ComfyUI `loglinear_interp`: reverse to ascending, interpolate log-sigma linearly over
    linspace(0, 1, len) at linspace(0, 1, num_levels), exponentiate, reverse back."""
    lv = np.asarray(levels, dtype=np.float64)
    if (lv <= 0).any():
        raise ScheduleLabError("loglinear_interp needs positive levels (drop the final 0 first)")
    xs = np.linspace(0, 1, len(lv))
    ys = np.log(lv[::-1])
    out = np.exp(np.interp(np.linspace(0, 1, num_levels), xs, ys))[::-1].copy()
    out[0], out[-1] = lv[0], lv[-1]          # exact ends (exp(log(v)) may round off)
    return out


def ays_preset(model: str, steps: int = 10, denoise: float = 1.0) -> Schedule:
    """AYS preset for 'sd15' | 'sdxl' | 'svd' at any step count, as ComfyUI's AlignYourStepsScheduler:
    the 11 levels, log-linearly interpolated to steps + 1 when steps != 10; with denoise < 1 only the
    last round(steps * denoise) steps are kept; then the last level is set to 0."""
    if model not in AYS_PRESETS:
        raise ScheduleLabError(f"unknown AYS preset {model!r}; choose one of: {', '.join(AYS_PRESETS)}")
    if steps < 1:
        raise ScheduleLabError(f"steps must be >= 1; got {steps}")
    if not 0 < denoise <= 1:
        raise ScheduleLabError(f"denoise must be in (0, 1]; got {denoise}")
    total = steps if denoise >= 1 else round(steps * denoise)
    if total < 1:
        raise ScheduleLabError(f"denoise {denoise} keeps no step of {steps}; raise denoise or steps")
    lv = np.asarray(AYS_PRESETS[model], dtype=np.float64)
    if steps + 1 != len(lv):
        lv = loglinear_interp(lv, steps + 1)
    lv = lv[-(total + 1):].copy()
    lv[-1] = 0.0
    params = {"preset": model, **({"denoise": denoise} if denoise < 1 else {})}
    return Schedule(tuple(lv.tolist()), name=f"ays_{model}", params=params)


def resample_loglinear(schedule: Schedule, steps: int) -> Schedule:
    """Any schedule at another step count: log-linear interpolation of its positive levels
    (sigma_max .. sigma_min kept), then the final 0 (AYS paper, Sec. 3.3)."""
    lv = np.asarray(schedule.sigmas[:-1])
    if steps == schedule.steps:
        return schedule
    if len(lv) < 2:
        raise ScheduleLabError("cannot interpolate a 1-step schedule")
    new = loglinear_interp(lv, steps)
    return Schedule(tuple(new.tolist()) + (0.0,), name=schedule.name,
                    params={**schedule.params, "interpolated_from": schedule.steps}, solver=schedule.solver)
