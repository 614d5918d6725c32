"""Export schedules to the tools people run them in, each snippet runnable as pasted (methods.md s.9).

Formats (`export(schedule, fmt)`), n steps = n + 1 levels ending in 0:
    json                 our JSON (name, params, solver) with the provenance line as a 'provenance' field.
    comfyui              a ManualSigmas node string: the n + 1 levels in plain decimals (ManualSigmas reads
                         numbers with the regex [-+]?(?:\\d*\\.*\\d+), which has no exponent, so 1e-05 would
                         read as 1.0 and -5.0). No comment: every digit in that field becomes a sigma.
    comfyui_tensor       Python: the SIGMAS tensor (float32, n + 1 values) a custom node / script passes on.
    diffusers            Python: `sigmas = [... , 0.0]` for pipe(..., sigmas=sigmas) or
                         EulerDiscreteScheduler.set_timesteps(sigmas=sigmas): the list WITH its final 0
                         (diffusers runs len(sigmas) - 1 steps).
    diffusers_edm        Python: a float64 tensor for EDMEulerScheduler.set_timesteps(sigmas=...). That
                         scheduler maps what it gets through its Karras ramp (sigma_min, sigma_max, rho of
                         its config) and appends 0, so we export the ramp that lands on our n levels.
    diffusers_timesteps  Python: `timesteps = [...]` for schedulers that take timesteps= (DPMSolverMultistep,
                         Heun, Euler): each level moved to its nearest training timestep on a model table;
                         the comment says how far. Needs `table=`.
    kdiffusion           Python, self-contained: imports, the float64 sigmas tensor, a sample_* call.
    list                 the n + 1 levels as a JSON list (also what the A1111/Forge extension
                         webUI_ExtraSchedulers' 'custom' scheduler reads; A1111/Forge themselves have no
                         custom-schedule input, only sigma_min / sigma_max / rho overrides).
Every Python export starts with a provenance comment (model, solver, steps, sigma range, method and
settings); the bare-value formats (comfyui, list) cannot hold one: `provenance()` gives it separately.
"""
from __future__ import annotations

import json
import re

import numpy as np

from core.errors import ScheduleLabError
from core.schedules.schedule import Schedule
from core.schedules.imports import parse  # noqa: F401  (io.parse is the import entry point)

FORMATS = ("json", "comfyui", "comfyui_tensor", "diffusers", "diffusers_edm", "diffusers_timesteps",
           "kdiffusion", "list")
