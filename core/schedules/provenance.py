"""Where a schedule was made: the model and solver recorded with it, and a sentence when it is used
on another model or with another solver.

An optimized schedule fits the model and solver it was optimized for; elsewhere it can be worse
than a heuristic (issue 15: score-optimal sampled with dpmpp_2m gave NLL 15.3). What a schedule
records:
    model   params["model"] (shipped and `tune` schedules; a guided model's name "digits-flow | label 3,
            w=3" is the model "digits-flow"), params["toy"], params["preset"] (AYS presets: sd15, sdxl,
            svd) or an OSS preset's name (oss_flux -> flux)
    solver  Schedule.solver, else params["solver"]
A schedule that records neither (the heuristics) fits any model and solver: no message.

    made_for(schedule)                          -> {"model": str | None, "solver": str | None}
    model_mismatch(schedule, names, shown=None) -> str | None   (names: what the current model is called)
    solver_mismatch(schedule, solver)           -> str | None
"""
from __future__ import annotations

from core.schedules.schedule import Schedule


def base_model_name(name) -> str:
    """A model name without its guidance suffix (" | label 3, w=3") or the app's "#LABEL#W" id, lower case."""
    s = str(name).split(" | ")[0].split("#")[0].strip()
    return s.lower()


def _solver_name(name) -> str:
    try:
        from core.solvers import get_solver
        return get_solver(str(name)).name
    except Exception:  # noqa: BLE001  (an unknown solver name is compared as written)
        return str(name)


def made_for(schedule: Schedule) -> dict:
    """The model and solver a schedule records as made for (None where it records none)."""
    p = schedule.params or {}
    model = p.get("model") or p.get("toy") or p.get("preset")
    if model is None and schedule.name.startswith("oss_"):
        model = schedule.name[len("oss_"):]
    solver = schedule.solver or p.get("solver")
    return {"model": str(model) if model else None, "solver": str(solver) if solver else None}


def model_mismatch(schedule: Schedule, names, shown: str | None = None, label: str | None = None) -> str | None:
    """A sentence when the schedule was made for a model none of `names` (the current model's names:
    its id, its loaded name) is; None when it matches or records no model."""
    made = made_for(schedule)["model"]
    if made is None:
        return None
    mine = {base_model_name(n) for n in ([names] if isinstance(names, str) else names) if n}
    if base_model_name(made) in mine:
        return None
    here = shown or next(iter(names if not isinstance(names, str) else [names]), "this model")
    return (f"{label or schedule.name} was made for the model {made!r}, not for {here!r}: an optimized schedule "
            "fits its own model's noise levels and errors, so it may do worse here than a heuristic. Optimize "
            "one for this model (Tune page) or compare it with the heuristics before using it.")


def solver_mismatch(schedule: Schedule, solver: str, label: str | None = None) -> str | None:
    """A sentence when the schedule was made for another solver than `solver`; None when it matches
    or records no solver."""
    made = made_for(schedule)["solver"]
    if made is None or _solver_name(made) == _solver_name(solver):
        return None
    return (f"{label or schedule.name} was optimized for the {made} solver and is sampled here with {solver}: "
            f"its steps are placed for {made}'s error, so with {solver} it may lose to a heuristic. Choose "
            f"{made}, or tune a schedule for {solver}.")
