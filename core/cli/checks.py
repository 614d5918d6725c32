"""Every command-line value checked before any work (`validate_args`, called by core.cli.main).

Checks go by argument name, so every command that has e.g. `--seed` or `--out` gets the same rule
and the same message: the value, what is wrong, the valid range, and how to raise a cap.
"""
from __future__ import annotations

import math
from pathlib import Path

from core import limits
from core.errors import ScheduleLabError

# name -> (lowest, highest) for plain integer knobs
INT_RANGES = {"levels": (2, 100_000), "grid": (1, 10_000), "candidates": (1, 1_000), "threads": (1, 1_024),
              "maxiter": (1, 1_000_000), "patience": (1, 1_000_000), "nrow": (1, 10_000), "scale": (1, 64)}
ROW_COUNTS = ("n", "samples", "heldout_n", "chunk")
OUT_FILE_COMMANDS = ("images", "optimize")       # --out is one file (train-* may take a folder)


def validate_args(a) -> None:
    """Raise ScheduleLabError for the first bad value in the parsed arguments `a`."""
    cmd = getattr(a, "command", "") or ""
    train = cmd.startswith("train")
    g = lambda k: getattr(a, k, None)  # noqa: E731
    if not train and isinstance(g("steps"), int):
        limits.check_steps(a.steps)
    if g("seeds") is not None:
        limits.check_seeds(a.seeds)
    if g("seed") is not None:
        limits.check_seed(a.seed)
    for k in ROW_COUNTS:
        if g(k) is not None and not (train and k == "n"):
            limits.check_rows(g(k), "--" + k.replace("_", "-"))
    for k, (lo, hi) in INT_RANGES.items():
        v = g(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi):
            raise ScheduleLabError(f"--{k.replace('_', '-')} must be an integer in [{lo}, {hi:,}]; got {v!r}")
    _check_sigmas(g("sigma_min"), g("sigma_max"))
    if g("c") is not None and not (math.isfinite(a.c) and a.c > 0):
        raise ScheduleLabError(f"--c (the importance-sampling constant, the data scale) must be a finite number "
                               f"> 0; got {a.c}")
    if g("p") is not None:
        from core.objectives.truncation import P_MAX
        if not (math.isfinite(a.p) and 0 <= a.p <= P_MAX):
            raise ScheduleLabError(f"--p must be in [0, {P_MAX:g}] (1 for pixel models, 2 for latent ones); "
                                   f"got {a.p}")
    if g("device") is not None:
        from core.device import resolve_device
        resolve_device(a.device)
    from core.optimizers.resume import check_writable
    if g("out") is not None and cmd in OUT_FILE_COMMANDS:
        check_writable(a.out, "--out")
    if g("state") is not None:
        check_writable(a.state, "--state")
    if g("resume") is not None and not Path(a.resume).is_file():
        raise ScheduleLabError(f"--resume {a.resume!r}: no such state file; start without --resume")
    for k in ("param", "schedule_param"):
        for item in g(k) or []:
            key = item.split("=", 1)[0].strip()
            if "=" not in item or not key:
                raise ScheduleLabError(f"--{k.replace('_', '-')} {item!r} must look like key=value")


def _check_sigmas(smin, smax) -> None:
    for flag, v in (("--sigma-min", smin), ("--sigma-max", smax)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ScheduleLabError(f"{flag} must be a finite number > 0; got {v}")
    if smin is not None and smax is not None and not smin < smax:
        raise ScheduleLabError(f"--sigma-min ({smin:g}) must be below --sigma-max ({smax:g})")
