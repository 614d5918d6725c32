"""DM-NonUniform's data-free error bound for the `dpmpp_3m` solver, and its per-step curve.

Xue et al. 2024, "Accelerating Diffusion Sampling with Optimized Time Steps" (arXiv 2402.17376),
Sec. 4-5, Thm. 1; methods.md s.5. Everything is in half-log-SNR lambda = -log sigma (EDM sigma).

Solver modelled (core/solvers/ode.py `dpmpp_3m`, exactly): a schedule of n steps has levels
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

Model error (paper Sec. 5):  eps(sigma) = sigma_vp^p / alpha_vp,  alpha_vp = 1/sqrt(1 + sigma^2),
sigma_vp = sigma/sqrt(1 + sigma^2);  p = 1 for pixel-space models, p = 2 for latent models.

Reference-code details kept (scxue/DM-NonUniform `step_optim.py`, read, not copied):
- order-1 steps enter alone, |a_{s,j}| (the first step; the jump's node is used by no other step);
- for NFE <= 7 the first three steps (s = 0, 1, 2) are "combined in quadrature": each such step
  adds sqrt(sum_j a_{s,j}^2) to the bound and does not feed c_j ("to avoid numerical instability");
  for NFE > 7 the reference keeps only the first (order-1) step apart.
Decision (quadrature="auto", the default; see `quadrature_steps`): the reference rule for NFE <= 7,
every step in quadrature for NFE > 7.  With the reference rule beyond 7 steps the bound's infimum
is reached by levels collapsing in pairs, whose huge opposite Lagrange weights cancel inside c_j
(8 steps, EDM range, p = 1: bound 0.0084 vs 0.082 at the sensible local minimum that the
reference's finite-difference run stalls in; the collapsed schedule's dpmpp_3m discretization
error on moons is 0.39 vs 0.084, and 0.050 for the "auto" optimum).  The reference only gets
sensible schedules there because its optimizer stops near the start.  Up to NFE 7 the reference
rule is well posed (one optimum from every start; at 7 steps it sits on a kink c_j = 0, which
`core.optimizers.nonuniform` solves exactly in epigraph form).

N mapping: our n (steps) = the paper's N = NFE.  The paper spends its N model calls on N multistep
intervals over [t_eps, T] (orders 1,2,3,..,3,2,1; the last interval ends at t_eps without a model
call there), so it has N - 1 free points.  Our solver spends the same N calls on n - 1 multistep
intervals over [sigma_min, sigma_max] (orders 1,2,3,..,3,2), the n-th call being D at sigma_min for
the jump to 0, so n - 2 levels are free.

Units: B is the error of the final sample (EDM x at sigma = 0) per unit of the model error
scale; `bound_terms` returns it per step (see `truncation_curve`).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from core.errors import ScheduleLabError
from core.schedules import Schedule
from core.solvers.lagrange import lagrange_weights, multistep_orders

SOLVER = "dpmpp_3m"          # the solver this bound models
QUADRATURE_MAX_NFE = 7       # reference: NFE <= 7 -> first 3 steps in quadrature
QUADRATURE_STEPS = 3


def error_model(sigma, p: float = 1.0):
    """eps(sigma) = sigma_vp^p / alpha_vp = sigma^p (1 + sigma^2)^((1 - p) / 2)  (paper Sec. 5).

    sigma: EDM sigma, numpy array or torch tensor (autograd-safe)."""
    if isinstance(sigma, torch.Tensor):
        return sigma ** p * (1 + sigma ** 2) ** ((1 - p) / 2)
    s = np.asarray(sigma, dtype=np.float64)
    return s ** p * (1 + s ** 2) ** ((1 - p) / 2)


def quadrature_steps(n: int, quadrature="auto") -> tuple:
    """Steps whose node contributions enter the bound in quadrature, each step on its own.

    quadrature:
        "reference": the reference code's rule at every NFE: the first 3 steps for n <= 7, else
            only the first (order-1) step.  For n > 7 this leaves every later step's
            contributions signed-accumulated per node, and the objective becomes ill-posed:
            levels collapse in pairs so that huge, opposite Lagrange weights cancel (measured on
            moons / dpmpp_3m at 8 steps: bound 0.0084 vs 0.082 for the sensible local minimum,
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
def _plan(n: int, quad: tuple):
    """Static structure of an n-step dpmpp_3m run: per order k, the step indices [m], node indices
    [m, k] (nodes s, s-1, .., s-k+1) and which of those steps are in quadrature [m] (numpy, so the
    cache never holds a tensor created inside a torch.func transform)."""
    orders = multistep_orders(n, 3)
    groups = []
    for k in (1, 2, 3):
        steps = [s for s in range(n - 1) if orders[s] == k]
        if steps:
            nodes = np.array([[s - j for j in range(k)] for s in steps], dtype=np.int64)
            groups.append((k, np.array(steps, dtype=np.int64), nodes, np.array([s in quad for s in steps])))
    return orders, groups


def bound_parts(lam: torch.Tensor, p: float = 1.0, quadrature="auto"):
    """The two pieces of the bound for levels lam = -log sigma_0 .. sigma_{n-1}.

    lam: [n] float64, increasing (lam[n-1] = -log sigma_min); may require grad.
    Returns (q [n], c [n]): q[s] = sqrt(sum_j a_{s,j}^2) for the quadrature steps (else 0);
    c[j] = signed accumulated error of node j from the other steps (+ eps_{n-1} at the jump's
    node).  B = sum(q) + sum(|c|).
    """
    n = lam.shape[0]
    quad = quadrature_steps(n, quadrature)
    _, groups = _plan(n, quad)
    eps = error_model(torch.exp(-lam), p)
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
    jump = torch.zeros_like(c)
    jump[n - 1] = 1.0
    return q, c + jump * eps[n - 1]                                          # D(x, sigma_min) + eps


# ---- closed-form float64 numpy evaluation with exact derivatives (the optimizer's hot path) -------
# Same formulas as `bound_parts` (the torch version stays the independent reference; tests check
# value, gradient, Jacobian and Hessian against autograd).  Step s of order k depends on
# h = lam_{s+1} - lam_s, h1 = lam_s - lam_{s-1}, h2 = lam_{s-1} - lam_{s-2}.  With
# G_m = e^{-h} H_m(h):  G0 = 1 - e^{-h}, G_m = h^m - m G_{m-1};  G_m' = h^m - G_m,  G_m'' = m h^{m-1} - G_m'.
# The scaled Lagrange weights are w_j = sum_m C_{jm}(h1, h2) G_m(h) with (S = h1 + h2)
#   k=1: w0 = G0
#   k=2: w0 = G0 + G1/h1,  w1 = -G1/h1
#   k=3: w0 = G0 + (1/h1 + 1/S) G1 + G2/(h1 S),  w1 = -(1/h1 + 1/h2) G1 - G2/(h1 h2),
#        w2 = (1/h2 - 1/S) G1 + G2/(h2 S),
# and a_{s,j} = w_j F_j,  F_j = P eps_j,  P = exp(lam_{s+1} - lam_{n-1}),  eps_j = eps(exp(-lam_{s-j})),
# d log eps / d lam = -(p + (1 - p) u / (1 + u)),  d^2 log eps / d lam^2 = 2 (1 - p) u / (1 + u)^2,  u = sigma^2.

def _coeffs(k, h1, h2, order):
    """C [m, k, 3] (weight j = sum_r C[j, r] G_r) and, for order >= 1, dC/d(h1, h2) [m, k, 3, 2],
    for order 2 also d2C [m, k, 3, 2, 2]."""
    m = h1.shape[0]
    C = np.zeros((m, k, 3))
    C[:, 0, 0] = 1.0
    C1 = np.zeros((m, k, 3, 2)) if order >= 1 else None
    C2 = np.zeros((m, k, 3, 2, 2)) if order >= 2 else None
    if k == 1:
        return C, C1, C2
    r1 = 1.0 / h1
    if k == 2:
        C[:, 0, 1], C[:, 1, 1] = r1, -r1
        if order >= 1:
            C1[:, 0, 1, 0], C1[:, 1, 1, 0] = -r1 * r1, r1 * r1
        if order >= 2:
            C2[:, 0, 1, 0, 0], C2[:, 1, 1, 0, 0] = 2 * r1 ** 3, -2 * r1 ** 3
        return C, C1, C2
    r2, rS = 1.0 / h2, 1.0 / (h1 + h2)
    C[:, 0, 1], C[:, 0, 2] = r1 + rS, r1 * rS
    C[:, 1, 1], C[:, 1, 2] = -(r1 + r2), -r1 * r2
    C[:, 2, 1], C[:, 2, 2] = r2 - rS, r2 * rS
    if order >= 1:
        C1[:, 0, 1] = np.stack([-r1 * r1 - rS * rS, -rS * rS], 1)
        C1[:, 0, 2] = np.stack([-r1 * rS * (r1 + rS), -r1 * rS * rS], 1)
        C1[:, 1, 1] = np.stack([r1 * r1, r2 * r2], 1)
        C1[:, 1, 2] = np.stack([r1 * r1 * r2, r1 * r2 * r2], 1)
        C1[:, 2, 1] = np.stack([rS * rS, rS * rS - r2 * r2], 1)
        C1[:, 2, 2] = np.stack([-r2 * rS * rS, -r2 * rS * (r2 + rS)], 1)
    if order >= 2:
        t1, t2, tS = 2 * r1 ** 3, 2 * r2 ** 3, 2 * rS ** 3
        C2[:, 0, 1] = np.stack([np.stack([t1 + tS, tS], 1), np.stack([tS, tS], 1)], 1)
        C2[:, 1, 1, 0, 0], C2[:, 1, 1, 1, 1] = -t1, -t2
        C2[:, 2, 1] = np.stack([np.stack([-tS, -tS], 1), np.stack([-tS, t2 - tS], 1)], 1)
        x12 = r1 * r1 * rS * rS + r1 * tS                    # d2 (r1 rS) / dh1 dh2
        C2[:, 0, 2] = np.stack([np.stack([r1 * rS * (t1 / r1 + 2 * r1 * rS) + r1 * tS, x12], 1),
                                np.stack([x12, r1 * tS], 1)], 1)
        y12 = -r1 * r1 * r2 * r2
        C2[:, 1, 2] = np.stack([np.stack([-t1 * r2, y12], 1), np.stack([y12, -r1 * t2], 1)], 1)
        z12 = r2 * r2 * rS * rS + r2 * tS
        C2[:, 2, 2] = np.stack([np.stack([r2 * tS, z12], 1),
                                np.stack([z12, r2 * rS * (t2 / r2 + 2 * r2 * rS) + r2 * tS], 1)], 1)
    return C, C1, C2


@lru_cache(maxsize=128)
def _plan_np(n: int, quad: tuple):
    """Per order group: (k, steps [m], nodes [m, k], quad mask [m], positions [m, k + 2] =
    (s+1, s, .., s-k+1, n-1): the levels a_{s,j} depends on, and T [3, k + 2]: d(h, h1, h2)/d positions)."""
    _, groups = _plan(n, quad)
    out = []
    for k, steps, nodes, qm in groups:
        pos = np.concatenate([steps[:, None] + 1, nodes, np.full((len(steps), 1), n - 1)], 1)
        T = np.zeros((3, k + 2))
        for r in range(k):
            T[r, r], T[r, r + 1] = 1.0, -1.0
        out.append((k, steps, nodes, qm, pos, T))
    return out


class BoundNP:
    """The bound's pieces at one point lam [n] (numpy float64), with exact derivatives.

    order 0: q [n], c [n] as `bound_parts`.  order >= 1: Jq, Jc [n, n] (d/dlam, every level incl.
    the endpoints).  order 2: `hessian(node_weights, with_q)` = sum_s Hess q_s (if with_q) +
    sum_j node_weights[j] Hess c_j  [n, n]."""

    def __init__(self, lam, p: float = 1.0, quadrature="auto", order: int = 0):
        lam = np.asarray(lam, dtype=np.float64)
        n = self.n = lam.shape[0]
        sig = np.exp(-lam)
        eps = error_model(sig, p)
        u = sig * sig
        dle = -(p + (1.0 - p) * u / (1.0 + u))
        d2le = 2.0 * (1.0 - p) * u / (1.0 + u) ** 2
        self.q, self.c = np.zeros(n), np.zeros(n)
        Jq, Jc = np.zeros(n * n), np.zeros(n * n)
        self.local = []
        for k, steps, nodes, qm, pos, T in _plan_np(n, quadrature_steps(n, quadrature)):
            h = lam[steps + 1] - lam[steps]
            h1 = lam[steps] - lam[steps - 1] if k > 1 else h
            h2 = lam[steps - 1] - lam[steps - 2] if k > 2 else h
            G0 = -np.expm1(-h)
            G1 = h - G0
            G = np.stack([G0, G1, h * h - 2.0 * G1], 1)
            C, C1, C2 = _coeffs(k, h1, h2, order)
            F = np.exp(lam[steps + 1] - lam[n - 1])[:, None] * eps[nodes]        # [m, k]
            w = (C * G[:, None, :]).sum(-1)
            a = w * F
            qs = np.sqrt((a[qm] ** 2).sum(1))
            self.q[steps[qm]] += qs
            np.add.at(self.c, nodes[~qm].ravel(), a[~qm].ravel())
            if order == 0:
                continue
            dG = np.stack([1.0 - G0, h - G1, h * h - G[:, 2]], 1)
            dW = np.concatenate([(C * dG[:, None, :]).sum(-1)[..., None],
                                 (C1 * G[:, None, :, None]).sum(2)], -1)          # [m, k, 3]
            gF = np.zeros(a.shape + (k + 2,))                                    # d log F / d pos
            gF[:, :, 0], gF[:, :, k + 1] = 1.0, -1.0
            idx = np.arange(k)
            gF[:, idx, idx + 1] += dle[nodes]
            U = dW @ T                                                           # dw / d pos
            Da = F[..., None] * (U + w[..., None] * gF)
            cols = np.broadcast_to(pos[:, None, :], Da.shape)
            if qm.any():
                Dq = ((a[qm] / qs[:, None])[..., None] * Da[qm]).sum(1)         # [mq, k + 2]
                rows = np.broadcast_to(steps[qm][:, None], Dq.shape)
                Jq += np.bincount((rows * n + pos[qm]).ravel(), Dq.ravel(), n * n)
            if not qm.all():
                rows = np.broadcast_to(nodes[~qm][:, :, None], Da[~qm].shape)
                Jc += np.bincount((rows * n + cols[~qm]).ravel(), Da[~qm].ravel(), n * n)
            if order >= 2:
                d2G = np.stack([G0 - 1.0, 1.0 - dG[:, 1], 2 * h - dG[:, 2]], 1)
                d2W = np.zeros(a.shape + (3, 3))
                d2W[..., 0, 0] = (C * d2G[:, None, :]).sum(-1)
                d2W[..., 0, 1:] = d2W[..., 1:, 0] = (C1 * dG[:, None, :, None]).sum(2)
                d2W[..., 1:, 1:] = (C2 * G[:, None, :, None, None]).sum(2)
                D2 = T.T @ d2W @ T + U[..., :, None] * gF[..., None, :] + gF[..., :, None] * U[..., None, :] \
                    + w[..., None, None] * gF[..., :, None] * gF[..., None, :]
                D2[:, idx, idx + 1, idx + 1] += w * d2le[nodes]
                D2 *= F[..., None, None]
                Hq = None
                if qm.any():
                    aq, Daq = a[qm] / qs[:, None], Da[qm]
                    Hq = (((aq[..., None, None] * D2[qm]) + (Daq[..., :, None] * Daq[..., None, :]) / qs[:, None, None, None]).sum(1)
                          - Dq[:, :, None] * Dq[:, None, :] / qs[:, None, None])
                self.local.append((pos, nodes, qm, D2, Hq))
        self.c[n - 1] += eps[n - 1]
        if order >= 1:
            self.Jq, self.Jc = Jq.reshape(n, n), Jc.reshape(n, n)
            self.Jc[n - 1, n - 1] += eps[n - 1] * dle[n - 1]
        self._jump2 = eps[n - 1] * (dle[n - 1] ** 2 + d2le[n - 1])

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
        for pos, nodes, qm, D2, Hq in self.local:
            pp = pos[:, :, None] * n + pos[:, None, :]
            if with_q and Hq is not None:
                H += np.bincount(pp[qm].ravel(), Hq.ravel(), n * n)
            if not qm.all():
                Hc = (wts[nodes[~qm]][..., None, None] * D2[~qm]).sum(1)
                H += np.bincount(pp[~qm].ravel(), Hc.ravel(), n * n)
        H = H.reshape(n, n)
        H[n - 1, n - 1] += wts[n - 1] * self._jump2
        return H


def bound_parts_np(lam, p: float = 1.0, quadrature="auto", jac: bool = False):
    """numpy float64 twin of `bound_parts`: (q [n], c [n]) and, with jac=True, also their
    Jacobians dq/dlam, dc/dlam [n, n] (exact, closed form, w.r.t. every level incl. the endpoints)."""
    b = BoundNP(lam, p, quadrature, order=1 if jac else 0)
    return (b.q, b.c, b.Jq, b.Jc) if jac else (b.q, b.c)


def bound_np(lam, p: float = 1.0, quadrature="auto", grad: bool = False):
    """B (float) for levels lam [n] (numpy), and with grad=True its exact gradient [n] too."""
    b = BoundNP(lam, p, quadrature, order=1 if grad else 0)
    return (b.value, b.gradient()) if grad else b.value


def signed_nodes(n: int, quadrature="auto") -> tuple:
    """Nodes whose accumulated error c_j collects signed terms of several weights (those of the
    non-quadrature steps); |c_j| has a kink where c_j = 0 (the optimizer handles these exactly)."""
    _, groups = _plan(n, quadrature_steps(n, quadrature))
    out = set()
    for _, _, nodes_np, quad_np in groups:
        out |= set(nodes_np[~quad_np].reshape(-1).tolist())
    return tuple(sorted(out))


def bound_terms(lam: torch.Tensor, p: float = 1.0, quadrature="auto") -> torch.Tensor:
    """Per-step contributions [n] to the bound B for levels lam = -log sigma_0..sigma_{n-1}.

    Entry s = (quadrature term of step s, if any) + |c_s|, where c_s is the signed accumulated
    error of node s (the level step s starts from); the entries sum to B."""
    q, c = bound_parts(lam, p, quadrature)
    return q + c.abs()


def bound(lam: torch.Tensor, p: float = 1.0, quadrature="auto") -> torch.Tensor:
    """The DM-NonUniform objective B (scalar tensor) for levels lam [n] (see bound_terms)."""
    return bound_terms(lam, p, quadrature).sum()


def schedule_lambdas(schedule: Schedule) -> torch.Tensor:
    """lambda = -log sigma for the n positive levels of a schedule, [n] float64."""
    return -torch.log(torch.tensor(schedule.sigmas[:-1], dtype=torch.float64))


def truncation_curve(schedule: Schedule, p: float = 1.0, quadrature="auto") -> dict:
    """Per-step contributions of DM-NonUniform's bound for any schedule (its per-interval curve).

    Returns a dict (lists have one entry per step, s = 0 .. n-1; step n-1 is the jump to 0):
        sigma_hi, sigma_lo: the step's interval [sigma_{s+1}, sigma_s] (sigma_lo = 0 for the jump).
        contribution: the step's share of B in final-sample error units (quadrature term of the
            step, if it is one of the `quadrature_steps`, plus |c_s|, the accumulated signed error
            of the node at sigma_s); sums to `objective`.
        share: contribution / objective.
        order: the solver's order at the step (1, 2, 3, ..., 3, 2, 1; the last is the jump).
        quadrature: whether the step enters in quadrature (reference rule for NFE <= 7).
        node_error: eps(sigma_s) = sigma_vp^p / alpha_vp, the modelled model error at the node.
        objective: B;  p, solver ("dpmpp_3m"), steps.
    """
    if not isinstance(schedule, Schedule):
        raise ScheduleLabError("truncation_curve needs a Schedule (core.schedules.Schedule)")
    _check_p(p)
    n = schedule.steps
    with torch.no_grad():
        terms = bound_terms(schedule_lambdas(schedule), p, quadrature)
    total = float(terms.sum())
    sig = schedule.sigmas
    quad = set(quadrature_steps(n, quadrature))
    return {
        "sigma_hi": list(sig[:-1]), "sigma_lo": list(sig[1:]),
        "contribution": terms.tolist(),
        "share": (terms / total).tolist() if total > 0 else [math.nan] * n,
        "order": multistep_orders(n, 3),
        "quadrature": [s in quad for s in range(n)],
        "node_error": error_model(np.asarray(sig[:-1]), p).tolist(),
        "objective": total, "p": p, "solver": SOLVER, "steps": n,
    }


def _check_p(p) -> None:
    if not isinstance(p, (int, float)) or not math.isfinite(p) or p < 0:
        raise ScheduleLabError(f"p (the error model's exponent) must be a number >= 0 "
                               f"(1 for pixel models, 2 for latent ones); got {p!r}")
