"""Export / import schedules: our JSON, ComfyUI `ManualSigmas` strings, diffusers `sigmas=`,
k-diffusion tensors."""
from __future__ import annotations

import json
import re

from core.errors import ScheduleLabError
from core.schedules.schedule import Schedule

FORMATS = ("json", "comfyui", "diffusers", "kdiffusion", "list")


def _fmt(v: float) -> str:
    return repr(float(v))


def export(schedule: Schedule, fmt: str = "json") -> str:
    """Schedule -> text in one of FORMATS.

    comfyui:    'ManualSigmas' node string, all n + 1 levels including the final 0.
    diffusers:  `sigmas=[...]` for `pipe(..., sigmas=...)` / `scheduler.set_timesteps(sigmas=...)`,
                the n positive levels (diffusers appends the final 0 itself).
    kdiffusion: a `torch.tensor([...])` of all n + 1 levels, for `sample_*(model, x, sigmas)`.
    list:       the n + 1 levels as a JSON list.
    """
    s = schedule.sigmas
    if fmt == "json":
        return schedule.to_json()
    if fmt == "comfyui":
        return ", ".join(_fmt(v) for v in s)
    if fmt == "diffusers":
        return "sigmas=[" + ", ".join(_fmt(v) for v in s[:-1]) + "]"
    if fmt == "kdiffusion":
        return "sigmas = torch.tensor([" + ", ".join(_fmt(v) for v in s) + "])"
    if fmt == "list":
        return json.dumps(list(s))
    raise ScheduleLabError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")


_NUM = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf", re.IGNORECASE)


def parse(text: str, name: str = "imported", append_zero: bool = False) -> Schedule:
    """Text -> Schedule. Accepts our JSON, a JSON list, a ComfyUI string ('14.6, 6.4, ..., 0'),
    a diffusers `sigmas=[...]` snippet (final 0 appended), or a k-diffusion tensor snippet.
    Raises ScheduleLabError naming the problem."""
    from core import readers as rd
    t = rd.check_text("" if text is None else text, "pasted schedule text").strip()
    if not t:
        raise ScheduleLabError("nothing to import: paste a JSON schedule, a ComfyUI sigma string "
                               "or a list of numbers")
    if t.startswith("{"):
        return Schedule.from_dict(rd.loads_json(t, "schedule JSON"))
    is_diffusers = t.replace(" ", "").startswith("sigmas=[")
    body = t.split("=", 1)[1] if "=" in t else t
    body = body.replace("torch.tensor", "").strip().strip("()[] \n")
    tokens = [x for x in re.split(r"[,\s]+", body) if x]
    vals = []
    for tok in tokens:
        if not _NUM.fullmatch(tok):
            raise ScheduleLabError(f"cannot read {tok!r} as a number; give sigmas separated by commas, "
                                   "e.g. '14.6, 6.4, 3.8, 0'")
        vals.append(float(tok))
    if (is_diffusers or append_zero) and vals and vals[-1] != 0:
        vals.append(0.0)
    return Schedule(tuple(vals), name=name, params={"source": "import"})
