"""DM-NonUniform's data-free error bound for the `dpmpp_3m_lagrange` solver, and its per-step curve.

Xue et al. 2024, "Accelerating Diffusion Sampling with Optimized Time Steps" (arXiv 2402.17376),
Sec. 4-5, Thm. 1; methods.md s.5. Everything is in half-log-SNR lambda = -log sigma (EDM sigma).

Solver modelled (core/solvers/ode.py `dpmpp_3m_lagrange`, exactly): a schedule of n steps has levels
sigma_0 = sigma_max > ... > sigma_{n-1} = sigma_min > sigma_n = 0.  Steps s = 0 .. n-2 are
exponential multistep steps of order k_s = min(3, s + 1, n - s)  (1, 2, 3, ..., 3, 2):

    x_{s+1} = e^{-h_s} x_s + sum_j w_{s,j} D_j,   w_{s,j} = e^{-h_s} int_0^{h_s} e^u l_j du
            = sigma_{s+1} J_{s,j},               J_{s,j} = int_{lambda_s}^{lambda_{s+1}} e^lambda l_j dlambda

(`lagrange_weights`, nodes j = s, s-1, .., s-k_s+1; J is the paper's Eq. 10 weight).
Step n-1 jumps to sigma = 0 and returns D(x_{n-1}, sigma_min) (order 1).

Error propagation (the derivation the bound rests on).  Write the model's data-prediction error
at node j as eps_j (a fixed vector per node).  The recursion is linear in x with factor e^{-h},
so an error e entering x_{s+1} reaches x_{n-1} multiplied by prod_{m > s} e^{-h_m} =
sigma_{n-1} / sigma_{s+1}.  Step s's contribution at sigma_min is therefore

    a_{s,j} = w_{s,j} (sigma_{n-1} / sigma_{s+1}) eps_j = sigma_min * J_{s,j} * eps_j ,

the same constant sigma_min for every step: this is why the paper's code can sum J eps without
propagation factors (in VP coordinates the constant is sigma_vp(t_eps)).  The final jump returns
D(x_{n-1}, sigma_min) + eps_{n-1}; since D(x, sigma) = x + sigma^2 grad log p_sigma and
sigma_min << data scale, dD/dx ~= I, so the accumulated error passes through unchanged and the
jump adds its own eps_{n-1} with weight 1 (the sigma_next -> 0 limit of the order-1 weight).
The error of the returned sample is  sum_j (sum_s a_{s,j}) eps-direction_j, bounded by

    B = sum_j | c_j |,   c_j = sum_{s uses j} a_{s,j}   (+ eps_{n-1} for the jump's node)

(signed contributions of a node summed over the steps that use it, then absolute value).

Model error (paper Sec. 5):  eps(sigma) = sigma_t^p / alpha_t in the model's own process (VP:
alpha_vp = 1/sqrt(1 + sigma^2), sigma_vp = sigma/sqrt(1 + sigma^2), the paper's case; VE/EDM and flow
in `error_model`);  p = 1 for pixel-space models (then eps = sigma for every process), p = 2 for latent models.

Reference-code details kept (scxue/DM-NonUniform `step_optim.py`, read, not copied):
- order-1 steps enter alone, |a_{s,j}| (the first step; the jump's node is used by no other step);
- for NFE <= 7 the first three steps (s = 0, 1, 2) are "combined in quadrature": each such step
  adds sqrt(sum_j a_{s,j}^2) to the bound and does not feed c_j ("to avoid numerical instability");
  for NFE > 7 the reference keeps only the first (order-1) step apart.
Decision (quadrature="auto", the default; see `quadrature_steps`): the reference rule for NFE <= 7,
every step in quadrature for NFE > 7.  With the reference rule beyond 7 steps the bound's infimum
is reached by levels collapsing in pairs, whose huge opposite Lagrange weights cancel inside c_j
(8 steps, EDM range, p = 1: bound 0.0084 vs 0.082 at the sensible local minimum that the
reference's finite-difference run stalls in; the collapsed schedule's dpmpp_3m_lagrange discretization
error on moons is 0.39 vs 0.084, and 0.050 for the "auto" optimum).  The reference only gets
sensible schedules there because its optimizer stops near the start.  Up to NFE 7 the reference
rule is well posed (one optimum from every start; at 7 steps it sits on a kink c_j = 0, which
`core.optimizers.nonuniform` solves exactly in epigraph form).

N mapping (convention="ours", the default): our n (steps) = the paper's N = NFE.  The paper spends its N model calls on N multistep
intervals over [t_eps, T] (orders 1,2,3,..,3,2,1; the last interval ends at t_eps without a model
call there), so it has N - 1 free points.  Our solver spends the same N calls on n - 1 multistep
intervals over [sigma_min, sigma_max] (orders 1,2,3,..,3,2), the n-th call being D at sigma_min for
the jump to 0, so n - 2 levels are free.  convention="paper" is the reference's own setting: N + 1 levels,
N multistep steps of orders 1,2,3,..,3,2,1, no jump, N - 1 free levels (`step_plan`).

Units: B is the error of the final sample (EDM x at sigma = 0) per unit of the model error
scale; `bound_terms` returns it per step (see `truncation_curve`).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from core.errors import ScheduleLabError
from core.objectives.error_model import (NOISES, _check_noise, _log_error_derivatives,  # noqa: F401
                                         error_model, noise_family)
from core.schedules import Schedule
from core.solvers.lagrange import lagrange_weights, multistep_orders

SOLVER = "dpmpp_3m_lagrange"          # the solver this bound models
QUADRATURE_MAX_NFE = 7       # reference: NFE <= 7 -> first 3 steps in quadrature
QUADRATURE_STEPS = 3
CONVENTIONS = ("ours", "paper")


def step_plan(n: int, quadrature="auto", convention: str = "ours"):
    """(orders [n-1], quadrature steps, jump) for n levels lam_0 .. lam_{n-1}.

    ours:  n = NFE levels; steps 0 .. n-2 are multistep (orders 1,2,3,...,3,2), then the jump to 0
           (jump=True: D at sigma_min adds its own eps_{n-1}).
    paper: n = N + 1 levels for N = NFE; steps 0 .. N-1 are multistep with orders 1,2,3,...,3,2,1 and
           the last ends at sigma_min (the reference's t_eps) with no model call there; the
           quadrature rule is applied with N (the reference's truncNum = 3 for N <= 7)."""
    if convention not in CONVENTIONS:
        raise ScheduleLabError(f"convention must be one of {', '.join(CONVENTIONS)}; got {convention!r}")
    if convention == "ours":
        return tuple(multistep_orders(n, 3)[:n - 1]), quadrature_steps(n, quadrature), True
    return tuple(multistep_orders(n - 1, 3)), quadrature_steps(n - 1, quadrature), False


def quadrature_steps(n: int, quadrature="auto") -> tuple:
    """Steps whose node contributions enter the bound in quadrature, each step on its own.

    quadrature:
        "reference": the reference code's rule at every NFE: the first 3 steps for n <= 7, else
            only the first (order-1) step.  For n > 7 this leaves every later step's
            contributions signed-accumulated per node, and the objective becomes ill-posed:
            levels collapse in pairs so that huge, opposite Lagrange weights cancel (measured on
            moons / dpmpp_3m_lagrange at 8 steps: bound 0.0084 vs 0.082 for the sensible local minimum,
            discretization error 0.39 vs 0.084).  Kept for study.
        "auto" (default): "reference" for n <= 7 (well posed: one optimum from every start),
            "all" for n > 7 (the reference's own stabilisation extended to every step).
        "all": every multistep step in quadrature (no cross-step cancellation; smooth, well posed).
        int k: the first k steps.
    The first (order-1) step is always among them (the reference adds its |J eps| alone).
    """
    if quadrature == "auto":
        q = QUADRATURE_STEPS if n <= QUADRATURE_MAX_NFE else n
    elif quadrature == "reference":
        q = QUADRATURE_STEPS if n <= QUADRATURE_MAX_NFE else 0
    elif quadrature == "all":
        q = n
    elif isinstance(quadrature, (int, np.integer)) and not isinstance(quadrature, bool) and quadrature >= 0:
        q = int(quadrature)
    else:
        raise ScheduleLabError(f"quadrature must be 'auto', 'reference', 'all' or a number of steps >= 0; "
                               f"got {quadrature!r}")
    return tuple(range(min(max(q, 1), max(n - 1, 0))))


@lru_cache(maxsize=128)
def _plan(n: int, quadrature, convention: str = "ours"):
    """Static structure of an n-level dpmpp_3m_lagrange run: per order k, the step indices [m], node indices
    [m, k] (nodes s, s-1, .., s-k+1) and which of those steps are in quadrature [m] (numpy, so the
    cache never holds a tensor created inside a torch.func transform); and the jump flag."""
    orders, quad, jump = step_plan(n, quadrature, convention)
    groups = []
    for k in (1, 2, 3):
        steps = [s for s in range(n - 1) if orders[s] == k]
        if steps:
            nodes = np.array([[s - j for j in range(k)] for s in steps], dtype=np.int64)
            groups.append((k, np.array(steps, dtype=np.int64), nodes, np.array([s in quad for s in steps])))
    return orders, groups, jump


def bound_parts(lam: torch.Tensor, p: float = 1.0, quadrature="auto", noise: str = "vp",
                convention: str = "ours"):
    """The two pieces of the bound for levels lam = -log sigma_0 .. sigma_{n-1}.

    lam: [n] float64, increasing (lam[n-1] = -log sigma_min); may require grad.
    Returns (q [n], c [n]): q[s] = sqrt(sum_j a_{s,j}^2) for the quadrature steps (else 0);
    c[j] = signed accumulated error of node j from the other steps (+ eps_{n-1} at the jump's
    node, convention "ours").  B = sum(q) + sum(|c|).  noise, convention: see error_model, step_plan.
    """
    n = lam.shape[0]
    _, groups, has_jump = _plan(n, quadrature, convention)
    eps = error_model(torch.exp(-lam), p, noise)
    c = torch.zeros(n, dtype=lam.dtype, device=lam.device)
    q = torch.zeros(n, dtype=lam.dtype, device=lam.device)
    for k, steps_np, nodes_np, quad_np in groups:
        steps, nodes = torch.from_numpy(steps_np), torch.from_numpy(nodes_np)
        lam_next = lam[steps + 1]
        w = lagrange_weights(lam[nodes], lam_next)                         # [m, k]
        prop = torch.exp(lam_next - lam[n - 1]).unsqueeze(-1)              # sigma_min / sigma_{s+1}
        a = w * prop * eps[nodes]                                           # [m, k] at sigma_min
        if quad_np.any():
            iq = torch.from_numpy(quad_np)
            q = q.index_add(0, steps[iq], a[iq].pow(2).sum(-1).sqrt())
        if not quad_np.all():
            keep = torch.from_numpy(~quad_np)
            c = c.index_add(0, nodes[keep].reshape(-1), a[keep].reshape(-1))
    if not has_jump:
        return q, c
    jump = torch.zeros_like(c)
    jump[n - 1] = 1.0
    return q, c + jump * eps[n - 1]                                          # D(x, sigma_min) + eps


# ---- closed-form float64 numpy evaluation with exact derivatives (the optimizer's hot path) -------
# Same formulas as `bound_parts` (the torch version stays the independent reference; tests check
# value, gradient, Jacobian and Hessian against autograd).  Step s depends on h = lam_{s+1} - lam_s,
# h1 = lam_s - lam_{s-1}, h2 = lam_{s-1} - lam_{s-2}.  With G_m = e^{-h} H_m(h):
#   G0 = 1 - e^{-h},  G_m = h^m - m G_{m-1};   G_m' = h^m - G_m,   G_m'' = m h^{m-1} - G_m'.
# The scaled Lagrange weights of an order-3 step are (r1 = 1/h1, r2 = 1/h2, rS = 1/(h1 + h2))
#   w0 = G0 + (r1 + rS) G1 + r1 rS G2,   w1 = -(r1 + r2) G1 - r1 r2 G2,   w2 = (r2 - rS) G1 + r2 rS G2;
# setting r2 = rS = 0 gives the order-2 weights (w0 = G0 + r1 G1, w1 = -r1 G1, w2 = 0) and also
# r1 = 0 the order-1 weight (w0 = G0), derivatives included, so every step is one vectorised row.
# a_{s,j} = w_j F_j,  F_j = P eps_j,  P = exp(lam_{s+1} - lam_{n-1}),  eps_j = eps(exp(-lam_{s-j})),
# d log eps / d lam = -(p + (1 - p) u / (1 + u)),  d^2 log eps / d lam^2 = 2 (1 - p) u / (1 + u)^2,  u = sigma^2.

# d(h, h1, h2) / d(lam_{s+1}, lam_s, lam_{s-1}, lam_{s-2}, lam_{n-1})
_T = np.array([[1.0, -1.0, 0.0, 0.0, 0.0], [0.0, 1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0, 0.0]])


@lru_cache(maxsize=128)
def _plan_np(n: int, quadrature, convention: str = "ours"):
    """Static index arrays for all n - 1 multistep steps as rows: steps [M], order masks, nodes
    [M, 3] (s, s-1, s-2, clipped at 0; weights of unused nodes are exactly 0), positions [M, 5]
    (s+1, s, s-1, s-2, n-1), quadrature mask [M] and the flat scatter indices."""
    M = n - 1
    steps = np.arange(M)
    orders_t, quad, jump = step_plan(n, quadrature, convention)
    orders = np.array(orders_t)
    nodes = np.maximum(steps[:, None] - np.arange(3), 0)
    pos = np.concatenate([steps[:, None] + 1, nodes, np.full((M, 1), n - 1)], 1)
    qm = np.isin(steps, quad)
    jc_idx = (nodes[:, :, None] * n + pos[:, None, :])[~qm].ravel()
    jq_idx = (steps[:, None] * n + pos)[qm].ravel()
    h_idx = pos[:, :, None] * n + pos[:, None, :]
    return steps, orders, nodes, pos, qm, jc_idx, jq_idx, h_idx[qm].ravel(), h_idx[~qm], jump


class BoundNP:
    """The bound's pieces at one point lam [n] (numpy float64), with exact derivatives.

    order 0: q [n], c [n] as `bound_parts`.  order >= 1: Jq, Jc [n, n] (d/dlam, every level incl.
    the endpoints).  order 2: `hessian(node_weights, with_q)` = sum_s Hess q_s (if with_q) +
    sum_j node_weights[j] Hess c_j  [n, n]."""

    def __init__(self, lam, p: float = 1.0, quadrature="auto", order: int = 0, noise: str = "vp",
                 convention: str = "ours"):
        lam = np.asarray(lam, dtype=np.float64)
        n = self.n = lam.shape[0]
        steps, orders, nodes, pos, qm, jc_idx, jq_idx, hq_idx, hc_idx, jump = _plan_np(n, quadrature, convention)
        self._hq_idx, self._hc_idx, self._qm, self._nodes = hq_idx, hc_idx, qm, nodes
        sig = np.exp(-lam)
        eps = error_model(sig, p, noise)
        jump_eps = eps[n - 1] if jump else 0.0
        h = lam[1:] - lam[:-1]
        hp = np.r_[1.0, h[:-1]]                                       # h1 (dummy 1 where unused)
        hpp = np.r_[1.0, 1.0, h[:-2]]                                 # h2
        o2, o3 = orders >= 2, orders >= 3
        r1 = np.where(o2, 1.0 / np.where(o2, hp, 1.0), 0.0)
        r2 = np.where(o3, 1.0 / np.where(o3, hpp, 1.0), 0.0)
        rS = np.where(o3, 1.0 / np.where(o3, hp + hpp, 1.0), 0.0)
        G0 = -np.expm1(-h)
        G1 = h - G0
        G2 = h * h - 2.0 * G1
        A = np.stack([r1 + rS, -(r1 + r2), r2 - rS], 1)               # w_j = [j=0] G0 + A_j G1 + B_j G2
        B = np.stack([r1 * rS, -r1 * r2, r2 * rS], 1)
        w = A * G1[:, None] + B * G2[:, None]
        w[:, 0] += G0
        F = np.exp(lam[1:] - lam[n - 1])[:, None] * eps[nodes]        # [M, 3]
        a = w * F
        qs = np.sqrt((a[qm] ** 2).sum(1))
        self.q = np.zeros(n)
        self.q[steps[qm]] = qs
        self.c = np.bincount(nodes[~qm].ravel(), a[~qm].ravel(), n).astype(np.float64)  # int when empty
        self.c[n - 1] += jump_eps
        if order == 0:
            return
        dle, d2le = _log_error_derivatives(sig, p, noise)
        dG0, dG1, dG2 = 1.0 - G0, h - G1, h * h - G2
        r11, rSS, r22 = r1 * r1, rS * rS, r2 * r2
        A1 = np.stack([-r11 - rSS, r11, rSS], 1)                      # dA/dh1, dA/dh2, dB/dh1, dB/dh2
        A2 = np.stack([-rSS, r22, rSS - r22], 1)
        B1 = np.stack([-r1 * rS * (r1 + rS), r11 * r2, -r2 * rSS], 1)
        B2 = np.stack([-r1 * rSS, r1 * r22, -r2 * rS * (r2 + rS)], 1)
        Wh = A * dG1[:, None] + B * dG2[:, None]
        Wh[:, 0] += dG0
        W1 = A1 * G1[:, None] + B1 * G2[:, None]
        W2 = A2 * G1[:, None] + B2 * G2[:, None]
        U = np.stack([Wh, W1 - Wh, W2 - W1, -W2, np.zeros_like(Wh)], -1)          # dw / d pos [M, 3, 5]
        gF = np.zeros((n - 1, 3, 5))                                               # d log F / d pos
        gF[:, :, 0], gF[:, :, 4] = 1.0, -1.0
        gF[:, [0, 1, 2], [1, 2, 3]] += dle[nodes]
        Da = F[..., None] * (U + w[..., None] * gF)
        self.Jq = np.zeros(n * n)
        if qm.any():
            Dq = ((a[qm] / qs[:, None])[..., None] * Da[qm]).sum(1)               # [mq, 5]
            self.Jq = np.bincount(jq_idx, Dq.ravel(), n * n)
        self.Jc = np.bincount(jc_idx, Da[~qm].ravel(), n * n).astype(np.float64).reshape(n, n)
        self.Jq = self.Jq.reshape(n, n)
        self.Jc[n - 1, n - 1] += jump_eps * dle[n - 1]
        self._jump2 = jump_eps * (dle[n - 1] ** 2 + d2le[n - 1])
        if order < 2:
            return
        d2G0, d2G1, d2G2 = -dG0, 1.0 - dG1, 2.0 * h - dG2
        r13, rS3, r23 = 2.0 * r11 * r1, 2.0 * rSS * rS, 2.0 * r22 * r2
        x12 = r11 * rSS + r1 * rS3                                                  # d2(r1 rS)/dh1 dh2
        z12 = r22 * rSS + r2 * rS3                                                  # d2(r2 rS)/dh1 dh2
        A11 = np.stack([r13 + rS3, -r13, -rS3], 1)
        A12 = np.stack([rS3, np.zeros_like(rS3), -rS3], 1)
        A22 = np.stack([rS3, -r23, r23 - rS3], 1)
        B11 = np.stack([r1 * rS * (2 * r11 + 2 * r1 * rS) + r1 * rS3, -r13 * r2, r2 * rS3], 1)
        B12 = np.stack([x12, -r11 * r22, z12], 1)
        B22 = np.stack([r1 * rS3, -r1 * r23, r2 * rS * (2 * r22 + 2 * r2 * rS) + r2 * rS3], 1)
        Whh = A * d2G1[:, None] + B * d2G2[:, None]
        Whh[:, 0] += d2G0
        Wh1 = A1 * dG1[:, None] + B1 * dG2[:, None]
        Wh2 = A2 * dG1[:, None] + B2 * dG2[:, None]
        W11 = A11 * G1[:, None] + B11 * G2[:, None]
        W12 = A12 * G1[:, None] + B12 * G2[:, None]
        W22 = A22 * G1[:, None] + B22 * G2[:, None]
        d2W = np.stack([np.stack([Whh, Wh1, Wh2], -1), np.stack([Wh1, W11, W12], -1),
                        np.stack([Wh2, W12, W22], -1)], -2)                          # [M, 3, 3, 3]
        UgF = U[..., :, None] * gF[..., None, :]
        D2 = _T.T @ d2W @ _T + UgF + UgF.swapaxes(-1, -2) + w[..., None, None] * gF[..., :, None] * gF[..., None, :]
        D2[:, [0, 1, 2], [1, 2, 3], [1, 2, 3]] += w * d2le[nodes]
        D2 *= F[..., None, None]
        self._D2c = D2[~qm]
        self._Hq = None
        if qm.any():
            aq, Daq = a[qm] / qs[:, None], Da[qm]
            self._Hq = ((aq[..., None, None] * D2[qm]).sum(1) + np.einsum("mja,mjb->mab", Daq, Daq) / qs[:, None, None]
                        - Dq[:, :, None] * Dq[:, None, :] / qs[:, None, None])

    @property
    def value(self) -> float:
        return float(self.q.sum() + np.abs(self.c).sum())

    def gradient(self, node_weights=None):
        """sum_s grad q_s + sum_j node_weights[j] grad c_j (default weights sign(c): grad B)."""
        wts = np.sign(self.c) if node_weights is None else node_weights
        return self.Jq.sum(0) + wts @ self.Jc

    def hessian(self, node_weights=None, with_q: bool = True):
        """sum_s Hess q_s (with_q) + sum_j node_weights[j] Hess c_j (default sign(c): Hess B off kinks)."""
        n = self.n
        wts = np.sign(self.c) if node_weights is None else np.asarray(node_weights, dtype=np.float64)
        H = np.zeros(n * n)
        if with_q and self._Hq is not None:
            H += np.bincount(self._hq_idx, self._Hq.ravel(), n * n)
        if len(self._D2c):
            Hc = (wts[self._nodes[~self._qm]][..., None, None] * self._D2c).sum(1)
            H += np.bincount(self._hc_idx.ravel(), Hc.ravel(), n * n)
        H = H.reshape(n, n)
        H[n - 1, n - 1] += wts[n - 1] * self._jump2
        return H


def bound_parts_np(lam, p: float = 1.0, quadrature="auto", jac: bool = False, noise: str = "vp",
                   convention: str = "ours"):
    """numpy float64 twin of `bound_parts`: (q [n], c [n]) and, with jac=True, also their
    Jacobians dq/dlam, dc/dlam [n, n] (exact, closed form, w.r.t. every level incl. the endpoints)."""
    b = BoundNP(lam, p, quadrature, order=1 if jac else 0, noise=noise, convention=convention)
    return (b.q, b.c, b.Jq, b.Jc) if jac else (b.q, b.c)


def bound_np(lam, p: float = 1.0, quadrature="auto", grad: bool = False, noise: str = "vp",
             convention: str = "ours"):
    """B (float) for levels lam [n] (numpy), and with grad=True its exact gradient [n] too."""
    b = BoundNP(lam, p, quadrature, order=1 if grad else 0, noise=noise, convention=convention)
    return (b.value, b.gradient()) if grad else b.value


def signed_nodes(n: int, quadrature="auto", convention: str = "ours") -> tuple:
    """Nodes whose accumulated error c_j collects signed terms of several weights (those of the
    non-quadrature steps); |c_j| has a kink where c_j = 0 (the optimizer handles these exactly)."""
    _, groups, _ = _plan(n, quadrature, convention)
    out = set()
    for _, _, nodes_np, quad_np in groups:
        out |= set(nodes_np[~quad_np].reshape(-1).tolist())
    return tuple(sorted(out))


def bound_terms(lam: torch.Tensor, p: float = 1.0, quadrature="auto", noise: str = "vp",
                convention: str = "ours") -> torch.Tensor:
    """Per-step contributions [n] to the bound B for levels lam = -log sigma_0..sigma_{n-1}.

    Entry s = (quadrature term of step s, if any) + |c_s|, where c_s is the signed accumulated
    error of node s (the level step s starts from); the entries sum to B."""
    q, c = bound_parts(lam, p, quadrature, noise, convention)
    return q + c.abs()


def bound(lam: torch.Tensor, p: float = 1.0, quadrature="auto", noise: str = "vp",
          convention: str = "ours") -> torch.Tensor:
    """The DM-NonUniform objective B (scalar tensor) for levels lam [n] (see bound_terms)."""
    return bound_terms(lam, p, quadrature, noise, convention).sum()


def schedule_lambdas(schedule: Schedule) -> torch.Tensor:
    """lambda = -log sigma for the n positive levels of a schedule, [n] float64."""
    return -torch.log(torch.tensor(schedule.sigmas[:-1], dtype=torch.float64))


def truncation_curve(schedule: Schedule, p: float = 1.0, quadrature="auto", noise: str = "vp") -> dict:
    """Per-step contributions of DM-NonUniform's bound for any schedule (its per-interval curve).

    Returns a dict (lists have one entry per step, s = 0 .. n-1; step n-1 is the jump to 0):
        sigma_hi, sigma_lo: the step's interval [sigma_{s+1}, sigma_s] (sigma_lo = 0 for the jump).
        contribution: the step's share of B in final-sample error units (quadrature term of the
            step, if it is one of the `quadrature_steps`, plus |c_s|, the accumulated signed error
            of the node at sigma_s); sums to `objective`.
        share: contribution / objective.
        order: the solver's order at the step (1, 2, 3, ..., 3, 2, 1; the last is the jump).
        quadrature: whether the step enters in quadrature (reference rule for NFE <= 7).
        node_error: eps(sigma_s) = sigma_t^p / alpha_t, the modelled model error at the node (noise:
            the process family, see error_model).
        objective: B;  p, solver ("dpmpp_3m_lagrange"), steps.
    """
    if not isinstance(schedule, Schedule):
        raise ScheduleLabError("truncation_curve needs a Schedule (core.schedules.Schedule)")
    _check_p(p)
    n = schedule.steps
    with torch.no_grad():
        terms = bound_terms(schedule_lambdas(schedule), p, quadrature, noise)
    total = float(terms.sum())
    if not (math.isfinite(total) and bool(torch.isfinite(torch.as_tensor(terms)).all())):
        raise ScheduleLabError(f"the error bound of {schedule.label()} with p = {p:g} is {total} (the error "
                               f"model sigma_vp^p / alpha_vp over/underflows); use p in [0, {P_MAX:g}] "
                               "(1 for pixel models, 2 for latent ones)")
    sig = schedule.sigmas
    quad = set(quadrature_steps(n, quadrature))
    return {
        "sigma_hi": list(sig[:-1]), "sigma_lo": list(sig[1:]),
        "contribution": terms.tolist(),
        "share": (terms / total).tolist() if total > 0 else [math.nan] * n,
        "order": multistep_orders(n, 3),
        "quadrature": [s in quad for s in range(n)],
        "node_error": error_model(np.asarray(sig[:-1]), p, noise).tolist(),
        "objective": total, "p": p, "solver": SOLVER, "steps": n,
    }


P_MAX = 16.0          # beyond this sigma_vp^p under/overflows for usual ranges; no model uses p > 4


def _check_p(p) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0 <= p <= P_MAX:
        raise ScheduleLabError(f"p (the error model's exponent) must be a number in [0, {P_MAX:g}] "
                               f"(1 for pixel models, 2 for latent ones); got {p!r}")
