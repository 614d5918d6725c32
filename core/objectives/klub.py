"""The KL upper bound of Align Your Steps (Sabour et al. 2024; methods.md section 4).

Per interval [a, b] of the schedule (sigma, EDM form; constant factors dropped):

    KLUB(a, b) = int_a^b  s^-3 E || D(x_s, s) - D(x_b, b) ||^2 ds
    x0 ~ data,  x_s = x0 + s e1,  x_b = x_s + sqrt(b^2 - s^2) e2                      (1)

Importance sampling over s (paper Eq. 15; c = data scale, 0.5):

    pi(s) = s^-3 g(s) / Z(a, b),     g(s) = 1 / (s^2 + c^2) - 1 / (b^2 + c^2)
    KLUB(a, b) ~= Z(a, b) * mean_k ||dD_k||^2 / g(s_k)                                 (2)

Closed forms used here (derived with u = s^-2, t = c^2 u; equal to methods.md's G-form, which
loses ~7 digits to cancellation on intervals like [40, 80]; this form does not):

    Z(a, b) = (y - log1p(y)) / (2 c^4),   y = (t_a - t_b) / (1 + t_b),  t_s = c^2 / s^2   (3)
    P(s >= sigma) = h(y_sigma) / h(y_a),  h(y) = y - log1p(y)                          (4)

so s is drawn by inverting h (Halley's method in float64, vectorised). For data
N(0, c^2 I_d) and the same c, E||dD||^2 = c^4 d g(s) exactly, so the importance weights are
constant in s and KLUB = Z(a, b) d c^4 (only the Gaussian noise in ||dD||^2 remains:
||dD||^2 / g(s) ~ c^4 chi^2_d).

Coupling. (1) fixes the joint law of (x_s, x_b): x_b - x_s is independent of x_s - x0. The
same law is reached from x_b: x_b = x0 + b e2, x_s = x0 + (s^2 / b) e2 + s sqrt(1 - s^2/b^2) e1
(Brownian bridge). The default `coupling="bridge"` uses it because D(x_b, b) is then shared
by every interval with the same upper end (all candidates' upper intervals of a point), which
saves about a quarter of the denoiser calls of a sweep; `coupling="forward"` is (1) literally.
Both are unbiased for the same integral (tests check both).

Common random numbers: every interval in one call uses the same (x0, e1, e2, u).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from core.errors import ScheduleLabError
from core.objectives.fast_denoiser import mc_denoiser

COUPLINGS = ("bridge", "forward")
DEFAULT_CHUNK = 16384            # denoiser rows per call (CPU: cache-sized; raise it on a GPU)


# ---- closed forms (float64) -----------------------------------------------------------------
def _h(y: torch.Tensor) -> torch.Tensor:
    """h(y) = y - log1p(y) >= 0 for y >= 0, with a series below 1e-2 (no cancellation)."""
    ys = y.clamp(max=1e-2)
    series = ys * ys * (1 / 2 - ys * (1 / 3 - ys * (1 / 4 - ys * (1 / 5 - ys * (1 / 6 - ys * (1 / 7 - ys / 8))))))
    return torch.where(y < 1e-2, series, y - torch.log1p(y))


def _h_inv(v: torch.Tensor, iters: int = 8) -> torch.Tensor:
    """y >= 0 with h(y) = v, by Halley's method from an asymptotic start:
    y ~ q + q^2/3 + q^3/36 (q = sqrt(2v), the series inverse) for v < 1.5, else z = 1 + y with
    z - ln z = 1 + v, z ~ w + ln(w + ln w) (w = 1 + v). Both are within ~1 %, so two or three
    cubically convergent steps reach machine precision."""
    q = torch.sqrt(2 * v)
    w = 1 + v
    y = torch.where(v < 1.5, q * (1 + q * (1 / 3 + q / 36)), w + torch.log(w + torch.log(w)) - 1)
    for _ in range(iters):
        f, d1, d2 = _h(y) - v, y / (1 + y), 1 / (1 + y) ** 2
        step = 2 * f * d1 / (2 * d1 * d1 - f * d2).clamp_min(1e-300)
        y = (y - step).clamp_min(0.0)
        if not bool((step.abs() > 1e-11 * y).any()):    # the next error is ~ step^3: done
            break
    return y


def check_intervals(a, b) -> tuple:
    """a, b -> float64 tensors of the same shape with 0 < a < b, finite; else ScheduleLabError."""
    a = torch.as_tensor(a, dtype=torch.float64).reshape(-1).cpu()
    b = torch.as_tensor(b, dtype=torch.float64).reshape(-1).cpu()
    if a.shape != b.shape:
        raise ScheduleLabError(f"KLUB needs as many lower ends as upper ends; got {a.numel()} and {b.numel()}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ScheduleLabError("KLUB interval ends contain NaN or inf; pass finite sigmas")
    if (a <= 0).any():
        raise ScheduleLabError(f"KLUB needs sigma > 0 at both ends (the step to sigma = 0 has no KLUB); "
                               f"got a = {float(a.min()):g}")
    bad = (a >= b).nonzero()
    if len(bad):
        i = int(bad[0])
        raise ScheduleLabError(f"KLUB interval {i} has a = {float(a[i]):g} >= b = {float(b[i]):g}; "
                               "intervals are (lower sigma, upper sigma) with a < b")
    return a, b


def _check_c(c: float) -> float:
    if not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0):
        raise ScheduleLabError(f"importance-sampling constant c must be a positive number; got {c!r}")
    return float(c)


def klub_normalizer(a, b, c: float = 0.5) -> torch.Tensor:
    """Z(a, b) = int_a^b s^-3 (1/(s^2+c^2) - 1/(b^2+c^2)) ds, Eq. (3); [M] float64."""
    a, b = check_intervals(a, b)
    c = _check_c(c)
    ta, tb = (c / a) ** 2, (c / b) ** 2
    return _h((ta - tb) / (1 + tb)) / (2 * c ** 4)


def importance_density(s, b, c: float = 0.5) -> torch.Tensor:
    """Unnormalised pi(s) = s^-3 g(s) for s in (0, b]; float64 of the broadcast shape."""
    s = torch.as_tensor(s, dtype=torch.float64)
    return s.pow(-3) * _gap(s, torch.as_tensor(b, dtype=torch.float64), c)


def _gap(s, b, c):
    """g(s) = 1/(s^2 + c^2) - 1/(b^2 + c^2) = (b - s)(b + s) / ((s^2 + c^2)(b^2 + c^2))."""
    return (b - s) * (b + s) / ((s * s + c * c) * (b * b + c * c))


def sample_sigma(u, a, b, c: float = 0.5) -> torch.Tensor:
    """Inverse-CDF draws of pi on each interval: u [n] in (0, 1] -> s [M, n] in [a, b) (float64).

    u = 1 gives s = a, u -> 0 gives s -> b; Eq. (4) solved for y by Halley's method."""
    a, b = check_intervals(a, b)
    c = _check_c(c)
    u = torch.as_tensor(u, dtype=torch.float64).reshape(1, -1).cpu()
    ta, tb = ((c / a) ** 2).unsqueeze(1), ((c / b) ** 2).unsqueeze(1)
    y = _h_inv(u * _h((ta - tb) / (1 + tb)))
    s = c / torch.sqrt(tb + y * (1 + tb))
    return torch.minimum(torch.maximum(s, a.unsqueeze(1)), b.unsqueeze(1))


