"""Score-optimal schedules: the Stein cost density and its per-interval cost (Williams et al. 2024,
"Score-Optimal Diffusion Schedules", arXiv 2412.07877; methods.md s.6).

Cost of moving from level sigma to sigma' with a corrector:
    L(sigma, sigma') = v(sigma')^2 E_{x ~ p_sigma} || grad log p_sigma'(x) - grad log p_sigma(x) ||^2
whose local form  L(sigma, sigma + dsigma) = delta(sigma) dsigma^2 + O(dsigma^3)  has density

    delta(sigma) = v(sigma)^2 E_{x ~ p_sigma} || d/dsigma grad log p_sigma(x) ||^2      (x held fixed)

with speed v(sigma) = sigma by default (a parameter).  The optimal schedule walks at constant
speed in  Lambda(sigma) = int_0^sigma sqrt(delta(s)) ds:  every interval has the same length
Delta Lambda, hence the same local cost Delta Lambda^2, and sum_i Delta Lambda_i^2 >=
Lambda_total^2 / (n - 1) (Cauchy-Schwarz) with equality exactly there.

Estimation (any Denoiser): x = x0 + sigma eps with x0 from the data sampler and the same
(x0, eps) at every level (common random numbers: a smooth curve); score = (D(x, sigma) - x) / sigma^2;
its sigma-derivative at fixed x by (a) forward-mode `torch.func.jvp` in sigma (exact through an
analytic mixture denoiser) or (b) central finite differences in log sigma at the same x.
Accumulated in float64.  precision="auto" (default) evaluates a float32 network in float32 for
jvp (forward mode has no cancellation: the 10-step schedules agree to 3 digits and it is 2.3x
faster) and through a float64 copy for fd (differences of nearby scores need the digits);
"float64" and "model" force one or the other.

Gaussian check N(0, c^2 I_d): score = -x / (c^2 + s^2), d/ds score = 2 s x / (c^2 + s^2)^2, so
E||.||^2 = 4 s^2 d / (c^2 + s^2)^3 and with v = s:  sqrt(delta) = 2 sqrt(d) s^2 / (c^2 + s^2)^(3/2),
Lambda(s) = 2 sqrt(d) (asinh(s / c) - s / sqrt(c^2 + s^2))  (d/ds of the bracket is s^2/(c^2+s^2)^(3/2)).

Schedule convention: n steps = n levels sigma_max .. sigma_min (endpoints fixed, n - 1 intervals
at constant speed) plus the final jump to 0, which is outside the Stein cost (sigma = 0 is not
on the grid); the per-interval curves below therefore have n - 1 entries.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
from scipy.interpolate import PchipInterpolator

from core.errors import ScheduleLabError
from core.schedules import Schedule

METHODS = ("jvp", "fd")
# The sampler score-optimal schedules are meant for: the paper evaluates them with EDM's deterministic
# Heun sampler (Karras et al. 2022, Alg. 1), and with it they beat uniform lambda at NFE 5 and 7 on
# every MLP toy measured (bench/discretization.py); with the multistep solvers they do not.
SOLVER = "heun"
MIN_LEVELS, MAX_LEVELS = 16, 4000


def log_grid(sigma_min: float, sigma_max: float, levels: int = 200) -> np.ndarray:
    """`levels` noise levels log-spaced from sigma_min to sigma_max (ascending), float64."""
    if not (isinstance(levels, (int, np.integer)) and MIN_LEVELS <= levels <= MAX_LEVELS):
        raise ScheduleLabError(f"the Stein grid needs {MIN_LEVELS}..{MAX_LEVELS} levels (100-1000 "
                               f"recommended); got {levels!r}")
    if not (math.isfinite(sigma_min) and math.isfinite(sigma_max) and 0 < sigma_min < sigma_max):
        raise ScheduleLabError(f"need 0 < sigma_min < sigma_max; got {sigma_min}, {sigma_max}")
    return np.exp(np.linspace(math.log(sigma_min), math.log(sigma_max), levels))


def _speed(v, sig: np.ndarray) -> np.ndarray:
    """v(sigma) on an array; None -> sigma."""
    if v is None:
        return sig
    out = np.asarray(v(sig), dtype=np.float64) * np.ones_like(sig)
    if not np.all(np.isfinite(out)):
        raise ScheduleLabError("the speed v(sigma) returned NaN or inf")
    return out


def _draw(sampler, n: int, seed: int, event_shape) -> tuple:
    """(x0, eps) [n, *event_shape] float64 from a seeded CPU generator."""
    g = torch.Generator().manual_seed(int(seed))
    draw = sampler.sample if hasattr(sampler, "sample") else sampler
    if not callable(draw):
        raise ScheduleLabError("sampler must be callable as sampler(n, generator) or have .sample(n, generator)")
    x0 = torch.as_tensor(draw(n, g)).to(torch.float64)
    if tuple(x0.shape[1:]) != tuple(event_shape) or x0.shape[0] != n:
        raise ScheduleLabError(f"the sampler returned shape {list(x0.shape)}; the model expects "
                               f"[{n}, {', '.join(map(str, event_shape))}]")
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    return x0, eps


PRECISIONS = ("auto", "float64", "model")


def _float64_model(model, precision: str, method: str = "fd"):
    """The model evaluated in float64 (a double copy of a float32 network) unless precision='model',
    or precision='auto' with method='jvp' (see the module docstring)."""
    if precision not in PRECISIONS:
        raise ScheduleLabError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "model" or (precision == "auto" and method == "jvp"):
        return model
    params = list(model.parameters())
    if not params or all(p.dtype == torch.float64 for p in params):
        return model
    return copy.deepcopy(model).double()


def _model_dtype(model) -> torch.dtype:
    return torch.float64 if getattr(model, "dtype", torch.float32) == torch.float64 else torch.float32


def mixture_score(mixture, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Analytic score of a Gaussian mixture's noisy marginal, [B, d] float64 (toy_data.mixture):

        grad log p_sigma(x) = -sum_k r_k(x) U_k diag(1 / (l_k + sigma^2)) U_k^T (x - mu_k).

    The rotation y = U^T (x - mu) does not depend on sigma, so forward mode in sigma only runs
    through elementwise operations (and the d x d rotations are d broadcast products, not K tiny
    bmm's).  Isotropic mixtures (Sigma_k = v_k I) use |x - mu_k|^2 from one GEMM instead."""
    x = x.to(torch.float64)
    s2 = sigma.to(torch.float64).reshape(-1, 1) ** 2
    if getattr(mixture, "isotropic", False):       # Sigma_k = v_k I: only [B, K] tensors depend on sigma
        mu, d = mixture.means, x.shape[1]
        dist2 = ((x * x).sum(1, keepdim=True) - 2 * x @ mu.T + (mu * mu).sum(1)).clamp_min(0)   # [B, K]
        var = mixture.evals[:, 0] + s2                                                        # [B, K]
        r = torch.softmax(-0.5 * (dist2 / var + d * var.log()) + mixture.log_weights, dim=1)
        a = r / var
        return a @ mu - x * a.sum(1, keepdim=True)
    U, lam = mixture.evecs, mixture.evals                                    # [K, d, d], [K, d]
    diff = x.unsqueeze(1) - mixture.means                                    # [B, K, d]
    d = diff.shape[-1]
    y = sum(diff[..., j:j + 1] * U[:, j, :] for j in range(d))                # U^T (x - mu)  [B, K, d]
    var = lam.unsqueeze(0) + s2.unsqueeze(-1)                                # [B, K, d]
    logn = -0.5 * ((y * y / var).sum(-1) + var.log().sum(-1))               # + const
    r = torch.softmax(logn + mixture.log_weights, dim=1)                     # [B, K]
    z = r.unsqueeze(-1) * y / var                                            # [B, K, d]
    return -torch.stack([(z * U[:, i, :]).sum((1, 2)) for i in range(d)], dim=-1)   # -sum_k U_k z_k


