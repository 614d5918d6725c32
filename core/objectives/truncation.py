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
