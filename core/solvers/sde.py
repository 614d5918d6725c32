"""Stochastic samplers (eta = 1). Same signature as core.solvers.ode; every draw uses `generator`."""
from __future__ import annotations

import math

import torch

from core.solvers.ode import _cb


def _randn(x, generator):
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


@torch.no_grad()
def ddim_sde(model, x, sigmas, callback=None, generator=None):
    """Stochastic DDIM (eta = 1) in EDM form, q = sigma_next^2 / sigma^2:

        x_next = q x + (1 - q) D(x, sigma) + sigma_next sqrt(1 - q) z

    the exact solution of the reverse SDE with D frozen over the interval (the solver AYS
    derives its KL bound for; methods.md s.3). The step to sigma = 0 returns D. NFE = n."""
    sig = [float(s) for s in sigmas]
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        _cb(callback, i, x, sig[i], sig[i + 1], denoised)
        if sig[i + 1] == 0:
            x = denoised
            break
        q = (sig[i + 1] / sig[i]) ** 2
        x = q * x + (1 - q) * denoised + sig[i + 1] * math.sqrt(1 - q) * _randn(x, generator)
    return x


@torch.no_grad()
def dpmpp_2m_sde(model, x, sigmas, callback=None, generator=None):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022; k-diffusion `sample_dpmpp_2m_sde`), eta = 1,
    midpoint correction. NFE = n."""
    sig = [float(s) for s in sigmas]
    old_denoised, h_last = None, None
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        _cb(callback, i, x, sig[i], sig[i + 1], denoised)
        if sig[i + 1] == 0:
            x = denoised
            break
        h = math.log(sig[i]) - math.log(sig[i + 1])
        eta_h = h                                             # eta = 1
        x = (sig[i + 1] / sig[i]) * math.exp(-eta_h) * x - math.expm1(-h - eta_h) * denoised
        if old_denoised is not None:
            r = h_last / h
            x = x + 0.5 * -math.expm1(-h - eta_h) * (1 / r) * (denoised - old_denoised)
        x = x + _randn(x, generator) * sig[i + 1] * math.sqrt(-math.expm1(-2 * eta_h))
        old_denoised, h_last = denoised, h
    return x
