"""Stochastic samplers. Same signature as core.solvers.ode plus, where k-diffusion has them,
`eta` (noise amount; 0 makes the sampler deterministic), `s_noise` (noise scale) and
`noise_sampler(sigma, sigma_next) -> N(0, I) like x`. Without a noise_sampler every draw is
`torch.randn` from `generator`, one per call in step order (k-diffusion defaults the SDE samplers
to a Brownian tree instead; feed its draws through noise_sampler to reproduce a k-diffusion run).
"""
from __future__ import annotations

import math

import torch

from core.solvers.ode import _cb, to_d


def _randn(x, generator):
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def default_noise_sampler(x, generator):
    """noise_sampler(sigma, sigma_next) -> a fresh N(0, I) draw shaped like x from `generator`."""
    return lambda sigma, sigma_next: _randn(x, generator)


def get_ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0):
    """(sigma_down, sigma_up) of an ancestral step (k-diffusion `get_ancestral_step`):
    sigma_up = min(sigma_to, eta sigma_to sqrt(1 - sigma_to^2 / sigma_from^2)),
    sigma_down = sqrt(sigma_to^2 - sigma_up^2); eta = 0 gives (sigma_to, 0)."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    return (sigma_to ** 2 - sigma_up ** 2) ** 0.5, sigma_up


@torch.no_grad()
def ddim_sde(model, x, sigmas, callback=None, generator=None):
    """Stochastic DDIM (eta = 1) in EDM form, q = sigma_next^2 / sigma^2:

        x_next = q x + (1 - q) D(x, sigma) + sigma_next sqrt(1 - q) z

    the exact solution of the reverse SDE with D frozen over the interval (the solver AYS
    derives its KL bound for; methods.md s.3). The step to sigma = 0 returns D. NFE = n."""
    sig = [float(s) for s in sigmas]
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        _cb(callback, i, x, sig[i], sig[i + 1], denoised)
        if sig[i + 1] == 0:
            x = denoised
            break
        q = (sig[i + 1] / sig[i]) ** 2
        x = q * x + (1 - q) * denoised + sig[i + 1] * math.sqrt(1 - q) * _randn(x, generator)
    return x


@torch.no_grad()
def dpmpp_2m_sde(model, x, sigmas, callback=None, generator=None, eta=1.0, s_noise=1.0, noise_sampler=None):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022; k-diffusion `sample_dpmpp_2m_sde`, midpoint
    correction), h = lambda_{i+1} - lambda_i, r = h_last / h. The step to sigma = 0 returns D.
    NFE = n."""
    sig = [float(s) for s in sigmas]
    noise_sampler = noise_sampler or default_noise_sampler(x, generator)
    old_denoised, h_last = None, None
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        _cb(callback, i, x, sig[i], sig[i + 1], denoised)
        if sig[i + 1] == 0:
            x = denoised
            break
        h = math.log(sig[i]) - math.log(sig[i + 1])
        eta_h = eta * h
        x = (sig[i + 1] / sig[i]) * math.exp(-eta_h) * x - math.expm1(-h - eta_h) * denoised
        if old_denoised is not None:
            r = h_last / h
            x = x + 0.5 * -math.expm1(-h - eta_h) * (1 / r) * (denoised - old_denoised)
        if eta:
            x = x + noise_sampler(sig[i], sig[i + 1]) * sig[i + 1] * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise
        old_denoised, h_last = denoised, h
    return x


