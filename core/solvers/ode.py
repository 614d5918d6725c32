"""Deterministic samplers of the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma.

One signature (k-diffusion style): `solver(model, x, sigmas, callback=None, generator=None)`
with x at sigmas[0] (x = sigma_0 * randn), sigmas a descending [n + 1] tensor ending in 0.
`callback({"i", "x", "sigma", "sigma_next", "denoised"})` fires once per step, before x moves.
"""
from __future__ import annotations

import math

import numpy as np
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
def dpmpp_3m_lagrange(model, x, sigmas, callback=None, generator=None):
    """Exact-Lagrange 3rd-order exponential multistep in lambda (DM-NonUniform's modelled solver,
    Xue et al. 2024; not k-diffusion's DPM-Solver++(3M), which is `dpmpp_3m`): the Lagrange
    interpolant of D through the last k nodes is integrated exactly, orders 1,2,3,...,3,2,1. NFE = n."""
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
    """iPNDM (Zhang & Chen 2023; GITS' solver; ComfyUI `sample_ipndm`): Adams-Bashforth on
    dx/dsigma, warm-up orders 1-3, then 4th order. The step to sigma = 0 returns D (ComfyUI's
    denoising step, Comfy-Org/ComfyUI PR #8780, 2025-07; before it ComfyUI took an AB step to 0).
    NFE = n."""
    sig = [float(s) for s in sigmas]
    ds = []
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        _cb(callback, i, x, sig[i], sig[i + 1], denoised)
        if sig[i + 1] == 0:                                   # denoising step
            x = denoised
            break
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


@torch.no_grad()
def dpm_2(model, x, sigmas, callback=None, generator=None):
    """DPM-Solver-2 in sigma (k-diffusion `sample_dpm_2`, no churn): an Euler half-step to the
    log-midpoint sigma_mid = sqrt(sigma_i sigma_{i+1}), then the full step with the slope there.
    The step to sigma = 0 is Euler (returns D). NFE = 2n - 1."""
    sig = [float(s) for s in sigmas]
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        _cb(callback, i, x, sig[i], sig[i + 1], denoised)
        d = to_d(x, sig[i], denoised)
        if sig[i + 1] == 0:
            x = x + d * (sig[i + 1] - sig[i])
        else:
            sigma_mid = math.exp(0.5 * (math.log(sig[i]) + math.log(sig[i + 1])))
            x_2 = x + d * (sigma_mid - sig[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
            x = x + d_2 * (sig[i + 1] - sig[i])
    return x


def lms_coefficients(sig: list, i: int, order: int) -> list:
    """Linear multistep weights in sigma: c_j = integral_{sigma_i}^{sigma_{i+1}} l_j(s) ds for the
    Lagrange basis l_j through sigma_i, sigma_{i-1}, ..., sigma_{i-order+1} (k-diffusion's
    `linear_multistep_coeff`, integrated exactly instead of by quadrature)."""
    nodes = [sig[i - k] for k in range(order)]
    out = []
    for j in range(order):
        poly = np.polynomial.Polynomial([1.0])
        for k in range(order):
            if k != j:
                poly = poly * np.polynomial.Polynomial([-nodes[k], 1.0]) / (nodes[j] - nodes[k])
        antider = poly.integ()
        out.append(float(antider(sig[i + 1]) - antider(sig[i])))
    return out


@torch.no_grad()
def lms(model, x, sigmas, callback=None, generator=None, order: int = 4):
    """Linear multistep (Adams-Bashforth in sigma on dx/dsigma with the Lagrange interpolant of
    the last `order` slopes; k-diffusion `sample_lms`), warm-up orders 1..order-1. Its step to
    sigma = 0 is a multistep step too (as k-diffusion). NFE = n."""
    sig = [float(s) for s in sigmas]
    ds = []
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        _cb(callback, i, x, sig[i], sig[i + 1], denoised)
        ds = [to_d(x, sig[i], denoised)] + ds[:order - 1]     # newest first
        coeffs = lms_coefficients(sig, i, len(ds))
        x = x + sum(c * d for c, d in zip(coeffs, ds))
    return x
