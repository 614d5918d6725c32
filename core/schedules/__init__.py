"""Schedules: the Schedule value, heuristics, AYS presets, model noise tables and their schedulers,
interpolation, import/export.

`make_schedule(name, steps, sigma_min, sigma_max, table=None, **params)` builds any named schedule;
`load_schedule(name_or_file, ...)` also accepts a JSON file path.
"""
from __future__ import annotations

import inspect
import math
import warnings
from pathlib import Path

from core.errors import ScheduleLabError, unknown_name
from core.schedules.flow import FLOW_HEURISTICS, FLOW_PRESETS, oss_preset
from core.schedules.heuristics import ALIASES, HEURISTICS
from core.schedules.io import FORMATS, export, parse  # noqa: F401
from core.schedules.presets import (AYS_PRESETS, AYS_TIMESTEPS, PresetRangeWarning, ays_preset,  # noqa: F401
                                    loglinear_interp, preset_range_mismatch, resample_loglinear)
from core.schedules.schedule import Schedule, validate_sigmas  # noqa: F401
from core.schedules.tables import TABLE_SCHEDULERS, TABLES, get_table, table_schedule  # noqa: F401

PRESETS = tuple(f"ays_{k}" for k in AYS_PRESETS)
HEURISTICS = {**HEURISTICS, **FLOW_HEURISTICS}     # flow-time heuristics (core/schedules/flow.py)


def schedule_names() -> tuple:
    """Names that need no model table: heuristics (flow-time ones included), AYS and OSS presets."""
    return tuple(HEURISTICS) + PRESETS + FLOW_PRESETS


def table_schedule_names() -> tuple:
    """Names defined on a model's noise table (ComfyUI / diffusers schedulers): need `table=`."""
    return tuple(TABLE_SCHEDULERS)


