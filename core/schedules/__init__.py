"""Schedules: the Schedule value, heuristics, AYS presets, interpolation, import/export.

`make_schedule(name, steps, sigma_min, sigma_max, **params)` builds any named schedule;
`load_schedule(name_or_file, ...)` also accepts a JSON file path.
"""
from __future__ import annotations

import inspect
from pathlib import Path

from core.errors import ScheduleLabError, unknown_name
from core.schedules.flow import FLOW_HEURISTICS, FLOW_PRESETS, oss_preset
from core.schedules.heuristics import ALIASES, HEURISTICS
from core.schedules.io import FORMATS, export, parse  # noqa: F401
from core.schedules.presets import AYS_PRESETS, ays_preset, loglinear_interp, resample_loglinear  # noqa: F401
from core.schedules.schedule import Schedule, validate_sigmas  # noqa: F401

PRESETS = tuple(f"ays_{k}" for k in AYS_PRESETS)
HEURISTICS = {**HEURISTICS, **FLOW_HEURISTICS}     # flow-time heuristics (core/schedules/flow.py)


def schedule_names() -> tuple:
    return tuple(HEURISTICS) + PRESETS + FLOW_PRESETS


def make_schedule(name: str, steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                  **params) -> Schedule:
    """A named heuristic or AYS preset with `steps` steps between sigma_max and sigma_min."""
    if not isinstance(steps, int) or steps < 1:
        raise ScheduleLabError(f"steps must be a positive integer; got {steps!r}")
    if not (0 < sigma_min < sigma_max):
        raise ScheduleLabError(f"need 0 < sigma_min < sigma_max; got sigma_min={sigma_min}, "
                               f"sigma_max={sigma_max}")
    name = ALIASES.get(name, name)
    if name in PRESETS:
        return ays_preset(name[4:], steps)
    if name in FLOW_PRESETS:
        return oss_preset(name, steps)
    if name not in HEURISTICS:
        raise unknown_name("schedule", name, schedule_names())
    fn = HEURISTICS[name]
    allowed = set(inspect.signature(fn).parameters) - {"steps", "sigma_min", "sigma_max"}
    extra = set(params) - allowed
    if extra:
        raise ScheduleLabError(f"schedule {name!r} has no parameter {sorted(extra)[0]!r}; "
                               f"its parameters: {', '.join(sorted(allowed)) or 'none'}")
    if steps == 1:
        return Schedule((float(sigma_max), 0.0), name=name, params=params)
    s = fn(steps, sigma_min, sigma_max, **params)
    # the endpoints are exact by construction; remove floating-point round-off (e.g. 79.99999999999997)
    sig = (float(sigma_max),) + s.sigmas[1:-2] + (float(sigma_min), 0.0)
    return Schedule(sig, name=s.name, params=s.params)


def load_schedule(name_or_file: str, steps: int | None = None, sigma_min: float = 0.002,
                  sigma_max: float = 80.0, **params) -> Schedule:
    """A schedule from a name (needs steps) or a JSON file (resampled when steps differ)."""
    p = Path(name_or_file)
    if name_or_file.endswith(".json") or p.is_file():
        s = Schedule.load(p)
        return resample_loglinear(s, steps) if steps and steps != s.steps else s
    if steps is None:
        raise ScheduleLabError(f"schedule {name_or_file!r} needs a step count")
    return make_schedule(name_or_file, steps, sigma_min, sigma_max, **params)
