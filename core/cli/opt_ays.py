"""Align Your Steps: optimize a schedule on a toy's or an image model's KLUB (hierarchical,
resumable, distributed).

    python -m core optimize ays --toy grid8x8 --steps 10 --out ays.json
    python -m core optimize ays --model digits --out ays_digits.json          # 10 -> 20 -> 40, ~7 min CPU
    python -m core optimize ays --model ./unet-folder --data images/ --out ays.json
    python -m core optimize ays --toy grid8x8 --steps 10 --out ays.json --resume ays.state.json
    torchrun --nproc_per_node 2 -m core optimize ays --toy grid8x8 --distributed --out ays.json

The optimizer state is written after every sweep (to --state, else to the --resume file, else
to OUT with `.state.json` in place of `.json`); a killed run continues with --resume.
"""
from __future__ import annotations

import sys
from pathlib import Path

from core.cli import emit
from core.cli.model_args import add_model_arguments, resolve_model
from core.errors import ScheduleLabError


def add_arguments(p):
    add_model_arguments(p)
    p.add_argument("--steps", type=int, default=10, help="steps of the written schedule (and first stage)")
    p.add_argument("--stages", default=None,
                   help="comma-separated increasing step counts (default STEPS,2STEPS,4STEPS, e.g. 10,20,40: "
                        "log-linear resampling between stages; a stage of 2 x previous - 1 steps subdivides "
                        "exactly and moves only the new points)")
    p.add_argument("--start", default="karras", help="start schedule name or JSON file (karras = EDM rho 7)")
    p.add_argument("--sigma-min", type=float, default=None, help="default: 0.002 (toys) or the model's")
    p.add_argument("--sigma-max", type=float, default=None, help="default: 80 (toys) or the model's")
    p.add_argument("--samples", type=int, default=None, help="Monte Carlo samples per sweep (toys 8192, images 96)")
    p.add_argument("--candidates", type=int, default=10, help="candidates besides the current value")
    p.add_argument("--c", type=float, default=0.5, help="importance-sampling constant (data scale)")
    p.add_argument("--max-iters", default=None,
                   help="sweep cap per stage, or one per stage (toys 100, images 5,2,1)")
    p.add_argument("--heldout", default="auto",
                   help="auto | kde_nll | nll | swd | ref_error | fd | none (auto: kde_nll on toys; fd to the training split for "
                        "models with the digits metrics; none for other image models)")
    p.add_argument("--patience", type=int, default=None, help="first-stage sweeps without held-out gain (toys 8, images 2)")
    p.add_argument("--solver", default=None, help="solver of the held-out metric (toys dpmpp_2m_sde, images dpmpp_2m)")
    p.add_argument("--heldout-n", type=int, default=None, help="held-out samples (toys 8192, images 1000)")
    p.add_argument("--significance", type=float, default=2.0,
                   help="move a point only when its KLUB gain exceeds this many standard errors of the paired "
                        "(common-random-number) difference; 0 = plain argmin (the paper)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=None, help="denoiser rows per call")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="Monte Carlo dtype of the exact mixture denoiser")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--distributed", action="store_true", help="split samples over torchrun processes")
    p.add_argument("--resume", default=None, metavar="FILE", help="continue from a saved state")
    p.add_argument("--state", default=None, metavar="FILE", help="where to write the state after every sweep")
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing state file that is not resumed (a copy is kept as FILE.bak)")
    p.add_argument("--out", required=True, metavar="SCHEDULE.json")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true")



TOY_DEFAULTS = {"samples": 8192, "max_iters": "100", "patience": 8, "solver": "dpmpp_2m_sde", "heldout_n": 8192,
                "chunk": None}
# measured on digits (bench/images_ays.py, docs/ays.md): 10 -> 20 -> 40 in ~7 CPU minutes
IMAGE_DEFAULTS = {"samples": 96, "max_iters": "5,2,1", "patience": 2, "solver": "dpmpp_2m", "heldout_n": 1000,
                  "chunk": 256}


def _model_and_data(a, device):
    """(model, sampler, mixture or None, settings, heldout name, heldout_fn) for --toy or an image --model."""
    mc = resolve_model(a, device, "AYS")
    d = {k: (getattr(a, k) if getattr(a, k, None) is not None else v)
         for k, v in (TOY_DEFAULTS if mc.toy else IMAGE_DEFAULTS).items()}
    d["sigma_min"], d["sigma_max"] = mc.sigma_min, mc.sigma_max
    heldout = None if a.heldout in ("none", "None", "") else a.heldout
    if mc.toy:
        if heldout == "fd":
            raise ScheduleLabError("--heldout fd needs an image model with the digits metrics; toys use kde_nll, nll or swd")
        return mc.model, mc.data.sample, mc.data, d, heldout, None
    from core.models.registry import model_entry
    from core.optimizers.heldout import FDHeldout
    digits = getattr(model_entry(a.model), "metrics", None) == "digits"
    if heldout == "auto":
        heldout = "fd" if digits else None
    if heldout in ("nll", "swd", "kde_nll"):
        raise ScheduleLabError(f"--heldout {heldout} is for toys; image models take fd (digits), ref_error or none")
    if heldout == "fd":
        if not digits:
            raise ScheduleLabError("--heldout fd needs the digits classifier (the shipped digits model); use "
                                   "ref_error or none for this model")
        return mc.model, mc.data, None, d, None, FDHeldout(mc.model, d["heldout_n"], solver=d["solver"])
    return mc.model, mc.data, None, d, heldout, None


