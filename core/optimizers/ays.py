"""Align Your Steps: hierarchical coordinate search on the KLUB (Sabour et al. 2024, Alg. 1 and
App. B; methods.md section 4).

    start: EDM rho = 7 (continuous models) or time-uniform (discrete), stages[0] steps, ends fixed
    sweep: for the odd interior points, then the even ones (non-adjacent points are independent,
           so each half is ONE batched estimate), score 11 candidates -- the current value and 10
           log-spaced strictly between the neighbours -- by KLUB(prev, x) + KLUB(x, next) with
           common random numbers, keep the best; fresh samples every sweep
    stop:  a sweep that changes nothing, or max_iters sweeps; in the first stage also early
           stopping on a held-out metric (patience, best kept) -- the paper's remedy for
           over-optimizing the bound, with no numeric rule given (ours)
    then:  the next stage: if it has 2n - 1 steps, insert the geometric mean in every interval and
           optimize only the new points (exact nesting); any other count, e.g. the paper's
           10 -> 20 -> 40, starts from a log-linear resampling of the optimized schedule (the
           ComfyUI AYS way, core.schedules.resample_loglinear) and optimizes every interior point
    final: log-linear interpolation of the finest schedule to any step count; a stage's own step
           count returns that stage's optimized schedule exactly

Step counts. A schedule of n steps has n positive levels (the last is sigma_min) and n - 1 KLUB
intervals; the final jump to 0 has none. Inserting a geometric mean in every interval turns n
steps into 2n - 1 (10 -> 19 -> 37 nests exactly); the default stages (n, 2n, 4n), e.g. the
paper's 10 -> 20 -> 40, are reached by log-linear resampling instead. Both may be mixed: any
strictly increasing stage list works, and the events say how each stage was initialised.
"""
from __future__ import annotations

import math
import time

import torch

from core.errors import ScheduleLabError, unknown_name
from core.objectives.fast_denoiser import mc_denoiser
from core.objectives.klub import COUPLINGS, DEFAULT_CHUNK, _check_c, draw_noise, klub_samples, mean_se, slice_noise
from core.optimizers.base import Optimizer, ProgressEvent
from core.optimizers.distributed import Partition
from core.optimizers.heldout import HELDOUT, HeldoutMetric
from core.schedules import Schedule, make_schedule, resample_loglinear

STATE_FORMAT = "schedule-lab/ays-state/2"       # 2: config records data and model content hashes
CONFIG_KEYS = ("steps", "stages", "n_samples", "n_candidates", "c", "max_iters", "heldout", "patience",
               "heldout_solver", "heldout_n", "heldout_seed", "seed", "coupling", "dtype", "min_delta",
               "start", "model", "data", "model_hash", "significance")


def default_stages(steps: int, subdivisions: int = 2) -> tuple:
    """(steps, 2 steps, 4 steps, ...): the paper's 10 -> 20 -> 40 (each later stage starts from a
    log-linear resampling of the previous one; see `stage_init`)."""
    out = [steps]
    for _ in range(subdivisions):
        out.append(2 * out[-1])
    return tuple(out)


def nested_stages(steps: int, subdivisions: int = 2) -> tuple:
    """(steps, 2 steps - 1, 4 steps - 3, ...): each stage inserts a geometric mean in every interval."""
    out = [steps]
    for _ in range(subdivisions):
        out.append(2 * out[-1] - 1)
    return tuple(out)


def stage_init(prev: int, nxt: int) -> str:
    """How a stage of `nxt` steps starts from an optimized `prev`-step schedule: "subdivide"
    (nxt = 2 prev - 1: geometric midpoints, only they move) or "resample" (log-linear
    interpolation, every interior point moves)."""
    return "subdivide" if nxt == 2 * prev - 1 else "resample"


def subdivide(levels: list) -> list:
    """Insert the geometric mean between every pair of neighbouring positive levels."""
    out = [levels[0]]
    for hi, lo in zip(levels[:-1], levels[1:]):
        out += [math.sqrt(hi * lo), lo]
    return out