@torch.no_grad()
def dpmpp_3m_sde(model, x, sigmas, callback=None, generator=None, eta=1.0, s_noise=1.0, noise_sampler=None):
    """DPM-Solver++(3M) SDE (k-diffusion `sample_dpmpp_3m_sde`): with h_eta = (1 + eta) h,
    x <- e^{-h_eta} x + (1 - e^{-h_eta}) D + phi_2 d1 - phi_3 d2, where d1, d2 are divided
    differences of the last three D in lambda, phi_2 = (e^{-h_eta} - 1) / h_eta + 1,
    phi_3 = phi_2 / h_eta - 1/2; plus noise sigma_next sqrt(1 - e^{-2 eta h}) z. Warm-up
    orders 1, 2; the step to sigma = 0 returns D. NFE = n."""
    sig = [float(s) for s in sigmas]
    noise_sampler = noise_sampler or default_noise_sampler(x, generator)
    denoised_1, denoised_2, h_1, h_2 = None, None, None, None
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        _cb(callback, i, x, sig[i], sig[i + 1], denoised)
        if sig[i + 1] == 0:
            x = denoised
            break
        h = math.log(sig[i]) - math.log(sig[i + 1])
        h_eta = h * (eta + 1)
        x = math.exp(-h_eta) * x - math.expm1(-h_eta) * denoised
        phi_2 = math.expm1(-h_eta) / h_eta + 1
        if h_2 is not None:
            r0, r1 = h_1 / h, h_2 / h
            d1_0 = (denoised - denoised_1) / r0
            d1_1 = (denoised_1 - denoised_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            x = x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
        elif h_1 is not None:
            x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
        if eta:
            x = x + noise_sampler(sig[i], sig[i + 1]) * sig[i + 1] * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise
        denoised_1, denoised_2, h_1, h_2 = denoised, denoised_1, h, h_1
    return x


@torch.no_grad()
def dpmpp_3m(model, x, sigmas, callback=None, generator=None):
    """DPM-Solver++(3M), deterministic: k-diffusion / ComfyUI `sample_dpmpp_3m_sde` with eta = 0
    (divided differences of D in lambda). NFE = n."""
    return dpmpp_3m_sde(model, x, sigmas, callback=callback, generator=generator, eta=0.0)


@torch.no_grad()
def dpmpp_sde(model, x, sigmas, callback=None, generator=None, eta=1.0, s_noise=1.0, noise_sampler=None, r=0.5):
    """DPM-Solver++ (stochastic) (k-diffusion `sample_dpmpp_sde`): a 2-stage exponential step in
    lambda, stage at lambda_i + r h, each stage an ancestral step (noise drawn twice per step).
    The step to sigma = 0 is Euler (returns D). NFE = 2n - 1."""
    sig = [float(s) for s in sigmas]
    noise_sampler = noise_sampler or default_noise_sampler(x, generator)
    sigma_fn, t_fn = (lambda t: math.exp(-t)), (lambda s: -math.log(s))
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        _cb(callback, i, x, sig[i], sig[i + 1], denoised)
        if sig[i + 1] == 0:
            x = x + to_d(x, sig[i], denoised) * (sig[i + 1] - sig[i])
            break
        t, t_next = t_fn(sig[i]), t_fn(sig[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        sd, su = get_ancestral_step(sigma_fn(t), sigma_fn(s), eta)          # stage 1: to lambda = s
        s_ = t_fn(sd)
        x_2 = (sigma_fn(s_) / sigma_fn(t)) * x - math.expm1(t - s_) * denoised
        x_2 = x_2 + noise_sampler(sigma_fn(t), sigma_fn(s)) * s_noise * su
        denoised_2 = model(x_2, sigma_fn(s))
        sd, su = get_ancestral_step(sigma_fn(t), sigma_fn(t_next), eta)     # stage 2: full step
        t_next_ = t_fn(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (sigma_fn(t_next_) / sigma_fn(t)) * x - math.expm1(t - t_next_) * denoised_d
        x = x + noise_sampler(sigma_fn(t), sigma_fn(t_next)) * s_noise * su
    return x


@torch.no_grad()
def euler_ancestral(model, x, sigmas, callback=None, generator=None, eta=1.0, s_noise=1.0, noise_sampler=None):
    """Ancestral sampling with Euler steps (k-diffusion `sample_euler_ancestral`): Euler to
    sigma_down, then add s_noise sigma_up z (get_ancestral_step); eta = 0 is Euler. NFE = n."""
    sig = [float(s) for s in sigmas]
    noise_sampler = noise_sampler or default_noise_sampler(x, generator)
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        sigma_down, sigma_up = get_ancestral_step(sig[i], sig[i + 1], eta)
        _cb(callback, i, x, sig[i], sig[i + 1], denoised)
        x = x + to_d(x, sig[i], denoised) * (sigma_down - sig[i])
        if sig[i + 1] > 0:
            x = x + noise_sampler(sig[i], sig[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def dpmpp_2s_ancestral(model, x, sigmas, callback=None, generator=None, eta=1.0, s_noise=1.0, noise_sampler=None):
    """Ancestral sampling with DPM-Solver++(2S) steps (k-diffusion `sample_dpmpp_2s_ancestral`):
    a single-step 2nd-order exponential step to sigma_down (stage at the lambda-midpoint), then
    noise s_noise sigma_up z. The step to sigma_down = 0 is Euler (returns D). NFE = 2n - 1
    (for eta <= 1, where sigma_down > 0 before the last step)."""
    sig = [float(s) for s in sigmas]
    noise_sampler = noise_sampler or default_noise_sampler(x, generator)
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        sigma_down, sigma_up = get_ancestral_step(sig[i], sig[i + 1], eta)
        _cb(callback, i, x, sig[i], sig[i + 1], denoised)
        if sigma_down == 0:
            x = x + to_d(x, sig[i], denoised) * (sigma_down - sig[i])
        else:
            t, t_next = -math.log(sig[i]), -math.log(sigma_down)
            h = t_next - t
            s = t + 0.5 * h
            x_2 = (math.exp(-s) / math.exp(-t)) * x - math.expm1(-0.5 * h) * denoised
            denoised_2 = model(x_2, math.exp(-s))
            x = (math.exp(-t_next) / math.exp(-t)) * x - math.expm1(-h) * denoised_2
        if sig[i + 1] > 0:
            x = x + noise_sampler(sig[i], sig[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def res_multistep_ancestral(model, x, sigmas, callback=None, generator=None, eta=1.0, s_noise=1.0,
                            noise_sampler=None):
    """RES second-order multistep (Zhang et al. 2023, arXiv 2308.02157; ComfyUI `res_multistep`,
    `sample_res_multistep_ancestral`): an exponential step in lambda = -log(sigma) to sigma_down,
    h = lambda_down - lambda_i, c2 = (lambda_{i-1} - lambda_down,prev) / h,

        x <- e^{-h} x + h (b1 D_i + b2 D_{i-1}),  b2 = phi_2(-h) / c2,  b1 = phi_1(-h) - b2,

    phi_1(z) = (e^z - 1) / z, phi_2(z) = (phi_1(z) - 1) / z; then noise s_noise sigma_up z
    (get_ancestral_step). The first step and the step to sigma_down = 0 are Euler. NFE = n."""
    sig = [float(s) for s in sigmas]
    noise_sampler = noise_sampler or default_noise_sampler(x, generator)
    old_denoised, old_sigma_down = None, None
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        sigma_down, sigma_up = get_ancestral_step(sig[i], sig[i + 1], eta)
        _cb(callback, i, x, sig[i], sig[i + 1], denoised)
        if sigma_down == 0 or old_denoised is None:
            x = x + to_d(x, sig[i], denoised) * (sigma_down - sig[i])
        else:
            t, t_old, t_next, t_prev = (-math.log(s) for s in (sig[i], old_sigma_down, sigma_down, sig[i - 1]))
            h = t_next - t
            c2 = (t_prev - t_old) / h
            phi1 = math.expm1(-h) / -h
            phi2 = (phi1 - 1.0) / -h
            x = math.exp(-h) * x + h * ((phi1 - phi2 / c2) * denoised + (phi2 / c2) * old_denoised)
        if sig[i + 1] > 0 and sigma_up > 0:
            x = x + noise_sampler(sig[i], sig[i + 1]) * s_noise * sigma_up
        old_denoised, old_sigma_down = denoised, sigma_down
    return x


@torch.no_grad()
def res_multistep(model, x, sigmas, callback=None, generator=None):
    """RES multistep, deterministic (ComfyUI `sample_res_multistep`: eta = 0). NFE = n."""
    return res_multistep_ancestral(model, x, sigmas, callback=callback, generator=generator, eta=0.0)


def er_sde_noise_scaler(lam):
    """ER-SDE's default noise scale function f(lambda) = lambda (e^{lambda^0.3} + 10) (ComfyUI's default)."""
    return lam * (torch.exp(lam ** 0.3) + 10.0) if torch.is_tensor(lam) else lam * (math.exp(lam ** 0.3) + 10.0)


ER_SDE_POINTS = 200       # ComfyUI's num_integration_points


@torch.no_grad()
def er_sde(model, x, sigmas, callback=None, generator=None, s_noise=1.0, noise_sampler=None, max_stage=3):
    """ER-SDE-Solver-3 (Cui et al. 2023, arXiv 2309.06169; ComfyUI `sample_er_sde`) for an EDM / eps
    model, where ER-SDE's lambda_t = sigma_t / alpha_t is sigma and alpha = 1. With f the noise
    scaler and r = f(sigma_{i+1}) / f(sigma_i):

        x <- r x + (1 - r) D_i + (dt + S f(sigma_{i+1})) D'_i + (dt^2 / 2 + S_u f(sigma_{i+1})) D''_i
             + s_noise sqrt(sigma_{i+1}^2 - r^2 sigma_i^2) z

    dt = sigma_{i+1} - sigma_i; D', D'' divided differences of D in sigma (stages 2, 3 from the
    second / third step on, up to max_stage); S = int 1/f, S_u = int (l - sigma_i)/f over
    [sigma_{i+1}, sigma_i] by upstream's 200-point left Riemann sum. Upstream sums over a float32
    arange, which makes S, S_u float32 (~2e-9 on the output here); we sum in float64. The step to
    sigma = 0 returns D. NFE = n."""
    sig = [float(s) for s in sigmas]
    noise_sampler = noise_sampler or default_noise_sampler(x, generator)
    f = er_sde_noise_scaler
    k = torch.arange(ER_SDE_POINTS, dtype=torch.float64)
    old_denoised, old_denoised_d = None, None
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        _cb(callback, i, x, sig[i], sig[i + 1], denoised)
        stage = min(max_stage, i + 1)
        if sig[i + 1] == 0:
            x = denoised
            break
        ls, lt = sig[i], sig[i + 1]
        r = f(lt) / f(ls)
        x = r * x + (1 - r) * denoised
        if stage >= 2:
            dt = lt - ls
            step = -dt / ER_SDE_POINTS
            pos = lt + k * step
            fpos = f(pos)
            s = float((1 / fpos).sum()) * step
            denoised_d = (denoised - old_denoised) / (ls - sig[i - 1])
            x = x + (dt + s * f(lt)) * denoised_d
            if stage >= 3:
                s_u = float(((pos - ls) / fpos).sum()) * step
                denoised_u = (denoised_d - old_denoised_d) / ((ls - sig[i - 2]) / 2)
                x = x + (dt ** 2 / 2 + s_u * f(lt)) * denoised_u
            old_denoised_d = denoised_d
        if s_noise > 0:
            var = lt ** 2 - ls ** 2 * r ** 2
            x = x + noise_sampler(sig[i], sig[i + 1]) * s_noise * (math.sqrt(var) if var > 0 else 0.0)
        old_denoised = denoised
    return x
