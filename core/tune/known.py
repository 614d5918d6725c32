"""Optimized schedules known for a model: shipped with it, or saved by `tune`.

Where they are looked for:
    shipped  checkpoints/NAME/ays.json (the registry's ModelEntry.schedules: AYS stages by step count,
             core.models.registry.shipped_schedule) and checkpoints/NAME/schedules/*.json (schedule
             files written by TuneResult.write, shipped with the model)
    saved    *.json in each folder given; the app passes its tune folder, $SCHEDULE_LAB_HOME/tune
             (app_lib.store.tune_dir()), where the Tune page writes each result with TuneResult.write
A tune file counts for a model when its schedule's params["model"] names it (a guided model's
"digits-flow | label 3, w=3" counts for "digits-flow": guidance is shown, not matched). From each
tune file the best *optimizer* candidate on its held-out metric is offered (the winner when an
optimizer won; otherwise the best optimizer, labelled as having lost to the best heuristic).

    known_schedules(model, solver, steps, folders=()) -> ([KnownSchedule] best first, [problems])
Best first: made for `solver` before made for another, then the step count nearest `steps`, then
an optimizer that beat its heuristic before one that did not, then the newest file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.errors import ScheduleLabError
from core.schedules.provenance import base_model_name

MAX_FILES = 200                  # newest tune files read per folder
MAX_FILE_BYTES = 4 << 20


@dataclass(frozen=True)
class KnownSchedule:
    """key: a stable id ("shipped:ays", "tune:PATH#NAME"); label: for pickers and tables; sigmas:
    the schedule as made (steps_made steps; the caller resamples it); solver: made for (None: any);
    beat_heuristic: True / False from tune, None for shipped AYS; detail: one sentence (metric, source)."""
    key: str
    label: str
    sigmas: tuple
    steps_made: int
    solver: str | None
    source: str
    beat_heuristic: bool | None
    detail: str
    mtime: float = 0.0
    params: dict = field(default_factory=dict, compare=False, hash=False)

    def schedule(self, steps: int):
        """The schedule at `steps` steps (log-linear resampling of its levels when it was made at others)."""
        from core.schedules import Schedule, resample_loglinear
        s = Schedule(tuple(self.sigmas), name=self.label, params=dict(self.params), solver=self.solver)
        return s if s.steps == int(steps) else resample_loglinear(s, int(steps))


def _tune_entry(path: Path, names: set) -> tuple:
    """(KnownSchedule | None, problem | None) from one TuneResult.write file."""
    from core import readers as rd
    from core.schedules import Schedule
    try:
        d = rd.loads_json(rd.read_text(path, "tune file", MAX_FILE_BYTES), f"tune file {str(path)!r}")
        if not isinstance(d, dict) or not isinstance(d.get("tune"), dict):
            return None, None                                   # a plain schedule file: not a tune result
        win = Schedule.from_dict(d)
    except ScheduleLabError as e:
        return None, str(e) if str(path) in str(e) else f"tune file {str(path)!r}: {e}"
    made = win.params.get("model")
    if made is None or base_model_name(made) not in names:
        return None, None
    t = d["tune"]
    metric = str(t.get("metric", "metric"))
    rows = [r for r in t.get("table") or [] if isinstance(r, dict) and r.get("kind") == "optimizer"
            and isinstance(r.get("sigmas"), list) and isinstance(r.get(metric), (int, float))]
    if not rows:
        return None, None                                       # no optimizer produced a schedule
    best = min(rows, key=lambda r: r[metric])
    try:
        s = Schedule(tuple(best["sigmas"]), name=str(best.get("name")))
    except ScheduleLabError as e:
        return None, f"tune file {str(path)!r}: candidate {best.get('name')!r}: {e}"
    won = t.get("winner") == best.get("name") and t.get("winner_kind") == "optimizer"
    solver = win.solver or win.params.get("solver")
    guided = f" ({str(made).split(' | ', 1)[1]})" if " | " in str(made) else ""
    val = f"{best[metric]:.4g}" + (f" ± {best[metric + '_ci']:.2g}" if isinstance(best.get(metric + "_ci"),
                                                                                  (int, float)) else "")
    verdict = ("beat the best heuristic" if won else
               f"did not beat the best heuristic {t.get('best_heuristic')}")
    label = f"tune: {best.get('name')}{guided} (for {solver})"           # made at s.steps; sampled at any
    detail = (f"{best.get('name')} from `tune` on {made} with {solver} at {s.steps} steps (resampled log-linearly "
              f"to other step counts): held-out {metric} {val}; "
              f"it {verdict} ({_shown(path)})")
    params = {"model": str(made), "solver": solver, "method": best.get("name"), "tune_file": str(path),
              "metric": metric, "heldout_mean": best[metric], "beat_heuristic": won}
    return KnownSchedule(f"tune:{path}#{best.get('name')}", label, s.sigmas, s.steps, solver, str(path), won,
                         detail, path.stat().st_mtime, params), None


def _shown(path) -> str:
    """A path as the app shows it: relative to the repository when inside it."""
    from core.models.checkpoints import ROOT
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _tune_files(folder: Path) -> list:
    if not folder.is_dir():
        return []
    files = [f for f in folder.glob("*.json") if f.is_file() and not f.name.endswith(".state.json")]
    return sorted(files, key=lambda f: f.stat().st_mtime, reverse=True)[:MAX_FILES]


def known_schedules(model, solver: str, steps: int, folders=()) -> tuple:
    """Every optimized schedule known for `model` (a shipped name, or the name a tune file records;
    or a list of the names the model goes by: its path and its loaded name), best first for
    (`solver`, `steps`); and the problems met (unreadable files), as sentences."""
    from core.models.checkpoints import CHECKPOINTS
    from core.models.registry import model_entry, shipped_schedule
    names = {base_model_name(m) for m in ([model] if isinstance(model, str) else model) if m}
    name = next((m for m in sorted(names) if model_entry(m) is not None), None)
    entry = model_entry(name) if name else None
    out, problems = [], []
    if entry is not None:
        s = shipped_schedule(name, int(steps))
        if s is not None:
            n = s.params.get("stage_steps", s.steps)
            out.append(KnownSchedule("shipped:ays", "AYS (shipped)", s.sigmas, int(n), None,
                                     str(entry.schedules), None,
                                     f"Align Your Steps shipped with {name} (its {n}-step stage"
                                     f"{'' if n == s.steps else f', resampled to {s.steps} steps'}; {_shown(entry.schedules)})",
                                     params=dict(s.params)))
    dirs = ([Path(CHECKPOINTS) / name / "schedules"] if entry is not None else []) + [Path(f) for f in folders]
    for d in dirs:
        for f in _tune_files(d):
            k, why = _tune_entry(f, names)
            if why:
                problems.append(why)
            if k is not None:
                out.append(k)
    want = None
    try:
        from core.solvers import get_solver
        want = get_solver(solver).name
    except ScheduleLabError:
        want = solver

    def rank(k: KnownSchedule):
        fit = 0 if k.solver == want else 1 if k.solver is None else 2      # made for this solver, any, another
        return fit, abs(k.steps_made - int(steps)), k.beat_heuristic is False, -k.mtime
    return sorted(out, key=rank), problems