def score_sigma_derivative(model, x: torch.Tensor, sigma: torch.Tensor, method: str = "jvp",
                           fd_step: float = 1e-4) -> torch.Tensor:
    """d/dsigma grad log p_sigma(x) at fixed x, per sample: [B, *event] float64.

    x: [B, *event]; sigma: [B] (> 0).  jvp: forward mode in sigma (tangent 1 per sample; samples
    are independent).  fd: (s(x, sigma e^h) - s(x, sigma e^-h)) / (sigma (e^h - e^-h)), h = fd_step:
    truncation ~h^2 (times the model's curvature in log sigma: ~1e2 for a Fourier-embedded MLP).
    Round-off: through the mixture score ~1e-16 c^2 / (4 h sigma^2); through a generic Denoiser the
    score (D - x) / sigma^2 carries an absolute error ~1e-16 |x| / sigma^2 while the two scores differ by
    ~4 h sigma^2 |x| / c^4, i.e. ~1e-16 c^4 / (4 h sigma^4) relative: fd is a check, jvp the estimator.
    An exact mixture denoiser (a model with a `.mixture`) goes through `mixture_score`; any other
    model through score = (D(x, sigma) - x) / sigma^2."""
    score, dt = _score_at(model, x)
    sm = sigma.to(dt)
    if method == "jvp":
        return torch.func.jvp(score, (sm,), (torch.ones_like(sm),))[1]
    if method == "fd":
        h = float(fd_step)
        up, dn = sm * math.exp(h), sm * math.exp(-h)
        return (score(up) - score(dn)) / _b((up - dn).to(torch.float64), x)
    raise ScheduleLabError(f"method must be one of {', '.join(METHODS)}; got {method!r}")


