"""Evaluate a schedule on a toy: sample with a solver, score against the exact truth."""
from __future__ import annotations

import math

import torch

from core.errors import ScheduleLabError
from core.metrics.toy import mean_ci, mmd_rbf, nll, sliced_wasserstein
from core.sampling import generate


def evaluate_toy(model, mixture, schedule, solver: str = "dpmpp_2m", n: int = 20000,
                 seeds=(0,), mmd_n: int = 2000) -> dict:
    """NLL, sliced W2 and MMD of n samples per seed, with mean and 95 % CI over seeds.

    Returns {"nll", "swd", "mmd"} (means), {"nll_ci", ...} (half-widths), "nfe", "seconds",
    "per_seed" and "sigmas". Fresh reference data for SWD / MMD come from seed + 10_000."""
    rows = []
    nfe, secs = 0, 0.0
    for seed in seeds:
        res = generate(model, schedule, n, solver=solver, seed=seed)
        x = res.x.double().cpu()
        ref = mixture.sample(n, torch.Generator().manual_seed(int(seed) + 10_000)).cpu()
        rows.append({"seed": seed, "nll": nll(x, mixture), "swd": sliced_wasserstein(x, ref, seed=seed),
                     "mmd": mmd_rbf(x, ref, max_n=mmd_n, seed=seed)})
        nfe, secs = res.nfe, secs + res.seconds
    out = {"nfe": nfe, "seconds": secs, "per_seed": rows, "sigmas": list(schedule.sigmas)}
    for k in ("nll", "swd", "mmd"):
        bad = [r["seed"] for r in rows if not math.isfinite(r[k])]
        if bad:
            raise ScheduleLabError(f"{k} is NaN or inf for seed {bad[0]} (the samples of {schedule.label()} "
                                   "diverged); nothing is reported: check the model, solver and schedule")
        out[k], out[k + "_ci"] = mean_ci([r[k] for r in rows])
    return out
