"""The Schedule value: validated, immutable, descending sigmas ending in 0 (methods.md s.2).

A schedule of n steps holds n + 1 levels  sigma_0 = sigma_max > ... > sigma_{n-1} = sigma_min
> sigma_n = 0  (the k-diffusion / ComfyUI SIGMAS convention).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.errors import ScheduleLabError


@dataclass(frozen=True)
class Schedule:
    """Descending noise levels ending in 0, with the name and parameters that made them.

    Attributes:
        sigmas: tuple of n + 1 floats, strictly decreasing, last exactly 0.
        name: what made it ("karras", "ays", "imported", ...).
        params: the parameters that made it (JSON-serialisable).
        solver: the solver it was optimized for, if any (e.g. "dpmpp_3m_lagrange" for DM-NonUniform).
    """

    sigmas: tuple
    name: str = "custom"
    params: dict = field(default_factory=dict, compare=False, hash=False)
    solver: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "sigmas", validate_sigmas(self.sigmas, self.name))

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def sigma_max(self) -> float:
        return self.sigmas[0]

    @property
    def sigma_min(self) -> float:
        return self.sigmas[-2]

    def tensor(self, device=None, dtype=torch.float64) -> torch.Tensor:
        """[n + 1] tensor of sigmas."""
        return torch.tensor(self.sigmas, dtype=dtype, device=device)

    def label(self) -> str:
        return f"{self.name} ({self.steps} steps)"

    def to_dict(self) -> dict:
        return {"format": "schedule-lab/1", "name": self.name, "steps": self.steps,
                "sigmas": list(self.sigmas), "params": self.params, "solver": self.solver}

    def to_json(self, path=None) -> str:
        s = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(s)
        return s

    @classmethod
    def from_dict(cls, d: dict) -> "Schedule":
        if not isinstance(d, dict) or not isinstance(d.get("sigmas"), (list, tuple)):
            raise ScheduleLabError("a schedule JSON needs a 'sigmas' list (descending, ending in 0)")
        params, solver = d.get("params") or {}, d.get("solver")
        if not isinstance(params, dict) or not (solver is None or isinstance(solver, str)):
            raise ScheduleLabError("a schedule JSON's 'params' must be an object and 'solver' a string")
        return cls(tuple(d["sigmas"]), name=str(d.get("name", "imported"))[:200], params=dict(params),
                   solver=solver)

    @classmethod
    def load(cls, path) -> "Schedule":
        p = Path(path)
        if not p.is_file():
            raise ScheduleLabError(f"schedule file {str(p)!r} not found")
        if p.stat().st_size > 1 << 22:
            raise ScheduleLabError(f"schedule file {str(p)!r} is larger than 4 MiB; a schedule is a short list")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as e:
            raise ScheduleLabError(f"schedule file {str(p)!r} is not valid UTF-8 JSON: {e}") from None
        if isinstance(d, list):
            d = {"sigmas": d, "name": p.stem}
        return cls.from_dict(d)

    def with_name(self, name: str, **params) -> "Schedule":
        return Schedule(self.sigmas, name=name, params={**self.params, **params}, solver=self.solver)


def validate_sigmas(sigmas, name: str = "schedule") -> tuple:
    """Check a sigma sequence; return it as a tuple of floats or raise ScheduleLabError."""
    try:
        vals = tuple(float(s) for s in (sigmas.tolist() if hasattr(sigmas, "tolist") else sigmas))
    except (TypeError, ValueError, OverflowError):
        raise ScheduleLabError(f"{name}: sigmas must be a list of numbers") from None
    if len(vals) < 2:
        raise ScheduleLabError(f"{name}: a schedule needs at least 2 levels (sigma_max and the final 0); "
                               f"got {len(vals)}")
    bad = [i for i, v in enumerate(vals) if not math.isfinite(v)]
    if bad:
        raise ScheduleLabError(f"{name}: sigma[{bad[0]}] is {vals[bad[0]]}; every sigma must be finite")
    neg = [i for i, v in enumerate(vals) if v < 0]
    if neg:
        raise ScheduleLabError(f"{name}: sigma[{neg[0]}] = {vals[neg[0]]} is negative; sigmas are >= 0")
    if vals[-1] != 0.0:
        raise ScheduleLabError(f"{name}: the last sigma is {vals[-1]:g}, not 0; a schedule ends at "
                               "sigma = 0 (append 0 to the list)")
    for i in range(len(vals) - 1):
        if not vals[i] > vals[i + 1]:
            raise ScheduleLabError(f"{name}: sigmas must be strictly decreasing, but sigma[{i}] = "
                                   f"{vals[i]:g} <= sigma[{i + 1}] = {vals[i + 1]:g}")
    return vals
