"""Exponential-integrator weights for multistep data-prediction solvers in half-log-SNR.

With lambda = -log sigma, the probability-flow ODE in data prediction integrates exactly to

    x_{i+1} = (sigma_{i+1} / sigma_i) x_i + sigma_{i+1} * integral_{lambda_i}^{lambda_{i+1}} e^lambda D(lambda) dlambda.

Replacing D by the Lagrange polynomial through the last k nodes (lambda_i, lambda_{i-1}, ...)
gives node weights  w_j = e^{-h} * integral_0^h e^u l_j(lambda_i + u) du,  h = lambda_{i+1} - lambda_i,
in closed form through  H_m(h) = integral_0^h e^u u^m du  (DM-NonUniform, Xue et al. 2024,
Sec. 3; methods.md s.5). These weights are shared by the `dpmpp_3m_lagrange` solver and the
DM-NonUniform objective, so the objective models exactly the solver that samples.
Works on torch float64 tensors (autograd-safe) of any batch shape.
"""
from __future__ import annotations

import torch


def scaled_H(h: torch.Tensor, order: int) -> list:
    """[e^{-h} H_m(h) for m < order]:  e^{-h}H0 = 1 - e^{-h},  e^{-h}H_m = h^m - m e^{-h}H_{m-1}."""
    out = [-torch.expm1(-h)]
    for m in range(1, order):
        out.append(h ** m - m * out[-1])
    return out


def lagrange_weights(nodes: torch.Tensor, lam_next: torch.Tensor) -> torch.Tensor:
    """Weights of one exponential multistep step.

    Args:
        nodes: [..., k] half-log-SNRs (lambda_i, lambda_{i-1}, ..., lambda_{i-k+1}); nodes[..., 0]
            is the current point.
        lam_next: [...] lambda_{i+1} > lambda_i.
    Returns:
        [..., k] weights w_j with  x_{i+1} = e^{-h} x_i + sum_j w_j D(lambda_{i-j}).
        Order 1 gives w = 1 - e^{-h} (DDIM / DPM-Solver++(1)).
    """
    k = nodes.shape[-1]
    lam_i = nodes[..., 0]
    h = lam_next - lam_i
    Hs = scaled_H(h, k)                                     # k tensors [...]
    u = nodes - lam_i.unsqueeze(-1)                         # node offsets, u_0 = 0
    weights = []
    for j in range(k):
        # l_j(u) = prod_{m != j} (u - u_m) / (u_j - u_m), expanded as sum_p c_p u^p
        coeffs = [torch.ones_like(h)]
        denom = torch.ones_like(h)
        for m in range(k):
            if m == j:
                continue
            um = u[..., m]
            new = [torch.zeros_like(h) for _ in range(len(coeffs) + 1)]
            for p, c in enumerate(coeffs):
                new[p + 1] = new[p + 1] + c
                new[p] = new[p] - um * c
            coeffs = new
            denom = denom * (u[..., j] - um)
        weights.append(sum(c * Hs[p] for p, c in enumerate(coeffs)) / denom)
    return torch.stack(weights, dim=-1)


def multistep_orders(n: int, max_order: int = 3) -> list:
    """Step orders for an n-step schedule ending in sigma = 0: warm-up and lower-order final
    steps, order_i = min(max_order, i + 1, n - i): 1, 2, 3, ..., 3, 2, 1. The last step (to
    sigma = 0) is order 1, i.e. it returns D(x, sigma_min)."""
    return [min(max_order, i + 1, n - i) for i in range(n)]
