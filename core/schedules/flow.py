"""Flow-matching schedules in flow time t, and their exports (methods.md section 9).

Rectified flow x_t = (1 - t) x0 + t eps is the EDM process x = x0 + sigma eps with

    sigma = t / (1 - t),      t = sigma / (1 + sigma),      x = x_t / (1 - t)

(exact: Euler in t on the velocity is Euler in sigma on D, step for step; tests/test_flow.py).
Every schedule here is made in t and stored as EDM sigmas (`Schedule`), so every solver and
optimizer runs on it; `flow_t(schedule)` gives the t values back.

Heuristics (each `(steps, sigma_min, sigma_max, **params)`, endpoints t_max = t(sigma_max),
t_min = t(sigma_min), then 0):
- `flow_uniform`: uniform in t (diffusers' FlowMatchEulerDiscreteScheduler, shift = 1).
- `flow_shift`: SD3's shift (Esser et al. 2024, Eq. 23) t' = s t / (1 + (s - 1) t) of a
  uniform grid in t (diffusers' `shift`, static shifting).
- `flow_dynamic`: Flux's resolution-dependent shift, t' = e^mu / (e^mu + (1/t - 1)) of a uniform
  grid, mu linear in the image's token count (diffusers' `calculate_shift` in the Flux pipeline +
  the scheduler's `use_dynamic_shifting`, `time_shift_type="exponential"`).
Presets: `oss_flux`, `oss_wan`, `oss_chroma`: the OSS noise levels (Pei et al. 2025) as ComfyUI's
OptimalStepsScheduler uses them: steps + 1 flow-t levels, log-linearly interpolated in t to other
step counts, the last replaced by 0.
"""
from __future__ import annotations

import math

import numpy as np

from core.errors import ScheduleLabError
from core.schedules.schedule import Schedule


# ---- the conversion -----------------------------------------------------------------------------

def t_to_sigma(t):
    """Flow time t in [0, 1) -> EDM sigma = t / (1 - t) (float64 numpy)."""
    t = np.asarray(t, dtype=np.float64)
    if np.any(t < 0) or np.any(t >= 1):
        raise ScheduleLabError("flow times must lie in [0, 1): t = 1 is pure noise, sigma = inf; "
                               "start at t_max < 1 (e.g. 0.999)")
    return t / (1 - t)


def sigma_to_t(sigma):
    """EDM sigma >= 0 -> flow time t = sigma / (1 + sigma) (float64 numpy)."""
    return np.asarray(sigma, dtype=np.float64) / (1 + np.asarray(sigma, dtype=np.float64))


def flow_t(schedule: Schedule) -> list:
    """The schedule's levels in flow time t (n + 1 values, descending, last 0)."""
    return sigma_to_t(schedule.sigmas).tolist()


def from_flow_t(ts, name: str = "flow", **params) -> Schedule:
    """Descending flow times (with or without the final 0) -> Schedule in sigma."""
    ts = [float(v) for v in ts]
    if ts and ts[-1] != 0.0:
        ts.append(0.0)
    return Schedule(tuple(t_to_sigma(ts).tolist()), name=name, params=params)


# ---- shifts (diffusers' definitions) ------------------------------------------------------------

def sd3_shift(t, shift: float):
    """SD3 Eq. 23 / diffusers FlowMatchEulerDiscreteScheduler (static): s t / (1 + (s - 1) t)."""
    t = np.asarray(t, dtype=np.float64)
    return shift * t / (1 + (shift - 1) * t)


def sd3_unshift(t, shift: float):
    """Inverse of `sd3_shift`: t / (s - (s - 1) t)."""
    t = np.asarray(t, dtype=np.float64)
    return t / (shift - (shift - 1) * t)


