"""Align Your Steps on the shipped digits model, for bench/images.py (issue 5: "AYS 10 -> 20 -> 40
on the digits model in <= 10 minutes on 2 CPU cores").

Budget (defaults, chosen by measurement on the shared 2-core machine; see bench/results/images.json):
- 96 KLUB samples per sweep (common random numbers across the 11 candidates of every point), at most
  5 / 2 / 1 sweeps in the 10 / 20 / 40-step stages, float32 UNet calls of ~136-646 rows (chunk 256),
  one torch thread (on a loaded 2-core box two threads ran 3x slower per row).
  A sweep costs 272 / 612 / 1292 denoiser rows per sample at 10 / 20 / 40 steps (odd and even
  halves; bridge coupling shares D(x_b, b)), so the sweeps take ~0.37 M rows, the held-out ~0.06 M.
- Early stopping (10-step stage, patience 2) on a held-out FD: classifier features
  (core.metrics.images) of 1000 DPM-Solver++(2M) samples from fixed noise (seed 1234) against the
  TRAINING split, so the test split that bench/images.py reports stays unseen. It is measured in
  the first stage only. The discretization error against a many-step reference (`ref_error`) is
  available but is the wrong target here: the first KLUB sweep lowers FD (0.37 -> 0.30 on 500
  samples) while raising ref_error (1.41 -> 1.52), so ref_error stopped AYS at its EDM start.
Reported per stage: wall and CPU seconds, sweeps, and the total KLUB of the stage's start and end
schedules (and log-linear at the same step count) on one fresh common sample set, with standard errors
and the paired difference.
"""
from __future__ import annotations

import os
import sys
import time

import torch

from core.cli.opt_ays import IMAGE_DEFAULTS  # the budget `optimize ays --model` uses
from core.objectives.klub import draw_noise, klub_samples, mean_se
from core.optimizers.heldout import FDHeldout
from core.schedules import Schedule, make_schedule


def data_sampler(data: torch.Tensor):
    return lambda n, g: data[torch.randint(0, data.shape[0], (n,), generator=g)]


def klub_totals(model, sampler, schedules: dict, n: int, seed: int, chunk: int) -> dict:
    """Total KLUB of each schedule on ONE common sample set (paired): {name: per-sample totals [n]}."""
    noise = draw_noise(sampler, n, torch.Generator().manual_seed(seed))
    out = {}
    for name, s in schedules.items():
        L = torch.tensor(s.sigmas[:-1], dtype=torch.float64)
        out[name] = klub_samples(model, noise, L[1:], L[:-1], 0.5, chunk).sum(0)
    return out


def _ms(v):
    m, se, _ = mean_se(v.unsqueeze(0))
    return float(m), float(se)


