"""Evaluate a schedule on a toy: sample with a solver, score against the exact truth."""
from __future__ import annotations

import math

import torch

from core.errors import ScheduleLabError
from core.metrics.toy import kde_nll, mean_ci, mmd_rbf, mode_coverage, nll, sliced_wasserstein
from core.sampling import generate


def evaluate_toy(model, mixture, schedule, solver: str = "dpmpp_2m", n: int = 20000,
                 seeds=(0,), mmd_n: int = 2000) -> dict:
    """NLL, sliced W2, MMD, KDE held-out NLL and mode coverage of n samples per seed, with mean and
    95 % CI over seeds (core.metrics.toy; NLL alone ranks a collapsed sample best, kde_nll and
    coverage do not).

    Returns {"nll", "swd", "mmd", "kde_nll", "coverage"} (means), {"nll_ci", ...} (half-widths),
    "nfe", "seconds", "per_seed" and "sigmas". Fresh reference data for SWD / MMD / kde_nll come
    from seed + 10_000 (at most mmd_n of them score the KDE)."""
    rows = []
    nfe, secs = 0, 0.0
    for seed in seeds:
        res = generate(model, schedule, n, solver=solver, seed=seed)
        x = res.x.double().cpu()
        ref = mixture.sample(n, torch.Generator().manual_seed(int(seed) + 10_000)).cpu()
        rows.append({"seed": seed, "nll": nll(x, mixture), "swd": sliced_wasserstein(x, ref, seed=seed),
                     "mmd": mmd_rbf(x, ref, max_n=mmd_n, seed=seed),
                     "kde_nll": kde_nll(x, ref, max_n=mmd_n, seed=seed), "coverage": mode_coverage(x, mixture)})
        nfe, secs = res.nfe, secs + res.seconds
    out = {"nfe": nfe, "seconds": secs, "per_seed": rows, "sigmas": list(schedule.sigmas)}
    for k in ("nll", "swd", "mmd", "kde_nll", "coverage"):
        bad = [r["seed"] for r in rows if not math.isfinite(r[k])]
        if bad:
            raise ScheduleLabError(f"{k} is NaN or inf for seed {bad[0]} (the samples of {schedule.label()} "
                                   "diverged); nothing is reported: check the model, solver and schedule")
        out[k], out[k + "_ci"] = mean_ci([r[k] for r in rows])
    return out


def evaluate_model(model, schedule, solver: str = "dpmpp_2m", n: int = 20000, seeds=(0,), data=None,
                   mixture=None, mmd_n: int = 2000) -> dict:
    """Any model (a user's 2-D network, say): sliced W2 and MMD of n samples per seed to `data`
    (points [M, *event_shape], flattened; M > n: a seeded subset of n), and the NLL when the data's
    exact `mixture` is known (then fresh mixture samples stand in for missing `data`); kde_nll of the
    data under a KDE of the samples, and mode coverage when the mixture is known.  Keys as
    evaluate_toy; a metric that cannot be computed is None (never a number)."""
    from core.errors import ScheduleLabError
    if data is None and mixture is None:
        raise ScheduleLabError("give data points (--data, for SWD / MMD) or the data's mixture (--toy, for NLL)")
    rows = []
    nfe, secs = 0, 0.0
    for seed in seeds:
        res = generate(model, schedule, n, solver=solver, seed=seed)
        x = res.x.double().cpu().reshape(n, -1)
        g = torch.Generator().manual_seed(int(seed) + 10_000)
        if data is not None:
            ref = torch.as_tensor(data).double().cpu().reshape(len(data), -1)
            if ref.shape[1] != x.shape[1]:
                raise ScheduleLabError(f"data points have {ref.shape[1]} values each; the model's samples "
                                       f"have {x.shape[1]}")
            if ref.shape[0] > n:
                ref = ref[torch.randperm(ref.shape[0], generator=g)[:n]]
        else:
            ref = mixture.sample(n, g).double().cpu()
        rows.append({"seed": seed, "nll": nll(x, mixture) if mixture is not None else None,
                     "swd": sliced_wasserstein(x, ref, seed=seed), "mmd": mmd_rbf(x, ref, max_n=mmd_n, seed=seed),
                     "kde_nll": kde_nll(x, ref, max_n=mmd_n, seed=seed),
                     "coverage": mode_coverage(x, mixture) if mixture is not None and x.shape[1] == mixture.dim
                     else None})
        nfe, secs = res.nfe, secs + res.seconds
    out = {"nfe": nfe, "seconds": secs, "per_seed": rows, "sigmas": list(schedule.sigmas)}
    for k in ("nll", "swd", "mmd", "kde_nll", "coverage"):
        vals = [r[k] for r in rows]
        out[k], out[k + "_ci"] = mean_ci(vals) if None not in vals else (None, None)
    return out
