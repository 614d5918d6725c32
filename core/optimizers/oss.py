"""OSS, Optimal Stepsize for diffusion sampling (Pei et al. 2025, arXiv 2503.21774; reference code
bebebe666/OptimalSteps, OSS/OSS.py `search_OSS`; methods.md s.8).

Teacher: one many-step trajectory per sample (`teacher_steps` = 200 steps of the same solver, as the
reference does) on a fine grid g_0 = sigma_max > ... > g_N = sigma_min (EDM's polynomial grid,
rho = 7; the reference steps uniformly in its flow-matching t). Student: n levels on that grid.

Dynamic programming over (student step k, teacher level j) that carries the STUDENT's own state:

    z[0][0] = x_T,  dp[k][j] = min_{i < j} || step(z[k-1][i], hist[k-1][i]; g_i -> g_j) - x_teacher_j ||^2
    z[k][j], hist[k][j] = the state (and solver memory) reached by the argmin i.

so the cost at each (k, j) is the student's global error against the teacher, not a local one.
Multistep solvers carry their history (past D or slopes and their step sizes) in the DP state
(the reference is Euler-only, where the state is x alone). Per sample (the reference's
`search_OSS`, one schedule per noise; `per_sample=True` returns their position-wise median, the
reference's `cal_medium`) or "OSS-ave" (default): the DP on the error averaged over the batch, one
shared choice per (k, j), each sample still carrying its own state.

Our convention (core.optimizers.trajectory): the path has n levels, 0 -> ... -> N (n - 1 jumps on
the grid); the n-th call is the solver's step from sigma_min to 0, common to every path, and a
row k holds exactly k + 1 jumps from sigma_max. The released code differs in two rules: its first
jump may start at any teacher level with the initial noise (in flow matching, noise at t < 1; in
our EDM form a schedule starts at sigma_0 with x = sigma_0 * eps, so there is no counterpart), and
its rows keep the best of "at most k + 1" jumps. `iter_oss(..., reference=True)` applies those rules
and reproduces search_OSS's per-sample choices and cal_medium on the recorded fixture
(tests/fixtures/oss_reference.json).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from core.errors import ScheduleLabError
from core.optimizers.base import Optimizer, ProgressEvent
from core.optimizers.steppers import call_model
from core.optimizers.trajectory import check_common, polynomial_grid, schedule_from_path, teacher_trajectory
from core.sampling import initial_noise
from core.schedules import Schedule, make_schedule


@torch.no_grad()
def oss_row(model, stepper, levels, teacher, z, hist, sources, lo, hi, k, n, per_sample, prev=None,
            max_elems=1 << 22):
    """One DP row: every source i in `sources` jumps to every later level j in lo..hi.

    Args:
        levels: [G] descending levels (float64 tensor); teacher: [G, B, *event] teacher states.
        z, hist: the previous row's carried states [G, B, *event] and solver memory (tuple of same).
        k: the step index of these jumps (0-based), n: the schedule's step count.
        prev: (best [G, B], src [G, B]) of the previous row to improve on (the reference's "at most
            k jumps" rows, with its float32 cost table), or None (exactly k + 1 jumps).
    Returns:
        best [G, B] (inf where not set), src [G, B] the argmin source per (j, b) (-1 where not set) and
        the new carried z, hist.
        Ties go to the lowest source index (the reference scans from the noise end, strict <).
    """
    G, B = teacher.shape[0], teacher.shape[1]
    T = hi - lo + 1
    ev = tuple(range(2, teacher.ndim))
    dev = teacher.device
    D_all = call_model(model, z[sources], levels[sources][:, None].expand(len(sources), B))
    best = torch.full((T, B) if per_sample else (T,), math.inf, dtype=torch.float64, device=dev)
    src = torch.full((T, B), -1, dtype=torch.long, device=dev)
    if prev is not None:
        best, src = prev[0][lo:hi + 1].clone(), prev[1][lo:hi + 1].clone()
    new_z, new_hist = z[lo:hi + 1].clone(), tuple(h[lo:hi + 1].clone() for h in hist)
    tgt = torch.arange(lo, hi + 1, device=dev)
    chunk = max(1, min(16, max_elems // (T * B * max(1, int(np.prod(teacher.shape[2:]))))))
    cols = torch.arange(B, device=dev)[None, :]
    for c0 in range(0, len(sources), chunk):
        ids = torch.as_tensor(sources[c0:c0 + chunk], device=dev)
        a0 = max(0, int(ids[0]) + 1 - lo)                               # targets this chunk can reach: a0..T-1
        if a0 >= T:
            break
        S, Tc, tg = len(ids), T - a0, tgt[a0:]
        x = z[ids][:, None].expand(S, Tc, *z.shape[1:])
        D = D_all[c0:c0 + S][:, None].expand_as(x)
        h = tuple(t[ids][:, None].expand(S, Tc, *t.shape[1:]) for t in hist)
        s = levels[ids][:, None, None].expand(S, Tc, B)
        valid = (ids[:, None] < tg[None, :])[..., None].expand(S, Tc, B)
        s_next = torch.where(valid, levels[tg][None, :, None].expand(S, Tc, B), s * 0.5)   # dummy jumps masked
        xp, hp = stepper.step(model, x, s, s_next, D, h, k, n)
        e = (xp - teacher[lo + a0:hi + 1][None]).pow(2).mean(dim=tuple(d + 1 for d in ev))  # [S, Tc, B] MSE
        e = torch.where(valid, e, math.inf)
        if per_sample:
            e_min, arg = e.min(dim=0)                                    # first minimum = lowest source
        else:
            e_min, arg = e.mean(dim=2).min(dim=0)                        # OSS-ave: [Tc]
        upd = e_min < best[a0:]
        best[a0:] = torch.where(upd, e_min if prev is None else e_min.float().double(), best[a0:])
        if not per_sample:
            arg, upd = arg[:, None].expand(Tc, B), upd[:, None].expand(Tc, B)
        src[a0:] = torch.where(upd, ids[arg], src[a0:])
        m = upd.reshape(Tc, B, *([1] * len(ev)))
        rows = torch.arange(Tc, device=dev)[:, None]
        new_z[a0:] = torch.where(m, xp[arg, rows, cols], new_z[a0:])
        for a, b in zip(hp, new_hist):
            b[a0:] = torch.where(m, a[arg, rows, cols], b[a0:])
    out_src = torch.full((G, B), -1, dtype=torch.long, device=dev)
    out_src[lo:hi + 1] = src
    out_best = torch.full((G, B), math.inf, dtype=torch.float64, device=dev)
    out_best[lo:hi + 1] = best if per_sample else best[:, None].expand(T, B)
    z, hist = z.clone(), tuple(t.clone() for t in hist)
    z[lo:hi + 1] = new_z
    for t, u in zip(hist, new_hist):
        t[lo:hi + 1] = u
    return out_best, out_src, z, hist


@torch.no_grad()
def replay_row(model, stepper, levels, z, hist, src, k, n):
    """Re-make a row from its recorded sources src [G, B] (-1: not set): each (j, b) jumps from
    (src[j, b], b) to j. Returns the carried z, hist of that row (resuming a stopped search)."""
    G, B = src.shape
    ok = src >= 0
    i = src.clamp(min=0)
    b = torch.arange(B, device=z.device)[None, :].expand(G, B)
    x = z[i, b]
    s = levels[i]
    s_next = torch.where(ok, levels[:, None].expand(G, B), s * 0.5)
    xp, hp = stepper.step(model, x, s, s_next, call_model(model, x, s), tuple(t[i, b] for t in hist), k, n)
    m = ok.reshape(G, B, *([1] * (z.ndim - 2)))
    return torch.where(m, xp, z), tuple(torch.where(m, a, t) for a, t in zip(hp, hist))


@torch.no_grad()
def iter_oss(model, stepper, levels, teacher, jumps: int, per_sample: bool, n_total=None, reference=False,
             resume=None):
    """The OSS DP over `jumps` jumps from levels[0] to levels[-1], a generator of rows.

    Args:
        levels: [G] descending levels; teacher: [G, B, *event] teacher states (teacher[0] = start).
        jumps: number of jumps m on the grid (our schedules: n - 1).
        per_sample: one path per sample (else one shared "OSS-ave" path).
        n_total: the schedule's step count passed to the stepper (default jumps + 1).
        reference: the released code's `search_OSS` rules instead of ours (per sample only): every
            level may be a source in every row, one not yet reached carrying the initial state (so
            the first jump may start at any level with the initial noise), and row k keeps the best
            of at most k + 1 jumps (its table inherits the previous row's costs, float32, and
            sources). Ours: exactly k + 1 jumps from levels[0].
        resume: the "src" of the rows already done (a list of [G, B]); they are replayed, not searched.
    Yields after each row k a dict {"row": k + 1, "rows": m, "src": [G, B] argmin sources (-1 where
    unreached), "mse": [G, B] student error (inf where unreached)}; the last one also has "paths"
    [B, m + 1] (grid indices, 0 first, G - 1 last).
    """
    G, B = teacher.shape[0], teacher.shape[1]
    levels = torch.as_tensor(levels, dtype=torch.float64, device=teacher.device)
    if not 1 <= jumps <= G - 1:
        raise ScheduleLabError(f"{jumps} jumps need at least {jumps + 1} grid levels; got {G}")
    n_total = jumps + 1 if n_total is None else n_total
    z = teacher[:1].expand(G, *teacher.shape[1:]).clone()
    hist = stepper.empty(z)
    if reference and not per_sample:
        raise ScheduleLabError("the reference OSS search is per sample; use per_sample=True with reference=True")
    if resume and reference:
        raise ScheduleLabError("a reference-rules search cannot be resumed; run it again")
    sources, trace = ([0] if not reference else list(range(G - 1))), []
    prev = None
    if reference:
        prev = (torch.full((G, B), math.inf, dtype=torch.float64, device=teacher.device),
                torch.zeros((G, B), dtype=torch.long, device=teacher.device))   # reference tracestep init: noise end
    for k in range(jumps):
        lo, hi = k + 1, G - 1 - (jumps - 1 - k)               # reachable in k + 1 jumps, can still finish
        if k == jumps - 1:
            lo = hi = G - 1
        if reference:
            lo, hi = 1, G - 1
        if resume is not None and k < len(resume):
            src = torch.as_tensor(resume[k], dtype=torch.long, device=teacher.device)
            z, hist = replay_row(model, stepper, levels, z, hist, src, k, n_total)
            trace.append(src)
            sources = list(range(lo, hi + 1))
            continue
        best, src, z, hist = oss_row(model, stepper, levels, teacher, z, hist, sources, lo, hi, k, n_total,
                                     per_sample, prev=prev)
        if reference:
            best[0], src[0] = prev[0][0], prev[1][0]
            prev = (best, src)
        trace.append(src)
        if not reference:
            sources = list(range(lo, hi + 1))
        ev = tuple(range(2, teacher.ndim))
        mse = torch.where(torch.isfinite(best), (z - teacher).pow(2).mean(dim=ev), math.inf)
        out = {"row": k + 1, "rows": jumps, "src": src, "mse": mse}
        if k == jumps - 1:
            path = [torch.full((B,), G - 1, dtype=torch.long, device=teacher.device)]
            for kk in range(jumps - 1, -1, -1):
                path.append(trace[kk][path[-1], torch.arange(B, device=teacher.device)])
            out["paths"] = torch.stack(path[::-1], dim=1)
        yield out


def oss_search(model, stepper, levels, teacher, jumps: int, per_sample: bool, n_total=None):
    """iter_oss to the end -> (paths [B, m + 1], final MSE [B] at levels[-1])."""
    for out in iter_oss(model, stepper, levels, teacher, jumps, per_sample, n_total):
        pass
    return out["paths"], out["mse"][-1]


def median_path(paths, G: int) -> list:
    """Position-wise median of per-sample paths as the reference's `cal_medium`: in its indices
    r = G - 1 - i (0 = the clean end), sorted r, (r[B//2] + r[B//2 - 1]) // 2 (B = 1: the path)."""
    R = np.sort((G - 1) - np.asarray(paths, dtype=np.int64), axis=0)
    B = R.shape[0]
    med = R[0] if B == 1 else (R[B // 2] + R[B // 2 - 1]) // 2
    return ((G - 1) - med).tolist()


class OSSOptimizer(Optimizer):
    """OSS as an Optimizer: one event for the teacher, one per DP row (student step), then the schedule.

    Args:
        model: any Denoiser.
        steps: n (schedule levels before the final 0; NFE n, Heun 2n - 1).
        solver: euler | heun | dpmpp_2m | ipndm | dpmpp_3m (the student; multistep history in the state).
        sigma_min, sigma_max: path endpoints (default: the model's).
        n_samples: noises (the reference searches a batch; OSS-ave averages the error over it).
        teacher_steps: N, teacher steps on the grid (reference 200); the grid has N + 1 levels.
        per_sample: per-sample paths and their median (reference `search_OSS` + `cal_medium`),
            else OSS-ave.
        teacher: teacher solver (default: the student's, as the reference).
        rho: grid exponent (EDM polynomial grid).
        seed: noise seed (core.sampling.initial_noise).
    State: the argmin sources of the DP rows done (a resumed run recomputes the teacher and replays
    those rows with one model call per (level, sample), then searches on).
    """

    method = "oss"

    def __init__(self, model, steps: int, solver: str = "dpmpp_2m", *, sigma_min=None, sigma_max=None,
                 n_samples: int = 64, teacher_steps: int = 200, per_sample: bool = False, teacher=None,
                 rho: float = 7.0, seed: int = 0):
        if isinstance(teacher_steps, bool) or not isinstance(teacher_steps, (int, np.integer)) or teacher_steps < 2:
            raise ScheduleLabError(f"teacher_steps must be an integer >= 2 (reference 200); got {teacher_steps!r}")
        self.stepper, self.sigma_min, self.sigma_max = check_common(model, steps, solver, sigma_min, sigma_max,
                                                                    n_samples, teacher_steps + 1, "teacher levels")
        self.teacher_stepper = self.stepper if teacher is None else check_common(
            model, steps, teacher, sigma_min, sigma_max, n_samples, teacher_steps + 1)[0]
        self.model, self.steps, self.n_samples = model, int(steps), int(n_samples)
        self.teacher_steps, self.per_sample, self.rho, self.seed = int(teacher_steps), bool(per_sample), float(rho), int(seed)
        self.grid = polynomial_grid(self.teacher_steps + 1, self.sigma_min, self.sigma_max, self.rho)
        self.path, self.paths, self.final_error, self.trace = None, None, None, []
        self.iteration, self.seconds = 0, 0.0
        self._placeholder = make_schedule("karras", self.steps, self.sigma_min, self.sigma_max)

    def _config(self) -> dict:
        return {"steps": self.steps, "solver": self.stepper.name, "sigma_min": self.sigma_min,
                "sigma_max": self.sigma_max, "n_samples": self.n_samples, "teacher_steps": self.teacher_steps,
                "per_sample": self.per_sample, "teacher": self.teacher_stepper.name, "rho": self.rho,
                "seed": self.seed, "model": getattr(self.model, "name", "model")}

    def events(self):
        if self.path is not None:
            return
        t0 = time.perf_counter()
        x = initial_noise(self.model, self.n_samples, self.sigma_max, self.seed, dtype=torch.float64)
        teacher, _ = teacher_trajectory(self.model, self.teacher_stepper, self.grid, x)
        self.iteration += 1
        yield ProgressEvent(self.method, self.iteration, self._placeholder, math.nan,
                            message=f"teacher: {self.teacher_steps} {self.teacher_stepper.name} steps, "
                                    f"{self.n_samples} samples", extra={"row": 0, "rows": self.steps - 1})
        self.trace = self.trace[:self.steps - 2]                  # the last row is always searched
        for out in iter_oss(self.model, self.stepper, self.grid, teacher, self.steps - 1, self.per_sample,
                            n_total=self.steps, resume=list(self.trace)):
            self.trace.append(out["src"].cpu().tolist())
            if "paths" in out:
                break
            self.iteration += 1
            yield ProgressEvent(self.method, self.iteration, self._placeholder, math.nan, stage=out["row"],
                                message=f"DP row {out['row']}/{out['rows']}", extra={"row": out["row"], "rows": out["rows"]})
        paths, err = out["paths"], out["mse"][-1]
        if bool((paths < 0).any()) or not bool(torch.isfinite(err).all()):
            raise ScheduleLabError("the OSS search found no finite-error path (the model returned NaN or inf on "
                                   "a student state); check the model and its sigma range")
        self.paths = paths.cpu().tolist()
        self.path = median_path(self.paths, len(self.grid)) if self.per_sample else self.paths[0]
        self.final_error = float(err.mean())
        self.iteration += 1
        self.seconds += time.perf_counter() - t0
        yield ProgressEvent(self.method, self.iteration, self.result(), self.final_error, done=True,
                            stage=self.steps - 1,
                            message=f"OSS{'' if self.per_sample else '-ave'}: {self.steps} levels on a "
                                    f"{self.teacher_steps + 1}-level grid, teacher MSE at sigma_min "
                                    f"{self.final_error:.4g} ({self.seconds:.2f} s)", extra=self.info())

    def result(self) -> Schedule:
        if self.path is None:
            raise ScheduleLabError("OSS has not finished its DP; iterate events() to the end first")
        return schedule_from_path(self.grid, self.path, "oss", self.stepper.name,
                                  {**self._config(), "grid_indices": list(self.path)})

    def info(self) -> dict:
        return {"grid_indices": list(self.path or []), "per_sample_indices": self.paths if self.per_sample else None,
                "final_mse": self.final_error, "seconds": self.seconds, **self._config()}

    def state_dict(self) -> dict:
        return {"method": self.method, "config": self._config(), "iteration": self.iteration,
                "path": self.path, "paths": self.paths, "final_error": self.final_error, "trace": self.trace}

    def load_state_dict(self, state: dict) -> None:
        if state.get("method") != self.method or state.get("config") != self._config():
            raise ScheduleLabError("this state belongs to a different OSS run (steps, solver, range, samples, "
                                   "teacher, mode, seed or model differ); start afresh")
        self.path, self.paths = state.get("path"), state.get("paths")
        self.final_error, self.iteration = state.get("final_error"), int(state["iteration"])
        self.trace = list(state.get("trace") or [])


def optimize_oss(model, steps, solver="dpmpp_2m", *, sigma_min=None, sigma_max=None, n_samples=64,
                 teacher_steps=200, per_sample=False, seed=0, progress=None, **kw) -> Schedule:
    """OSS schedule "oss" for `solver` (see OSSOptimizer; kw: teacher, rho).
    progress: optional callable(ProgressEvent) after each event."""
    opt = OSSOptimizer(model, steps, solver, sigma_min=sigma_min, sigma_max=sigma_max, n_samples=n_samples,
                       teacher_steps=teacher_steps, per_sample=per_sample, seed=seed, **kw)
    for ev in opt.events():
        if progress is not None:
            progress(ev)
    return opt.result()
