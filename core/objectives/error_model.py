"""DM-NonUniform's model-error term (Xue et al. 2024, Sec. 5; methods.md s.5) in the model's own process.

The unknown data-prediction error at a node is modelled as eps = sigma_t^p / alpha_t, with (alpha_t, sigma_t)
the network's own process coordinates (x_t = alpha_t x0 + sigma_t eps); `core.objectives.truncation`
weights it by the solver's Lagrange integrals.  Everything is written in EDM sigma = sigma_t / alpha_t.
"""
from __future__ import annotations

import numpy as np
import torch

from core.errors import ScheduleLabError

NOISES = ("vp", "ve", "flow")        # the process family whose (alpha_t, sigma_t) the error model uses


def error_model(sigma, p: float = 1.0, noise: str = "vp"):
    """eps(sigma) = sigma_t^p / alpha_t  (paper Sec. 5) in the process's own coordinates
    x_t = alpha_t x0 + sigma_t eps, written in EDM sigma = sigma_t / alpha_t as
    eps = sigma^p alpha_t^(p - 1):

        vp   (DDPM, VP-SDE; any discrete table)  alpha_t = 1/sqrt(1 + sigma^2)  (the paper's case)
        ve   (EDM / VE)                          alpha_t = 1
        flow (rectified flow)                    alpha_t = 1/(1 + sigma)

    p = 1 gives sigma for every family.  sigma: numpy array or torch tensor (autograd-safe)."""
    _check_noise(noise)
    if isinstance(sigma, torch.Tensor):
        s = sigma
    else:
        s = np.asarray(sigma, dtype=np.float64)
    if noise == "ve" or p == 1:
        return s ** p
    if noise == "flow":
        return s ** p * (1 + s) ** (1 - p)
    return s ** p * (1 + s ** 2) ** ((1 - p) / 2)


def _log_error_derivatives(sig, p: float, noise: str):
    """(d log eps / d lam, d^2 log eps / d lam^2) at sigma = e^-lam (numpy).  With g = log alpha_t(sigma),
    log eps = p log sigma + (p - 1) g:  first = -p - (p - 1) k1,  second = (p - 1) k2,  k1 = sigma g',
    k2 = sigma (sigma g')'.   vp: k1 = -u/(1+u), k2 = -2u/(1+u)^2 (u = sigma^2); flow: k1 = -s/(1+s),
    k2 = -s/(1+s)^2; ve: 0."""
    if noise == "vp":
        u = sig * sig
        k1, k2 = -u / (1.0 + u), -2.0 * u / (1.0 + u) ** 2
    elif noise == "flow":
        k1, k2 = -sig / (1.0 + sig), -sig / (1.0 + sig) ** 2
    else:
        k1 = k2 = np.zeros_like(sig)
    return -p - (p - 1.0) * k1, (p - 1.0) * k2


def noise_family(process) -> str:
    """'vp' | 've' | 'flow' for a process object or name (core.processes / core.models.wrap.make_process)."""
    name = process if isinstance(process, str) else getattr(process, "name", "")
    return {"edm": "ve", "ve": "ve", "flow": "flow"}.get(name, "vp")


def _check_noise(noise) -> None:
    if noise not in NOISES:
        raise ScheduleLabError(f"noise must be one of {', '.join(NOISES)} (the process family of the error "
                               f"model); got {noise!r}")
