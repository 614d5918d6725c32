"""UniPC (Zhao et al. 2023, "UniPC: a unified predictor-corrector framework for fast sampling of
diffusion models"), multistep, data prediction, B(h) variants bh1 / bh2, as ComfyUI's
`sample_unipc` / `sample_unipc_bh2` (comfy/extra_samplers/uni_pc.py) run it.

ComfyUI maps each EDM sigma to a VP state through `SigmaConvert`: alpha = 1 / sqrt(1 + sigma^2),
sigma_vp = sigma alpha, so lambda = log(alpha / sigma_vp) = -log(sigma) and x_vp = alpha x. No model
noise table enters: the VP "time" is sigma itself. Dividing the VP update by alpha_t gives the same
step in EDM form, which is what we run (h = lambda_t - lambda_{i}, hh = -h):

    x_t = (sigma_t / sigma_i) x_i - expm1(hh) D_i - B(h) sum_k rho_k D1_k        (UniP-p)
    x_t^c = (sigma_t / sigma_i) x_i - expm1(hh) D_i - B(h) (sum_k rho^c_k D1_k + rho^c_p (D_t - D_i))
                                                                                  (UniC-p)

with D1_k = (D_{i-k} - D_i) / r_k, r_k = (lambda_{i-k} - lambda_i) / h, B(h) = hh (bh1) or
expm1(hh) (bh2); rho solves R rho = b, R_{jk} = r_k^j, b_j = j! h phi_{j+1}(hh) / B(h) (rho = 1/2
where the system is 1x1). D_t is evaluated at the predictor's x_t and reused as the next step's
history (one model call per step).

Upstream's schedule conventions, kept so the name means exactly their sampler:
  * a final sigma = 0 is replaced by sigma = 0.001 and the result is x at sigma = 0.001 (not D);
  * order = min(3, n - 1); warm-up steps 1..order-1 use orders 1, 2, ...; the last steps use
    min(order, n + 1 - k) (lower_order_final); the last step has no corrector and no model call.
NFE = n. One step (n = 1) is refused: upstream takes no step then and returns its input noise.
"""
from __future__ import annotations

import math

import torch

from core.errors import ScheduleLabError
from core.solvers.ode import _cb

FINAL_SIGMA = 0.001      # ComfyUI's stand-in for a final sigma = 0


def _coefficients(rks: list, hh: float, variant: str):
    """(R [p, p], b [p], B(h)) of UniPC's B(h) update for ratios rks = [r_1, .., r_{p-1}, 1]."""
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else h_phi_1
    R, b, fact = [], [], 1
    for i in range(1, len(rks) + 1):
        R.append([r ** (i - 1) for r in rks])
        b.append(h_phi_k * fact / b_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    return torch.tensor(R, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), b_h, h_phi_1


def _update(model, x, ms: list, lams: list, sig_i: float, sig_t: float, order: int, variant: str,
            corrector: bool):
    """One UniP-`order` step from (x, lambda_i = lams[-1]) to sigma_t, then UniC if `corrector`.
    ms, lams: history of D and lambda, oldest first. Returns (x_t, D(x_t) or None)."""
    lam_t = -math.log(sig_t)
    h = lam_t - lams[-1]
    m0 = ms[-1]
    rks, d1s = [], []
    for k in range(1, order):
        rk = (lams[-(k + 1)] - lams[-1]) / h
        rks.append(rk)
        d1s.append((ms[-(k + 1)] - m0) / rk)
    R, b, b_h, h_phi_1 = _coefficients(rks + [1.0], -h, variant)
    x_base = (sig_t / sig_i) * x - h_phi_1 * m0
    pred = 0
    if d1s:
        rhos_p = [0.5] if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
        pred = sum(r * d for r, d in zip(rhos_p, d1s))
    x_t = x_base - b_h * pred
    if not corrector:
        return x_t, None
    rhos_c = [0.5] if order == 1 else torch.linalg.solve(R, b).tolist()
    m_t = model(x_t, sig_t)
    corr = sum(r * d for r, d in zip(rhos_c[:-1], d1s)) if d1s else 0
    return x_base - b_h * (corr + rhos_c[-1] * (m_t - m0)), m_t


@torch.no_grad()
def uni_pc(model, x, sigmas, callback=None, generator=None, variant: str = "bh1"):
    """UniPC, multistep B(h) (ComfyUI `sample_unipc`, default variant bh1). x at sigmas[0];
    returns x at sigmas[-1] (0.001 where sigmas[-1] = 0). NFE = n (n >= 2)."""
    if variant not in ("bh1", "bh2"):
        raise ScheduleLabError(f"unknown UniPC variant {variant!r}; choose bh1 or bh2")
    sig = [float(s) for s in sigmas]
    if sig[-1] == 0:
        sig[-1] = FINAL_SIGMA
    n = len(sig) - 1
    if n < 2:
        raise ScheduleLabError("uni_pc needs at least 2 steps (ComfyUI's sample_unipc takes no step with 1 "
                               "and returns its input noise); use 2 or more steps or another solver")
    order = min(3, n - 1)
    ms, lams = [model(x, sig[0])], [-math.log(sig[0])]
    _cb(callback, 0, x, sig[0], sig[1], ms[-1])
    for k in range(1, n + 1):
        p = k if k < order else min(order, n + 1 - k)
        x, m_t = _update(model, x, ms, lams, sig[k - 1], sig[k], p, variant, corrector=k < n)
        if k < n:
            ms, lams = (ms + [m_t])[-order:], (lams + [-math.log(sig[k])])[-order:]
            _cb(callback, k, x, sig[k], sig[k + 1], m_t)
    return x


@torch.no_grad()
def uni_pc_bh2(model, x, sigmas, callback=None, generator=None):
    """UniPC with B(h) = e^h - 1 (ComfyUI `sample_unipc_bh2`). NFE = n (n >= 2)."""
    return uni_pc(model, x, sigmas, callback=callback, generator=generator, variant="bh2")