def parse_stages(text):
    if text is None:
        return None
    from core.limits import check_steps
    try:
        stages = tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise ScheduleLabError(f"--stages must be comma-separated integers such as 10,20,40; got {text!r}") from None
    return tuple(check_steps(s, "--stages (each stage)") for s in stages)


def parse_max_iters(text):
    try:
        caps = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ScheduleLabError(f"--max-iters must be an integer or comma-separated integers (one per stage); "
                               f"got {text!r}") from None
    if not caps:
        raise ScheduleLabError("--max-iters is empty; give e.g. 100 or 5,2,1")
    return caps[0] if len(caps) == 1 else caps


def run(a) -> int:
    from core.device import resolve_device, set_threads
    from core.optimizers.distributed import Partition, init_from_env, shutdown

    set_threads(a.threads)
    device = resolve_device(a.device)
    part = init_from_env(str(device)) if a.distributed else Partition.single()
    try:
        return _run(a, part, device)
    finally:
        if a.distributed:
            shutdown()


def _run(a, part, device) -> int:
    import torch
    from core.objectives.klub import DEFAULT_CHUNK
    from core.optimizers.ays import AYSOptimizer
    from core.optimizers.base import Optimizer
    from core.optimizers.progress import ays_progress
    from core.optimizers.resume import check_writable, claim_state_path
    from core.schedules import Schedule

    # before any work: the output and state paths are writable, an existing state is never clobbered
    out = check_writable(a.out, "--out")
    state_path = Path(a.state or a.resume or out.with_name(out.stem + ".state.json"))
    if state_path.resolve() == out.resolve():
        raise ScheduleLabError(f"--state and --out are the same file {str(out)!r}; give the state its own path")
    saved = Optimizer.read_state(a.resume) if a.resume else None
    bak = claim_state_path(state_path, a.resume, a.force) if part.is_main else None
    if bak is not None:
        print(f"--force: the old state {state_path} is kept as {bak}", file=sys.stderr)
    model, sampler, mix, d, heldout, heldout_fn = _model_and_data(a, device)
    start = Schedule.load(a.start) if a.start.endswith(".json") or Path(a.start).is_file() else a.start
    chunk = a.chunk or d["chunk"] or (DEFAULT_CHUNK if device.type == "cpu" else 1 << 18)
    opt = AYSOptimizer(model, sampler, steps=a.steps, stages=parse_stages(a.stages), start=start,
                       sigma_min=d["sigma_min"], sigma_max=d["sigma_max"], n_samples=d["samples"],
                       n_candidates=a.candidates, c=a.c, max_iters=parse_max_iters(d["max_iters"]), heldout=heldout,
                       heldout_fn=heldout_fn, patience=d["patience"], heldout_solver=d["solver"],
                       heldout_n=d["heldout_n"], mixture=mix, seed=a.seed, chunk=chunk,
                       dtype=getattr(torch, a.dtype), partition=part,
                       significance=a.significance)
    if saved is not None:
        opt.load_state_dict(saved)
    bar = None
    if part.is_main and not a.quiet:
        from tqdm import tqdm
        # one bar over every stage: percent of the run's work (core.optimizers.progress), with stage
        # k/K, sweeps against the stage's cap, the early-stopping state and the time left
        bar = tqdm(desc="AYS", total=100.0, initial=round(100 * ays_progress(opt).fraction, 1), dynamic_ncols=True,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}|{postfix}")
    last = None
    for ev in opt.events():
        last = ev
        if part.is_main:
            opt.save_state(state_path)
        if bar is not None:
            p = ays_progress(opt)
            bar.n = round(100 * p.fraction, 1)
            bar.set_postfix_str(f"{p.text()}; KLUB {ev.objective:.4g}"
                                + ("" if ev.heldout is None else f", held-out {ev.heldout:.4g}"))
    if bar is not None:
        bar.close()
    res = opt.result()
    if part.is_main:
        out.parent.mkdir(parents=True, exist_ok=True)
        res.to_json(out)
        h = opt.history
        summary = {"out": str(out), "state": str(state_path), "steps": res.steps, "sigmas": list(res.sigmas),
                   "iterations": h[-1]["iteration"] if h else 0, "objective": h[-1]["objective"] if h else None,
                   "heldout": h[-1]["heldout"] if h else None,
                   "early_stopped_at": opt.state_dict()["early_stopped_at"],
                   "resumed": bool(a.resume), "new_events": last is not None}
        emit(summary, a.json, f"wrote {out} ({res.steps} steps): " + ", ".join(f"{s:.4g}" for s in res.sigmas))
    return 0
