"""Published Align Your Steps schedules (AYS paper, Table 3) and ComfyUI-style interpolation."""
from __future__ import annotations

import numpy as np

from core.errors import ScheduleLabError
from core.schedules.schedule import Schedule

AYS_PRESETS = {  # 10 steps, 11 levels each (the last level is replaced by 0 when used)
    "sd15": [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029],
    "sdxl": [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029],
    "svd": [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002],
}
AYS_TIMESTEPS = {
    "sd15": [999, 850, 736, 645, 545, 455, 343, 233, 124, 24, 0],
    "sdxl": [999, 845, 730, 587, 443, 310, 193, 116, 53, 13, 0],
}


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


def ays_preset(model: str, steps: int = 10) -> Schedule:
    """AYS preset for 'sd15' | 'sdxl' | 'svd' at any step count (ComfyUI AlignYourStepsScheduler:
    the 11 published levels, log-linearly interpolated to steps + 1 when steps != 10, then the
    last level set to 0)."""
    if model not in AYS_PRESETS:
        raise ScheduleLabError(f"unknown AYS preset {model!r}; choose one of: {', '.join(AYS_PRESETS)}")
    if steps < 1:
        raise ScheduleLabError(f"steps must be >= 1; got {steps}")
    lv = np.asarray(AYS_PRESETS[model], dtype=np.float64)
    if steps + 1 != len(lv):
        lv = loglinear_interp(lv, steps + 1)
    lv[-1] = 0.0
    return Schedule(tuple(lv.tolist()), name=f"ays_{model}", params={"preset": model})


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
