"""Flow-matching schedules: the flow <-> EDM conversion is exact (our Euler in sigma = diffusers'
FlowMatchEulerDiscreteScheduler loop), and the shift heuristics equal diffusers' computation."""
import math

import numpy as np
import pytest
import torch

from core.errors import ScheduleLabError
from core.models.base import Denoiser, bcast
from core.sampling import generate
from core.schedules import make_schedule, parse
from core.schedules.flow import (exp_time_shift, export_flow, flow_t, flux_mu, from_flow_t, oss_levels_t,
                                 sd3_shift, shifted_grid, sigma_to_t, t_to_sigma)

diffusers = pytest.importorskip("diffusers")
from diffusers import FlowMatchEulerDiscreteScheduler  # noqa: E402


class TinyVelocity(torch.nn.Module):
    """A fixed nonlinear velocity field u(x_t, t) on [B, 4] (not a straight flow)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.A = torch.randn(4, 4, generator=g, dtype=torch.float64) * 0.5
        self.b = torch.randn(4, generator=g, dtype=torch.float64)

    def forward(self, x_t, t):
        t = t.reshape(-1, 1)
        return torch.tanh(x_t @ self.A) * (1 + t) + torch.sin(3 * t) * self.b


class FlowAsEDM(Denoiser):
    """D(x, sigma) = x_t - t u(x_t, t) with t = sigma / (1 + sigma), x_t = x / (1 + sigma)."""
    event_shape = (4,)

    def __init__(self, u):
        super().__init__()
        self.u = u

    def denoise(self, x, sigma):
        t, x_t = sigma / (1 + sigma), x / bcast(1 + sigma, x)
        return x_t - bcast(t, x) * self.u(x_t, t)


def diffusers_loop(u, ts, x_t0):
    sch = FlowMatchEulerDiscreteScheduler(shift=1.0)
    sch.set_timesteps(sigmas=list(ts[:-1]))
    sch.sigmas = sch.sigmas.double()           # diffusers keeps float32 sigmas; compare the loop, not rounding
    sch.sigmas[:-1] = torch.tensor(ts[:-1], dtype=torch.float64)
    x = x_t0.clone()
    for i, tt in enumerate(sch.timesteps):
        t = sch.sigmas[i].expand(x.shape[0])
        x = sch.step(u(x, t), tt, x, return_dict=False)[0]
    return x


@pytest.mark.parametrize("name", ["flow_uniform", "flow_shift", "oss_flux"])
def test_euler_in_sigma_equals_diffusers_flow_euler(name):
    s = make_schedule(name, 8, 1e-3 / (1 - 1e-3), 999.0)
    ts = flow_t(s)
    u = TinyVelocity()
    z = torch.randn(16, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = diffusers_loop(u, ts, z * ts[0] + 0.0)          # x_t0 = t0 * noise  (x0 part: none)
    ours = generate(FlowAsEDM(u), s, 16, solver="euler", noise=z * ts[0] / (1 - ts[0])).x
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)
    assert (ours - z).abs().max() > 0.1                  # the flow really moved the points


def test_t_sigma_roundtrip_exact():
    t = np.linspace(0, 0.9999, 1001)
    assert np.allclose(sigma_to_t(t_to_sigma(t)), t, rtol=1e-15, atol=1e-16)
    s = make_schedule("flow_shift", 12, 0.002, 500.0, shift=3.0)
    assert from_flow_t(flow_t(s)).sigmas == pytest.approx(s.sigmas, rel=1e-13)
    with pytest.raises(ScheduleLabError):
        t_to_sigma([1.0])


@pytest.mark.parametrize("shift", [1.0, 3.0, 6.0])
def test_sd3_shift_equals_diffusers(shift):
    n = 10
    sch = FlowMatchEulerDiscreteScheduler(shift=shift)
    sch.set_timesteps(n)
    ref = sch.sigmas.double().numpy()[:-1]
    ours = shifted_grid(n, 1.0, float(ref[-1]), shift=shift)
    assert np.allclose(ours, ref, atol=2e-7)                    # diffusers works in float32
    u = np.linspace(1, 1000, 1000)[::-1] / 1000                  # the scheduler's training grid
    assert np.allclose(sd3_shift(u, shift), FlowMatchEulerDiscreteScheduler(shift=shift).sigmas.double().numpy(),
                       atol=2e-7)


def _diffusers_function(relpath, name):
    """A top-level function of an installed diffusers module, run from its own source without
    importing the module (the Flux pipeline module imports transformers, which is not installed)."""
    import ast
    from pathlib import Path
    src = (Path(diffusers.__file__).parent / relpath).read_text()
    node = next(n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == name)
    ns = {}
    exec(compile(ast.Module([node], []), relpath, "exec"), ns)
    return ns[name]


@pytest.mark.parametrize("hw", [(256, 256), (512, 768), (1024, 1024), (1536, 1024)])
def test_flux_dynamic_shift_equals_diffusers(hw):
    calculate_shift = _diffusers_function("pipelines/flux/pipeline_flux.py", "calculate_shift")
    h, w = hw
    seq = (h // 16) * (w // 16)                     # Flux: latent (h/8, w/8), packed 2x2
    mu_ref = calculate_shift(seq, 256, 4096, 0.5, 1.15)
    assert flux_mu(h, w) == pytest.approx(mu_ref, abs=1e-12)
    n = 12
    sch = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    sigmas = np.linspace(1.0, 1 / n, n)             # what FluxPipeline passes
    sch.set_timesteps(sigmas=sigmas, mu=mu_ref)
    ref = sch.sigmas.double().numpy()[:-1]
    assert np.allclose(exp_time_shift(sigmas, flux_mu(h, w)), ref, atol=2e-7)
    ours = shifted_grid(n, 1.0, float(exp_time_shift(1 / n, flux_mu(h, w))), mu=flux_mu(h, w))
    assert np.allclose(ours, ref, atol=2e-7)


def test_oss_preset_equals_comfyui_convention():
    lv = oss_levels_t("flux", 10)          # the preset has 11 levels: used as is, last -> 0
    assert lv[0] == 0.9968 and lv[-2] == 0.2808 and lv[-1] == 0
    lv6 = oss_levels_t("flux", 6)          # interpolated in log t on a uniform grid
    assert len(lv6) == 7 and lv6[0] == pytest.approx(0.9968) and lv6[-1] == 0
    assert lv6[-2] == pytest.approx(math.exp(np.interp(1 / 6, np.linspace(0, 1, 11),
                                                       np.log([0.001, 0.2808, 0.5512, 0.8287, 0.9158, 0.9471,
                                                               0.966, 0.975, 0.9819, 0.9886, 0.9968]))))


def test_flow_exports_give_t_and_run_in_diffusers():
    s = make_schedule("flow_shift", 6, 1e-3 / (1 - 1e-3), 999.0, shift=3.0)
    code = export_flow(s, "diffusers")
    sch = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)
    pipe = type("P", (), {"scheduler": sch})()
    ns = {"FlowMatchEulerDiscreteScheduler": FlowMatchEulerDiscreteScheduler, "pipe": pipe}
    exec(code, ns)                                             # the snippet as a user runs it
    assert np.allclose(ns["scheduler"].sigmas.numpy(), flow_t(s), atol=1e-7)
    comfy = export_flow(s, "comfyui")
    assert "e" not in comfy.lower()
    with pytest.raises(ScheduleLabError, match="--from flow"):
        parse(comfy)                                           # flow t is never taken as EDM sigmas silently
    back = parse(comfy, convention="flow")                     # ... and comes back exactly when said so
    np.testing.assert_allclose(back.sigmas[:-1], s.sigmas[:-1], rtol=1e-8)
    assert back.sigmas[-1] == 0.0
