"""One step of each deterministic solver, from any level to any other, batched over paths.

The trajectory optimizers (GITS, OSS) ask "where does solver S land if it jumps from level s to
level s_next, from this state and this history?" for many (s, s_next) pairs at once. A stepper
answers it with exactly the arithmetic of the solver users run (core.solvers.get_solver(name).fn;
tests/test_gits.py checks that a stepper run over a whole schedule equals the solver).

    st = get_stepper("dpmpp_2m")
    hist = st.empty(x)                                   # no history before the first step
    D = model(x, s)                                      # the step's model call (the caller makes it)
    x_next, hist = st.step(model, x, s, s_next, D, hist, k, n)

Shapes: x and D are [..., *event_shape] with any leading batch dims (paths x samples); s and s_next
are float64 tensors of the leading shape [...] (one level per path) or scalars. hist is a tuple of
tensors with the same leading dims (the solver's memory: past D or past slopes and their levels);
k is the step's index in the schedule (0-based), n the schedule's step count. A step to
s_next = 0 is the solver's own final step (D for the DPM-Solver++ family, the ODE update otherwise).
"""
from __future__ import annotations

import torch

from core.errors import unknown_name


def _b(s, x):
    """Level(s) broadcast against x: scalar or [...] -> [..., 1, ..., 1] on x's device (and dtype,
    unless boolean)."""
    if not (isinstance(s, torch.Tensor) and s.dtype == torch.bool):
        s = torch.as_tensor(s, dtype=torch.float64).to(x.dtype)
    s = s.to(x.device)
    return s.reshape(s.shape + (1,) * (x.ndim - s.ndim))


def call_model(model, x, s):
    """D(x, s) for x [..., *event] and s [...] or scalar: flattens the leading dims into one batch."""
    lead = x.shape[:x.ndim - len(model.event_shape)]
    s = torch.as_tensor(s, dtype=torch.float64, device=x.device).expand(lead)
    dt = getattr(model, "dtype", x.dtype)
    out = model(x.reshape(-1, *model.event_shape).to(dt), s.reshape(-1).to(dt))
    return out.reshape(x.shape).to(x.dtype)


class Stepper:
    """A solver's single step. `history` = number of tensors its memory holds."""

    name = "base"
    history = 0
    calls_per_step = 1      # model calls per step, excluding the final step to 0

    def empty(self, x) -> tuple:
        return tuple(torch.zeros_like(x) for _ in range(self.history))

    def step(self, model, x, s, s_next, D, hist, k, n):  # pragma: no cover - interface
        raise NotImplementedError


class Euler(Stepper):
    """Euler = DDIM: x + (s_next - s) (x - D) / s."""

    name = "euler"

    def step(self, model, x, s, s_next, D, hist, k, n):
        sb, snb = _b(s, x), _b(s_next, x)
        return x + (snb - sb) * ((x - D) / sb), hist


class Heun(Stepper):
    """EDM Alg. 1 (no churn): Euler predictor, trapezoidal corrector when s_next > 0 (one more call)."""

    name = "heun"
    calls_per_step = 2

    def step(self, model, x, s, s_next, D, hist, k, n):
        sb, snb = _b(s, x), _b(s_next, x)
        d = (x - D) / sb
        dt = snb - sb
        x_next = x + dt * d                                   # Euler step (Alg. 1 line 5)
        pos = torch.as_tensor(s_next, dtype=torch.float64) > 0
        if bool(pos.any()):                                   # 2nd-order correction (lines 7-8)
            sn_safe = torch.where(pos, torch.as_tensor(s_next, dtype=torch.float64), 1.0)
            d2 = (x_next - call_model(model, x_next, sn_safe)) / _b(sn_safe, x)
            x_next = torch.where(_b(pos, x), x + dt * 0.5 * (d + d2), x_next)
        return x_next, hist


def _h(s, s_next):
    """h = lambda_next - lambda = log s - log s_next (float64; 1 where s_next = 0, unused there)."""
    s = torch.as_tensor(s, dtype=torch.float64)
    sn = torch.as_tensor(s_next, dtype=torch.float64)
    final = sn == 0
    return torch.log(s) - torch.log(torch.where(final, 1.0, sn)), final