# ---- common random numbers --------------------------------------------------------------------
def draw_noise(sampler, n: int, generator: torch.Generator) -> dict:
    """The common random numbers of one sweep: x0 = sampler(n, generator), e1, e2 ~ N(0, I),
    u ~ U(0, 1] (in this order, all from `generator`; float64 on CPU)."""
    if not isinstance(n, int) or n < 2:
        raise ScheduleLabError(f"n_samples must be an integer >= 2; got {n!r}")
    x0 = torch.as_tensor(sampler(n, generator)).to(torch.float64).cpu()
    if x0.shape[0] != n:
        raise ScheduleLabError(f"the data sampler returned {x0.shape[0]} samples for n = {n}")
    if not torch.isfinite(x0).all():
        raise ScheduleLabError("the data sampler returned NaN or inf")
    e1 = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    e2 = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    u = 1.0 - torch.rand(n, generator=generator, dtype=torch.float64)
    return {"x0": x0, "e1": e1, "e2": e2, "u": u}


def slice_noise(noise: dict, sl: slice) -> dict:
    return {k: v[sl] for k, v in noise.items()}


# ---- the batched Monte Carlo core -------------------------------------------------------------
@torch.no_grad()
def squared_differences(model, noise: dict, s, b, chunk: int = DEFAULT_CHUNK,
                        coupling: str = "bridge") -> torch.Tensor:
    """||D(x_s, s) - D(x_b, b)||^2 for rows m (levels s[m, k], upper end b[m]) and samples k of
    `noise`; [M, n] float64. `model` is called on (M + unique(b)) * kc rows at a time (bridge)
    or 2 M kc (forward), kc = chunk // rows-per-sample; pass the output of `mc_denoiser`."""
    if coupling not in COUPLINGS:
        raise ScheduleLabError(f"unknown coupling {coupling!r}; choose one of: {', '.join(COUPLINGS)}")
    s = torch.as_tensor(s, dtype=torch.float64).cpu()
    b = torch.as_tensor(b, dtype=torch.float64).reshape(-1).cpu()
    M, n = s.shape
    dev, dt = model.device, model.dtype
    ev = tuple(noise["x0"].shape[1:])
    one = (1,) * len(ev)
    if coupling == "bridge":
        ub, inv = torch.unique(b, return_inverse=True)
        per = M + len(ub)
    else:
        per = 2 * M
    kc = max(1, int(chunk) // per)
    out = torch.empty(M, n, dtype=torch.float64)
    bb = b.unsqueeze(1)
    for k0 in range(0, n, kc):
        k1 = min(n, k0 + kc)
        x0, e1, e2 = (noise[k][k0:k1].to(dev, dt).unsqueeze(0) for k in ("x0", "e1", "e2"))
        sk = s[:, k0:k1]
        if coupling == "bridge":
            ce2 = (sk * sk / bb).to(dev, dt).view(M, -1, *one)
            ce1 = (sk * torch.sqrt((bb - sk) * (bb + sk)) / bb).to(dev, dt).view(M, -1, *one)
            xs = x0 + ce2 * e2 + ce1 * e1                                    # [M, kc, *ev]
            xb = x0 + ub.to(dev, dt).view(-1, 1, *one) * e2                  # [U, kc, *ev]
            sig = torch.cat([sk.reshape(-1), ub.repeat_interleave(k1 - k0)]).to(dev, dt)
        else:
            xs = x0 + sk.to(dev, dt).view(M, -1, *one) * e1
            xb = xs + torch.sqrt((bb - sk) * (bb + sk)).to(dev, dt).view(M, -1, *one) * e2
            sig = torch.cat([sk.reshape(-1), bb.expand_as(sk).reshape(-1)]).to(dev, dt)
        d = model(torch.cat([xs.reshape(-1, *ev), xb.reshape(-1, *ev)]), sig)
        ds, db = d[: M * (k1 - k0)].view(M, k1 - k0, -1), d[M * (k1 - k0):].view(-1, k1 - k0, *ev)
        if coupling == "bridge":
            db = db[inv.to(dev)]
        out[:, k0:k1] = (ds - db.reshape(M, k1 - k0, -1)).double().pow(2).sum(-1).cpu()
    return out


def klub_samples(model, noise: dict, a, b, c: float = 0.5, chunk: int = DEFAULT_CHUNK,
                 coupling: str = "bridge") -> torch.Tensor:
    """Per-sample importance-sampling terms Z(a,b) ||dD_k||^2 / g(s_k) of Eq. (2); [M, n] float64.
    Their mean over k is the KLUB estimate of each interval (a[m], b[m])."""
    a, b = check_intervals(a, b)
    c = _check_c(c)
    z = klub_normalizer(a, b, c)
    s = sample_sigma(noise["u"], a, b, c)
    sq = squared_differences(model, noise, s, b, chunk, coupling)
    check_finite_terms(sq, s, a, b, model)
    g = _gap(s, b.unsqueeze(1), c).clamp_min(1e-300)
    return z.unsqueeze(1) * sq / g


def check_finite_terms(sq: torch.Tensor, s: torch.Tensor, a, b, model=None) -> None:
    """Raise ScheduleLabError when ||dD||^2 [M, n] holds NaN / inf: names the interval and sigma
    where the denoiser first failed (a NaN estimate is never returned as a number)."""
    bad = ~torch.isfinite(sq)
    if bool(bad.any()):
        m, k = (int(i) for i in bad.nonzero()[0])
        name = getattr(model, "name", None) or getattr(getattr(model, "model", None), "name", "the denoiser")
        raise ScheduleLabError(
            f"{name} returned NaN or inf in the KLUB estimate: interval {m} ({float(a[m]):.6g}, {float(b[m]):.6g}) "
            f"at sigma = {float(s[m, k]):.6g} or {float(b[m]):.6g} ({int(bad.sum())} of {bad.numel()} terms); "
            "the run is stopped. Check the model and its sigma range")


# ---- public estimator -------------------------------------------------------------------------
@dataclass
class KLUBResult:
    """estimate, se: [M] float64 tensors (KLUB of each interval, its Monte Carlo standard error);
    n: samples used (all processes together)."""
    estimate: torch.Tensor
    se: torch.Tensor
    n: int


def mean_se(values: torch.Tensor, partition=None) -> tuple:
    """Mean and standard error over the last axis, summed across processes when `partition`
    (core.optimizers.distributed.Partition) spans several; returns (mean, se, n)."""
    from core.optimizers.distributed import Partition
    p = partition or Partition.single()
    v = values.to(torch.float64)
    n = p.allreduce(torch.tensor([float(v.shape[-1])], dtype=torch.float64))
    n = int(n.item())
    mean = p.allreduce(v.sum(-1)) / n
    ss = p.allreduce((v - mean.unsqueeze(-1)).pow(2).sum(-1))
    return mean, torch.sqrt(ss / (n - 1) / n), n


def klub(model, sampler, a, b, n_samples: int = 8192, c: float = 0.5, seed: int = 0,
         generator: torch.Generator | None = None, chunk: int = DEFAULT_CHUNK,
         coupling: str = "bridge", dtype=torch.float32, partition=None) -> KLUBResult:
    """KLUB of every interval (a[m], b[m]) with common random numbers, Eq. (2).

    Args:
        model: any Denoiser (an exact mixture runs in its fast matmul form, in `dtype`).
        sampler: callable (n, generator) -> x0 [n, *event_shape] (e.g. mixture.sample).
        a, b: [M] lower and upper sigmas, 0 < a < b.
        n_samples: Monte Carlo samples (shared by all intervals); c: importance constant.
        seed / generator: randomness (a generator wins over the seed).
        partition: split the samples across processes (core.optimizers.distributed).
    """
    from core.optimizers.distributed import Partition
    a, b = check_intervals(a, b)
    g = generator if generator is not None else torch.Generator().manual_seed(int(seed))
    p = partition or Partition.single()
    noise = slice_noise(draw_noise(sampler, n_samples, g), p.slice(n_samples))
    v = klub_samples(mc_denoiser(model, dtype), noise, a, b, c, chunk, coupling)
    mean, se, n = mean_se(v, p)
    return KLUBResult(mean, se, n)


# ---- per-interval curves for plots ------------------------------------------------------------
def klub_curves(model, sampler, schedule, n_samples: int = 4096, c: float = 0.5, seed: int = 0,
                grid: int = 24, chunk: int = DEFAULT_CHUNK, coupling: str = "bridge",
                dtype=torch.float32) -> dict:
    """KLUB of every interval of `schedule`, its share of the total, and the KLUB density over
    log-sigma, all from one set of common random numbers (`seed`). JSON-ready.

    Intervals are those between consecutive positive levels, in schedule order (high sigma
    first); the final jump sigma_min -> 0 has no KLUB (its integrand diverges like s^-3).

    Returns a dict of plain lists / floats:
        sigma_lo, sigma_hi: [n - 1] interval ends (a < b).
        klub, klub_se: [n - 1] importance-sampling estimate (Eq. 2) and its standard error.
        share: [n - 1] klub / total.   total, total_se: the sum over intervals and its SE.
        density_sigma: [(n - 1) * grid] sigma points, `grid` per interval at the midpoints of
            equal log-sigma cells, descending.
        density, density_se: the integrand per unit log-sigma,
            s * s^-3 E||D(x_s, s) - D(x_b, b)||^2  (b = upper end of the interval holding s);
            a sawtooth whose integral over log-sigma within each interval is that interval's KLUB.
        density_interval: [(n - 1) * grid] index of the interval of each density point.
        klub_quadrature, klub_quadrature_se: [n - 1] midpoint rule of the density over
            log-sigma (a check of `klub` from the same samples).
        sigmas, steps, name, c, n_samples, seed: what was measured.
    """
    lv = torch.tensor(schedule.sigmas[:-1], dtype=torch.float64)
    if lv.numel() < 2:
        raise ScheduleLabError("a schedule needs at least 2 positive levels (2 steps) to have a KLUB interval")
    if not isinstance(grid, int) or grid < 1:
        raise ScheduleLabError(f"grid must be a positive integer; got {grid!r}")
    a, b = lv[1:], lv[:-1]
    den = mc_denoiser(model, dtype)
    noise = draw_noise(sampler, n_samples, torch.Generator().manual_seed(int(seed)))
    v = klub_samples(den, noise, a, b, c, chunk, coupling)
    est, se, _ = mean_se(v)
    tot, tot_se, _ = mean_se(v.sum(0, keepdim=True))
    # density on a log grid: midpoints of `grid` equal cells per interval, highest sigma first
    M = a.numel()
    frac = 1 - (torch.arange(grid, dtype=torch.float64) + 0.5) / grid              # descending
    la, lb = a.log().unsqueeze(1), b.log().unsqueeze(1)
    s = torch.exp(la + frac * (lb - la)).reshape(-1)                                # [M * grid]
    bs = b.repeat_interleave(grid)
    sq = squared_differences(den, noise, s.unsqueeze(1).expand(-1, n_samples), bs, chunk, coupling)
    dens = sq / (s * s).unsqueeze(1)                                                # per unit log s
    d_mean, d_se, _ = mean_se(dens)
    cell = ((lb - la) / grid).expand(-1, grid).reshape(-1, 1)
    quad = (dens * cell).view(M, grid, -1).sum(1)
    q_mean, q_se, _ = mean_se(quad)
    total = float(tot)
    for what, v in (("total", tot), ("its standard error", tot_se), ("the density", d_mean)):
        if not bool(torch.isfinite(v).all()):
            raise ScheduleLabError(f"the KLUB curve of {schedule.label()}: {what} is NaN or inf; nothing is "
                                   "reported (check the model, n_samples >= 2 and c)")
    return {
        "sigma_lo": a.tolist(), "sigma_hi": b.tolist(),
        "klub": est.tolist(), "klub_se": se.tolist(),
        "share": (est / total).tolist() if total > 0 else [math.nan] * M,
        "total": total, "total_se": float(tot_se),
        "density_sigma": s.tolist(), "density": d_mean.tolist(), "density_se": d_se.tolist(),
        "density_interval": torch.arange(M).repeat_interleave(grid).tolist(),
        "klub_quadrature": q_mean.tolist(), "klub_quadrature_se": q_se.tolist(),
        "sigmas": list(schedule.sigmas), "steps": schedule.steps, "name": schedule.name,
        "c": c, "n_samples": n_samples, "seed": seed,
    }
