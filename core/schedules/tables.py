"""Model noise tables by name, and the schedulers ComfyUI and diffusers define on them (methods.md s.9).

A noise table is a discrete DDPM process: EDM sigmas sigma_t = sqrt((1 - abar_t) / abar_t) at the
training timesteps t = 0 .. N-1, ascending in t (`core.models.wrap.DiscreteVP`).

Named tables (float64 here; ComfyUI stores the same numbers in float32):
    sd15, sdxl, sd2   latent-diffusion 'scaled_linear' betas, sqrt-spaced 0.00085 .. 0.012, N = 1000
                      (sigma 0.0292 .. 14.6146; ComfyUI's ModelSamplingDiscrete default)
    ddpm-linear       Ho et al. 2020: linear betas 1e-4 .. 0.02 (sigma 0.01 .. 157)
    ddpm-cosine       Nichol & Dhariwal 2021, diffusers 'squaredcos_cap_v2' (beta capped at 0.999)
or the path of a diffusers scheduler config JSON (scheduler_config.json).

Table schedulers, each exactly as its source defines it (the same name means the same numbers):
    ComfyUI comfy/samplers.py:  simple, normal, sgm_uniform, ddim_uniform, beta, linear_quadratic
    diffusers EulerDiscreteScheduler.set_timesteps(n) with timestep_spacing linspace / leading /
    trailing:  diffusers_linspace, diffusers_leading, diffusers_trailing.
As ComfyUI's BasicScheduler node does, the last n + 1 levels are kept: ddim_uniform at n = 32 builds
34 levels (its KSampler runs all 33 steps), beta may give fewer steps (repeated timesteps dropped).
`denoise` < 1 is ComfyUI's BasicScheduler option: build int(n / denoise) steps, keep the last n.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from scipy.stats import beta as beta_dist

from core.errors import ScheduleLabError, unknown_name
from core.schedules.schedule import Schedule

_LDM = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)
TABLES = {
    "sd15": _LDM, "sdxl": _LDM, "sd2": _LDM,
    "ddpm-linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000),
    "ddpm-cosine": dict(beta_schedule="squaredcos_cap_v2", num_train_timesteps=1000),
}
_CONFIG_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                "rescale_betas_zero_snr")
MAX_CONFIG_BYTES = 1 << 22


def get_table(spec):
    """A DiscreteVP from a table name, a diffusers scheduler config path / dict, or a DiscreteVP."""
    from core.models.wrap import DiscreteVP
    if isinstance(spec, DiscreteVP):
        return spec
    if isinstance(spec, dict):
        return DiscreteVP.from_config(**{k: v for k, v in spec.items() if k in _CONFIG_KEYS})
    if not isinstance(spec, str) or not spec:
        raise ScheduleLabError(f"a noise table is a name ({', '.join(TABLES)}) or a diffusers scheduler "
                               f"config JSON path; got {spec!r}")
    if spec in TABLES:
        return DiscreteVP.from_config(**TABLES[spec])
    p = Path(spec)
    if not (spec.endswith(".json") or p.is_file()):
        raise unknown_name("noise table", spec, list(TABLES) + ["PATH/scheduler_config.json"])
    if not p.is_file():
        raise ScheduleLabError(f"scheduler config {spec!r} not found; give a diffusers scheduler_config.json "
                               f"or a table name ({', '.join(TABLES)})")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ScheduleLabError(f"scheduler config {spec!r} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ScheduleLabError(f"scheduler config {spec!r} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ScheduleLabError(f"scheduler config {spec!r} must be a JSON object (diffusers scheduler_config.json)")
    return get_table(cfg)


def _levels(sigmas, name, **params) -> Schedule:
    return Schedule(tuple(float(v) for v in sigmas), name=name, params=params)


def _interp_log(table, t) -> np.ndarray:
    """ComfyUI ModelSamplingDiscrete.sigma: log-sigma linear between integer timesteps (the table's
    own entry at an integer timestep)."""
    t = np.asarray(t, dtype=np.float64)
    out = table.sigma(t)
    whole = t == np.round(t)
    out[whole] = table.sigmas[t[whole].astype(int)]
    return out


# ---------------------------------------------------------------- ComfyUI comfy/samplers.py
def simple(table, steps):
    """ComfyUI 'simple': every (N / n)-th table entry from the top, then 0."""
    s = table.sigmas
    ss = len(s) / steps
    return [s[-(1 + int(x * ss))] for x in range(steps)] + [0.0]


def ddim_uniform(table, steps):
    """ComfyUI 'ddim_uniform': table entries 1, 1 + k, 1 + 2k ... (k = N // n) below N, descending, then 0."""
    s = table.sigmas
    k = max(len(s) // steps, 1)
    return list(s[1::k][::-1]) + [0.0]


def normal(table, steps):
    """ComfyUI 'normal': n timesteps uniform from t(sigma_max) = N-1 to t(sigma_min) = 0, then 0."""
    t = np.linspace(len(table.sigmas) - 1, 0, steps)
    return list(_interp_log(table, t)) + [0.0]


def sgm_uniform(table, steps):
    """ComfyUI 'sgm_uniform': n + 1 uniform timesteps from N-1 to 0, the last dropped, then 0."""
    t = np.linspace(len(table.sigmas) - 1, 0, steps + 1)[:-1]
    return list(_interp_log(table, t)) + [0.0]


def beta(table, steps, alpha: float = 0.6, beta: float = 0.6):
    """ComfyUI 'beta' (Lee et al. 2024): table entries at rint(ppf_Beta(alpha, beta)(1 - i / n) (N - 1)),
    i = 0 .. n-1, repeated timesteps dropped, then 0."""
    if alpha <= 0 or beta <= 0:
        raise ScheduleLabError(f"beta schedule needs alpha, beta > 0; got alpha={alpha}, beta={beta}")
    ts = np.rint(beta_dist.ppf(1 - np.linspace(0, 1, steps, endpoint=False), alpha, beta) * (len(table.sigmas) - 1))
    keep = np.concatenate([[True], ts[1:] != ts[:-1]])
    return list(table.sigmas[ts[keep].astype(int)]) + [0.0]


def linear_quadratic(table, steps, threshold_noise: float = 0.025, linear_steps: int | None = None):
    """ComfyUI 'linear_quadratic' (Mochi): sigma_max (1 - s_i), s linear to threshold_noise over the
    first linear_steps (default n // 2), then quadratic up to 1."""
    if steps == 1:
        sched = [0.0, 1.0]
    else:
        ls = steps // 2 if linear_steps is None else int(linear_steps)
        if not 0 < ls < steps:
            raise ScheduleLabError(f"linear_quadratic needs 0 < linear_steps < steps; got {ls}")
        lin = [i * threshold_noise / ls for i in range(ls)]
        diff = ls - threshold_noise * steps
        qs = steps - ls
        qc = diff / (ls * qs ** 2)
        lc = threshold_noise / ls - 2 * diff / qs ** 2
        const = qc * ls ** 2
        sched = lin + [qc * i ** 2 + lc * i + const for i in range(ls, steps)] + [1.0]
    return [table.sigma_max * (1.0 - x) for x in sched]


# ---------------------------------------------------------------- diffusers EulerDiscreteScheduler
def _diffusers(spacing):
    def fn(table, steps, steps_offset: int = 0):
        n_train = len(table.sigmas)
        if spacing == "linspace":
            t = np.linspace(0, n_train - 1, steps)[::-1]
        elif spacing == "leading":
            t = (np.arange(0, steps) * (n_train // steps)).round()[::-1] + steps_offset
        else:
            t = np.arange(n_train, 0, -n_train / steps).round() - 1
        # diffusers interpolates sigma itself (interpolation_type 'linear'), not log sigma
        return list(np.interp(t, np.arange(n_train), table.sigmas)) + [0.0]
    fn.__name__ = f"diffusers_{spacing}"
    fn.__doc__ = (f"diffusers EulerDiscreteScheduler.set_timesteps(n) with timestep_spacing='{spacing}' "
                  "(sigma linear between table entries), then 0.")
    return fn


TABLE_SCHEDULERS = {
    "simple": simple, "normal": normal, "sgm_uniform": sgm_uniform, "ddim_uniform": ddim_uniform,
    "beta": beta, "linear_quadratic": linear_quadratic,
    "diffusers_linspace": _diffusers("linspace"), "diffusers_leading": _diffusers("leading"),
    "diffusers_trailing": _diffusers("trailing"),
}


def table_schedule(name: str, steps: int, table, denoise: float = 1.0, **params) -> Schedule:
    """A table scheduler's schedule (ComfyUI's BasicScheduler with `denoise`)."""
    import inspect
    if name not in TABLE_SCHEDULERS:
        raise unknown_name("table scheduler", name, TABLE_SCHEDULERS)
    fn = TABLE_SCHEDULERS[name]
    allowed = set(inspect.signature(fn).parameters) - {"table", "steps"}
    extra = set(params) - allowed
    if extra:
        raise ScheduleLabError(f"schedule {name!r} has no parameter {sorted(extra)[0]!r}; "
                               f"its parameters: {', '.join(sorted(allowed)) or 'none'}")
    tab = get_table(table)
    total = _denoise_total(steps, denoise)
    sig = fn(tab, total, **params)[-(steps + 1):]
    extra = {"denoise": denoise} if denoise < 1 else {}
    return _levels(sig, name, table=table if isinstance(table, str) else "custom", **params, **extra)


def _denoise_total(steps: int, denoise: float) -> int:
    if not (0 < denoise <= 1) or not math.isfinite(denoise):
        raise ScheduleLabError(f"denoise must be in (0, 1]; got {denoise}")
    return steps if denoise > 0.9999 else int(steps / denoise)


def nearest_timesteps(schedule: Schedule, table) -> dict:
    """Each positive level -> the nearest training timestep (in log sigma) of `table`.

    Returns {'timesteps': [int] (descending), 'sigmas': the table's sigma at each, 'max_rel_move':
    max |sigma_table / sigma - 1|}. Raises when two levels land on one timestep."""
    tab = get_table(table)
    ls = np.log(tab.sigmas)
    lv = np.asarray(schedule.sigmas[:-1], dtype=np.float64)
    ts = np.abs(np.log(lv)[:, None] - ls[None, :]).argmin(axis=1)
    if np.any(np.diff(ts) >= 0):
        i = int(np.argmax(np.diff(ts) >= 0))
        raise ScheduleLabError(f"levels {lv[i]:.6g} and {lv[i + 1]:.6g} map to the same training timestep "
                               f"{int(ts[i])}; this schedule cannot be given as timesteps on this table "
                               "(use sigmas= instead)")
    sig = tab.sigmas[ts]
    return {"timesteps": [int(t) for t in ts], "sigmas": sig.tolist(),
            "max_rel_move": float(np.max(np.abs(sig / lv - 1)))}


def timesteps_to_sigmas(timesteps, table) -> list:
    """Training timesteps (any order of floats in [0, N-1]) -> EDM sigmas, log-linear between entries."""
    tab = get_table(table)
    t = np.asarray(timesteps, dtype=np.float64)
    n = len(tab.sigmas)
    if t.size and (t.min() < 0 or t.max() > n - 1):
        raise ScheduleLabError(f"timesteps must lie in [0, {n - 1}] for this table; got {t.min():g} .. {t.max():g}")
    return _interp_log(tab, t).tolist()