class DPMpp2M(Stepper):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2; k-diffusion sample_dpmpp_2m), r = h_last / h.
    hist = (D_prev, h_last), both shaped like x."""

    name = "dpmpp_2m"
    history = 2

    def step(self, model, x, s, s_next, D, hist, k, n):
        D_prev, h_last = hist
        h, final = _h(s, s_next)
        hb = _b(h, x)
        if k == 0:
            d = D
        else:
            r = h_last / hb
            d = (1 + 1 / (2 * r)) * D - (1 / (2 * r)) * D_prev
        x_next = _b(torch.as_tensor(s_next, dtype=torch.float64) / torch.as_tensor(s, dtype=torch.float64), x) * x \
            - torch.expm1(-hb) * d
        x_next = torch.where(_b(final, x), D, x_next)
        return x_next, (D, hb.expand_as(x))


class IPNDM(Stepper):
    """iPNDM (Zhang & Chen 2023; GITS' solver): Adams-Bashforth on dx/dsigma, orders 1, 2, 3, then 4;
    the step to sigma = 0 returns D, as core.solvers.ipndm (ComfyUI's sample_ipndm) does.
    hist = (d_{k-1}, d_{k-2}, d_{k-3}), past slopes (x - D) / s."""

    name = "ipndm"
    history = 3

    def step(self, model, x, s, s_next, D, hist, k, n):
        sb, snb = _b(s, x), _b(s_next, x)
        d = (x - D) / sb
        dt = snb - sb
        d1, d2, d3 = hist
        if k == 0:
            x_next = x + dt * d
        elif k == 1:
            x_next = x + dt * (3 * d - d1) / 2
        elif k == 2:
            x_next = x + dt * (23 * d - 16 * d1 + 5 * d2) / 12
        else:
            x_next = x + dt * (55 * d - 59 * d1 + 37 * d2 - 9 * d3) / 24
        final = torch.as_tensor(s_next, dtype=torch.float64) == 0    # the step to 0 returns D (ComfyUI)
        x_next = torch.where(_b(final, x), D, x_next)
        return x_next, (d, d1, d2)


class DPMpp3M(Stepper):
    """DPM-Solver++(3M) as k-diffusion defines it: sample_dpmpp_3m_sde with eta = 0 (order 1, then 2,
    then 3; the step to 0 returns D). hist = (D_1, D_2, h_1, h_2), all shaped like x."""

    name = "dpmpp_3m"
    history = 4

    def step(self, model, x, s, s_next, D, hist, k, n):
        D1, D2, h1, h2 = hist
        h, final = _h(s, s_next)
        hb = _b(h, x)
        x_next = torch.exp(-hb) * x - torch.expm1(-hb) * D
        phi_2 = torch.expm1(-hb) / hb + 1
        if k >= 2:
            r0, r1 = h1 / hb, h2 / hb
            d1_0 = (D - D1) / r0
            d1_1 = (D1 - D2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_3 = phi_2 / hb - 0.5
            x_next = x_next + phi_2 * d1 - phi_3 * d2
        elif k == 1:
            x_next = x_next + phi_2 * (D - D1) / (h1 / hb)
        x_next = torch.where(_b(final, x), D, x_next)
        return x_next, (D, D1, hb.expand_as(x), h1)


STEPPERS = {c.name: c for c in (Euler, Heun, DPMpp2M, IPNDM, DPMpp3M)}
ALIASES = {"ddim": "euler", "dpm++2m": "dpmpp_2m", "dpm++3m": "dpmpp_3m"}


def get_stepper(name: str) -> Stepper:
    name = ALIASES.get(name, name)
    if name not in STEPPERS:
        raise unknown_name("solver (trajectory optimizers support)", name, STEPPERS)
    return STEPPERS[name]()


@torch.no_grad()
def run_stepper(stepper: Stepper, model, x, sigmas) -> torch.Tensor:
    """The stepper over a whole schedule (sigmas: n + 1 descending floats ending in 0) -> x at 0."""
    sig = [float(s) for s in sigmas]
    n = len(sig) - 1
    hist = stepper.empty(x)
    for k in range(n):
        D = call_model(model, x, sig[k])
        x, hist = stepper.step(model, x, sig[k], sig[k + 1], D, hist, k, n)
    return x