def run_ays(model, data, a, log=sys.stderr) -> tuple:
    """Optimize; returns (optimizer, info). info: timing per stage (wall, CPU), the budget, KLUB start
    and end per stage (fresh samples, paired), the stage schedules."""
    from core.optimizers.ays import AYSOptimizer
    stages = tuple(int(v) for v in a.ays_stages.split(","))
    caps = [int(v) for v in a.ays_iters.split(",")]
    threads = torch.get_num_threads()
    torch.set_num_threads(a.ays_threads)
    try:
        sampler = data_sampler(data)
        fd = a.ays_heldout == "fd"
        heldout = None if a.ays_heldout in ("none", "fd") else a.ays_heldout
        w0, c0, load0 = time.perf_counter(), time.process_time(), os.getloadavg()[0]
        opt = AYSOptimizer(model, sampler, steps=stages[0], stages=stages, n_samples=a.ays_samples,
                           max_iters=caps[0] if len(caps) == 1 else caps, heldout=heldout,
                           heldout_fn=FDHeldout(model, a.ays_heldout_n) if fd else None,
                           heldout_solver="dpmpp_2m", heldout_n=a.ays_heldout_n, patience=a.ays_patience,
                           seed=0, chunk=a.ays_chunk, heldout_every_stage=a.ays_heldout_every_stage)
        per = [{"stage": k, "steps": n, "wall_s": 0.0, "cpu_s": 0.0, "sweeps": 0} for k, n in enumerate(stages)]
        starts = {0: opt.start}
        w, c = w0, c0
        for ev in opt.events():
            w1, c1 = time.perf_counter(), time.process_time()
            p = per[ev.stage]
            p["wall_s"] += w1 - w
            p["cpu_s"] += c1 - c
            p["sweeps"] += int(ev.iteration > 0)
            w, c = w1, c1
            nxt = len(ev.extra["next_sigmas"]) - 1
            if not ev.done and ev.stage + 1 < len(stages) and nxt == stages[ev.stage + 1]:
                starts[ev.stage + 1] = Schedule(tuple(ev.extra["next_sigmas"]))
            h = "-" if ev.heldout is None else f"{ev.heldout:.4f}"
            print(f"AYS stage {ev.stage} ({ev.schedule.steps} steps) sweep {ev.iteration}: KLUB {ev.objective:.4g} "
                  f"+- {ev.extra['objective_se']:.2g}, held-out {h}, {ev.message}; {w1 - w0:.0f} s wall, "
                  f"{c1 - c0:.0f} s CPU", file=log, flush=True)
        wall, cpu, load1 = time.perf_counter() - w0, time.process_time() - c0, os.getloadavg()[0]
        # KLUB of every stage's start and end (and log-linear) on one fresh sample set: not part of the timing
        klub_rows = []
        for k, n in enumerate(stages):
            sch = {"start": starts[k], "end": opt.stage_schedule(k), "loglinear": make_schedule("loglinear", n, opt.sigma_min, opt.sigma_max)}
            v = klub_totals(model, sampler, sch, a.ays_eval_n, 10_000 + k, a.ays_chunk)
            row = {"stage": k, "steps": n, "n": a.ays_eval_n}
            for name in sch:
                row[f"klub_{name}"], row[f"klub_{name}_se"] = _ms(v[name])
            row["klub_end_minus_start"], row["klub_end_minus_start_se"] = _ms(v["end"] - v["start"])
            klub_rows.append(row)
        sweeps = [p["sweeps"] for p in per]
        info = {"seconds": wall, "cpu_seconds": cpu, "threads": a.ays_threads, "load_average": [load0, load1],
                "target_seconds": 600.0, "stages": list(stages), "stage_init": opt.stage_inits(),
                "n_samples": a.ays_samples, "max_iters": caps, "candidates": opt.n_candidates, "chunk": a.ays_chunk,
                "heldout": "fd_train" if fd else a.ays_heldout, "heldout_n": a.ays_heldout_n,
                "patience": a.ays_patience, "early_stopped_at": opt.state_dict()["early_stopped_at"],
                "sweeps_per_stage": sweeps, "per_stage": per, "klub": klub_rows,
                "heldout_curve": [(h["iteration"], h["heldout"]) for h in opt.history if h["stage"] == 0],
                "stage0_sweeps": [{"iteration": h["iteration"], "klub_in_sample": h["objective"], "heldout": h["heldout"],
                                   "sigmas": h["sigmas"]} for h in opt.history if h["stage"] == 0],
                "stage_sigmas": [list(opt.stage_schedule(k).sigmas) for k in range(len(stages))],
                "sigmas_10": list(opt.result(10).sigmas)}
        return opt, info
    finally:
        torch.set_num_threads(threads)


def add_arguments(ap):
    ap.add_argument("--ays-stages", default="10,20,40", help="AYS stage step counts")
    ap.add_argument("--ays-samples", type=int, default=IMAGE_DEFAULTS["samples"], help="KLUB samples per sweep (paper: 8192)")
    ap.add_argument("--ays-iters", default=IMAGE_DEFAULTS["max_iters"], help="sweep cap per stage (one value or one per stage)")
    ap.add_argument("--ays-heldout", default="fd", choices=["fd", "ref_error", "none"],
                    help="first-stage early stopping: FD to the training split (default) or the reference error")
    ap.add_argument("--ays-heldout-n", type=int, default=IMAGE_DEFAULTS["heldout_n"])
    ap.add_argument("--ays-patience", type=int, default=IMAGE_DEFAULTS["patience"])
    ap.add_argument("--ays-heldout-every-stage", action="store_true",
                    help="also measure the held-out FD in the 20- and 40-step stages (costs ~15 %% more)")
    ap.add_argument("--ays-chunk", type=int, default=IMAGE_DEFAULTS["chunk"], help="KLUB denoiser rows per call")
    ap.add_argument("--ays-threads", type=int, default=1, help="torch threads during AYS")
    ap.add_argument("--ays-eval-n", type=int, default=256, help="fresh samples for the KLUB start/end table")
