"""DM-NonUniform: optimized time steps for the `dpmpp_3m_lagrange` solver (Xue et al. 2024, arXiv 2402.17376,
Sec. 5; methods.md s.5).

Minimise the data-free bound B(lambda_1 .. lambda_{n-2}) of `core.objectives.truncation` over the
interior half-log-SNRs, with lambda_0 = -log sigma_max and lambda_{n-1} = -log sigma_min fixed,
under the paper's linear ordering constraints with a small margin

    lambda_{i+1} - lambda_i >= min_gap,   i = 0 .. n-2,

by `scipy.optimize.minimize(method="trust-constr")` with the exact gradient and Hessian (closed
form, float64: `core.objectives.truncation.BoundNP`, checked against torch autograd of the torch
bound in the tests; BFGS Hessians in epigraph form), from several starts (uniform lambda, uniform in the
process's time t, EDM rho = 7); the lowest converged bound wins.  Where the bound has kinks
(|c_j| at signed nodes, NFE <= 7 under the reference rule) B itself is minimised first and the
run moves to the exact epigraph form when its iterates oscillate about a kink (see `solve_from`,
form="auto").  Convergence (KKT: stationarity, feasibility, complementarity) is reported per
start (`status`, `message`, `optimality`, `constr_violation`) and a run in which no start
converged raises ScheduleLabError unless strict=False (then it is returned flagged).

Each run sees the objective divided by its value at its own start (so tolerances mean the same
for every sigma range and p; a shared scale made far starts fail in the epigraph form).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from core.errors import ScheduleLabError, unknown_name
from core.objectives.truncation import CONVENTIONS, SOLVER, _check_noise, _check_p, noise_family, quadrature_steps
from core.optimizers.base import Optimizer, ProgressEvent
from core.optimizers.nonuniform_solve import (KINK_TOL, StartResult, ordering_constraint,  # noqa: F401
                                              solve_from)
from core.schedules import Schedule

STARTS = ("uniform_lambda", "uniform_t", "edm")


def resolve_range(process="edm", sigma_min=None, sigma_max=None):
    """(process object, sigma_min, sigma_max): the process's own range unless given."""
    from core.models.wrap import make_process
    proc = make_process(process) if isinstance(process, (str, dict)) else process
    if not all(hasattr(proc, a) for a in ("sigma", "t", "sigma_min", "sigma_max")):
        raise ScheduleLabError("process must be a name (edm, vp-linear, vp-cosine, flow, discrete), a dict "
                               "such as {'kind': 'discrete', 'beta_schedule': 'linear'}, or an object with "
                               "sigma(t), t(sigma), sigma_min and sigma_max")
    smin = float(proc.sigma_min if sigma_min is None else sigma_min)
    smax = float(proc.sigma_max if sigma_max is None else sigma_max)
    if not (math.isfinite(smin) and math.isfinite(smax) and 0 < smin < smax):
        raise ScheduleLabError(f"need 0 < sigma_min < sigma_max; got sigma_min={smin}, sigma_max={smax}")
    return proc, smin, smax


def model_process(model):
    """(process, sigma_min, sigma_max) of a loaded model (core.models): a wrapped network's own noise
    process (a discrete table of any length, continuous VP, EDM or flow; `core.models.wrap`) and its
    sigma range; a model without one (an EDM network such as digits) is an EDM process over its range."""
    from core.processes import EDMProcess
    smin, smax = float(model.sigma_min), float(model.sigma_max)
    proc = getattr(model, "process", None)
    if proc is None and hasattr(model, "base"):                  # a GuidedDenoiser: its base model's process
        proc = getattr(model.base, "process", None)
    if proc is None or not all(hasattr(proc, a) for a in ("sigma", "t", "sigma_min", "sigma_max")):
        proc = EDMProcess(smin, smax)
    return proc, smin, smax


def start_levels(start: str, steps: int, sigma_min: float, sigma_max: float, process="edm") -> np.ndarray:
    """Initial levels lambda_0 .. lambda_{n-1} (n = steps) for one start.

    uniform_lambda: uniform in lambda = -log sigma.  uniform_t: uniform in the process's time t
    (EDM: t = sigma; VP: the VP time; flow: t = sigma / (1 + sigma)).  edm: Karras rho = 7."""
    proc, smin, smax = resolve_range(process, sigma_min, sigma_max)
    r = np.linspace(0.0, 1.0, steps)
    if start == "uniform_lambda":
        sig = np.exp(np.log(smax) + r * (np.log(smin) - np.log(smax)))
    elif start == "uniform_t":
        t0, t1 = float(proc.t(smax)), float(proc.t(smin))
        sig = np.asarray(proc.sigma(t0 + r * (t1 - t0)), dtype=np.float64)
    elif start == "edm":
        a, b = smax ** (1 / 7), smin ** (1 / 7)
        sig = (a + r * (b - a)) ** 7
    else:
        raise unknown_name("DM-NonUniform start", start, STARTS)
    sig[0], sig[-1] = smax, smin
    lam = -np.log(sig)
    if not np.all(np.diff(lam) > 0):
        raise ScheduleLabError(f"start {start!r} is not strictly decreasing in sigma for this process "
                               f"and range ({smin:g} .. {smax:g}); drop it from starts")
    return lam



