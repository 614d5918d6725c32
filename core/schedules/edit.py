"""Hand edits of a schedule (the Schedules page's editor): levels typed in a table, one level
nudged by a factor. The editor works on the n positive levels sigma_0 > ... > sigma_{n-1} > 0;
the final 0 of a Schedule is implicit and added here.
"""
from __future__ import annotations

import math

from core.errors import ScheduleLabError
from core.schedules.schedule import Schedule


def check_levels(levels) -> tuple:
    """The positive levels of an edited schedule as floats, or a ScheduleLabError naming the row.

    levels: sequence of n >= 1 numbers (table rows, row 0 = sigma_max). Each must be a finite
    number > 0 and each strictly smaller than the one above it. Returns a tuple of n floats."""
    vals = []
    for i, v in enumerate(levels):
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        if not math.isfinite(f):
            raise ScheduleLabError(f"row {i}: {v!r} is not a number; type a positive sigma "
                                   "(the final 0 is added for you)")
        if f <= 0:
            raise ScheduleLabError(f"row {i}: sigma = {f:g} is not positive; every level in the table is > 0 "
                                   "(the final 0 is added for you)")
        if vals and not f < vals[-1]:
            raise ScheduleLabError(f"row {i}: sigma = {f:g} is not below row {i - 1} ({vals[-1]:g}); levels must "
                                   "descend strictly from sigma_max")
        vals.append(f)
    if not vals:
        raise ScheduleLabError("the table is empty; a schedule needs at least one positive level")
    return tuple(vals)


def edited_schedule(levels, base: Schedule | None = None, name: str | None = None) -> Schedule:
    """A Schedule from edited positive `levels` (+ the final 0), named `name` (default: base's name
    + "-edited"), keeping `base`'s solver and recording what it was edited from."""
    lv = check_levels(levels)
    params = {"edited_from": base.label()} if base is not None else {}
    nm = name or (f"{base.name}-edited" if base is not None else "edited")
    return Schedule(lv + (0.0,), name=nm, params=params, solver=base.solver if base is not None else None)


def nudge_level(levels, index: int, factor: float) -> tuple:
    """Multiply level `index` of the positive `levels` by `factor`, kept strictly between its neighbours.

    A move that would reach or pass a neighbour stops halfway (in log sigma) between the level and
    that neighbour, so the result is always a valid schedule; the lowest level's lower neighbour
    is the final 0 (never reached by a factor > 0) and sigma_max has no upper one.
    Returns the new levels (tuple of floats)."""
    lv = list(check_levels(levels))
    f = float(factor)
    if not (math.isfinite(f) and f > 0):
        raise ScheduleLabError(f"a nudge factor must be a finite number > 0; got {factor!r}")
    i = int(index)
    if not 0 <= i < len(lv):
        raise ScheduleLabError(f"row {index} does not exist; pick a row from 0 to {len(lv) - 1}")
    new = lv[i] * f
    if i > 0 and new >= lv[i - 1]:
        new = math.sqrt(lv[i] * lv[i - 1])
    if i + 1 < len(lv) and new <= lv[i + 1]:
        new = math.sqrt(lv[i] * lv[i + 1])
    lv[i] = new
    return tuple(lv)
