"""Does a schedule fit where it is used? Sentences for the pages (and the CLI) when a schedule is
sampled with another solver than the one it was optimized for, or used on another model than the
one whose data it was optimized on. Each returns None when nothing is wrong.

A schedule records its solver in `Schedule.solver` (DM-NonUniform: dpmpp_3m_lagrange; score-optimal:
heun; a `tune` result: the solver it was tuned with) and the model whose data made it in
`params["model"]` (the Denoiser's `name`, e.g. "mlp:spiral"; AYS, score-optimal and `tune` set it;
data-free and heuristic schedules have none and fit every model).
"""
from __future__ import annotations

from core.schedules.schedule import Schedule


def made_for_solver(schedule: Schedule) -> str | None:
    """The solver the schedule was optimized for (None: any)."""
    return schedule.solver or None


def made_for_model(schedule: Schedule) -> str | None:
    """The name of the model whose data the schedule was optimized on (None: no model, or unknown)."""
    m = (schedule.params or {}).get("model")
    return m if isinstance(m, str) and m.strip() and m != "model" else None


def solver_mismatch(schedule: Schedule, solver: str, label: str | None = None) -> str | None:
    """A sentence when `schedule` was optimized for another solver than `solver`, else None."""
    meant = made_for_solver(schedule)
    if meant is None or meant == solver:
        return None
    return (f"{label or schedule.label()} was optimized for the {meant} solver and is sampled here with {solver}: "
            f"its steps sit where {meant}'s errors are, not {solver}'s, and it can do worse than a heuristic. "
            f"Pick {meant}, or optimize a schedule for {solver}.")


def model_mismatch(schedule: Schedule, model: str, label: str | None = None) -> str | None:
    """A sentence when `schedule` was optimized on the data of another model than `model` (a Denoiser
    name), else None."""
    made = made_for_model(schedule)
    if made is None or made == model:
        return None
    return (f"{label or schedule.label()} was optimized for the model {made!r}; here the model is {model!r}. "
            f"Its steps follow where {made!r} makes its errors: optimize it again for this model, or pick "
            f"{made!r} in the sidebar.")