def exp_time_shift(t, mu: float):
    """diffusers `_time_shift_exponential(mu, 1, t)` = e^mu / (e^mu + (1/t - 1)); t = 0 -> 0."""
    t = np.asarray(t, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(t > 0, math.exp(mu) / (math.exp(mu) + (1 / np.where(t > 0, t, 1) - 1)), 0.0)


def exp_time_unshift(t, mu: float):
    """Inverse of `exp_time_shift`: 1 / (1 + e^mu (1/t - 1))."""
    t = np.asarray(t, dtype=np.float64)
    return 1 / (1 + math.exp(mu) * (1 / t - 1))


def flux_mu(height: int = 1024, width: int = 1024, base_seq_len: int = 256, max_seq_len: int = 4096,
            base_shift: float = 0.5, max_shift: float = 1.15, patch: int = 16) -> float:
    """Flux's mu for an image of height x width pixels: linear in the token count
    (H / patch)(W / patch) (VAE factor 8 x 2x2 packing = 16 pixels a token), through
    (base_seq_len, base_shift) and (max_seq_len, max_shift): diffusers' `calculate_shift`."""
    if height <= 0 or width <= 0 or patch <= 0 or max_seq_len == base_seq_len:
        raise ScheduleLabError("flux_mu needs height, width, patch > 0 and max_seq_len != base_seq_len")
    seq = (int(height) // patch) * (int(width) // patch)
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return seq * m + (base_shift - m * base_seq_len)


# ---- heuristics ---------------------------------------------------------------------------------

def _t_range(sigma_min: float, sigma_max: float):
    return float(sigma_to_t(sigma_max)), float(sigma_to_t(sigma_min))


def _from_t(levels, name: str, **params) -> Schedule:
    return Schedule(tuple(t_to_sigma(levels).tolist()) + (0.0,), name=name, params=params)


def flow_uniform(steps, sigma_min, sigma_max) -> Schedule:
    """Uniform in flow time t from t(sigma_max) to t(sigma_min)."""
    hi, lo = _t_range(sigma_min, sigma_max)
    return _from_t(np.linspace(hi, lo, steps), "flow_uniform")


def shifted_grid(steps: int, t_max: float, t_min: float, shift=None, mu=None) -> np.ndarray:
    """`steps` levels t' = shift(u) of a uniform grid u whose images are t_max and t_min
    (shift: SD3's static shift s; mu: Flux's exponential shift). t_max = 1 is allowed here."""
    if (shift is None) == (mu is None):
        raise ScheduleLabError("give exactly one of shift (SD3) or mu (Flux)")
    if shift is not None:
        if not shift > 0:
            raise ScheduleLabError(f"shift must be > 0; got {shift}")
        u = np.linspace(sd3_unshift(t_max, shift), sd3_unshift(t_min, shift), steps)
        return sd3_shift(u, shift)
    u = np.linspace(exp_time_unshift(t_max, mu), exp_time_unshift(t_min, mu), steps)
    return exp_time_shift(u, mu)


def flow_shift(steps, sigma_min, sigma_max, shift: float = 3.0) -> Schedule:
    """SD3's shift (s = 3 for SD3 at 1024 px) of a uniform grid in t, endpoints kept."""
    hi, lo = _t_range(sigma_min, sigma_max)
    return _from_t(shifted_grid(steps, hi, lo, shift=shift), "flow_shift", shift=shift)


def flow_dynamic(steps, sigma_min, sigma_max, height: int = 1024, width: int = 1024,
                 base_shift: float = 0.5, max_shift: float = 1.15) -> Schedule:
    """Flux's resolution-dependent (exponential) shift with mu = flux_mu(height, width), endpoints kept."""
    hi, lo = _t_range(sigma_min, sigma_max)
    mu = flux_mu(height, width, base_shift=base_shift, max_shift=max_shift)
    return _from_t(shifted_grid(steps, hi, lo, mu=mu), "flow_dynamic", height=height, width=width,
                   base_shift=base_shift, max_shift=max_shift, mu=mu)


FLOW_HEURISTICS = {"flow_uniform": flow_uniform, "flow_shift": flow_shift, "flow_dynamic": flow_dynamic}


# ---- OSS presets (ComfyUI OptimalStepsScheduler convention) -------------------------------------

# Flow-t noise levels of the OSS paper's searched schedules, as shipped by ComfyUI's
# comfy_extras/nodes_optimalsteps.py (ComfyUI commit 36d3468f; from bebebe666/OptimalSteps).
OSS_LEVELS = {
    "flux": (0.9968, 0.9886, 0.9819, 0.975, 0.966, 0.9471, 0.9158, 0.8287, 0.5512, 0.2808, 0.001),
    "wan": (1.0, 0.997, 0.995, 0.993, 0.991, 0.989, 0.987, 0.985, 0.98, 0.975, 0.973, 0.968, 0.96, 0.946,
            0.927, 0.902, 0.864, 0.776, 0.539, 0.208, 0.001),
    "chroma": (0.992, 0.99, 0.988, 0.985, 0.982, 0.978, 0.973, 0.968, 0.961, 0.953, 0.943, 0.931, 0.917, 0.9,
               0.881, 0.858, 0.832, 0.802, 0.769, 0.731, 0.69, 0.646, 0.599, 0.55, 0.501, 0.451, 0.402, 0.355,
               0.311, 0.27, 0.232, 0.199, 0.169, 0.143, 0.12, 0.101, 0.084, 0.07, 0.058, 0.048, 0.001),
}
FLOW_PRESETS = tuple(f"oss_{k}" for k in OSS_LEVELS)


def oss_levels_t(model: str, steps: int) -> np.ndarray:
    """ComfyUI OptimalStepsScheduler(model_type, steps, denoise=1): steps + 1 flow times, the
    preset log-linearly interpolated (in log t, on a uniform index grid) when its length differs,
    the last set to 0."""
    key = model.lower()
    if key not in OSS_LEVELS:
        raise ScheduleLabError(f"no OSS preset {model!r}; presets: {', '.join(OSS_LEVELS)}")
    lv = np.asarray(OSS_LEVELS[key], dtype=np.float64)
    if steps + 1 != len(lv):
        ys = np.interp(np.linspace(0, 1, steps + 1), np.linspace(0, 1, len(lv)), np.log(lv[::-1]))
        lv = np.exp(ys)[::-1].copy()
    lv[-1] = 0.0
    return lv


def oss_preset(name: str, steps: int, t_cap: float = 0.999) -> Schedule:
    """An OSS preset as a Schedule; a first level t = 1 (pure noise, Wan) is capped at t_cap."""
    if not isinstance(steps, int) or steps < 2:
        raise ScheduleLabError(f"an OSS preset needs at least 2 steps (ComfyUI's minimum is 3); got {steps!r}")
    lv = oss_levels_t(name.removeprefix("oss_"), steps)
    lv[0] = min(lv[0], t_cap)
    return Schedule(tuple(t_to_sigma(lv).tolist()), name=f"oss_{name.removeprefix('oss_')}",
                    params={"source": "ComfyUI OptimalStepsScheduler", "t_cap": t_cap})


# ---- exports for flow models (t values) -----------------------------------------------------------

def _fmt_plain(v: float) -> str:
    """A decimal without exponent (ComfyUI's ManualSigmas regex reads no exponent)."""
    s = f"{v:.10f}".rstrip("0")
    return s + "0" if s.endswith(".") else s


def export_flow(schedule: Schedule, fmt: str = "diffusers") -> str:
    """Flow-model exports in t.

    diffusers: `FlowMatchEulerDiscreteScheduler.set_timesteps(sigmas=[...])` takes the n positive flow
        times (it appends the final 0) and then applies its own shift: use it with shift=1.0 and
        use_dynamic_shifting=False (as the snippet does), or the levels are shifted twice.
    comfyui: the n + 1 flow times, final 0 included, for ManualSigmas on a flow model (ComfyUI's
        flow models' "sigmas" are t).
    """
    ts = flow_t(schedule)
    if fmt == "diffusers":
        body = ", ".join(repr(float(v)) for v in ts[:-1])
        return ("scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=1.0, "
                f"use_dynamic_shifting=False)\nscheduler.set_timesteps(sigmas=[{body}])")
    if fmt == "comfyui":
        return ", ".join(_fmt_plain(v) for v in ts)
    raise ScheduleLabError(f"unknown flow export format {fmt!r}; choose diffusers or comfyui")