def _score_at(model, x: torch.Tensor):
    """(score, dtype): score(sigma [B]) = grad log p_sigma(x) at the fixed points x [B, *event], float64,
    and the dtype sigma should have.  An exact mixture denoiser (a model with a `.mixture`) goes
    through `mixture_score` (float64); any other model through (D(x, sigma) - x) / sigma^2 in its dtype."""
    mixture = getattr(model, "mixture", None)
    x64 = x.to(torch.float64)
    if mixture is not None and hasattr(mixture, "evecs"):
        return (lambda s: mixture_score(mixture, x64, s)), torch.float64
    dt = _model_dtype(model)
    xm = x.to(dt)
    return (lambda s: (model(xm, s).to(torch.float64) - x64) / _b(s.to(torch.float64), x) ** 2), dt


def _b(s, x):
    return s.reshape(-1, *([1] * (x.ndim - 1)))


def iter_stein_density(model, sampler, sigmas_grid, n: int = 512, method: str = "jvp", v=None,
                       seed: int = 0, start: int = 0, chunk_points: int = 32768, fd_step: float = 1e-4,
                       precision: str = "auto", device=None):
    """Generator over chunks of levels: yields (end, delta[start:end] as np.ndarray) until
    end == len(grid).  `start` resumes (the draws depend on seed only, so chunks are reproducible)."""
    grid = np.asarray(sigmas_grid, dtype=np.float64)
    if grid.ndim != 1 or grid.size < 2 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
        raise ScheduleLabError("sigmas_grid must be a 1-d array of positive finite noise levels")
    if not (isinstance(n, (int, np.integer)) and n >= 2):
        raise ScheduleLabError(f"n (samples per level) must be an integer >= 2; got {n!r}")
    if method not in METHODS:
        raise ScheduleLabError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    m = _float64_model(model, precision, method)
    dev = device if device is not None else getattr(m, "device", torch.device("cpu"))
    x0, eps = _draw(sampler, int(n), seed, getattr(model, "event_shape", (2,)))
    x0, eps = x0.to(dev), eps.to(dev)
    vv = _speed(v, grid)
    per = max(1, int(chunk_points) // int(n))          # levels per denoiser batch
    sub = max(1, min(int(n), int(chunk_points)))       # samples per batch (< n: a level in pieces)
    i = int(start)
    while i < grid.size:
        j = min(grid.size, i + per)
        sig = torch.as_tensor(grid[i:j], dtype=torch.float64, device=dev)
        sq = 0.0
        for a in range(0, int(n), sub):                 # one pass unless a level does not fit a batch
            b = min(int(n), a + sub)
            x = (x0[a:b].unsqueeze(0) + _b(sig, x0[a:b].unsqueeze(0)) * eps[a:b].unsqueeze(0)).reshape(-1, *x0.shape[1:])
            ds = score_sigma_derivative(m, x, sig.repeat_interleave(b - a), method, fd_step)
            sq = sq + ds.reshape(j - i, b - a, -1).pow(2).sum(-1).sum(-1).detach()
        sq = sq / int(n)                                                            # E ||d/dsigma score||^2
        delta = vv[i:j] ** 2 * sq.cpu().numpy()
        if not np.all(np.isfinite(delta)):
            raise ScheduleLabError(f"the Stein density is not finite between sigma = {grid[i]:g} and "
                                   f"{grid[j - 1]:g}; the model returns NaN/inf there")
        yield j, delta
        i = j


def stein_density(model, sampler, sigmas_grid, n: int = 512, method: str = "jvp", v=None, seed: int = 0,
                  **kw) -> np.ndarray:
    """delta(sigma) [L] on `sigmas_grid` (float64; see the module docstring).

    model: any Denoiser.  sampler: sampler(n, generator) -> x0 [n, *event] or an object with
    .sample(n, generator) (a toy mixture).  method: "jvp" | "fd".  v: callable sigma -> speed
    (default sigma).  Extra keywords: chunk_points, fd_step, precision, device."""
    out = np.zeros(len(sigmas_grid))
    i = 0
    for j, d in iter_stein_density(model, sampler, sigmas_grid, n, method, v, seed, **kw):
        out[i:j] = d
        i = j
    return out


def cumulative_cost(sigmas_grid, delta) -> np.ndarray:
    """Lambda on the grid, from its first level:  int sqrt(delta(sigma)) dsigma, computed as the
    trapezoid rule in u = log sigma of sqrt(delta(e^u)) e^u (the dsigma = sigma du change of
    variable).  A floor of 1e-12 max(sqrt delta) keeps Lambda strictly increasing."""
    sig = np.asarray(sigmas_grid, dtype=np.float64)
    rt = np.sqrt(np.maximum(np.asarray(delta, dtype=np.float64), 0.0))
    rt = np.maximum(rt, 1e-12 * max(float(rt.max()), 1e-300))
    f, u = rt * sig, np.log(sig)
    return np.concatenate([[0.0], np.cumsum(0.5 * (f[1:] + f[:-1]) * np.diff(u))])


def _lambda_of(sigmas_grid, Lam):
    """Monotone interpolant Lambda(sigma) (PCHIP in log sigma)."""
    return PchipInterpolator(np.log(sigmas_grid), Lam, extrapolate=False)


def constant_speed_schedule(sigmas_grid, delta, steps: int, sigma_min: float | None = None,
                            sigma_max: float | None = None, params: dict | None = None) -> Schedule:
    """The score-optimal schedule: n levels at equal Lambda spacing between sigma_max and sigma_min
    (then 0), sigma_i = Lambda^{-1}(Lambda(sigma_max) - i / (n - 1) * (Lambda(sigma_max) - Lambda(sigma_min)))
    with Lambda^{-1} a PCHIP interpolant of log sigma over Lambda (monotone).  params: recorded
    in the Schedule."""
    params = dict(params or {})
    grid = np.asarray(sigmas_grid, dtype=np.float64)
    smin = float(grid[0] if sigma_min is None else sigma_min)
    smax = float(grid[-1] if sigma_max is None else sigma_max)
    if not (isinstance(steps, (int, np.integer)) and not isinstance(steps, bool) and steps >= 1):
        raise ScheduleLabError(f"steps must be a positive integer; got {steps!r}")
    if not (grid[0] * (1 - 1e-9) <= smin < smax <= grid[-1] * (1 + 1e-9)):
        raise ScheduleLabError(f"sigma range {smin:g}..{smax:g} is outside the density grid "
                               f"{grid[0]:g}..{grid[-1]:g}; estimate the density on a wider grid")
    Lam = cumulative_cost(grid, delta)
    if steps == 1:
        return Schedule((smax, 0.0), name="score_optimal", params=params, solver=SOLVER)
    fwd = _lambda_of(grid, Lam)
    lo, hi = float(fwd(math.log(max(smin, grid[0])))), float(fwd(math.log(min(smax, grid[-1]))))
    targets = hi - np.arange(steps) / (steps - 1) * (hi - lo)
    inv = PchipInterpolator(Lam, np.log(grid))
    sig = np.exp(inv(targets))
    sig[0], sig[-1] = smax, smin
    return Schedule(tuple(sig.tolist()) + (0.0,), name="score_optimal", params=params, solver=SOLVER)


def interval_costs(sigmas_grid, delta, schedule: Schedule) -> dict:
    """Per-interval Stein cost of any schedule (its n - 1 intervals between sigma_max and sigma_min).

    Returns sigma_hi, sigma_lo, length (Delta Lambda), cost (Delta Lambda^2, the local cost
    L(sigma_i, sigma_{i+1})), share (cost / total), total_cost, Lambda_total,
    optimal_cost (Lambda_total^2 / (n - 1), the constant-speed minimum), efficiency
    (optimal_cost / total_cost, 1 for the score-optimal schedule)."""
    grid = np.asarray(sigmas_grid, dtype=np.float64)
    lev = np.asarray(schedule.sigmas[:-1], dtype=np.float64)
    if lev.min() < grid[0] * (1 - 1e-9) or lev.max() > grid[-1] * (1 + 1e-9):
        raise ScheduleLabError(f"schedule levels {lev.min():g}..{lev.max():g} leave the density grid "
                               f"{grid[0]:g}..{grid[-1]:g}; estimate on a grid that covers them")
    Lam = cumulative_cost(grid, delta)
    at = _lambda_of(grid, Lam)(np.log(np.clip(lev, grid[0], grid[-1])))
    length = at[:-1] - at[1:]
    cost = length ** 2
    total = float(cost.sum())
    n_int = len(cost)
    lam_total = float(at[0] - at[-1])
    opt = lam_total ** 2 / n_int if n_int else 0.0
    return {"sigma_hi": lev[:-1].tolist(), "sigma_lo": lev[1:].tolist(), "length": length.tolist(),
            "cost": cost.tolist(), "share": (cost / total).tolist() if total > 0 else [math.nan] * n_int,
            "total_cost": total, "Lambda_total": lam_total, "optimal_cost": opt,
            "efficiency": opt / total if total > 0 else math.nan}


def transport_costs(model, sampler, schedule: Schedule, n: int = 2048, v=None, seed: int = 0,
                    precision: str = "float64") -> dict:
    """The paper's finite per-interval cost of `schedule` (not its local approximation):

        L(sigma_i, sigma_{i+1}) = v(sigma_{i+1})^2 E_{x ~ p_sigma_i} || grad log p_sigma_{i+1}(x) - grad log p_sigma_i(x) ||^2

    for its n - 1 intervals between sigma_max and sigma_min, by Monte Carlo with x = x0 + sigma_i eps
    (n draws, the same (x0, eps) for every interval).  Its sum is the objective the constant-speed
    schedule minimises as the intervals shrink (sum_i L_i -> sum_i Delta Lambda_i^2).
    Returns sigma_hi, sigma_lo, cost [n - 1], stderr [n - 1] (Monte Carlo), total_cost, total_stderr."""
    if not isinstance(schedule, Schedule) or schedule.steps < 2:
        raise ScheduleLabError("transport_costs needs a Schedule with >= 2 steps")
    if not (isinstance(n, (int, np.integer)) and n >= 2):
        raise ScheduleLabError(f"n (Monte Carlo samples) must be an integer >= 2; got {n!r}")
    lev = np.asarray(schedule.sigmas[:-1], dtype=np.float64)
    m = _float64_model(model, precision)
    x0, eps = _draw(sampler, int(n), seed, getattr(model, "event_shape", (2,)))
    vv = _speed(v, lev)
    cost, err = [], []
    with torch.no_grad():
        for i in range(len(lev) - 1):
            score, dt = _score_at(m, x0 + float(lev[i]) * eps)
            at = lambda s: score(torch.full((n,), float(s), dtype=dt))  # noqa: E731
            per = (at(lev[i + 1]) - at(lev[i])).reshape(n, -1).pow(2).sum(-1) * vv[i + 1] ** 2
            cost.append(float(per.mean()))
            err.append(float(per.std() / math.sqrt(n)))
    if not np.all(np.isfinite(cost)):
        raise ScheduleLabError("the transport cost is not finite; the model returns NaN/inf on this schedule")
    return {"sigma_hi": lev[:-1].tolist(), "sigma_lo": lev[1:].tolist(), "cost": cost, "stderr": err,
            "total_cost": float(sum(cost)), "total_stderr": float(math.sqrt(sum(e * e for e in err)))}


def density_curves(sigmas_grid, delta) -> dict:
    """Density over log sigma for plots: grid_sigma, delta, sqrt_delta, density_log
    (sqrt(delta) sigma = dLambda / dlog sigma), Lambda (cumulative from the grid's first level)."""
    grid = np.asarray(sigmas_grid, dtype=np.float64)
    d = np.asarray(delta, dtype=np.float64)
    rt = np.sqrt(np.maximum(d, 0.0))
    return {"grid_sigma": grid.tolist(), "delta": d.tolist(), "sqrt_delta": rt.tolist(),
            "density_log": (rt * grid).tolist(), "Lambda": cumulative_cost(grid, d).tolist()}


def stein_curves(model, sampler, schedule: Schedule, levels: int = 200, n: int = 512, method: str = "jvp",
                 v=None, seed: int = 0, density=None, **kw) -> dict:
    """Per-interval Stein cost of `schedule` and the density behind it.

    density: optional (sigmas_grid, delta) already estimated; else estimated on `levels` log-spaced
    levels over the schedule's [sigma_min, sigma_max].  Returns `interval_costs` keys
    (sigma_hi, sigma_lo, length, cost, share, total_cost, Lambda_total, optimal_cost, efficiency)
    plus `density_curves` keys (grid_sigma, delta, sqrt_delta, density_log, Lambda) and
    method, n, levels, v ("sigma" or "custom"), steps."""
    if not isinstance(schedule, Schedule):
        raise ScheduleLabError("stein_curves needs a Schedule (core.schedules.Schedule)")
    if schedule.steps < 2:
        raise ScheduleLabError("a schedule needs >= 2 steps to have an interval between sigma_max and sigma_min")
    if density is None:
        grid = log_grid(schedule.sigma_min, schedule.sigma_max, levels)
        delta = stein_density(model, sampler, grid, n, method, v, seed, **kw)
    else:
        grid, delta = (np.asarray(a, dtype=np.float64) for a in density)
    out = interval_costs(grid, delta, schedule)
    out.update(density_curves(grid, delta))
    out.update({"method": method, "n": n, "levels": len(grid), "v": "sigma" if v is None else "custom",
                "steps": schedule.steps})
    return out