def resample_exact_ends(schedule: Schedule, steps: int) -> Schedule:
    """core.schedules.resample_loglinear with sigma_max and sigma_min kept bit-exact."""
    lv = list(resample_loglinear(schedule, steps).sigmas[:-1])
    lv[0], lv[-1] = schedule.sigmas[0], schedule.sigmas[-2]
    return Schedule(tuple(lv) + (0.0,), name=schedule.name, params=schedule.params, solver=schedule.solver)


def candidates(lo: torch.Tensor, hi: torch.Tensor, current: torch.Tensor, k: int) -> torch.Tensor:
    """[P, k + 1]: the current value first, then k values log-spaced strictly inside (lo, hi)."""
    frac = torch.arange(1, k + 1, dtype=torch.float64) / (k + 1)
    grid = torch.exp(lo.log().unsqueeze(1) + frac * (hi.log() - lo.log()).unsqueeze(1))
    return torch.cat([current.unsqueeze(1), grid], dim=1)


class AYSOptimizer(Optimizer):
    """Align Your Steps as a resumable generator of ProgressEvents.

    Args:
        model: any Denoiser (an exact mixture is evaluated in its fast matmul form).
        sampler: (n, generator) -> x0 [n, *event_shape], e.g. mixture.sample.
        steps: step count `result()` returns by default.
        stages: step counts of the hierarchy; default (steps, 2 steps - 1, 4 steps - 3).
        start: "karras" (EDM rho = 7) | "time_uniform" | any schedule name | a Schedule.
        sigma_min, sigma_max: fixed ends (default: the model's).
        n_samples: Monte Carlo samples per sweep (paper: 8192); c: importance constant (0.5).
        n_candidates: values tried besides the current one (paper: 10).
        max_iters: sweep cap per stage (paper: < 300), or one cap per stage (a list as long as stages).
        heldout: "auto" (kde_nll with a known mixture, which a collapsed sample cannot win, unlike nll;
            else ref_error) | "kde_nll" | "nll" | "swd" | "ref_error" | None.
        heldout_fn: schedule -> float (lower is better); overrides `heldout` (its `name` attribute, else
            "custom", names it in the events). It may return +inf for "never keep this sweep" only when it
            has `inf_rejects = True` (a guard); any other non-finite value stops the run.
        patience: first-stage sweeps without held-out improvement before stopping early (8: on
            grid8x8 the NLL plateaus for up to 5 sweeps before improving again; bench/ays.py).
        min_delta: held-out improvement smaller than this does not count.
        significance: a point moves only when its best candidate's common-random-number KLUB
            difference to the current value is below -significance standard errors of that paired
            difference (2.0: noise alone then moves a point in ~2 % of tests instead of most of
            them on a tiny budget; 0 = the paper's plain argmin).
        heldout_solver, heldout_n, heldout_seed: how the metric samples.
        heldout_every_stage: measure the held-out metric after every sweep of every stage (the curve
            the app plots; default) or only in the first stage, where it decides (saves its cost).
        mixture: exact GaussianMixture of the data (for nll), if known.
        seed: seed of the torch.Generator that draws every sweep's samples.
        chunk: denoiser rows per call; coupling: "bridge" | "forward" (core.objectives.klub).
        dtype: Monte Carlo dtype for an exact mixture (float32 default; float64 possible).
        partition: core.optimizers.distributed.Partition to split the samples across processes.
    """

    method = "ays"

    def __init__(self, model, sampler, steps: int = 10, stages=None, start="karras",
                 sigma_min: float | None = None, sigma_max: float | None = None,
                 n_samples: int = 8192, n_candidates: int = 10, c: float = 0.5, max_iters=100,
                 heldout: str | None = "auto", heldout_fn=None, patience: int = 8, min_delta: float = 0.0,
                 heldout_solver: str = "dpmpp_2m_sde", heldout_n: int = 8192, heldout_seed: int = 1234,
                 mixture=None, seed: int = 0, chunk: int = DEFAULT_CHUNK, coupling: str = "bridge",
                 dtype=torch.float32, partition: Partition | None = None, heldout_every_stage: bool = True,
                 significance: float = 2.0):
        caps = list(max_iters) if isinstance(max_iters, (list, tuple)) else [max_iters]
        for name, v, lo in (("steps", steps, 3), ("n_samples", n_samples, 2), ("n_candidates", n_candidates, 1),
                            *(("max_iters", m, 1) for m in caps), ("patience", patience, 1), ("chunk", chunk, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ScheduleLabError(f"AYS {name} must be an integer >= {lo}; got {v!r}")
        self.stages = tuple(stages) if stages is not None else default_stages(steps)
        _check_stages(self.stages)
        if isinstance(max_iters, (list, tuple)) and len(caps) != len(self.stages):
            raise ScheduleLabError(f"AYS max_iters per stage needs one cap for each of the {len(self.stages)} "
                                   f"stages {list(self.stages)}; got {caps}")
        max_iters = caps if isinstance(max_iters, (list, tuple)) else max_iters
        self.model, self.sampler, self.steps = model, sampler, steps
        self.c = _check_c(c)
        self.n_samples, self.n_candidates, self.max_iters = n_samples, n_candidates, max_iters
        self.patience, self.min_delta, self.seed = patience, float(min_delta), int(seed)
        if not (isinstance(significance, (int, float)) and math.isfinite(significance) and significance >= 0):
            raise ScheduleLabError(f"AYS significance must be a number >= 0 (standard errors); got {significance!r}")
        self.significance = float(significance)
        if coupling not in COUPLINGS:
            raise unknown_name("coupling", coupling, COUPLINGS)
        if dtype not in (torch.float32, torch.float64):
            raise ScheduleLabError(f"AYS Monte Carlo dtype must be torch.float32 or torch.float64; got {dtype!r}")
        self.chunk, self.coupling, self.dtype = chunk, coupling, dtype
        self.partition = partition or Partition.single()
        self._den = mc_denoiser(model, dtype)
        if mixture is None and hasattr(model, "mixture"):
            mixture = model.mixture
        self.heldout_solver, self.heldout_n, self.heldout_seed = heldout_solver, heldout_n, int(heldout_seed)
        self.heldout_every_stage = bool(heldout_every_stage)
        if heldout_fn is not None:
            self.heldout, self._metric = getattr(heldout_fn, "name", "custom"), heldout_fn
        else:
            if heldout == "auto":
                heldout = "kde_nll" if mixture is not None else "ref_error"
            if heldout is not None and heldout not in HELDOUT:
                raise unknown_name("held-out metric", heldout, HELDOUT + ("auto", "none"))
            self.heldout = heldout
            self._metric = None if heldout is None else HeldoutMetric(
                heldout, model, heldout_solver, heldout_n, heldout_seed, mixture, sampler)
        self.start = self._start_schedule(start, sigma_min, sigma_max)
        self.sigma_min, self.sigma_max = self.start.sigma_min, self.start.sigma_max
        from core.cache import model_fingerprint
        from core.optimizers.resume import data_fingerprint
        self._fingerprints = {"data": data_fingerprint(sampler, mixture), "model_hash": model_fingerprint(model)}
        self._reset()

    # ---- construction helpers ---------------------------------------------------------------
    def _start_schedule(self, start, sigma_min, sigma_max) -> Schedule:
        n0 = self.stages[0]
        if isinstance(start, Schedule):
            return start if start.steps == n0 else resample_exact_ends(start, n0)
        if not isinstance(start, str):
            raise ScheduleLabError(f"AYS start must be a schedule name or a Schedule; got {type(start).__name__}")
        smin = float(sigma_min if sigma_min is not None else getattr(self.model, "sigma_min", 0.002))
        smax = float(sigma_max if sigma_max is not None else getattr(self.model, "sigma_max", 80.0))
        return make_schedule(start, n0, smin, smax)

    def _reset(self):
        self._levels = list(self.start.sigmas[:-1])
        self._stage, self._stage_iter, self._iteration = 0, 0, 0
        self._gen = torch.Generator().manual_seed(self.seed)
        self._history, self._best, self._bad = [], None, 0
        self._early_stopped_at, self._started, self._done = None, False, False
        self._stage_schedules = []                 # the final levels of every finished stage

    def config(self) -> dict:
        return {"steps": self.steps, "stages": list(self.stages), "n_samples": self.n_samples,
                "n_candidates": self.n_candidates, "c": self.c, "max_iters": self.max_iters,
                "heldout": self.heldout, "patience": self.patience, "heldout_solver": self.heldout_solver,
                "heldout_n": self.heldout_n, "heldout_seed": self.heldout_seed, "seed": self.seed,
                "coupling": self.coupling, "dtype": str(self.dtype).replace("torch.", ""), "min_delta": self.min_delta,
                "start": list(self.start.sigmas), "model": getattr(self.model, "name", "model"),
                "significance": self.significance, **self._fingerprints}

    # ---- the optimizer loop ------------------------------------------------------------------
    def current_schedule(self) -> Schedule:
        return Schedule(tuple(self._levels) + (0.0,), name="ays", params=self._params())

    def events(self):
        """Yield a ProgressEvent for the start schedule (iteration 0), then one after every sweep.

        event.schedule is the swept schedule, event.objective its total KLUB (from that sweep's
        samples), event.heldout the held-out metric (None without one), event.stage the stage index;
        event.extra: per_interval (KLUB of each interval, high sigma first), objective_se (the KLUB
        total's standard error this sweep), moved (points changed), rejected (best candidates kept
        back as not significant), move_se (SE of each tested point's paired difference), significance, early_stopped_at (first-stage sweep kept, once decided), stage_steps,
        heldout_name, seconds, next_sigmas (where the next sweep starts: after an early-stop revert
        or a subdivision). The state is saved-ready after every event."""
        if not self._started:
            t0 = time.perf_counter()
            per, total, total_se = self._evaluate(self._levels)
            h = self._heldout_value()
            if h is not None:
                self._best = {"heldout": h, "levels": list(self._levels), "iteration": 0}
            self._started = True
            yield self._record(total, total_se, per, h, 0, False, "start schedule", time.perf_counter() - t0)
        while not self._done:
            yield self._sweep()

    def _sweep(self) -> ProgressEvent:
        t0 = time.perf_counter()
        stage = self._stage
        moved, per, total, total_se = self._coordinate_sweep()
        self._iteration += 1
        self._stage_iter += 1
        h = self._heldout_value() if stage == 0 or self.heldout_every_stage else None
        swept = list(self._levels)
        cap = self.max_iters[stage] if isinstance(self.max_iters, list) else self.max_iters
        end = moved == 0 or self._stage_iter >= cap
        why = "converged (no point moved)" if moved == 0 else (
            f"iteration cap {cap}" if end else f"{moved} point(s) moved")
        if stage == 0 and h is not None:
            if h < self._best["heldout"] - self.min_delta:
                self._best = {"heldout": h, "levels": swept, "iteration": self._iteration}
                self._bad = 0
            else:
                self._bad += 1
            if self._bad >= self.patience and not end:
                end, why = True, f"early stop: no held-out improvement in {self.patience} sweeps"
            if end:
                self._levels = list(self._best["levels"])
                self._early_stopped_at = self._best["iteration"]
                why += f"; keeping sweep {self._best['iteration']} (best held-out {self._best['heldout']:.4g})"
        if end:
            self._stage_schedules.append(list(self._levels))
            if stage + 1 < len(self.stages):
                nxt = self.stages[stage + 1]
                if stage_init(self.stages[stage], nxt) == "subdivide":
                    self._levels = subdivide(self._levels)
                    why += f"; subdivided to {nxt} steps (geometric midpoints; only the new points move)"
                else:
                    self._levels = self._resampled(self._levels, nxt)
                    why += f"; resampled log-linearly to {nxt} steps (every interior point moves)"
                self._stage, self._stage_iter = stage + 1, 0
            else:
                self._done = True
        return self._record(total, total_se, per, h, stage, self._done, why, time.perf_counter() - t0,
                            levels=swept, moved=moved, stats=self._sweep_stats)

    def _coordinate_sweep(self):
        """One sweep (odd then even points in stage 0; only the new, odd points later) with ONE set
        of common random numbers; returns (points moved, per-interval KLUB, total, its SE).

        A point moves to its best candidate only when the paired difference of the two KLUB sums
        (same samples) is below -significance x its standard error; otherwise it stays (counted in
        self._sweep_stats["rejected"], with every tested point's difference SE in "move_se")."""
        p = self.partition
        noise = slice_noise(draw_noise(self.sampler, self.n_samples, self._gen), p.slice(self.n_samples))
        L = torch.tensor(self._levels, dtype=torch.float64)
        inner = list(range(1, len(L) - 1))
        halves = [inner[0::2], inner[1::2]] if self._moves_all() else [inner[0::2]]
        vals, moved = {}, 0                      # interval i = (L[i+1], L[i]) -> per-sample terms
        rejected, diff_se = 0, []
        for idx in halves:
            if not idx:
                continue
            j = torch.tensor(idx)
            cand = candidates(L[j + 1], L[j - 1], L[j], self.n_candidates)          # [P, C]
            P, C = cand.shape
            lo = torch.cat([L[j + 1].unsqueeze(1).expand(P, C), cand]).reshape(-1)
            hi = torch.cat([cand, L[j - 1].unsqueeze(1).expand(P, C)]).reshape(-1)
            v = klub_samples(self._den, noise, lo, hi, self.c, self.chunk, self.coupling)
            v_lo, v_hi = v.view(2, P, C, -1).unbind(0)
            tot = v_lo + v_hi                                                       # [P, C, n]
            score = p.allreduce(tot.sum(-1))                                        # [P, C]
            best = score.argmin(dim=1)                                              # ties keep current
            # significance: paired (common-random-number) difference best - current, per sample
            d = tot[torch.arange(P), best] - tot[:, 0]                              # [P, n]
            dm, dse, _ = mean_se(d, p)
            keep = (best == 0) | ~(dm < -self.significance * dse)
            rejected += int(((best != 0) & keep).sum())
            diff_se += dse.tolist()
            best = torch.where(keep, torch.zeros_like(best), best)
            for q, jj in enumerate(idx):
                k = int(best[q])
                moved += int(k != 0)
                L[jj] = cand[q, k]
                vals[jj], vals[jj - 1] = v_lo[q, k], v_hi[q, k]
        self._levels = L.tolist()
        V = torch.stack([vals[i] for i in range(len(L) - 1)])
        per, _, _ = mean_se(V, p)
        total, total_se, _ = mean_se(V.sum(0, keepdim=True), p)
        self._sweep_stats = {"rejected": rejected, "move_se": diff_se}
        return moved, per.tolist(), float(total), float(total_se)

    def _moves_all(self) -> bool:
        """Every interior point moves in stage 0 and in resampled stages; after a subdivision
        only the new (odd) points do."""
        k = self._stage
        return k == 0 or stage_init(self.stages[k - 1], self.stages[k]) == "resample"

    def _resampled(self, levels: list, steps: int) -> list:
        return list(resample_exact_ends(Schedule(tuple(levels) + (0.0,)), steps).sigmas[:-1])

    def _evaluate(self, levels):
        """KLUB of every interval of `levels` with a fresh draw (the start event)."""
        p = self.partition
        noise = slice_noise(draw_noise(self.sampler, self.n_samples, self._gen), p.slice(self.n_samples))
        L = torch.tensor(levels, dtype=torch.float64)
        V = klub_samples(self._den, noise, L[1:], L[:-1], self.c, self.chunk, self.coupling)
        per, _, _ = mean_se(V, p)
        total, total_se, _ = mean_se(V.sum(0, keepdim=True), p)
        return per.tolist(), float(total), float(total_se)

    def _heldout_value(self):
        if self._metric is None:
            return None
        h = float(self._metric(self.current_schedule())) if self.partition.is_main else None
        return self.partition.broadcast_float(h)

    def _record(self, total, total_se, per, h, stage, done, message, seconds, levels=None, moved=0, stats=None):
        where = f"AYS iteration {self._iteration} (stage {stage}, {len(self._levels)} steps)"
        if not (math.isfinite(total) and math.isfinite(total_se)):
            raise ScheduleLabError(f"{where}: the KLUB objective is {total}; the run is stopped (check the model "
                                   "and the data sampler)")
        rejected = h == math.inf and getattr(self._metric, "inf_rejects", False)   # a guard's "never keep this"
        if h is not None and not math.isfinite(h) and not rejected:
            raise ScheduleLabError(f"{where}: the held-out metric {self.heldout} is {h}; the run is stopped (the "
                                   "samples diverged: check the model, the solver and the sigma range)")
        levels = list(self._levels if levels is None else levels)
        st = stats or {"rejected": 0, "move_se": []}
        self._history.append({"iteration": self._iteration, "stage": stage, "objective": total,
                              "objective_se": total_se, "heldout": h, "moved": moved, "rejected": st["rejected"],
                              "seconds": seconds, "sigmas": levels + [0.0]})
        sched = Schedule(tuple(levels) + (0.0,), name="ays", params=self._params())
        extra = {"per_interval": per, "objective_se": total_se, "early_stopped_at": self._early_stopped_at,
                 "moved": moved, "rejected": st["rejected"], "move_se": st["move_se"],
                 "significance": self.significance, "stage_steps": len(levels), "heldout_name": self.heldout,
                 "stage_init": self.stage_inits()[stage], "seconds": seconds,
                 "next_sigmas": list(self._levels) + [0.0]}
        return ProgressEvent("ays", self._iteration, sched, total, h, stage, done, message, extra)

    # ---- results and state ------------------------------------------------------------------
    def _params(self) -> dict:
        return {"method": "ays", "c": self.c, "n_samples": self.n_samples, "seed": self.seed,
                "stages": list(self.stages), "heldout": self.heldout, "model": getattr(self.model, "name", "")}

    def stage_inits(self) -> list:
        """How each stage starts: "start" (stage 0), then "subdivide" or "resample" (`stage_init`)."""
        return ["start"] + [stage_init(a, b) for a, b in zip(self.stages[:-1], self.stages[1:])]

    def stage_schedule(self, k: int) -> Schedule:
        """The optimized schedule of finished stage k (stages[k] steps)."""
        if not 0 <= k < len(self._stage_schedules):
            raise ScheduleLabError(f"AYS stage {k} has not finished yet ({len(self._stage_schedules)} finished)")
        return Schedule(tuple(self._stage_schedules[k]) + (0.0,), name="ays", params=self._params())

    def finest(self) -> Schedule:
        """The current finest schedule (first stage: the best held-out one so far)."""
        lv = self._levels
        if self._stage == 0 and self._best is not None and not self._done:
            lv = self._best["levels"]
        return Schedule(tuple(lv) + (0.0,), name="ays", params=self._params())

    def result(self, steps: int | None = None) -> Schedule:
        """The optimized schedule at `steps` steps (default self.steps): a finished stage with that
        step count exactly, else log-linear interpolation of the finest schedule (exact nested
        points when the finest subdivides `steps`)."""
        steps = self.steps if steps is None else steps
        if not isinstance(steps, int) or steps < 2:
            raise ScheduleLabError(f"result steps must be an integer >= 2; got {steps!r}")
        f = self.finest()
        for k, lv in enumerate(self._stage_schedules):
            if len(lv) == steps:
                return Schedule(tuple(lv) + (0.0,), name="ays", params={**self._params(), "stage": k,
                                                                        "finest_sigmas": list(f.sigmas)})
        lv = list(f.sigmas[:-1])
        if (len(lv) - 1) % (steps - 1) == 0:           # nested stage: take its points exactly
            lv = lv[:: (len(lv) - 1) // (steps - 1)]
        else:
            lv = list(resample_exact_ends(f, steps).sigmas[:-1])
        return Schedule(tuple(lv) + (0.0,), name="ays", params={**self._params(), "finest_sigmas": list(f.sigmas)})

    @property
    def history(self) -> list:
        return list(self._history)

    @property
    def done(self) -> bool:
        return self._done

    def state_dict(self) -> dict:
        return {"format": STATE_FORMAT, "config": self.config(), "levels": list(self._levels),
                "stage": self._stage, "stage_iter": self._stage_iter, "iteration": self._iteration,
                "rng": self._gen.get_state().tolist(), "history": self._history, "best": self._best,
                "bad": self._bad, "early_stopped_at": self._early_stopped_at,
                "stage_schedules": self._stage_schedules, "started": self._started, "done": self._done}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            old = isinstance(state, dict) and str(state.get("format", "")).startswith("schedule-lab/ays-state/")
            raise ScheduleLabError(f"not an AYS optimizer state (expected format {STATE_FORMAT!r}"
                                   + (f", this one is {state['format']!r} from an older version; start a new run"
                                      if old else "") + ")")
        from core.optimizers.resume import check_ays_state_fields, check_resume
        check_resume(state, self.config(), CONFIG_KEYS, "AYS")
        check_ays_state_fields(state)
        try:
            levels = [float(x) for x in state["levels"]]
            Schedule(tuple(levels) + (0.0,))
            self._levels, self._stage = levels, int(state["stage"])
            self._stage_iter, self._iteration = int(state["stage_iter"]), int(state["iteration"])
            self._gen.set_state(torch.tensor(state["rng"], dtype=torch.uint8))
            self._history, self._best, self._bad = list(state["history"]), state["best"], int(state["bad"])
            self._early_stopped_at = state["early_stopped_at"]
            self._stage_schedules = [[float(x) for x in lv] for lv in state.get("stage_schedules", [])]
            self._started, self._done = bool(state["started"]), bool(state["done"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ScheduleLabError(f"the saved AYS state is incomplete or corrupt ({e}); start a new run") from None
        done_stages = self._stage + int(self._done)
        if (not 0 <= self._stage < len(self.stages) or len(levels) != self.stages[self._stage]
                or len(self._stage_schedules) != done_stages
                or any(len(lv) != n for lv, n in zip(self._stage_schedules, self.stages))):
            raise ScheduleLabError("the saved AYS state does not match its stages; start a new run")


def _check_stages(stages: tuple):
    if not stages or any(not isinstance(s, int) or isinstance(s, bool) for s in stages):
        raise ScheduleLabError(f"AYS stages must be a non-empty list of step counts; got {stages!r}")
    if stages[0] < 3:
        raise ScheduleLabError(f"the first AYS stage needs >= 3 steps (an interior point to move); got {stages[0]}")
    n = stages[0]
    for s, t in zip(stages[:-1], stages[1:]):
        if t <= s:
            raise ScheduleLabError(
                f"AYS stages must increase (each refines the previous one); got {t} steps after {s}. "
                f"Use e.g. {n},{2 * n},{4 * n} (log-linear resampling between stages, the paper's 10 -> 20 -> 40) "
                f"or {n},{2 * n - 1},{4 * n - 3} (exact midpoint subdivision)")
