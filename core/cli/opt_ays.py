"""Align Your Steps: optimize a schedule on a toy's KLUB (hierarchical, resumable, distributed).

    python -m core optimize ays --toy grid8x8 --steps 10 --out ays.json
    python -m core optimize ays --toy grid8x8 --steps 10 --out ays.json --resume ays.state.json
    torchrun --nproc_per_node 2 -m core optimize ays --toy grid8x8 --distributed --out ays.json

The optimizer state is written after every sweep (to --state, else to the --resume file, else
to OUT with `.state.json` in place of `.json`); a killed run continues with --resume.
"""
from __future__ import annotations

from pathlib import Path

from core.cli import emit
from core.errors import ScheduleLabError


def add_arguments(p):
    p.add_argument("--toy", required=True, help="toy name or mixture JSON file")
    p.add_argument("--model", default="exact", choices=["exact", "mlp"])
    p.add_argument("--steps", type=int, default=10, help="steps of the written schedule (and first stage)")
    p.add_argument("--stages", default=None,
                   help="comma-separated increasing step counts (default STEPS,2STEPS,4STEPS, e.g. 10,20,40: "
                        "log-linear resampling between stages; a stage of 2 x previous - 1 steps subdivides "
                        "exactly and moves only the new points)")
    p.add_argument("--start", default="karras", help="start schedule name or JSON file (karras = EDM rho 7)")
    p.add_argument("--sigma-min", type=float, default=0.002)
    p.add_argument("--sigma-max", type=float, default=80.0)
    p.add_argument("--samples", type=int, default=8192, help="Monte Carlo samples per sweep")
    p.add_argument("--candidates", type=int, default=10, help="candidates besides the current value")
    p.add_argument("--c", type=float, default=0.5, help="importance-sampling constant (data scale)")
    p.add_argument("--max-iters", default="100", help="sweep cap per stage, or one per stage (e.g. 5,2,1)")
    p.add_argument("--heldout", default="auto", help="auto | nll | swd | ref_error | none")
    p.add_argument("--patience", type=int, default=8, help="first-stage sweeps without held-out gain")
    p.add_argument("--solver", default="dpmpp_2m_sde", help="solver of the held-out metric")
    p.add_argument("--heldout-n", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=None, help="denoiser rows per call")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="Monte Carlo dtype of the exact mixture denoiser")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--distributed", action="store_true", help="split samples over torchrun processes")
    p.add_argument("--resume", default=None, metavar="FILE", help="continue from a saved state")
    p.add_argument("--state", default=None, metavar="FILE", help="where to write the state after every sweep")
    p.add_argument("--out", required=True, metavar="SCHEDULE.json")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true")


def toy_model_and_data(toy: str, kind: str, device):
    """(Denoiser, mixture) for a toy name or mixture file; kind 'exact' | 'mlp'."""
    from core.models import MixtureDenoiser, load_toy_model
    from toy_data import get_toy
    mix = get_toy(toy)
    model = MixtureDenoiser(mix).to(device) if kind == "exact" else load_toy_model(toy, "mlp", device)
    return model, mix


def parse_stages(text):
    if text is None:
        return None
    try:
        return tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise ScheduleLabError(f"--stages must be comma-separated integers such as 10,20,40; got {text!r}") from None


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
    import torch
    from core.device import resolve_device
    from core.optimizers.distributed import Partition, init_from_env, shutdown

    if a.threads is not None:
        if a.threads < 1:
            raise ScheduleLabError(f"--threads must be >= 1; got {a.threads}")
        torch.set_num_threads(a.threads)
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
    from core.schedules import Schedule

    model, mix = toy_model_and_data(a.toy, a.model, device)
    start = Schedule.load(a.start) if a.start.endswith(".json") or Path(a.start).is_file() else a.start
    heldout = None if a.heldout in ("none", "None", "") else a.heldout
    chunk = a.chunk or (DEFAULT_CHUNK if device.type == "cpu" else 1 << 18)
    opt = AYSOptimizer(model, mix.sample, steps=a.steps, stages=parse_stages(a.stages), start=start,
                       sigma_min=a.sigma_min, sigma_max=a.sigma_max, n_samples=a.samples,
                       n_candidates=a.candidates, c=a.c, max_iters=parse_max_iters(a.max_iters), heldout=heldout,
                       patience=a.patience, heldout_solver=a.solver, heldout_n=a.heldout_n, mixture=mix,
                       seed=a.seed, chunk=chunk, dtype=getattr(torch, a.dtype), partition=part)
    out = Path(a.out)
    state_path = Path(a.state or a.resume or out.with_name(out.stem + ".state.json"))
    if a.resume:
        opt.load_state_dict(Optimizer.read_state(a.resume))
    bar = None
    if part.is_main and not a.quiet:
        from tqdm import tqdm
        bar = tqdm(desc="AYS", unit="sweep", initial=len(opt.history), dynamic_ncols=True)
    last = None
    for ev in opt.events():
        last = ev
        if part.is_main:
            opt.save_state(state_path)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(stage=f"{ev.stage}:{len(ev.schedule.sigmas) - 1}", klub=f"{ev.objective:.4g}",
                            heldout="-" if ev.heldout is None else f"{ev.heldout:.4g}")
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
