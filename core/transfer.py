"""Does a schedule transfer? Matrices of schedules (rows: where each was optimized) evaluated under
other conditions (columns: another solver, another guidance scale), for the Schedules page's heatmap.

    solver_transfer(model, {label: Schedule}, solvers, n, seed)  -> computed here, on a model
    guidance_transfer(case)                                      -> read from bench/guidance.py's JSON

Both return the same record: {"rows": [r], "cols": [c], "value": [r][c] (None: not measured),
"ratio": [r][c] value / the lowest value of its column (1 = the best row under that condition),
"own": [r][c] True where the row was optimized for that column's condition, "metric": str}.
The metric is the discretization error (methods.md s.7): RMS distance of the n-step samples to a
many-step solution of the same ODE from the same noise, lower is better.
"""
from __future__ import annotations

import math
import re

from core.compare import compare_to_reference
from core.errors import ScheduleLabError
from core.solvers import get_solver

METRIC = "RMS distance to the many-step ODE solution from the same noise (lower is better)"
_GUIDANCE_KEY = re.compile(r"^(?P<row>.+?) -> w=(?P<w>[0-9.eE+-]+)$")


def _record(rows: list, cols: list, value: list, own: list, metric: str, **extra) -> dict:
    """Fill in the column-relative ratios (None where a value is missing or not finite)."""
    best = []
    for j in range(len(cols)):
        col = [v[j] for v in value if v[j] is not None and math.isfinite(v[j]) and v[j] > 0]
        best.append(min(col) if col else None)
    ratio = [[None if (v is None or best[j] is None or not math.isfinite(v)) else v / best[j]
              for j, v in enumerate(r)] for r in value]
    return {"rows": rows, "cols": cols, "value": value, "ratio": ratio, "own": own, "metric": metric, **extra}


def solver_transfer(model, schedules: dict, solvers, n: int = 512, seed: int = 0, ref_steps: int = 200) -> dict:
    """Every schedule sampled with every solver from the same noise, against one reference.

    Args:
        model: a Denoiser; schedules: {label: Schedule} (a schedule's `solver` marks its own column);
        solvers: deterministic solver names (the reference is an ODE solution); n samples, seed.
    Returns the record of the module docstring with "nfe": [r][c] model calls and "made_for": [r]
    (each schedule's solver, None for a heuristic). Same steps in a row: NFE differs per solver."""
    solvers = list(solvers)
    if not schedules or not solvers:
        raise ScheduleLabError("pick at least one schedule and one solver for the transfer matrix")
    for s in solvers:
        if get_solver(s).stochastic:
            raise ScheduleLabError(f"{s} is stochastic: its samples do not follow the ODE whose many-step "
                                   "solution is the reference; pick deterministic solvers")
    refs, value, nfe = {}, [[None] * len(solvers) for _ in schedules], [[None] * len(solvers) for _ in schedules]
    for j, solver in enumerate(solvers):
        res = compare_to_reference(model, schedules, solver=solver, n=int(n), seed=int(seed),
                                   ref_steps=int(ref_steps), refs=refs)
        for i, label in enumerate(schedules):
            v = float(res["rmse"][label])
            value[i][j] = v if math.isfinite(v) else None          # a diverged run is never a number
            nfe[i][j] = int(res["nfe"][label])
    made = [s.solver or None for s in schedules.values()]
    own = [[m == c for c in solvers] for m in made]
    return _record(list(schedules), solvers, value, own, METRIC, nfe=nfe, made_for=made,
                   n=int(n), seed=int(seed), ref_steps=int(ref_steps))


def guidance_transfer(case: dict) -> dict:
    """One case of bench/results/guidance_*.json (its "error": {"ROW -> w=W": error}) as the record:
    rows "METHOD @ w=W_OPT" (optimized at W_OPT) and the baselines (evaluated at every w, their
    " @ w=1" tag dropped); columns "w=W" in the order of the case's "ws"; "own" on W_OPT = W."""
    err, ws = case.get("error"), case.get("ws")
    if not isinstance(err, dict) or not isinstance(ws, list) or not ws:
        raise ScheduleLabError("a guidance case needs 'error' (an object) and 'ws' (a list); "
                               "rerun bench/guidance.py to rewrite its JSON")
    cols = [f"w={float(w):g}" for w in ws]
    optimized = set(case.get("schedules") or {})
    table, rows = {}, []
    for key, v in err.items():
        m = _GUIDANCE_KEY.match(str(key))
        if m is None:
            raise ScheduleLabError(f"unreadable guidance error key {key!r} (expected 'ROW -> w=W')")
        row = m["row"] if m["row"] in optimized else m["row"].split(" @ ")[0]
        if row not in table:
            table[row] = {}
            rows.append(row)
        table[row][f"w={float(m['w']):g}"] = float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
    methods = list(dict.fromkeys(r.split(" @ ")[0] for r in rows if r in optimized))
    rows = sorted((r for r in rows if r in optimized),                 # each method's rows together, by w
                  key=lambda r: (methods.index(r.split(" @ ")[0]), float(r.split(" @ w=")[1]))) + \
        [r for r in rows if r not in optimized]
    value = [[table[r].get(c) for c in cols] for r in rows]
    own = [[r in optimized and r.split(" @ ")[1] == c for c in cols] for r in rows]
    return _record(rows, cols, value, own, METRIC, steps=case.get("steps"), solver=case.get("solver"),
                   n=case.get("n"))
