"""The closed-form numpy bound (`BoundNP`, the optimizer's hot path) against the torch bound and
torch autograd (an independent implementation): values, gradient, Jacobians of q and c, and the
multiplier-weighted Hessians, for N = 3..20, p = 1, 2 and every quadrature mode; plus the
optimizer's settings (exact vs finite differences on the same formulation, complementarity)."""
import math

import numpy as np
import pytest
import torch

from core.objectives.truncation import BoundNP, bound, bound_np, bound_parts, bound_parts_np
from core.optimizers.nonuniform import STARTS, solve_from, start_levels

MODES = ["auto", "reference", "all", 0, 2]


def _levels(n, seed):
    rng = np.random.default_rng(seed)
    lam = np.sort(rng.uniform(-math.log(80.0), -math.log(0.002), n))
    lam[0], lam[-1] = -math.log(80.0), -math.log(0.002)
    return lam


@pytest.mark.parametrize("p", [1.0, 2.0])
@pytest.mark.parametrize("quadrature", MODES)
def test_numpy_bound_value_gradient_jacobian_hessian_equal_autograd(p, quadrature):
    for n in range(3, 21):
        lam = _levels(n, 100 * n + int(p))
        t = torch.from_numpy(lam.copy())
        q_t, c_t = bound_parts(t, p, quadrature)
        jq_t, jc_t = torch.func.jacrev(lambda x: bound_parts(x, p, quadrature))(t)
        hq_t, hc_t = torch.func.hessian(lambda x: bound_parts(x, p, quadrature))(t)
        b = BoundNP(lam, p, quadrature, order=2)
        scale = float(q_t.abs().max() + c_t.abs().max())
        np.testing.assert_allclose(b.q, q_t.numpy(), rtol=0, atol=1e-12 * scale)
        np.testing.assert_allclose(b.c, c_t.numpy(), rtol=0, atol=1e-12 * scale)
        jscale = float(jq_t.abs().max() + jc_t.abs().max())
        np.testing.assert_allclose(b.Jq, jq_t.numpy(), rtol=0, atol=1e-10 * jscale)
        np.testing.assert_allclose(b.Jc, jc_t.numpy(), rtol=0, atol=1e-10 * jscale)
        wts = np.random.default_rng(n).normal(size=n)                  # e.g. epigraph multipliers
        h_t = hq_t.sum(0) + torch.einsum("j,jab->ab", torch.from_numpy(wts), hc_t)
        np.testing.assert_allclose(b.hessian(wts), h_t.numpy(), rtol=0, atol=1e-10 * float(h_t.abs().max()))
        np.testing.assert_allclose(b.hessian(wts, with_q=False),
                                   torch.einsum("j,jab->ab", torch.from_numpy(wts), hc_t).numpy(),
                                   rtol=0, atol=1e-10 * float(h_t.abs().max()))
        x = t.clone().requires_grad_(True)
        (g_t,) = torch.autograd.grad(bound(x, p, quadrature), x)
        val, g = bound_np(lam, p, quadrature, grad=True)
        assert val == pytest.approx(float(bound(t, p, quadrature)), rel=1e-12)
        np.testing.assert_allclose(g, g_t.numpy(), rtol=0, atol=1e-10 * float(g_t.abs().max()))
        q0, c0 = bound_parts_np(lam, p, quadrature)
        assert np.array_equal(q0, b.q) and np.array_equal(c0, b.c)


def test_numpy_hessian_equals_differences_of_the_numpy_gradient():
    """Second check of the Hessian without torch: central differences of the exact gradient."""
    lam = _levels(9, 7)
    H = BoundNP(lam, 2.0, "all", order=2).hessian()
    d = 1e-5
    for i in range(1, 8):
        e = np.zeros(9)
        e[i] = d
        fd = (bound_np(lam + e, 2.0, "all", grad=True)[1] - bound_np(lam - e, 2.0, "all", grad=True)[1]) / (2 * d)
        np.testing.assert_allclose(H[i, 1:-1], fd[1:-1], rtol=1e-6, atol=1e-8 * np.abs(H).max())


@pytest.mark.parametrize("n", [6, 7, 10])
def test_exact_run_no_worse_than_finite_differences_on_the_same_formulation(n):
    """Same starts, tolerances and formulation (B itself at 6 and 10 steps, the epigraph form at the
    kink at 7): exact derivatives reach a bound no higher than SciPy's finite differences (1e-9
    relative), all starts converged."""
    best = {}
    for grad in ("exact", "2-point"):
        runs = [solve_from(start_levels(st, n, 0.002, 80.0), 1.0, start=st, gradient=grad) for st in STARTS]
        assert all(r.converged for r in runs), [(r.start, r.message) for r in runs]
        best[grad] = min(r.objective for r in runs)
    assert best["exact"] <= best["2-point"] * (1 + 1e-9)


def test_exact_hessian_needs_fewer_iterations_than_bfgs():
    """Where it is used (no signed nodes), the exact Hessian cuts trust-constr's iterations."""
    lam0 = start_levels("uniform_t", 12, 0.002, 80.0)
    ex = solve_from(lam0, 1.0, hessian="exact")
    bf = solve_from(lam0, 1.0, hessian="bfgs")
    assert ex.converged and bf.converged
    assert ex.objective <= bf.objective * (1 + 1e-7)       # both stop at gtol on the start-scaled bound
    assert ex.nit < 0.5 * bf.nit, (ex.nit, bf.nit)



def test_auto_form_keeps_b_itself_off_kinks_and_moves_to_the_epigraph_at_a_kink():
    """N = 6: the optimum is off every kink, so B's own trust-constr run is kept (same optimum as the
    epigraph form, fewer iterations).  N = 7: the optimum sits on a kink (some c_j = 0), B's run is
    abandoned and the epigraph run from the same start is returned, converged."""
    from core.objectives.truncation import BoundNP, signed_nodes
    from core.optimizers.nonuniform import KINK_TOL
    lam6 = start_levels("uniform_lambda", 6, 0.002, 80.0)
    auto, epi = solve_from(lam6, 1.0, form="auto"), solve_from(lam6, 1.0, form="epigraph")
    assert auto.converged and epi.converged and "epigraph" not in auto.message
    assert auto.objective <= epi.objective * (1 + 1e-9) and auto.nit < epi.nit
    c = BoundNP(auto.lam, 1.0).c[list(signed_nodes(6))]
    assert np.abs(c).min() > KINK_TOL * auto.objective
    lam7 = start_levels("edm", 7, 0.002, 80.0)
    auto, epi = solve_from(lam7, 1.0, form="auto"), solve_from(lam7, 1.0, form="epigraph")
    assert auto.converged and "kink" in auto.message and np.array_equal(auto.lam, epi.lam)
    c = BoundNP(auto.lam, 1.0).c[list(signed_nodes(7))]
    assert np.abs(c).min() < KINK_TOL * auto.objective < 1e-3 * np.sort(np.abs(c))[1]   # on a kink