def make_schedule(name: str, steps: int, sigma_min: float | None = None, sigma_max: float | None = None,
                  table=None, denoise: float = 1.0, **params) -> Schedule:
    """A named heuristic, AYS preset or table scheduler with `steps` steps.

    sigma_min / sigma_max default to the table's range when `table` is given (as ComfyUI passes the
    model's range to karras, exponential, kl_optimal, laplace), else to 0.002 / 80. Table schedulers
    (table_schedule_names()) need `table` and take their range from it. `denoise` < 1 keeps the
    low-noise end as ComfyUI does (BasicScheduler: int(n / denoise) steps built, the last n kept;
    AYS presets: round(n * denoise) of the n-step preset's steps kept).
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ScheduleLabError(f"steps must be a positive integer; got {steps!r}")
    name = ALIASES.get(name, name)
    if name in TABLE_SCHEDULERS:
        if table is None:
            alt = {"beta": " (or 'beta_vp', its table-free analogue in continuous VP time)"}.get(name, "")
            raise ScheduleLabError(f"schedule {name!r} is defined on a model's noise table: give table= "
                                   f"(--table {'|'.join(TABLES)} or a diffusers scheduler config JSON){alt}")
        if sigma_min is not None or sigma_max is not None:
            raise ScheduleLabError(f"schedule {name!r} takes its sigma range from the table; "
                                   "leave sigma_min / sigma_max unset")
        return table_schedule(name, steps, table, denoise=denoise, **params)
    if name in PRESETS:
        if params:
            raise ScheduleLabError(f"AYS preset {name!r} has no parameter {sorted(params)[0]!r}; "
                                   "its parameters: denoise")
        if sigma_min is not None and sigma_max is not None:       # a model's range was given
            msg = preset_range_mismatch(name[4:], float(sigma_min), float(sigma_max))
            if msg is not None:
                warnings.warn(msg, PresetRangeWarning, stacklevel=2)
        return ays_preset(name[4:], steps, denoise=denoise)
    if name in FLOW_PRESETS:
        if params or denoise != 1.0:
            raise ScheduleLabError(f"OSS preset {name!r} takes no parameters")
        return oss_preset(name, steps)
    if name not in HEURISTICS:
        raise unknown_name("schedule", name, schedule_names() + table_schedule_names())
    if table is not None:
        tab = get_table(table)
        sigma_min = tab.sigma_min if sigma_min is None else sigma_min
        sigma_max = tab.sigma_max if sigma_max is None else sigma_max
    sigma_min = 0.002 if sigma_min is None else float(sigma_min)
    sigma_max = 80.0 if sigma_max is None else float(sigma_max)
    for k, v in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if not math.isfinite(v):
            raise ScheduleLabError(f"{k} must be a finite number; got {v!r}")
    if not (0 < sigma_min < sigma_max):
        raise ScheduleLabError(f"need 0 < sigma_min < sigma_max; got sigma_min={sigma_min}, "
                               f"sigma_max={sigma_max}")
    fn = HEURISTICS[name]
    allowed = set(inspect.signature(fn).parameters) - {"steps", "sigma_min", "sigma_max"}
    extra = set(params) - allowed
    if extra:
        raise ScheduleLabError(f"schedule {name!r} has no parameter {sorted(extra)[0]!r}; "
                               f"its parameters: {', '.join(sorted(allowed)) or 'none'}")
    _check_params(name, params)
    if denoise != 1.0:                  # ComfyUI BasicScheduler: int(n / denoise) steps, keep the last n
        from core.schedules.tables import _denoise_total
        full = make_schedule(name, _denoise_total(steps, denoise), sigma_min, sigma_max, table=table, **params)
        return Schedule(full.sigmas[-(steps + 1):], name=full.name, params={**full.params, "denoise": denoise})
    if steps == 1:
        return Schedule((float(sigma_max), 0.0), name=name, params=params)
    try:
        s = fn(steps, sigma_min, sigma_max, **params)
    except ScheduleLabError:
        raise
    except (ArithmeticError, ValueError, TypeError) as e:     # a parameter outside the formula's domain
        raise ScheduleLabError(f"schedule {name!r} cannot be built with {params} between sigma_min = "
                               f"{sigma_min:g} and sigma_max = {sigma_max:g}: {type(e).__name__}: {e}") from None
    # the endpoints are exact by construction; remove floating-point round-off (e.g. 79.99999999999997)
    sig = list(s.sigmas)
    for i, want in ((0, sigma_max), (-2, sigma_min)):
        if abs(sig[i] / want - 1) < 1e-9:
            sig[i] = want
    out = Schedule(tuple(sig), name=s.name, params=s.params)
    return out.with_name(out.name, table=table) if isinstance(table, str) else out


# heuristic parameters are positive numbers (laplace's mu any finite number); these have an upper bound
PARAM_MAX = {"rho": 1e3, "a": 1e3, "b": 1e3, "c": 1e6, "beta_min": 1e3, "beta_max": 1e3, "beta": 1e3, "mu": 1e3}
SIGNED = ("mu",)


def _check_params(name: str, params: dict) -> None:
    """Each parameter a finite number in (0, PARAM_MAX] ([-max, max] for SIGNED); VP betas with
    beta_min < beta_max -- before any arithmetic, so 'rho=abc' or 'rho=0' is named, not a traceback."""
    for k, v in params.items():
        hi = PARAM_MAX.get(k, 1e6)
        lo_ok = (lambda x: x >= -hi) if k in SIGNED else (lambda x: x > 0)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ScheduleLabError(f"schedule {name!r}: parameter {k} must be a number; got {v!r}")
        if not (math.isfinite(v) and lo_ok(v) and v <= hi):
            rng = f"[-{hi:g}, {hi:g}]" if k in SIGNED else f"(0, {hi:g}]"
            raise ScheduleLabError(f"schedule {name!r}: parameter {k} = {v!r} is out of range; it must be a "
                                   f"number in {rng}")
    if params.get("beta_min", 0.1) >= params.get("beta_max", 20.0):
        raise ScheduleLabError(f"schedule {name!r}: beta_min must be below beta_max; got "
                               f"{params.get('beta_min', 0.1)} and {params.get('beta_max', 20.0)}")


def load_schedule(name_or_file: str, steps: int | None = None, sigma_min: float | None = None,
                  sigma_max: float | None = None, **params) -> Schedule:
    """A schedule from a name (needs steps) or a JSON file (resampled when steps differ)."""
    p = Path(name_or_file)
    if name_or_file.endswith(".json") or p.is_file():
        s = Schedule.load(p)
        return resample_loglinear(s, steps) if steps and steps != s.steps else s
    if steps is None:
        raise ScheduleLabError(f"schedule {name_or_file!r} needs a step count")
    return make_schedule(name_or_file, steps, sigma_min, sigma_max, **params)


def range_mismatch(schedule: Schedule, sigma_min: float, sigma_max: float, model: str = "the model") -> str | None:
    """A sentence when the schedule's levels leave the model's [sigma_min, sigma_max], else None."""
    lo, hi = schedule.sigma_min, schedule.sigma_max
    tol = 1e-6
    if hi <= sigma_max * (1 + tol) and lo >= sigma_min * (1 - tol):
        return None
    parts = []
    if hi > sigma_max * (1 + tol):
        parts.append(f"starts at sigma {hi:.4g}, above {model}'s sigma_max {sigma_max:.4g} (the first steps "
                     "ask the model about noise it never saw)")
    if lo < sigma_min * (1 - tol):
        parts.append(f"ends at sigma {lo:.4g}, below {model}'s sigma_min {sigma_min:.4g}")
    return f"{schedule.label()} " + " and ".join(parts) + "."

