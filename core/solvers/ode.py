"""Deterministic samplers of the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma.

One signature (k-diffusion style): `solver(model, x, sigmas, callback=None, generator=None)`
with x at sigmas[0] (x = sigma_0 * randn), sigmas a descending [n + 1] tensor ending in 0.
`callback({"i", "x", "sigma", "sigma_next", "denoised"})` fires once per step, before x moves.
"""
from __future__ import annotations

import math

import torch

from core.solvers.lagrange import lagrange_weights, multistep_orders


def to_d(x, sigma: float, denoised):
    """ODE derivative dx/dsigma = (x - D) / sigma."""
    return (x - denoised) / sigma


def _cb(callback, i, x, s, s_next, denoised):
    if callback is not None:
        callback({"i": i, "x": x, "sigma": s, "sigma_next": s_next, "denoised": denoised})


@torch.no_grad()
def euler(model, x, sigmas, callback=None, generator=None):
    """Euler = DDIM (Song et al. 2021) in sigma. NFE = n."""
    sig = [float(s) for s in sigmas]
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        _cb(callback, i, x, sig[i], sig[i + 1], denoised)
        x = x + (sig[i + 1] - sig[i]) * to_d(x, sig[i], denoised)
    return x


@torch.no_grad()
def heun(model, x, sigmas, callback=None, generator=None):
    """Heun's 2nd-order method (Karras et al. 2022, Alg. 1, no churn). NFE = 2n - 1."""
    sig = [float(s) for s in sigmas]
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        _cb(callback, i, x, sig[i], sig[i + 1], denoised)
        d = to_d(x, sig[i], denoised)
        dt = sig[i + 1] - sig[i]
        x_next = x + dt * d                                   # Euler step (Alg. 1 line 5)
        if sig[i + 1] > 0:                                    # 2nd-order correction (lines 7-8)
            d2 = to_d(x_next, sig[i + 1], model(x_next, sig[i + 1]))
            x_next = x + dt * 0.5 * (d + d2)
        x = x_next
    return x


@torch.no_grad()
def dpmpp_2m(model, x, sigmas, callback=None, generator=None):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), h = lambda_{i+1} - lambda_i, r = h_last / h. NFE = n."""
    sig = [float(s) for s in sigmas]
    old_denoised, h_last = None, None
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        _cb(callback, i, x, sig[i], sig[i + 1], denoised)
        if sig[i + 1] == 0:
            x = denoised
            break
        h = math.log(sig[i]) - math.log(sig[i + 1])
        if old_denoised is None:
            d = denoised
        else:
            r = h_last / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (sig[i + 1] / sig[i]) * x - math.expm1(-h) * d
        old_denoised, h_last = denoised, h
    return x


@torch.no_grad()
def dpmpp_3m(model, x, sigmas, callback=None, generator=None):
    """DPM-Solver++(3M): 3rd-order exponential multistep in lambda with the Lagrange interpolant
    of D integrated exactly (the solver DM-NonUniform's bound models), orders 1,2,3,...,3,2,1.
    NFE = n."""
    sig = [float(s) for s in sigmas]
    n = len(sig) - 1
    orders = multistep_orders(n, 3)
    lams, hist = [], []
    for i in range(n):
        denoised = model(x, sig[i])
        _cb(callback, i, x, sig[i], sig[i + 1], denoised)
        if sig[i + 1] == 0:
            x = denoised
            break
        lams.insert(0, -math.log(sig[i]))
        hist.insert(0, denoised)
        k = orders[i]
        w = lagrange_weights(torch.tensor(lams[:k], dtype=torch.float64),
                             torch.tensor(-math.log(sig[i + 1]), dtype=torch.float64)).tolist()
        x = (sig[i + 1] / sig[i]) * x + sum(wj * dj for wj, dj in zip(w, hist[:k]))
        lams, hist = lams[:2], hist[:2]
    return x


@torch.no_grad()
def ipndm(model, x, sigmas, callback=None, generator=None):
    """iPNDM (Zhang & Chen 2023; GITS' solver): Adams-Bashforth on dx/dsigma, warm-up orders
    1-3, then 4th order. NFE = n."""
    sig = [float(s) for s in sigmas]
    ds = []
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        _cb(callback, i, x, sig[i], sig[i + 1], denoised)
        d = to_d(x, sig[i], denoised)
        dt = sig[i + 1] - sig[i]
        if len(ds) == 0:
            x = x + dt * d
        elif len(ds) == 1:
            x = x + dt * (3 * d - ds[0]) / 2
        elif len(ds) == 2:
            x = x + dt * (23 * d - 16 * ds[0] + 5 * ds[1]) / 12
        else:
            x = x + dt * (55 * d - 59 * ds[0] + 37 * ds[1] - 9 * ds[2]) / 24
        ds = [d] + ds[:2]
    return x
