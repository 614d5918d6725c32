""""Steps to match": is the tuned schedule at n steps as good as the best heuristic at 1.5 n?

The claim a tuned schedule makes is "the same quality with fewer model calls".  `steps_to_match`
tests it on the tune run's own held-out noise: the best heuristic (the one the run compared
against) is rebuilt at m = ceil(factor * n) steps over the same sigma range and scored by the same
`HeldoutScorer` (same seeds, same batches, same metric), and the winner's per-batch values at n
steps are compared with it, paired batch by batch:

    d_b = metric_b(winner, n steps) - metric_b(best heuristic, m steps),   b = 1 .. B

The winner "matches" when its mean is <= the heuristic's at m steps (mean d <= 0; bench/tune.py's
rule); the paired 95 % interval of d says how sure that is.  Steps, not NFE: for a multistep solver
they are the same; Heun's NFE is 2 steps - 1 for both.
"""
from __future__ import annotations

import dataclasses
import math

from core.errors import ScheduleLabError
from core.schedules import Schedule
from core.tune.methods import Deadline
from core.tune.scoring import interval, paired


def match_steps(steps: int, factor: float = 1.5) -> int:
    """m = ceil(factor * steps) (10 -> 15, 5 -> 8)."""
    if not factor > 1:
        raise ScheduleLabError(f"steps to match needs a factor > 1; got {factor!r}")
    return int(math.ceil(float(factor) * int(steps) - 1e-9))


def steps_to_match(tuner, result=None, factor: float = 1.5) -> dict:
    """Score the best heuristic at ceil(factor n) steps on the tune run's held-out noise.

    Args:
        tuner: a finished core.tune.Tuner (its scores, scorer, method table and context).
        result: its TuneResult (default tuner.result()).
        factor: the heuristic's step multiple (1.5: "the winner at n against the heuristic at 1.5 n").
    Returns {"metric", "winner", "steps", "heuristic", "heuristic_steps", "heuristic_sigmas",
    "winner_value": {"mean", "ci"}, "heuristic_value": {"mean", "ci"}, "diff": {"mean", "ci"} (winner minus
    heuristic, paired), "matches": bool | None (None: a value diverged), "per_batch": {"winner", "heuristic"}}.
    """
    res = result if result is not None else tuner.result()
    metric, m = res.metric, match_steps(tuner.steps, factor)
    mine = tuner.state["scores"].get(res.winner, {}).get(metric)
    if mine is None:
        raise ScheduleLabError(f"the tune run has no held-out {metric} for its winner {res.winner!r}; "
                               "finish the run first")
    method = tuner.table[res.best_heuristic]
    ctx = dataclasses.replace(tuner.ctx, steps=m, opt_seeds=[])
    sched = method.run(ctx, tuner.seed, Deadline())
    theirs = tuner.scorer(Schedule(sched.sigmas, name=f"{res.best_heuristic}@{m}"))[metric]
    w, h, d = interval(mine), interval(theirs), paired(mine, theirs)
    return {"metric": metric, "winner": res.winner, "steps": tuner.steps, "heuristic": res.best_heuristic,
            "heuristic_steps": m, "heuristic_sigmas": list(sched.sigmas), "winner_value": w, "heuristic_value": h,
            "diff": d, "matches": None if d["mean"] is None else bool(d["mean"] <= 0.0),
            "per_batch": {"winner": list(mine), "heuristic": list(theirs)}}


def paired_samples(tuner, result=None, n: int = 16, seed: int | None = None) -> dict:
    """Samples of the winner and of the best heuristic (both at the run's steps) from ONE initial
    noise: z = initial_noise(model, n, sigma_max, seed) is drawn once and handed to both runs of
    the solver (a stochastic solver's own draws use seed + 1 for both as well).

    seed: default the run's first held-out seed (the noise the leaderboard was scored on; its
    first n samples for toys, which sample from the float64 mixture form as the scorer does).
    Returns {"seed", "noise" [n, ...] float64 CPU, "winner", "heuristic" [n, ...] float64 CPU,
    "winner_name", "heuristic_name", "sigmas": {"winner", "heuristic"}}.
    """
    import torch

    from core.sampling import generate, initial_noise
    res = result if result is not None else tuner.result()
    seed = int(tuner.heldout_seeds[0] if seed is None else seed)
    rows = {r["name"]: r for r in res.table}
    heur = Schedule(tuple(rows[res.best_heuristic]["sigmas"]), name=res.best_heuristic)
    win = res.schedule
    if heur.sigma_max != win.sigma_max:
        raise ScheduleLabError(f"the winner starts at sigma {win.sigma_max:g} and {res.best_heuristic} at "
                               f"{heur.sigma_max:g}: no shared initial noise")
    model = tuner.scorer._fast                       # the scorer's sampling form (float64 mixture for exact toys)
    z = initial_noise(model, int(n), win.sigma_max, seed)
    out = {}
    with torch.no_grad():
        for key, s in (("winner", win), ("heuristic", heur)):
            out[key] = generate(model, s, int(n), tuner.solver, seed=seed, noise=z.clone()).x.double().cpu()
    return {"seed": seed, "noise": z.double().cpu(), **out, "winner_name": res.winner,
            "heuristic_name": res.best_heuristic,
            "sigmas": {"winner": list(win.sigmas), "heuristic": list(heur.sigmas)}}
