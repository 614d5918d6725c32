"""Heuristic schedules every user expects (methods.md section 2).

Each function takes (steps, sigma_min, sigma_max, **params) and returns a Schedule of
`steps` steps: levels sigma_0 = sigma_max ... sigma_{n-1} = sigma_min, then 0.
With r = i / (n - 1), i = 0..n-1.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import beta as beta_dist

from core.errors import ScheduleLabError
from core.processes import VPLinear
from core.schedules.schedule import Schedule


def _r(n: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)


def _make(levels: np.ndarray, name: str, **params) -> Schedule:
    levels = np.asarray(levels, dtype=np.float64)
    return Schedule(tuple(levels.tolist()) + (0.0,), name=name, params=params)


def karras(steps, sigma_min, sigma_max, rho: float = 7.0) -> Schedule:
    """EDM / Karras et al. (2022) Eq. 5: uniform in sigma^(1/rho)."""
    r = _r(steps)
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return _make((a + r * (b - a)) ** rho, "karras", rho=rho)


def loglinear(steps, sigma_min, sigma_max) -> Schedule:
    """Uniform in log sigma (= uniform in logSNR, k-diffusion 'exponential')."""
    return _make(np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), steps)), "loglinear")


def polyexponential(steps, sigma_min, sigma_max, rho: float = 1.0) -> Schedule:
    """k-diffusion polyexponential: exp(((1 - r)^rho)(log smax - log smin) + log smin)."""
    r = _r(steps)
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    return _make(np.exp((1 - r) ** rho * (hi - lo) + lo), "polyexponential", rho=rho)


def _vp(beta_min, beta_max):
    return VPLinear(beta_min=beta_min, beta_max=beta_max)


def time_uniform(steps, sigma_min, sigma_max, beta_min: float = 0.1, beta_max: float = 20.0) -> Schedule:
    """Uniform in continuous linear-VP time t between t(sigma_max) and t(sigma_min)."""
    p = _vp(beta_min, beta_max)
    t = np.linspace(p.t(sigma_max), p.t(sigma_min), steps)
    return _make(p.sigma(t), "time_uniform", beta_min=beta_min, beta_max=beta_max)


def time_quadratic(steps, sigma_min, sigma_max, beta_min: float = 0.1, beta_max: float = 20.0) -> Schedule:
    """DDIM 'quad': quadratic in VP time, t_i = t_min + (t_max - t_min)(1 - r)^2."""
    p = _vp(beta_min, beta_max)
    t0, t1 = p.t(sigma_min), p.t(sigma_max)
    return _make(p.sigma(t0 + (t1 - t0) * (1 - _r(steps)) ** 2), "time_quadratic",
                 beta_min=beta_min, beta_max=beta_max)


def kl_optimal(steps, sigma_min, sigma_max, c: float = 1.0) -> Schedule:
    """AYS Theorem 3.1: sigma_i = c tan((1 - r) atan(smax / c) + r atan(smin / c)).

    Exact KL-optimal for Gaussian data N(0, c^2 I) and DDIM. The default c = 1 is ComfyUI's and
    A1111's `kl_optimal`; the theorem's data-scaled variant is c = sigma_data (0.5 for our toys
    and the digits model): pass it explicitly.
    """
    if c <= 0:
        raise ScheduleLabError(f"kl_optimal needs c > 0; got {c}")
    r = _r(steps)
    a, b = math.atan(sigma_max / c), math.atan(sigma_min / c)
    return _make(c * np.tan((1 - r) * a + r * b), "kl_optimal", c=c)


def beta_vp(steps, sigma_min, sigma_max, a: float = 0.6, b: float = 0.6,
            beta_min: float = 0.1, beta_max: float = 20.0) -> Schedule:
    """Beta sampling (Lee et al. 2024) in continuous linear-VP time: t_i at Beta(a, b) quantiles 1 - r
    between t(sigma_min) and t(sigma_max), both ends included.

    Not ComfyUI's `beta` (that one indexes a model's discrete table, drops sigma_min and dedupes
    timesteps: `make_schedule('beta', n, table='sd15')`); this is its table-free analogue.
    """
    if a <= 0 or b <= 0:
        raise ScheduleLabError(f"beta_vp schedule needs a, b > 0; got a={a}, b={b}")
    p = _vp(beta_min, beta_max)
    q = beta_dist.ppf(1 - _r(steps), a, b)
    t0, t1 = p.t(sigma_min), p.t(sigma_max)
    return _make(p.sigma(t0 + (t1 - t0) * q), "beta_vp", a=a, b=b)


def laplace(steps, sigma_min, sigma_max, mu: float = 0.0, beta: float = 0.5) -> Schedule:
    """k-diffusion / ComfyUI `get_sigmas_laplace` (Tiankai et al. 2024): log sigma_i =
    mu - beta sign(1/2 - r) log(1 - 2|1/2 - r| + 1e-5), clamped to [sigma_min, sigma_max].

    ComfyUI's function returns these n levels without the final 0; here the 0 is appended (n steps).
    """
    if beta <= 0:
        raise ScheduleLabError(f"laplace needs beta > 0; got {beta}")
    r = _r(steps)
    lmb = mu - beta * np.sign(0.5 - r) * np.log(1 - 2 * np.abs(0.5 - r) + 1e-5)
    return _make(np.clip(np.exp(lmb), sigma_min, sigma_max), "laplace", mu=mu, beta=beta)


HEURISTICS = {
    "karras": karras, "loglinear": loglinear, "polyexponential": polyexponential,
    "time_uniform": time_uniform, "time_quadratic": time_quadratic, "kl_optimal": kl_optimal,
    "beta_vp": beta_vp, "laplace": laplace,
}
ALIASES = {"edm": "karras", "exponential": "loglinear", "logsnr": "loglinear", "ddim_quad": "time_quadratic"}
