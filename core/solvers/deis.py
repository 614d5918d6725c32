"""DEIS, tAB mode (Zhang & Chen 2023, "Fast sampling of diffusion models with exponential
integrator"), as ComfyUI's `sample_deis` runs it (max_order 3, deis_mode 'tab'; via
zju-pi/diff-sampler): Adams-Bashforth on the EDM slope d = dx/dsigma = (x - D) / sigma, with
the Lagrange interpolant of the last k slopes taken in VP time t and integrated against
dsigma/dt:

    x_{i+1} = x_i + sum_j c_ij d_{i-j},   c_ij = integral_{t_i}^{t_{i+1}} l_j(tau) (dsigma/dtau) dtau.

t(sigma) is the linear VP-SDE whose beta_d, beta_min put sigma = 0.002 at t = 1e-3 and sigma = 80
at t = 1, fixed whatever the schedule (upstream's `edm2t` defaults). dsigma/dtau =
-(1/2) dlog(alpha_bar)/dtau / sqrt(alpha_bar (1 - alpha_bar)). The integral is upstream's
N = 10000-point sum over linspace(t_i, t_{i+1}, N) times (t_{i+1} - t_i) / N, kept as is so the
name means exactly their sampler (it is a first-order quadrature: weights carry a ~1e-4
relative error against the exact integral).
"""
from __future__ import annotations

import math

import torch

from core.solvers.ode import _cb, to_d

EPS_S, SIGMA_MIN_VP, SIGMA_MAX_VP = 1e-3, 0.002, 80.0   # upstream edm2t's fixed arguments
N_QUAD = 10000


def vp_betas() -> tuple:
    """(beta_d, beta_min) of the linear VP-SDE with sigma(EPS_S) = 0.002 and sigma(1) = 80."""
    beta_d = 2 * (math.log(SIGMA_MIN_VP ** 2 + 1) / EPS_S - math.log(SIGMA_MAX_VP ** 2 + 1)) / (EPS_S - 1)
    return beta_d, math.log(SIGMA_MAX_VP ** 2 + 1) - 0.5 * beta_d


def edm_to_vp_t(sigma: float, beta_d: float, beta_min: float) -> float:
    """VP time of an EDM sigma: inverse of sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
    return (math.sqrt(beta_min ** 2 + 2 * beta_d * math.log(sigma ** 2 + 1)) - beta_min) / beta_d


def deis_coefficients(sig: list, i: int, order: int) -> list:
    """[c_i0, ..., c_i(order-1)] of step i (nodes t_i, t_{i-1}, ...), upstream's quadrature, float64."""
    beta_d, beta_min = vp_betas()
    t = [edm_to_vp_t(s, beta_d, beta_min) for s in sig[i - order + 1:i + 2]][::-1]   # t_{i+1}, t_i, t_{i-1}, ...
    t_next, nodes = t[0], t[1:]
    taus = torch.linspace(nodes[0], t_next, N_QUAD, dtype=torch.float64)
    beta_0, beta_1 = beta_min, beta_d + beta_min
    alpha = torch.exp(-0.5 * taus ** 2 * (beta_1 - beta_0) - taus * beta_0)          # alpha_bar(tau)
    dsigma_dtau = -0.5 * (-taus * (beta_1 - beta_0) - beta_0) / torch.sqrt(alpha * (1 - alpha))
    dtau = (t_next - nodes[0]) / N_QUAD
    out = []
    for j in range(order):
        poly = torch.ones_like(taus)
        for k in range(order):
            if k != j:
                poly = poly * (taus - nodes[k]) / (nodes[j] - nodes[k])
        out.append(float(torch.sum(dsigma_dtau * poly)) * dtau)
    return out


@torch.no_grad()
def deis(model, x, sigmas, callback=None, generator=None, max_order: int = 3):
    """DEIS-tAB(3) (ComfyUI `sample_deis`): warm-up orders 1, 2, then 3; the step to sigma = 0 is
    Euler (returns D). NFE = n."""
    sig = [float(s) for s in sigmas]
    ds = []
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        _cb(callback, i, x, sig[i], sig[i + 1], denoised)
        d = to_d(x, sig[i], denoised)
        order = 1 if sig[i + 1] <= 0 else min(max_order, i + 1)
        if order == 1:
            x = x + (sig[i + 1] - sig[i]) * d
        else:
            coeffs = deis_coefficients(sig, i, order)
            x = x + sum(c * dj for c, dj in zip(coeffs, [d] + ds))
        ds = ([d] + ds)[:max_order - 1]
    return x
