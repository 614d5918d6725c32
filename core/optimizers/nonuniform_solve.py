"""DM-NonUniform's trust-constr runs (Xue et al. 2024, Sec. 5; methods.md s.5): one run from one start
over the interior half-log-SNRs, exact gradient and Hessian from `core.objectives.truncation.BoundNP`,
the ordering constraints, the kink handling (form="auto" | "epigraph" | "plain") and the
convergence test.  `core.optimizers.nonuniform` runs it from several starts and keeps the best.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import BFGS, LinearConstraint, NonlinearConstraint, minimize

from core.errors import ScheduleLabError
from core.objectives.truncation import BoundNP, _check_p, bound_np, signed_nodes

KINK_TOL = 1e-6         # form='auto' keeps B's own solution only if every signed |c_j| > KINK_TOL * B

@dataclass
class StartResult:
    """One start's optimization (one trust-constr run, or two with form="auto": B itself, then the
    epigraph form; nit / nfev count both).  converged = KKT optimality <= kkt_tol, constraints satisfied and the
    barrier parameter <= kkt_tol (whatever stopped the run: status 1 = gtol, 2 = xtol, 0 = maxiter)."""

    start: str
    lam: np.ndarray                 # [n] levels lambda_0 .. lambda_{n-1}
    objective: float                # B at the result (final-sample error units)
    start_objective: float          # B at the start
    converged: bool
    status: int
    message: str
    nit: int
    nfev: int
    optimality: float               # inf-norm of the Lagrangian gradient (KKT), scaled objective
    constr_violation: float
    seconds: float
    iterates: list = field(default_factory=list)   # [(iteration, lam [n], objective)]

    def to_dict(self) -> dict:
        return {"start": self.start, "sigmas": np.exp(-self.lam).tolist(), "objective": self.objective,
                "start_objective": self.start_objective, "converged": self.converged,
                "status": self.status, "message": self.message, "nit": self.nit, "nfev": self.nfev,
                "optimality": self.optimality, "constr_violation": self.constr_violation,
                "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict) -> "StartResult":
        return cls(d["start"], -np.log(np.asarray(d["sigmas"], dtype=np.float64)), d["objective"],
                   d["start_objective"], d["converged"], d["status"], d["message"], d["nit"], d["nfev"],
                   d["optimality"], d["constr_violation"], d["seconds"])



def ordering_constraint(lam0: float, lam_end: float, m: int, min_gap: float) -> LinearConstraint:
    """lambda_0 + g <= x_1,  x_i + g <= x_{i+1},  x_m + g <= lambda_end  as A x >= lb (m + 1 rows)."""
    A = np.zeros((m + 1, m))
    lb = np.full(m + 1, min_gap)
    A[0, 0], lb[0] = 1.0, lam0 + min_gap
    for i in range(1, m):
        A[i, i], A[i, i - 1] = 1.0, -1.0
    A[m, m - 1], lb[m] = -1.0, min_gap - lam_end
    return LinearConstraint(A, lb, np.full(m + 1, np.inf))


class _Evaluator:
    """B split for trust-constr from the closed-form numpy bound (`BoundNP`), evaluated once per
    point x (interior lambdas) and cached.

    smooth(x) = (sum(q) + sum_{j not signed} |c_j|) / scale, its gradient and Hessian; c_S(x) / scale
    for the signed nodes S, its Jacobian [|S|, m] and the multiplier-weighted constraint Hessian.
    order: 0 values only (finite-difference runs), 1 + gradients, 2 + Hessians."""

    def __init__(self, lam0, lam_end, p, quadrature, scale, signed, order, noise="vp", convention="ours"):
        self.lo, self.hi = float(lam0), float(lam_end)
        self.p, self.quadrature, self.scale, self.order = p, quadrature, scale, order
        self.setting = {"noise": noise, "convention": convention}
        self.S = np.asarray(signed, dtype=np.int64)
        self.b = None
        self._key = None

    def at(self, x) -> "BoundNP":
        key = x.tobytes()
        if key != self._key:
            b = BoundNP(np.r_[self.lo, x, self.hi], self.p, self.quadrature, self.order, **self.setting)
            rest = np.sign(b.c)
            rest[self.S] = 0.0
            self.rest, self.b, self._key = rest, b, key
            self.f = (b.q.sum() + np.abs(b.c) @ np.abs(self.rest)) / self.scale
        return self.b

    def value(self, x) -> float:
        self.at(x)
        return self.f

    def smooth(self, x):
        b = self.at(x)
        return self.f, b.gradient(self.rest)[1:-1] / self.scale

    def smooth_hess(self, x):
        return self.at(x).hessian(self.rest)[1:-1, 1:-1] / self.scale

    def signed_values(self, x):
        return self.at(x).c[self.S] / self.scale

    def signed_jac(self, x):
        return self.at(x).Jc[self.S, 1:-1] / self.scale

    def signed_hess(self, x, v):
        """sum_i v_i Hess(c_{S_i}) / scale (interior block)."""
        wts = np.zeros(self.at(x).n)
        wts[self.S] = v
        return self.b.hessian(wts, with_q=False)[1:-1, 1:-1] / self.scale


def solve_from(lam_start: np.ndarray, p: float = 1.0, quadrature="auto", *, start: str = "custom",
               scale: float | None = None, gradient: str = "exact", hessian: str = "auto",
               form: str = "auto", gtol: float = 1e-8, kkt_tol: float = 1e-5, maxiter: int = 1000,
               min_gap: float | None = None, barrier: float = 1e-8, barrier_tol0: float = 1e-8,
               xtol: float = 1e-12, record: bool = False, noise: str = "vp",
               convention: str = "ours") -> StartResult:
    """One trust-constr run from `lam_start` ([n] increasing); endpoints stay fixed.

    gradient="exact": closed-form gradients (`core.objectives.truncation.BoundNP`, float64, checked
        against torch autograd in the tests); hessian="exact" adds the closed-form Hessian (of the
        objective and, in epigraph form, of the constraints), hessian="bfgs" SciPy's BFGS update;
        "auto" = exact, except BFGS in epigraph form (measured: with the exact Lagrangian Hessian
        the epigraph runs from the uniform-t start take 300-1000 iterations at N = 5..7, with BFGS
        20-70).
    gradient="2-point": SciPy finite differences of the same functions (objective and epigraph
        constraints), BFGS Hessians (SciPy allows no Hessian from finite-difference gradients).
    form="epigraph": the kinks of |c_j| at signed nodes (see `signed_nodes`; none for
        quadrature="all") are handled exactly by  min sum(q) + sum_j t_j  s.t.  t_j >= c_j, t_j >= -c_j
        (a NonlinearConstraint), which has the same minimisers as B and meaningful KKT conditions.
    form="plain": minimise B itself (the reference code's formulation; kinks left to the optimizer).
    form="auto" (default): B is differentiable wherever every signed c_j != 0, so first minimise B
        itself; the run is kept if it converged with every |c_j| > KINK_TOL * B (then its KKT test
        is B's own), and is abandoned for the epigraph form (from the same start) as soon as a
        signed c_j has changed sign twice (iterates oscillating about a kink; measured: never at
        N = 5, 6, from the first iterations at N = 7, on EDM, VP linear / cosine and flow).
    scale: objective normaliser (default: B at the start).  min_gap: ordering margin in lambda
    (default 1e-3 of the mean step).  barrier, barrier_tol0: trust-constr's initial barrier
    parameter and barrier-subproblem tolerance: small, because the ordering margin is never active
    at a solution, so the barrier only has to keep iterates ordered; SciPy's default decreasing
    sequence (0.1, 0.02, ...) only costs iterations (and, in epigraph form, stops early: below).
    xtol: trust-radius termination (tiny: gtol decides).  record: keep every iterate (progress
    events).  noise, convention: the error model's process family and the step convention
    (`core.objectives.truncation.error_model`, `step_plan`).  The reference code's call is gradient="2-point", form="plain", barrier=0.1,
    barrier_tol0=0.1, xtol=1e-8, min_gap=0 (SciPy's defaults).
    converged = KKT optimality <= kkt_tol (scaled objective), constraint violation <= 1e-8 and
    complementarity: the barrier parameter at exit <= kkt_tol (trust-constr's `optimality` is the
    barrier problem's Lagrangian gradient: with SciPy's default barrier 0.1 it reports gtol while
    the epigraph slacks t_j - |c_j| are still O(barrier), measured at N = 7: bound 0.26787 vs 0.267777).
    """
    _check_p(p)
    lam_start = np.asarray(lam_start, dtype=np.float64)
    if lam_start.ndim != 1 or lam_start.size < 2 or not np.all(np.isfinite(lam_start)):
        raise ScheduleLabError("lam_start must be a 1-d array of >= 2 finite half-log-SNRs")
    if gradient not in ("exact", "2-point"):
        raise ScheduleLabError(f"gradient must be 'exact' or '2-point'; got {gradient!r}")
    if hessian not in ("auto", "exact", "bfgs"):
        raise ScheduleLabError(f"hessian must be 'auto', 'exact' or 'bfgs'; got {hessian!r}")
    if form not in ("auto", "epigraph", "plain"):
        raise ScheduleLabError(f"form must be 'auto', 'epigraph' or 'plain'; got {form!r}")
    n = lam_start.shape[0]
    l0, l1 = float(lam_start[0]), float(lam_start[-1])
    gap = 1e-3 * (l1 - l0) / (n - 1) if min_gap is None else float(min_gap)
    if not np.all(np.diff(lam_start) > max(gap, 0.0)):
        raise ScheduleLabError(f"start {start!r} violates the ordering margin {gap:g} in lambda")
    setting = {"noise": noise, "convention": convention}
    b_start = bound_np(lam_start, p, quadrature, **setting)
    scale = b_start if scale is None else float(scale)
    if n <= 2:
        return StartResult(start, lam_start, b_start, b_start, True, 1,
                           "no interior level to optimize (steps <= 2)", 0, 1, 0.0, 0.0, 0.0)
    signed = signed_nodes(n, quadrature, convention)
    kw = dict(p=p, quadrature=quadrature, setting=setting, scale=scale, gradient=gradient, hessian=hessian, gtol=gtol,
              maxiter=maxiter, gap=gap, barrier=barrier, barrier_tol0=barrier_tol0, xtol=xtol)
    t0 = time.perf_counter()
    iterates, note, nit0, nfev0 = [], "", 0, 0
    if form == "auto" and signed:
        r, its, kink = _trust_constr(lam_start, (), watch=signed, **kw)
        lam = np.r_[l0, r.x, l1]
        c = BoundNP(lam, p, quadrature, **setting).c[list(signed)]
        b = bound_np(lam, p, quadrature, **setting)
        if kink is None and _ok(r, b, kkt_tol) and np.abs(c).min() > KINK_TOL * b:
            return StartResult(start, lam, b, b_start, True, int(r.status), str(r.message), int(r.nit),
                               int(r.nfev), float(r.optimality), float(r.constr_violation),
                               time.perf_counter() - t0, its if record else [])
        iterates, nit0, nfev0 = (its if record else []), int(r.nit), int(r.nfev)
        note = (f"B itself: node {kink} crossed its kink twice after {r.nit} iterations; epigraph form: "
                if kink is not None else f"B itself: not accepted ({r.message}); epigraph form: ")
    r, its, _ = _trust_constr(lam_start, signed if form != "plain" else (), watch=(), **kw)
    lam = np.r_[l0, r.x[:n - 2], l1]
    b = bound_np(lam, p, quadrature, **setting)
    iterates += [(nit0 + i, x, v) for i, x, v in its] if record else []
    return StartResult(start, lam, b, b_start, _ok(r, b, kkt_tol), int(r.status), note + str(r.message),
                       nit0 + int(r.nit), nfev0 + int(r.nfev), float(r.optimality), float(r.constr_violation),
                       time.perf_counter() - t0, iterates)


def _ok(r, b, kkt_tol) -> bool:
    mu = float(getattr(r, "barrier_parameter", 0.0))
    return (float(r.optimality) <= kkt_tol and float(r.constr_violation) <= 1e-8 and mu <= kkt_tol
            and math.isfinite(b))


class _KinkStop(Exception):
    pass


def _trust_constr(lam_start, signed, *, watch, p, quadrature, setting, scale, gradient, hessian, gtol, maxiter, gap,
                  barrier, barrier_tol0, xtol):
    """One trust-constr run; epigraph form when `signed` is non-empty, B itself otherwise.
    watch: signed nodes whose c_j sign changes are counted; the run stops (kink != None) at the
    second change of one node.  Returns (OptimizeResult, iterates [(nit, lam, B)], kink node)."""
    n = lam_start.shape[0]
    m = n - 2
    l0, l1 = float(lam_start[0]), float(lam_start[-1])
    ns = len(signed)
    fd = gradient == "2-point"
    if hessian == "auto":
        hessian = "bfgs" if ns else "exact"
    exact_h = not fd and hessian == "exact"
    ev = _Evaluator(l0, l1, p, quadrature, scale, signed, 0 if fd else 2 if exact_h else 1, **setting)
    order = ordering_constraint(l0, l1, m, gap)
    iterates = []
    W = list(watch)
    state = {"sign": None, "flips": np.zeros(len(W), dtype=int), "kink": None}

    def callback(intermediate_result):
        x = intermediate_result.x[:m]
        b = ev.at(x) if not fd else BoundNP(np.r_[l0, x, l1], p, quadrature, **setting)
        iterates.append((int(intermediate_result.nit), np.r_[l0, x, l1], b.value))
        if W:
            sg = np.sign(b.c[W])
            if state["sign"] is not None:
                state["flips"] += sg != state["sign"]
                if state["flips"].max() >= 2:
                    state["kink"] = W[int(state["flips"].argmax())]
                    raise StopIteration
            state["sign"] = sg

    opts = {"gtol": gtol, "xtol": xtol, "maxiter": maxiter, "initial_barrier_parameter": barrier,
            "initial_barrier_tolerance": barrier_tol0}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="delta_grad == 0.0")
        if ns == 0:
            fun, jac = (ev.value, "2-point") if fd else (ev.smooth, True)
            hess = ev.smooth_hess if exact_h else BFGS()
            r = minimize(fun, lam_start[1:-1].copy(), jac=jac, hess=hess, method="trust-constr",
                         constraints=[order], options=opts, callback=callback)
        else:
            def fun(z):
                return ev.value(z[:m]) + z[m:].sum()

            def fun_grad(z):
                f, g = ev.smooth(z[:m])
                return f + z[m:].sum(), np.r_[g, np.ones(ns)]

            def fun_hess(z):
                H = np.zeros((m + ns, m + ns))
                H[:m, :m] = ev.smooth_hess(z[:m])
                return H

            def con(z):
                c = ev.signed_values(z[:m])
                return np.r_[z[m:] - c, z[m:] + c]

            def con_jac(z):
                J = ev.signed_jac(z[:m])
                eye = np.eye(ns)
                return np.block([[-J, eye], [J, eye]])

            def con_hess(z, v):
                H = np.zeros((m + ns, m + ns))
                H[:m, :m] = ev.signed_hess(z[:m], v[ns:] - v[:ns])
                return H

            c0 = ev.signed_values(lam_start[1:-1].copy())
            z0 = np.r_[lam_start[1:-1], np.abs(c0) * 1.01 + 1e-6]
            if fd:
                epi = NonlinearConstraint(con, 0.0, np.inf, jac="2-point", hess=BFGS())
            else:
                epi = NonlinearConstraint(con, 0.0, np.inf, jac=con_jac, hess=con_hess if exact_h else BFGS())
            lin = LinearConstraint(np.c_[order.A, np.zeros((m + 1, ns))], order.lb, order.ub)
            r = minimize(fun if fd else fun_grad, z0, jac="2-point" if fd else True,
                         hess=fun_hess if exact_h else BFGS(), method="trust-constr", constraints=[lin, epi],
                         options=opts, callback=callback)
    return r, iterates, state["kink"]
