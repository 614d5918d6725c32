"""Import what other tools print, with the convention said out loud (methods.md s.1, s.9).

Readable texts: our JSON ({"sigmas": [...]} or {"timesteps": [...]}), a JSON list, a ComfyUI
ManualSigmas string, Python snippets (`sigmas = [...]`, `timesteps = [...]`, every export of
core.schedules.io), printed torch tensors (`tensor([14.6146, ...], device='cuda:0',
dtype=torch.float64, requires_grad=True)`, `scheduler.sigmas`, `scheduler.timesteps`), numpy prints
(`array([...])`, `[999 850 736]`), over several lines, with # comments.

Conventions (`convention=`):
    sigmas     EDM sigmas, descending, ending in 0 (append_zero adds a missing final 0).
    timesteps  a model's training timesteps, descending (diffusers' `scheduler.timesteps`: the n points
               where the model is called); sigma = the table's sigma there (log-linear between integer
               steps), then the final 0. Needs `table=`.
    flow       flow-matching t in [0, 1), descending, ending in 0: sigma = t / (1 - t) (FlowMatching).
    auto       sigmas, but only when nothing suggests otherwise: a text that says `timesteps`, integer
               values up to ~1000, or values in [0, 1] ending in 0 (flow t) are refused with a message
               naming the convention to choose. Nothing is guessed silently.
Every failure is a ScheduleLabError; text size, value count, digits per number and JSON nesting are
bounded before any work.
"""
from __future__ import annotations

import json
import math
import re

from core.errors import ScheduleLabError
from core.schedules.schedule import Schedule

CONVENTIONS = ("auto", "sigmas", "timesteps", "flow")
MAX_CHARS = 1_000_000
MAX_VALUES = 100_000
MAX_TOKEN = 64
MAX_DEPTH = 16
_NUM = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)", re.IGNORECASE)
_KWARG = re.compile(r"\b(?:device|dtype|requires_grad|grad_fn|layout)\s*=\s*(?:<[^>]*>|'[^']*'|\"[^\"]*\"|[\w.]+)")
_WRAP = re.compile(r"\b(?:torch\.tensor|torch\.Tensor|torch\.FloatTensor|np\.array|numpy\.array|tensor|array)\b")
_HOW = ("choose the convention: --from sigmas (EDM sigmas), --from timesteps --table NAME (a model's "
        "training timesteps), or --from flow (flow-matching t, sigma = t / (1 - t))")


def _text(text) -> str:
    if isinstance(text, (bytes, bytearray)):
        if len(text) > MAX_CHARS:
            raise ScheduleLabError(f"the text is longer than {MAX_CHARS} bytes; a schedule is a short list")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ScheduleLabError(f"the text is not UTF-8 ({e.reason} at byte {e.start}); "
                                   "save it as UTF-8 text") from None
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise ScheduleLabError(f"cannot import a {type(text).__name__}; give the text of a schedule")
    if len(text) > MAX_CHARS:
        raise ScheduleLabError(f"the text is longer than {MAX_CHARS} characters; a schedule is a short list")
    return text.strip()


def _json(t: str):
    depth = 0
    for ch in t:
        depth += ch in "[{"
        depth -= ch in "]}"
        if depth > MAX_DEPTH:
            raise ScheduleLabError(f"the JSON nests deeper than {MAX_DEPTH} levels; a schedule is one flat list")
    try:
        return json.loads(t)
    except (json.JSONDecodeError, RecursionError, ValueError) as e:
        raise ScheduleLabError(f"schedule JSON is not valid: {e}") from None


def _numbers(items, what="value") -> list:
    if len(items) > MAX_VALUES:
        raise ScheduleLabError(f"more than {MAX_VALUES} values; a schedule has at most a few thousand levels")
    out = []
    for x in items:
        if isinstance(x, (list, dict)):
            raise ScheduleLabError("expected one flat list of numbers, found nested lists")
        if isinstance(x, bool) or not isinstance(x, (int, float, str)):
            raise ScheduleLabError(f"cannot read {str(x)[:40]!r} as a number; give a flat list of numbers")
        if isinstance(x, str):
            if len(x) > MAX_TOKEN:
                raise ScheduleLabError(f"the number {x[:20]}... has more than {MAX_TOKEN} characters")
            if not _NUM.fullmatch(x):
                raise ScheduleLabError(f"cannot read {x!r} as a number; give {what}s separated by commas, "
                                       "e.g. '14.6, 6.4, 3.8, 0'")
        if isinstance(x, int) and abs(x) > 10 ** 18:
            raise ScheduleLabError(f"the number {str(x)[:20]}... is too large for a {what}")
        try:
            v = float(x)
        except (ValueError, OverflowError):
            raise ScheduleLabError(f"cannot read {str(x)[:40]!r} as a number") from None
        out.append(v)
    return out