NEEDS_TABLE = ("diffusers_timesteps",)
EDM_EULER_DEFAULTS = {"sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0}   # diffusers EDMEulerScheduler


def plain(v: float) -> str:
    """Shortest round-trip decimal of a float, never in exponent notation (1e-05 -> '0.00001')."""
    return np.format_float_positional(float(v), unique=True, trim="0")


def _list(vals) -> str:
    return "[" + ", ".join(plain(v) for v in vals) + "]"


def provenance(schedule: Schedule, model: str | None = None) -> str:
    """One line: model, solver, steps, sigma range, method and its settings."""
    p = dict(schedule.params or {})
    mdl = model or p.get("table") or p.get("preset") or "any (EDM sigma)"
    settings = ", ".join(f"{k}={v}" for k, v in sorted(p.items()) if k != "table") or "defaults"
    line = (f"Schedule Lab: {schedule.name}, {schedule.steps} steps, sigma {plain(schedule.sigma_max)} .. "
            f"{plain(schedule.sigma_min)} then 0; model: {mdl}; solver: {schedule.solver or 'any'}; "
            f"settings: {settings}")
    # one comment line whatever an imported name holds: no line break may end the comment early
    return re.sub(r"[\x00-\x1f\x7f\u0085\u2028\u2029]", " ", line)[:2000]


def edm_euler_ramp(schedule: Schedule, sigma_min: float = 0.002, sigma_max: float = 80.0,
                   rho: float = 7.0) -> list:
    """The n ramp values r_i with (smax^(1/rho) + r_i (smin^(1/rho) - smax^(1/rho)))^rho = sigma_i."""
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [(s ** (1 / rho) - a) / (b - a) for s in schedule.sigmas[:-1]]


def export(schedule: Schedule, fmt: str = "json", table=None, model: str | None = None,
           edm: dict | None = None) -> str:
    """Schedule -> text in one of FORMATS (see the module docstring). `table` (a name or a diffusers
    config) is needed by diffusers_timesteps; `model` names the model in the provenance comment;
    `edm` overrides EDMEulerScheduler's sigma_min / sigma_max / rho for diffusers_edm."""
    return _export(schedule, fmt, table, model, edm).rstrip("\n")


def _export(schedule, fmt, table, model, edm) -> str:
    if not isinstance(schedule, Schedule):
        raise ScheduleLabError(f"export needs a Schedule; got {type(schedule).__name__}")
    s = schedule.sigmas
    head = "# " + provenance(schedule, model or (table if isinstance(table, str) else None)) + "\n"
    if fmt == "json":
        return json.dumps({**schedule.to_dict(), "provenance": head[2:-1]}, indent=1)
    if fmt == "comfyui":
        return ", ".join(plain(v) for v in s)
    if fmt == "list":
        return json.dumps(list(s))
    if fmt == "comfyui_tensor":
        return (head + "# ComfyUI SIGMAS (n + 1 levels, final 0), e.g. returned by a custom node or passed to "
                "SamplerCustom from a script\nimport torch\n"
                f"sigmas = torch.tensor({_list(s)}, dtype=torch.float32)\n")
    if fmt == "diffusers":
        return (head + "# the list keeps its final 0: diffusers runs len(sigmas) - 1 steps\n"
                f"sigmas = {_list(s)}\n"
                "# pipe(prompt, sigmas=sigmas)  or  scheduler.set_timesteps(sigmas=sigmas)  "
                "(EulerDiscreteScheduler; its table must be the model's)\n")
    if fmt == "diffusers_edm":
        cfg = {**EDM_EULER_DEFAULTS, **(edm or {})}
        ramp = edm_euler_ramp(schedule, **cfg)
        args = ", ".join(f"{k}={plain(v)}" for k, v in cfg.items())
        return (head + "# EDMEulerScheduler maps sigmas= through its Karras ramp and appends the final 0: these\n"
                f"# ramp values land exactly on the {schedule.steps} levels for a scheduler built with these settings\n"
                "import torch\n"
                f"scheduler_kwargs = dict({args})\n"
                f"ramp = torch.tensor({_list(ramp)}, dtype=torch.float64)\n"
                "# scheduler = EDMEulerScheduler(**scheduler_kwargs); scheduler.set_timesteps(sigmas=ramp)\n")
    if fmt == "diffusers_timesteps":
        if table is None:
            raise ScheduleLabError("diffusers_timesteps needs the model's noise table: give table= "
                                   "(--table sd15|sdxl|sd2|ddpm-linear|ddpm-cosine or a scheduler config JSON)")
        from core.schedules.tables import nearest_timesteps
        m = nearest_timesteps(schedule, table)
        moved = ", ".join(f"{plain(a)}->{plain(b)}" for a, b in zip(s[:-1], m["sigmas"]) if a != b)
        return (head + f"# each level moved to its nearest training timestep: largest relative move "
                f"{m['max_rel_move']:.3g}\n# sigma moves: {moved or 'none'}\n"
                f"timesteps = {m['timesteps']}\n"
                "# scheduler.set_timesteps(timesteps=timesteps)  (DPMSolverMultistep, Heun, Euler; "
                "the scheduler appends the final 0)\n")
    if fmt == "kdiffusion":
        return (head + "import torch\nimport k_diffusion as K\n"
                f"sigmas = torch.tensor({_list(s)}, dtype=torch.float64)\n"
                "# x = torch.randn(shape) * sigmas[0]\n"
                "# x0 = K.sampling.sample_dpmpp_2m(model, x, sigmas)   # model: a k-diffusion denoiser D(x, sigma)\n")
    raise ScheduleLabError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
