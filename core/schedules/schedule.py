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

MAX_LEVELS = 100_001          # levels a schedule JSON may hold (100 000 steps)


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
        """A schedule JSON object -> Schedule, every field type- and range-checked (core.readers)."""
        from core import readers as rd
        if not isinstance(d, dict) or "sigmas" not in d:
            raise ScheduleLabError("a schedule JSON needs a 'sigmas' list (descending, ending in 0)")
        sig = rd.number_list(d["sigmas"], "schedule 'sigmas'", min_len=2, max_len=MAX_LEVELS, lo=0.0)
        name = rd.string(d.get("name", "imported"), "schedule 'name'", max_len=200, allow_none=True)
        params = rd.plain_json(rd.mapping(d.get("params"), "schedule 'params'", allow_none=True) or {},
                               "schedule 'params'")
        solver = rd.string(d.get("solver"), "schedule 'solver'", max_len=100, allow_none=True)
        if "steps" in d and rd.integer(d["steps"], "schedule 'steps'", 1) != len(sig) - 1:
            raise ScheduleLabError(f"schedule 'steps' is {d['steps']} but 'sigmas' has {len(sig)} levels "
                                   f"({len(sig) - 1} steps); fix one of them")
        return cls(tuple(sig), name=name or "imported", params=dict(params), solver=solver)

    @classmethod
    def load(cls, path) -> "Schedule":
        """A schedule JSON file (our format, or a bare list of sigmas) -> Schedule."""
        from core import readers as rd
        p = Path(path)
        d = rd.read_json(p, "schedule file")
        if isinstance(d, list):
            d = {"sigmas": d, "name": p.stem}
        try:
            return cls.from_dict(d)
        except ScheduleLabError as e:
            raise ScheduleLabError(f"schedule file {str(p)!r}: {e}") from None

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