def _tokens(body: str) -> list:
    if "..." in body or "…" in body:
        raise ScheduleLabError("the print is truncated ('...'); print all values with "
                               "torch.set_printoptions(profile='full') or .tolist()")
    if body.count("[") > 1 or body.count("(") > 1:
        raise ScheduleLabError("expected one flat list of numbers, found nested lists")
    return [x for x in re.split(r"[,;\s\[\]()]+", body) if x]


def read_values(text) -> tuple:
    """Text -> (numbers, hint, meta): hint is 'sigmas' / 'timesteps' when the text names it, meta
    the JSON object's name / params / solver when it is our JSON."""
    t = _text(text)
    if not t:
        raise ScheduleLabError("nothing to import: paste a JSON schedule, a ComfyUI sigma string, a printed "
                               "tensor or a list of numbers")
    obj = None
    if t[0] == "{":
        obj = _json(t)
    elif t[0] == "[" and t.endswith("]") and "," in t:
        try:
            obj = _json(t)
        except ScheduleLabError:
            if t.count("[") > MAX_DEPTH:
                raise
            obj = None                                   # not JSON (e.g. a Python list with comments)
    if isinstance(obj, dict):
        key = "sigmas" if "sigmas" in obj else "timesteps" if "timesteps" in obj else None
        if key is None or not isinstance(obj[key], list):
            raise ScheduleLabError("a schedule JSON needs a 'sigmas' list (descending, ending in 0) "
                                   "or a 'timesteps' list")
        meta = {k: obj.get(k) for k in ("name", "params", "solver") if obj.get(k) is not None}
        if "params" in meta and not isinstance(meta["params"], dict):
            raise ScheduleLabError("a schedule JSON's 'params' must be an object")
        if "solver" in meta and not isinstance(meta["solver"], str):
            raise ScheduleLabError("a schedule JSON's 'solver' must be a string")
        return _numbers(obj[key]), key, meta
    if isinstance(obj, list):
        return _numbers(obj), None, {}
    if obj is not None:
        raise ScheduleLabError("a schedule JSON is an object with a 'sigmas' list or a list of numbers")
    lines = [ln.split("#", 1)[0] for ln in t.splitlines()]
    lines = [ln for ln in lines if ln.strip() and not re.match(r"\s*(import|from)\s", ln)]
    kw = [ln for ln in lines if re.match(r"\s*scheduler_kwargs\s*=", ln)]
    if kw and any(re.match(r"\s*ramp\s*=", ln) for ln in lines):     # our diffusers_edm export
        return _edm_ramp(kw[0], [ln for ln in lines if re.match(r"\s*ramp\s*=", ln)][0])
    body = " ".join(lines)
    hint = None
    if "[" in body:
        pre, rest = body.split("[", 1)
        if "]" not in rest:
            raise ScheduleLabError("a '[' has no closing ']'")
        inner, after = rest.split("]", 1)
        if "[" in inner:
            raise ScheduleLabError("expected one flat list of numbers, found nested lists")
        if "[" in after:
            raise ScheduleLabError("found more than one list; paste the one list of sigmas or timesteps")
        low = pre.lower()
        hint = "timesteps" if "timestep" in low else "sigmas" if "sigma" in low else None
        body = inner
    else:
        body = _KWARG.sub(" ", body)
        body = _WRAP.sub(" ", body)
        m = re.match(r"\s*([A-Za-z_][\w.]*)\s*=(?!=)", body)
        if m:
            low = m.group(1).lower()
            hint = "timesteps" if "timestep" in low else "sigmas" if "sigma" in low else None
            body = body[m.end():]
    return _numbers(_tokens(body)), hint, {}


