"""`tune`: every heuristic and every applicable optimizer on one model and solver, judged on
held-out noise, never worse than the best heuristic (DESIGN.md "tune"; issue 10 item 4).

    t = Tuner(model, "dpmpp_2m", 10, data=mixture)          # or tune(...) -> TuneResult
    for ev in t.events(): ...                                # one event per finished unit
    t.result().schedule                                      # the winner (Schedule JSON-ready)

Units, in order: each heuristic's scoring, then per optimizer "optimize" and "score".  The state
(JSON, `state_path`) is written after every unit, so a killed run resumes losing at most the unit in
flight.  Seeds: optimizers get seeds from `seed` upwards (recorded); the held-out batches use
`heldout_seeds` (default 1_000_000 + 1000 seed + b), and the two sets must be disjoint.

Budget (`budget_s`, wall clock over the whole run, resumes included): before an optimizer runs, the
time left minus the scoring of every optimizer still to come (estimated from the heuristics' scoring)
is split evenly over those optimizers; a method whose share is below its rough minimum is skipped
with the reason, one that overruns its share is stopped (AYS keeps its best sweep so far, the others
are dropped).  Scoring is never cut short.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.errors import ScheduleLabError
from core.readers import strict_json
from core.schedules import Schedule
from core.solvers import get_solver
from core.tune.methods import OPTIONED, Deadline, OverBudget, TuneContext, default_table, select
from core.tune.scoring import HeldoutScorer, decide, interval, paired

STATE_FORMAT = "schedule-lab/tune-state/1"
OPT_SEEDS = 16                   # optimizers draw seeds seed .. seed + 15 (TuneContext.opt_seed)
DEFAULTS = {"toy": {"n": 2048, "batches": 5, "ref_steps": 500}, "image": {"n": 250, "batches": 4, "ref_steps": 50}}


@dataclass
class TuneEvent:
    """unit: "score:NAME" | "optimize:NAME" | "done"; done_units / total_units for a progress bar."""
    unit: str
    candidate: str | None
    message: str
    done_units: int
    total_units: int
    done: bool = False
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"unit": self.unit, "candidate": self.candidate, "message": self.message,
                "done_units": self.done_units, "total_units": self.total_units, "done": self.done}


@dataclass
class TuneResult:
    """schedule: the winner (solver, model, method, settings and its held-out score in params);
    winner, winner_kind, from_heuristic, reason; best_heuristic; metric (primary) and guard;
    table: one row per candidate (kind, status, primary mean / ci, paired diff / ci, guard diff,
    secondary metrics, seconds, sigmas, why); seeds: {"optimization", "heldout"}."""
    schedule: Schedule
    winner: str
    winner_kind: str
    from_heuristic: bool
    reason: str
    best_heuristic: str
    metric: str
    guard: str | None
    table: list
    seeds: dict
    settings: dict

    def to_dict(self) -> dict:
        return {"winner": self.winner, "winner_kind": self.winner_kind, "from_heuristic": self.from_heuristic,
                "reason": self.reason, "best_heuristic": self.best_heuristic, "metric": self.metric,
                "guard": self.guard, "table": self.table, "seeds": self.seeds, "settings": self.settings,
                "schedule": self.schedule.to_dict()}

    def write(self, path) -> None:
        """A Schedule JSON (Schedule.load reads it) with the whole leaderboard under "tune"."""
        d = self.schedule.to_dict()
        d["tune"] = {k: v for k, v in self.to_dict().items() if k != "schedule"}
        Path(path).write_text(json.dumps(strict_json(d), indent=1))




def _is_mixture(model) -> bool:
    return hasattr(model, "mixture")


def _points_data(data, points):
    """2-D models: (data, points) with data the mixture or the points sampler the optimizers draw x0 from
    and points the sampler swd compares with (None: the mixture's own samples).  Data points may come as
    data= or points= (an [M, 2] tensor / array, or ImageData from --data)."""
    from core.models.user_model import ImageData

    def as_points(v):
        return v if isinstance(v, ImageData) else ImageData(torch.as_tensor(np.asarray(v), dtype=torch.float32),
                                                            "points", False)
    if points is not None:
        points = as_points(points)
    if data is not None and not hasattr(data, "log_prob"):
        if points is not None:
            raise ScheduleLabError("give the data points once (data= or points=), and a mixture as data= for nll")
        data = points = as_points(data)
    if data is None and points is not None:
        data = points
    if data is None:
        raise ScheduleLabError("tune on a 2-D model needs its data: the Gaussian mixture (nll; data=get_toy(name), "
                               "GaussianMixture.from_json(FILE), --toy MIXTURE.json) and/or data points (swd; "
                               "points=[M, 2] array, --data POINTS.npy|.csv)")
    if points is not None and (points.images.ndim != 2 or points.images.shape[0] < 2):
        raise ScheduleLabError(f"data points must be [M >= 2, d]; got {tuple(points.images.shape)}")
    return data, points


class Tuner:
    """Args:
        model: any Denoiser (exact mixture, toy MLP, image model).
        solver: solver name (core.solvers); steps: schedule steps (NFE = solver's rule).
        methods: "all" or a list of optimizer names (heuristics always run).
        budget_s: wall-clock budget in seconds, or None.
        seed: first optimization seed; heldout_seeds: one seed per held-out batch (default: `batches`
            seeds from 1_000_000 + 1000 seed); n: samples per batch.
        data: 2-D models: the GaussianMixture (default model.mixture) or data points; images: an x0
            sampler (ImageData).  points: 2-D data points [M, 2] (or ImageData) swd compares with.
        metric: "auto" (2-D: nll guarded by swd with a mixture, swd with points only; digits fd, else
            ref) | "nll" | "ref" | "fd" | "swd".
        spec: the model's --model string (for a shipped AYS schedule; digits metrics).
        state_path: JSON state written after every unit (resumed when it exists and matches).
        require_significant: an optimizer wins only when the paired 95 % interval is below 0.
        table: {name: Method} (default core.tune.methods.default_table()); cache, refs: dicts shared
            between Tuners to reuse schedules and reference solutions (bench).
        method_options: {method: {keyword: value}} passed to the GITS / OSS / LD3 calls, e.g.
            {"oss": {"teacher_steps": 100, "n_samples": 32}} (recorded in the state's config).
    """

    def __init__(self, model, solver: str = "dpmpp_2m", steps: int = 10, methods=("all",), budget_s=None,
                 seed: int = 0, heldout_seeds=None, data=None, metric: str = "auto", state_path=None,
                 spec: str | None = None, n: int | None = None, batches: int | None = None,
                 ref_steps: int | None = None, require_significant: bool = True, table: dict | None = None,
                 sigma_min: float | None = None, sigma_max: float | None = None, cache: dict | None = None,
                 refs: dict | None = None, method_options: dict | None = None, points=None):
        spec_s = get_solver(solver)
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
            raise ScheduleLabError(f"tune needs an integer steps >= 2; got {steps!r}")
        if budget_s is not None and not budget_s > 0:
            raise ScheduleLabError(f"budget_s must be a positive number of seconds; got {budget_s!r}")
        if data is None and _is_mixture(model):
            data = model.mixture
        toy = len(getattr(model, "event_shape", (2,))) == 1
        if toy:
            data, points = _points_data(data, points)
        elif points is not None:
            raise ScheduleLabError("points= (data points for swd) are for 2-D models; an image model takes data=")
        digits = False
        if not toy:
            from core.models.registry import model_entry
            e = model_entry(spec or getattr(model, "name", ""))
            digits = e is not None and e.metrics == "digits"
            spec = spec or (e.name if e is not None else None)
            if data is None:
                from core.models.registry import model_data
                data = model_data(spec or getattr(model, "name", ""), model)
        d = DEFAULTS["toy" if toy else "image"]
        self.n, self.ref_steps = int(n or d["n"]), int(ref_steps or d["ref_steps"])
        batches = int(batches or d["batches"])
        self.heldout_seeds = [int(s) for s in (heldout_seeds if heldout_seeds is not None else
                                               [1_000_000 + 1000 * int(seed) + b for b in range(batches)])]
        reserved = set(range(int(seed), int(seed) + OPT_SEEDS))
        if reserved & set(self.heldout_seeds):
            raise ScheduleLabError(f"held-out seeds {sorted(reserved & set(self.heldout_seeds))} collide with the "
                                   f"optimization seeds {int(seed)}..{int(seed) + OPT_SEEDS - 1}; pick others")
        if len(self.heldout_seeds) < 2 or len(set(self.heldout_seeds)) != len(self.heldout_seeds):
            raise ScheduleLabError(f"tune needs >= 2 distinct held-out seeds for confidence intervals; "
                                   f"got {self.heldout_seeds}")
        exact = toy and hasattr(data, "log_prob")           # a mixture: nll; data points only: swd
        self.metric, self.guard, secondary = self._metrics(metric, toy, digits, spec_s.stochastic, exact)
        self.seed, self.solver, self.steps, self.budget_s = int(seed), spec_s.name, steps, budget_s
        self.require_significant = bool(require_significant)
        smin = float(sigma_min if sigma_min is not None else getattr(model, "sigma_min", 0.002))
        smax = float(sigma_max if sigma_max is not None else getattr(model, "sigma_max", 80.0))
        self.method_options = {str(k): dict(v) for k, v in (method_options or {}).items()}
        bad = [k for k in self.method_options if k not in OPTIONED]
        if bad:
            raise ScheduleLabError(f"method_options for {bad[0]!r}: only {', '.join(OPTIONED)} take options")
        self.ctx = TuneContext(model, self.solver, steps, smin, smax, data, toy, digits, spec,
                               options=self.method_options)
        self.table = table if table is not None else default_table()
        self.names = select(self.table, methods)
        self.scorer = HeldoutScorer(model, self.solver, [self.metric] + secondary, self.heldout_seeds, self.n,
                                    data if exact else None, self.ref_steps, image=not toy, refs=refs,
                                    points=points if toy else None)
        self.state_path = Path(state_path) if state_path is not None else None
        self.cache = cache
        self.state = self._fresh()
        if self.state_path is not None and self.state_path.is_file():
            self.load_state(json.loads(self.state_path.read_text()))

    # ---- configuration --------------------------------------------------------------------------
    @staticmethod
    def _metrics(metric, toy, digits, stochastic, exact=True):
        """(primary, guard, [secondary metrics measured too]); exact: a 2-D model with its mixture."""
        if metric == "auto":
            metric = ("nll" if exact else "swd") if toy else ("fd" if digits else "ref")
        if metric not in ("nll", "ref", "fd", "swd"):
            raise ScheduleLabError(f"unknown tune metric {metric!r}; choose auto, nll, ref, fd or swd")
        if metric == "fd" and not digits:
            raise ScheduleLabError("metric 'fd' needs a model with the digits classifier metrics (digits)")
        if metric in ("nll", "swd") and not toy:
            raise ScheduleLabError(f"metric {metric!r} needs a 2-D model with its data (a mixture or points)")
        if metric == "nll" and not exact:
            raise ScheduleLabError("metric 'nll' needs the data's exact density: give the Gaussian mixture "
                                   "(--toy MIXTURE.json); with data points only, use swd")
        secondary = [m for m in (["swd"] if toy else []) + ([] if stochastic else ["ref"]) if m != metric]
        return metric, ("swd" if metric == "nll" else None), secondary

    def config(self) -> dict:
        return {"model": getattr(self.ctx.model, "name", "model"), "solver": self.solver, "steps": self.steps,
                "sigma_min": self.ctx.sigma_min, "sigma_max": self.ctx.sigma_max, "methods": self.names,
                "seed": self.seed, "heldout_seeds": self.heldout_seeds, "n": self.n, "ref_steps": self.ref_steps,
                "metric": self.metric, "guard": self.guard, "require_significant": self.require_significant,
                "budget_s": self.budget_s, **({"method_options": self.method_options} if self.method_options else {})}

    def _fresh(self) -> dict:
        return {"format": STATE_FORMAT, "config": self.config(), "candidates": {}, "scores": {},
                "elapsed_s": 0.0, "opt_seeds": [], "score_s": [], "done": False}

    def load_state(self, st: dict) -> None:
        if not isinstance(st, dict) or st.get("format") != STATE_FORMAT:
            raise ScheduleLabError(f"not a tune state (expected format {STATE_FORMAT!r}); delete it or start afresh")
        mine, theirs = self.config(), st.get("config", {})
        diff = [k for k in mine if theirs.get(k) != mine[k]]
        if diff:
            raise ScheduleLabError(f"the saved tune state was made with {diff[0]} = {theirs.get(diff[0])!r}, this "
                                   f"run has {mine[diff[0]]!r}; resume with the same settings or start a new run")
        self.state = st
        self.ctx.opt_seeds = list(st.get("opt_seeds", []))

    def _save(self) -> None:
        self.state["opt_seeds"] = sorted(set(self.ctx.opt_seeds))
        if self.state_path is None:
            return
        tmp = self.state_path.with_suffix(self.state_path.suffix + ".tmp")
        tmp.write_text(json.dumps(strict_json(self.state)))
        tmp.replace(self.state_path)

    # ---- the run ----------------------------------------------------------------------------------
    def units(self) -> list:
        heur = [n for n in self.names if self.table[n].kind == "heuristic"]
        opts = [n for n in self.names if self.table[n].kind == "optimizer"]
        return [("score", n) for n in heur] + [u for n in opts for u in (("optimize", n), ("score", n))]

    def _unit_done(self, kind, name) -> bool:
        c = self.state["candidates"].get(name)
        if kind == "optimize":
            return c is not None
        return name in self.state["scores"] or (c is not None and c.get("sigmas") is None)

    def events(self):
        """Run (or resume) every unit; yield a TuneEvent after each, the last with done=True and
        extra["result"] = the TuneResult."""
        units = self.units()
        total = len(units)
        for i, (kind, name) in enumerate(units):
            if self._unit_done(kind, name):
                continue
            t0 = time.perf_counter()
            msg = self._optimize(name) if kind == "optimize" else self._score(name)
            self.state["elapsed_s"] += time.perf_counter() - t0
            self._check_seeds()
            self._save()
            yield TuneEvent(f"{kind}:{name}", name, msg, i + 1, total)
        res = self.result()
        self.state["done"] = True
        self._save()
        yield TuneEvent("done", res.winner, res.reason, total, total, True, {"result": res})

    def _check_seeds(self) -> None:
        both = set(self.ctx.opt_seeds) & set(self.heldout_seeds)
        if both:
            raise ScheduleLabError(f"seed(s) {sorted(both)} were used both to optimize and as held-out noise; "
                                   "choose held-out seeds away from the optimization seed")

    def _build(self, name) -> dict:
        """Run one method; the candidate record {kind, status, sigmas | None, seconds, reason, params}."""
        m, rec = self.table[name], {"kind": self.table[name].kind, "sigmas": None, "params": {}}
        why = m.applies(self.ctx)
        if why is not None:
            na = why.startswith("not available: ")
            return {**rec, "status": "not available" if na else "not applicable",
                    "reason": why[len("not available: "):] if na else why, "seconds": 0.0}
        deadline, share = Deadline(), None
        if self.budget_s is not None and m.kind == "optimizer":
            share = self._share(name)
            if share < m.min_s(self.ctx):
                return {**rec, "status": "skipped", "seconds": 0.0,
                        "reason": f"budget share {share:.1f} s is below the ~{m.min_s(self.ctx):g} s it needs"}
            deadline = Deadline(time.perf_counter() + share)
        key = None
        if self.cache is not None:
            key = (name, self.config()["model"], self.steps, self.ctx.sigma_min, self.ctx.sigma_max, self.seed,
                   self.solver if m.solver_dependent else None,
                   json.dumps(self.method_options.get(name), sort_keys=True))
            if key in self.cache:
                return dict(self.cache[key])
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            s = m.run(self.ctx, self.seed, deadline)
        except OverBudget:
            return {**rec, "status": "stopped", "seconds": time.perf_counter() - t0,
                    "reason": f"over its budget share of {share:.1f} s"}
        except ScheduleLabError as e:
            return {**rec, "status": "failed", "seconds": time.perf_counter() - t0, "reason": str(e)}
        out = {**rec, "status": "ok", "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
               "reason": "", "sigmas": list(s.sigmas), "params": _jsonable(s.params)}
        if key is not None:
            self.cache[key] = dict(out)
        return out

    def _share(self, name) -> float:
        opts = [n for n in self.names if self.table[n].kind == "optimizer" and n not in self.state["candidates"]]
        per_score = float(np.median(self.state["score_s"])) if self.state["score_s"] else 0.0
        left = self.budget_s - self.state["elapsed_s"] - per_score * len(opts)
        return max(0.0, left) / max(1, len(opts))

    def _optimize(self, name) -> str:
        rec = self._build(name)
        self.state["candidates"][name] = rec
        if rec["status"] != "ok":
            return f"{name}: {rec['status']} ({rec['reason']})"
        return f"{name}: optimized in {rec['seconds']:.1f} s"

    def _score(self, name) -> str:
        rec = self.state["candidates"].get(name)
        if rec is None:                                  # a heuristic: build it first (instant)
            rec = self.state["candidates"][name] = self._build(name)
        if rec.get("sigmas") is None:
            return f"{name}: nothing to score ({rec['status']})"
        t0 = time.perf_counter()
        same = next((n for n, c in self.state["candidates"].items() if n in self.state["scores"] and n != name
                     and _same_levels(c.get("sigmas"), rec["sigmas"])), None)
        if same is not None:            # the same levels (polyexponential rho = 1 is log-linear): same samples
            self.state["scores"][name] = {k: list(v) for k, v in self.state["scores"][same].items()}
            return f"{name}: the same levels as {same}, its held-out scores"
        self.state["scores"][name] = self.scorer(Schedule(tuple(rec["sigmas"]), name=name))
        dt = time.perf_counter() - t0
        self.state["score_s"].append(dt)
        m = interval(self.state["scores"][name][self.metric])
        val = "diverged" if m["mean"] is None else f"{m['mean']:.4g}"
        return f"{name}: held-out {self.metric} {val} ({dt:.1f} s)"

    # ---- the answer --------------------------------------------------------------------------------
    def result(self) -> TuneResult:
        st = self.state
        kinds = {n: st["candidates"][n]["kind"] for n in st["scores"]}
        winner, best_h, rows = decide(st["scores"], kinds, self.metric, self.require_significant, self.guard)
        table = []
        for n in self.names:
            c = st["candidates"].get(n, {"kind": self.table[n].kind, "status": "not run", "reason": "", "seconds": 0.0})
            row = {"name": n, "kind": c["kind"], "status": c["status"], "seconds": c.get("seconds", 0.0),
                   "cpu_seconds": c.get("cpu_seconds"),
                   "reason": c.get("reason", ""), "sigmas": c.get("sigmas")}
            if n in rows:
                r = rows[n]
                row.update({self.metric: r["primary"]["mean"], f"{self.metric}_ci": r["primary"]["ci"],
                            "diff": r["diff"]["mean"], "diff_ci": r["diff"]["ci"], "wins": r["wins"],
                            "why": r["why"], "per_batch": st["scores"][n]})
                for sec in st["scores"][n]:
                    if sec != self.metric:
                        iv, dv = interval(st["scores"][n][sec]), paired(st["scores"][n][sec], st["scores"][best_h][sec])
                        row.update({sec: iv["mean"], f"{sec}_ci": iv["ci"], f"{sec}_diff": dv["mean"],
                                    f"{sec}_diff_ci": dv["ci"]})
            table.append(row)
        wk = kinds[winner]
        if wk == "heuristic":
            asked = [n for n in self.names if self.table[n].kind == "optimizer"]
            scored = [n for n in rows if kinds[n] == "optimizer"]
            reason = (f"no optimizer beat the best heuristic {best_h} on held-out {self.metric}; returning it"
                      + ("" if scored else " (no optimizer produced a schedule)" if asked else " (heuristics only)"))
        else:
            r = rows[winner]["diff"]
            ci = "" if r["ci"] is None else f" +- {r['ci']:.3g}"
            reason = (f"{winner} beats the best heuristic {best_h} on held-out {self.metric} by "
                      f"{-r['mean']:.4g}{ci} (paired, 95 %)")
        c = st["candidates"][winner]
        prim = rows[winner]["primary"]
        sched = Schedule(tuple(c["sigmas"]), name=winner, solver=self.solver, params={
            **(c.get("params") or {}), "method": winner, "kind": wk, "solver": self.solver,
            "model": self.config()["model"], "steps": self.steps, "metric": self.metric,
            "heldout_mean": prim["mean"], "heldout_ci": prim["ci"], "best_heuristic": best_h,
            "from_heuristic": wk == "heuristic", "heldout_seeds": self.heldout_seeds, "n": self.n,
            "tune_seed": self.seed})
        return TuneResult(sched, winner, wk, wk == "heuristic", reason, best_h, self.metric, self.guard, table,
                          {"optimization": sorted(set(self.ctx.opt_seeds)), "heldout": self.heldout_seeds},
                          self.config())


def _same_levels(a, b) -> bool:
    """The same levels up to round-off (polyexponential with rho = 1 and loglinear differ by ~1e-16)."""
    return a is not None and len(a) == len(b) and bool(np.allclose(a, b, rtol=1e-12, atol=0.0))


def _jsonable(o):
    try:
        return json.loads(json.dumps(o, default=float))
    except (TypeError, ValueError):
        return {}


def tune(model, solver: str = "dpmpp_2m", steps: int = 10, progress=None, **kw) -> TuneResult:
    """Run a Tuner to the end; progress(event) after every unit. Returns the TuneResult."""
    t = Tuner(model, solver, steps, **kw)
    res = None
    for ev in t.events():
        if progress is not None:
            progress(ev)
        if ev.done:
            res = ev.extra["result"]
    return res