def _schedule(lam: np.ndarray, sigma_max: float, sigma_min: float, **params) -> Schedule:
    """Levels exp(-lam) with the fixed endpoints exact (no exp(log(.)) round-off), then 0."""
    sig = np.exp(-np.asarray(lam, dtype=np.float64))
    sig[0], sig[-1] = sigma_max, sigma_min
    return Schedule(tuple(sig.tolist()) + (0.0,), name="nonuniform", params=params, solver=SOLVER)


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
        raise ScheduleLabError(f"DM-NonUniform needs an integer steps >= 2 (sigma_max, sigma_min, 0; "
                               f"n - 2 levels are optimized, N - 1 with convention 'paper'); got {steps!r}")
    if steps > 200:
        raise ScheduleLabError(f"steps = {steps} is more than DM-NonUniform is meant for (<= 200); "
                               "it optimizes few-step schedules")
    return int(steps)


class NonUniformOptimizer(Optimizer):
    """DM-NonUniform as an Optimizer: one trust-constr run per start, best converged kept.

    Args:
        steps: n (= NFE of dpmpp_3m_lagrange); n - 2 interior levels are optimized (convention "ours"), or the
            paper's N: N model calls over N multistep intervals ending at sigma_min, N - 1 free levels,
            the result written as the N + 1 levels followed by 0 (convention "paper").
        sigma_min, sigma_max: fixed endpoints (default: the process's range).
        p: error-model exponent (1 pixel, 2 latent).
        process: "edm" | "vp-linear" | "vp-cosine" | "flow" | "discrete" (DDPM linear betas), a
            dict for core.models.wrap.make_process, or a process object: it fixes the uniform-t
            start, the default range and the error model's alpha_t / sigma_t (`noise`); for a loaded
            model use `model_process(model)`.
        convention: "ours" | "paper" (core.objectives.truncation.step_plan).
        noise: "vp" | "ve" | "flow": the error model's process family (default: the process's own).
        starts: subset of STARTS.
        quadrature: see core.objectives.truncation.quadrature_steps ("auto").
        strict: result() raises ScheduleLabError when no start converged (else returns it flagged).
        gtol, kkt_tol, maxiter: trust-constr termination and the acceptance test (see solve_from).
    Events: one per trust-constr iteration (iteration, schedule, bound), one per finished start
    (extra: converged, status, message, optimality, constr_violation), a last one with done=True.
    State: the finished starts (a run resumes with the next start).
    """

    method = "nonuniform"

    def __init__(self, steps: int, sigma_min: float | None = None, sigma_max: float | None = None,
                 p: float = 1.0, process="edm", starts=STARTS, quadrature="auto", strict: bool = True,
                 gtol: float = 1e-8, kkt_tol: float = 1e-5, maxiter: int = 1000, convention: str = "ours",
                 noise: str | None = None):
        self.steps = _check_steps(steps)
        _check_p(p)
        if convention not in CONVENTIONS:
            raise unknown_name("DM-NonUniform convention", convention, CONVENTIONS)
        self.proc, self.sigma_min, self.sigma_max = resolve_range(process, sigma_min, sigma_max)
        self.process = getattr(self.proc, "name", type(self.proc).__name__)
        self.noise = noise_family(self.proc) if noise is None else noise
        _check_noise(self.noise)
        self.convention = convention
        if convention != "paper" and self.steps < 3:
            raise ScheduleLabError(f"DM-NonUniform with convention 'ours' needs steps >= 3 (n - 2 interior levels "
                                   f"are optimized; {self.steps} steps leave none): use steps >= 3, or "
                                   "convention 'paper' (N - 1 levels)")
        self.levels = self.steps + 1 if convention == "paper" else self.steps
        starts = (starts,) if isinstance(starts, str) else tuple(starts)
        if not starts:
            raise ScheduleLabError(f"give at least one start from {', '.join(STARTS)}")
        for st in starts:
            if st not in STARTS:
                raise unknown_name("DM-NonUniform start", st, STARTS)
        quadrature_steps(self.steps, quadrature)
        self.p, self.starts, self.quadrature, self.strict = float(p), starts, quadrature, strict
        self.gtol, self.kkt_tol, self.maxiter = gtol, kkt_tol, maxiter
        self.done: list[StartResult] = []
        self.iteration = 0
        self._iteration_done = 0      # iteration count when the last start finished (what a resume restarts from)

    def _config(self) -> dict:
        return {"steps": self.steps, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "p": self.p,
                "process": self.process, "starts": list(self.starts), "quadrature": self.quadrature,
                "convention": self.convention, "noise": self.noise}

    def events(self):
        finished = {r.start for r in self.done}
        for st in self.starts:
            if st in finished:
                continue
            lam0 = start_levels(st, self.levels, self.sigma_min, self.sigma_max, self.proc)
            r = solve_from(lam0, self.p, self.quadrature, start=st, gtol=self.gtol, kkt_tol=self.kkt_tol,
                           maxiter=self.maxiter, record=True, noise=self.noise, convention=self.convention)
            for it, lam, b in r.iterates:
                if not np.all(np.diff(lam) > 0):       # interior-point iterates may leave the ordering
                    continue
                self.iteration += 1
                yield ProgressEvent(self.method, self.iteration, self._sched(lam), b,
                                    message=f"start {st}: trust-constr iteration {it}",
                                    extra={"start": st})
            r.iterates = []
            self.done.append(r)
            self.iteration += 1
            self._iteration_done = self.iteration
            flag = "converged" if r.converged else "NOT converged"
            yield ProgressEvent(self.method, self.iteration, self._sched(r.lam), r.objective,
                                message=f"start {st}: {flag} after {r.nit} iterations ({r.message})",
                                extra=r.to_dict())
        best = self._best()
        self.iteration += 1
        msg = (f"best start {best.start}: bound {best.objective:.6g}" if best.converged else
               f"NOT converged from any start; best bound {best.objective:.6g} ({best.message})")
        yield ProgressEvent(self.method, self.iteration, self.result(check=False), best.objective, done=True,
                            message=msg, extra=self.info())

    def _best(self) -> StartResult:
        if not self.done:
            raise ScheduleLabError("DM-NonUniform has not run yet; iterate events() first")
        pool = [r for r in self.done if r.converged] or self.done
        return min(pool, key=lambda r: r.objective)

    @property
    def converged(self) -> bool:
        """Whether the best start converged (False before any start has run)."""
        return bool(self.done) and self._best().converged

    @property
    def status(self) -> int | None:
        """trust-constr status of the best start (1 gtol, 2 xtol, 0 maxiter), None before a run."""
        return self._best().status if self.done else None

    @property
    def message(self) -> str:
        return self._best().message if self.done else "not run"

    def info(self) -> dict:
        """Convergence report: objective, converged, status, message, optimality, constr_violation,
        best_start, runs (one dict per start) and the settings."""
        best = self._best()
        return {"objective": best.objective, "converged": best.converged, "status": best.status,
                "message": best.message, "optimality": best.optimality,
                "constr_violation": best.constr_violation, "best_start": best.start,
                "runs": [r.to_dict() for r in self.done], "solver": SOLVER,
                "seconds": sum(r.seconds for r in self.done), **self._config()}

    def result(self, check: bool = True) -> Schedule:
        best = self._best()
        if check and not best.converged:
            msg = (f"DM-NonUniform did not converge from any start ({'; '.join(f'{r.start}: {r.message}' for r in self.done)}); "
                   "try quadrature='all', more maxiter, or another sigma range")
            if self.strict:
                raise ScheduleLabError(msg)
            warnings.warn(msg)
        return self._sched(best.lam, p=self.p, process=self.process, quadrature=self.quadrature,
                           objective=best.objective, converged=best.converged, start=best.start,
                           convention=self.convention, noise=self.noise, nfe=self.steps)

    def _sched(self, lam, **params) -> Schedule:
        return _schedule(lam, self.sigma_max, self.sigma_min, **params)

    def state_dict(self) -> dict:
        # an unfinished start is rerun from its beginning on resume, so its iterations are not counted
        return {"method": self.method, "config": self._config(), "iteration": self._iteration_done,
                "done": [r.to_dict() for r in self.done]}

    def load_state_dict(self, state: dict) -> None:
        from core import readers as rd
        if not isinstance(state, dict) or state.get("method") != self.method or state.get("config") != self._config():
            raise ScheduleLabError("this state belongs to a different DM-NonUniform run (steps, range, p, "
                                   "process, starts or quadrature differ); start afresh")
        it = rd.integer(state.get("iteration"), "DM-NonUniform state 'iteration'", 0)
        if not isinstance(state.get("done"), list):
            raise ScheduleLabError("DM-NonUniform state 'done' must be a list of finished starts; start afresh")
        try:
            done = [StartResult.from_dict(rd.mapping(d, "DM-NonUniform state 'done' entry")) for d in state["done"]]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ScheduleLabError(f"DM-NonUniform state 'done' is malformed ({type(e).__name__}: {e}); "
                                   "start afresh") from None
        self.iteration = self._iteration_done = it
        self.done = done


def optimize_nonuniform(steps: int, sigma_min: float | None = None, sigma_max: float | None = None,
                        p: float = 1.0, process="edm", starts=STARTS, quadrature="auto",
                        strict: bool = True, **kw):
    """DM-NonUniform schedule for dpmpp_3m_lagrange: returns (Schedule with solver="dpmpp_3m_lagrange", info dict).

    See NonUniformOptimizer for the arguments and `info()` for the report.  Raises
    ScheduleLabError when no start converged (strict=True); with strict=False the result comes
    back with info["converged"] = False and a warning."""
    opt = NonUniformOptimizer(steps, sigma_min, sigma_max, p=p, process=process, starts=starts,
                              quadrature=quadrature, strict=strict, **kw)
    for _ in opt.events():
        pass
    return opt.result(), opt.info()