def _edm_ramp(kw_line: str, ramp_line: str) -> tuple:
    """EDMEulerScheduler ramp r -> sigma = (smax^(1/rho) + r (smin^(1/rho) - smax^(1/rho)))^rho, then 0."""
    cfg = dict(re.findall(r"(sigma_min|sigma_max|rho)\s*=\s*([-+.\deE]+)", kw_line))
    if set(cfg) != {"sigma_min", "sigma_max", "rho"}:
        raise ScheduleLabError("scheduler_kwargs must give sigma_min, sigma_max and rho")
    smin, smax, rho = (_numbers([cfg[k]])[0] for k in ("sigma_min", "sigma_max", "rho"))
    if not (0 < smin < smax and rho > 0):
        raise ScheduleLabError("scheduler_kwargs need 0 < sigma_min < sigma_max and rho > 0")
    inner = ramp_line.split("[", 1)[-1].split("]", 1)[0]
    try:
        a, b = smax ** (1 / rho), smin ** (1 / rho)
        sig = [(a + r * (b - a)) ** rho if a + r * (b - a) > 0 else -1.0 for r in _numbers(_tokens(inner))]
    except (OverflowError, ZeroDivisionError):
        raise ScheduleLabError("the EDMEulerScheduler ramp or its settings overflow; check sigma_min, "
                               "sigma_max, rho and the ramp values") from None
    return sig + [0.0], "sigmas", {"params": {"from": "EDMEulerScheduler ramp"}}


def _looks_like(vals: list) -> str | None:
    if len(vals) >= 2 and all(v == int(v) for v in vals if math.isfinite(v)) and 100 <= max(vals) <= 1000:
        return "timesteps"
    if len(vals) >= 2 and 900 <= vals[0] <= 1000 and vals[-1] <= 1:
        return "timesteps"
    if len(vals) >= 2 and vals[-1] == 0 and all(0 <= v <= 1 for v in vals):
        return "flow"
    return None


def parse(text, name: str = "imported", convention: str = "auto", table=None,
          append_zero: bool = False) -> Schedule:
    """Text -> Schedule under an explicit convention (module docstring). Raises ScheduleLabError
    naming the problem and what to do."""
    if convention not in CONVENTIONS:
        raise ScheduleLabError(f"unknown convention {convention!r}; choose one of: {', '.join(CONVENTIONS)}")
    vals, hint, meta = read_values(text)
    if any(not math.isfinite(v) for v in vals):
        bad = next(v for v in vals if not math.isfinite(v))
        raise ScheduleLabError(f"the values contain {bad}; every value must be finite")
    conv = convention
    if conv == "auto":
        if meta:                                         # our JSON says what it is
            conv = hint
        elif hint == "timesteps":
            conv = "timesteps"
        else:
            looks = _looks_like(vals)
            if looks == "timesteps":
                raise ScheduleLabError("these values look like training timesteps (up to ~1000), not sigmas; "
                                       + _HOW)
            if looks == "flow":
                raise ScheduleLabError("these values lie in [0, 1] and end in 0, like flow-matching t; "
                                       "they are not taken as EDM sigmas without being told: " + _HOW)
            conv = "sigmas"
    if conv == "timesteps" and table is None:
        raise ScheduleLabError("timesteps need the model's noise table to become sigmas: give --table "
                               "sd15|sdxl|sd2|ddpm-linear|ddpm-cosine or a diffusers scheduler config JSON")
    params = {"source": "import", "convention": conv, **(meta.get("params") or {})}
    nm = str(meta.get("name") or name) if name == "imported" else name
    if conv == "timesteps":
        from core.schedules.tables import timesteps_to_sigmas
        if any(a <= b for a, b in zip(vals, vals[1:])):
            raise ScheduleLabError("timesteps must be strictly decreasing (diffusers' scheduler.timesteps order)")
        sig = timesteps_to_sigmas(vals, table) + [0.0]
        params["table"] = table if isinstance(table, str) else "custom"
        return Schedule(tuple(sig), name=nm, params=params)
    if conv == "flow":
        if vals and vals[0] >= 1:
            raise ScheduleLabError(f"flow t = {vals[0]:g} is pure noise (sigma = t / (1 - t) = inf); start below "
                                   "1, e.g. replace the first value by 0.999 (sigma 999)")
        if any(v < 0 or v >= 1 for v in vals):
            raise ScheduleLabError("flow t must lie in [0, 1) (descending, ending in 0)")
        if append_zero and vals and vals[-1] != 0:
            vals = vals + [0.0]
        from core.processes import FlowMatching
        return Schedule(tuple(FlowMatching().sigma(vals).tolist()), name=nm, params=params)
    if append_zero and vals and vals[-1] != 0:
        vals = vals + [0.0]
    return Schedule(tuple(vals), name=nm, params=params, solver=meta.get("solver"))
