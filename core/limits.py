"""Caps on sizes a user can ask for, so a typo (`--n 1000000000000`) is a clear error before any
work instead of an allocator crash or a run that never ends.

    rows      samples held at once (n, samples, held-out n): sized to this machine's memory,
              MEMORY_FRACTION of it for ROW_COPIES float64 copies of each row; raise it with
              SCHEDULE_LAB_MAX_MEMORY_GB
    steps     schedule steps: MAX_STEPS (SCHEDULE_LAB_MAX_STEPS)
    seeds     seeds of one evaluation: MAX_SEEDS (SCHEDULE_LAB_MAX_SEEDS)
    seed      a seed: [0, MAX_SEED] (seed * 100003 + k must stay a 64-bit generator seed)
"""
from __future__ import annotations

import math
import os

from core.errors import ScheduleLabError

MEMORY_FRACTION = 0.5
ROW_COPIES = 8                   # x, denoised, solver history, trajectories, metric temporaries
MAX_STEPS = 10_000
MAX_SEEDS = 1_000
MAX_SEED = 2 ** 40


def memory_bytes() -> int:
    """Bytes the caps may plan for: SCHEDULE_LAB_MAX_MEMORY_GB, else MEMORY_FRACTION of physical memory."""
    env = os.environ.get("SCHEDULE_LAB_MAX_MEMORY_GB")
    if env:
        try:
            return int(float(env) * 2 ** 30)
        except ValueError:
            raise ScheduleLabError(f"SCHEDULE_LAB_MAX_MEMORY_GB={env!r} is not a number") from None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):       # not POSIX: assume 8 GiB
        total = 8 * 2 ** 30
    return int(total * MEMORY_FRACTION)


def max_rows(elements_per_row: int) -> int:
    """How many rows of `elements_per_row` numbers fit the memory budget (ROW_COPIES float64 copies)."""
    return max(2, memory_bytes() // (8 * ROW_COPIES * max(1, int(elements_per_row))))


def check_rows(n, what: str = "--n", event_shape=(2,)) -> int:
    """n samples of `event_shape` (default a 2-D toy point): an integer in [1, max_rows]."""
    elems = math.prod(int(d) for d in event_shape) if event_shape else 1
    cap = max_rows(elems)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ScheduleLabError(f"{what} must be a positive integer; got {n!r}")
    if n > cap:
        raise ScheduleLabError(
            f"{what} {n:,} is more than this machine can hold: the limit is {cap:,} samples of shape "
            f"{tuple(event_shape)} ({memory_bytes() / 2 ** 30:.1f} GiB budget); use a smaller {what}, or raise "
            "the budget with SCHEDULE_LAB_MAX_MEMORY_GB=<GiB>")
    return n


def _cap(env: str, default: int) -> int:
    v = os.environ.get(env)
    try:
        return int(v) if v else default
    except ValueError:
        raise ScheduleLabError(f"{env}={v!r} is not an integer") from None


def check_steps(steps, what: str = "--steps", lo: int = 1) -> int:
    cap = _cap("SCHEDULE_LAB_MAX_STEPS", MAX_STEPS)
    if isinstance(steps, bool) or not isinstance(steps, int) or not lo <= steps <= cap:
        raise ScheduleLabError(f"{what} must be a positive integer in [{lo}, {cap:,}]; got {steps!r}"
                               + (" (raise the limit with SCHEDULE_LAB_MAX_STEPS=<n>)"
                                  if isinstance(steps, int) and steps > cap else ""))
    return steps


def check_seeds(seeds, what: str = "--seeds") -> int:
    cap = _cap("SCHEDULE_LAB_MAX_SEEDS", MAX_SEEDS)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= cap:
        raise ScheduleLabError(f"{what} must be an integer in [1, {cap:,}]; got {seeds!r}"
                               + (" (raise the limit with SCHEDULE_LAB_MAX_SEEDS=<n>)"
                                  if isinstance(seeds, int) and seeds > cap else ""))
    return seeds


def check_seed(seed, what: str = "--seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        shown = seed if not isinstance(seed, int) or abs(seed) < 10 ** 30 else f"a {len(str(abs(seed)))}-digit number"
        raise ScheduleLabError(f"{what} must be an integer in [0, {MAX_SEED}]; got {shown}")
    return seed
