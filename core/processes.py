"""Noise processes and their conversion to EDM sigma (methods.md section 1).

EDM:   x = x0 + sigma eps.
VP:    x_t = alpha_t x0 + sigma_t eps  ->  sigma = sigma_t / alpha_t, lambda = -log sigma.
  continuous linear VP: sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), t in [eps, 1].
  cosine VP (Nichol & Dhariwal): abar(t) = cos^2((t + s)/(1 + s) pi/2) / cos^2(s/(1 + s) pi/2).
  discrete DDPM: sigma_i = sqrt((1 - abar_i) / abar_i).
Flow matching: x_t = (1 - t) x0 + t eps  ->  sigma = t / (1 - t).
"""
from __future__ import annotations

import math

import numpy as np

from core.errors import ScheduleLabError, unknown_name


def half_log_snr(sigma):
    """lambda = log(alpha / sigma_vp) = -log(sigma) in EDM sigma."""
    return -np.log(sigma)


def vp_alpha_sigma(sigma):
    """EDM sigma -> (alpha_vp, sigma_vp) = (1/sqrt(1+s^2), s/sqrt(1+s^2))."""
    s = np.asarray(sigma, dtype=np.float64)
    a = 1 / np.sqrt(1 + s ** 2)
    return a, s * a


class VPLinear:
    """Continuous linear-beta VP (Song et al. 2021): beta(t) = beta_min + beta_d t."""

    name = "vp-linear"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, eps: float = 1e-3):
        self.beta_min, self.beta_d, self.eps = beta_min, beta_max - beta_min, eps

    def sigma(self, t):
        t = np.asarray(t, dtype=np.float64)
        return np.sqrt(np.expm1(0.5 * self.beta_d * t ** 2 + self.beta_min * t))

    def t(self, sigma):
        s = np.asarray(sigma, dtype=np.float64)
        return (np.sqrt(self.beta_min ** 2 + 2 * self.beta_d * np.log1p(s ** 2)) - self.beta_min) / self.beta_d

    @property
    def sigma_min(self):
        return float(self.sigma(self.eps))

    @property
    def sigma_max(self):
        return float(self.sigma(1.0))


class VPCosine:
    """Cosine VP (Nichol & Dhariwal 2021): abar(t) = f(t)/f(0), f(t) = cos^2((t+s)/(1+s) pi/2)."""

    name = "vp-cosine"

    def __init__(self, s: float = 0.008, eps: float = 1e-3, t_max: float = 0.9946):
        self.s, self.eps, self.t_max = s, eps, t_max

    def sigma(self, t):
        t = np.asarray(t, dtype=np.float64)
        f = lambda u: np.cos((u + self.s) / (1 + self.s) * math.pi / 2) ** 2  # noqa: E731
        abar = f(t) / f(0.0)
        return np.sqrt((1 - abar) / abar)

    def t(self, sigma):
        s = np.asarray(sigma, dtype=np.float64)
        abar = 1 / (1 + s ** 2)
        f0 = math.cos(self.s / (1 + self.s) * math.pi / 2) ** 2
        return np.arccos(np.sqrt(abar * f0)) * 2 / math.pi * (1 + self.s) - self.s

    @property
    def sigma_min(self):
        return float(self.sigma(self.eps))

    @property
    def sigma_max(self):
        return float(self.sigma(self.t_max))


class EDMProcess:
    """EDM (Karras et al. 2022): t = sigma."""

    name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def sigma(self, t):
        return np.asarray(t, dtype=np.float64)

    def t(self, sigma):
        return np.asarray(sigma, dtype=np.float64)


class FlowMatching:
    """Rectified flow: x_t = (1 - t) x0 + t eps, sigma = t / (1 - t)."""

    name = "flow"

    def __init__(self, t_min: float = 1e-3, t_max: float = 0.999):
        self.sigma_min, self.sigma_max = t_min / (1 - t_min), t_max / (1 - t_max)

    def sigma(self, t):
        t = np.asarray(t, dtype=np.float64)
        return t / (1 - t)

    def t(self, sigma):
        s = np.asarray(sigma, dtype=np.float64)
        return s / (1 + s)


def discrete_sigmas(betas) -> np.ndarray:
    """Discrete DDPM table sigma_i = sqrt((1 - abar_i) / abar_i), ascending in i."""
    b = np.asarray(betas, dtype=np.float64)
    abar = np.cumprod(1 - b)
    return np.sqrt((1 - abar) / abar)


PROCESSES = {"edm": EDMProcess, "vp-linear": VPLinear, "vp-cosine": VPCosine, "flow": FlowMatching}


def get_process(name: str, **kw):
    if name not in PROCESSES:
        raise unknown_name("noise process", name, PROCESSES)
    try:
        return PROCESSES[name](**kw)
    except TypeError as e:
        raise ScheduleLabError(f"bad parameters for process {name!r}: {e}") from None
