"""Score-optimal schedule of a toy or an image model: constant speed in the Stein cost.

    python -m core optimize score-optimal --toy grid8x8 --steps 10 --out score10.json
    python -m core optimize score-optimal --toy moons --model mlp --steps 8 --method fd --out s.json
    python -m core optimize score-optimal --model digits --steps 10 --out digits10.json
    python -m core optimize score-optimal --model ./my-diffusers-unet --data ./images/ --steps 10 --out s.json

An image model without --data uses its training split when it ships with one (digits), else its own
many-step samples (generated once, cached; the output says so).  The schedule records the sampler
the paper evaluates with (EDM Heun).
"""
from __future__ import annotations

import sys

from core.cli import emit
from core.cli.model_args import add_model_arguments, resolve_model
from core.errors import ScheduleLabError


def add_arguments(p):
    add_model_arguments(p)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--sigma-min", type=float, default=None, help="default: 0.002 (toys) or the model's")
    p.add_argument("--sigma-max", type=float, default=None, help="default: 80 (toys) or the model's")
    p.add_argument("--levels", type=int, default=200, help="log-spaced grid levels (100-1000)")
    p.add_argument("--n", type=int, default=256, help="data samples per level")
    p.add_argument("--method", default="jvp", choices=["jvp", "fd"])
    p.add_argument("--chunk", type=int, default=None,
                   help="points (levels x samples) per model batch; default: from the model's memory per sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, metavar="SCHEDULE.json")
    p.add_argument("--json", action="store_true")



def run(a) -> int:
    from core.device import resolve_device
    from tqdm import tqdm

    from core.optimizers.score_optimal import ScoreOptimalOptimizer, auto_chunk_points

    if a.n < 2:
        raise ScheduleLabError(f"--n must be >= 2; got {a.n}")
    device = resolve_device(a.device)
    mc = resolve_model(a, device, "the schedule")
    model, mix, smin, smax = mc.model, mc.data, mc.sigma_min, mc.sigma_max
    if mc.toy:
        mix, source = mix.to(device), None          # the analytic score runs where the model runs
    else:
        source = mix.source + (" - the schedule fits the model's own samples, not data" if mix.generated else "")
    if a.chunk is not None and a.chunk < 1:
        raise ScheduleLabError(f"--chunk must be >= 1; got {a.chunk}")
    # default: what fits in memory, and at most ~20 progress events
    chunk = a.chunk if a.chunk is not None else min(auto_chunk_points(model), a.n * max(1, a.levels // 20))
    opt = ScoreOptimalOptimizer(model, mix, a.steps, smin, smax, levels=a.levels, n=a.n, method=a.method,
                                seed=a.seed, chunk_points=chunk)
    with tqdm(total=a.levels, desc="Stein density (levels)", disable=a.json, file=sys.stderr) as bar:
        for ev in opt.events():
            bar.update(ev.extra.get("levels_done", a.levels) - bar.n)
    sched, info = opt.result(), opt.info()
    sched = sched.with_name("score_optimal", **({"toy": a.toy} if a.toy else {"model": a.model}))
    sched.to_json(a.out)
    out = {"out": a.out, "sigmas": list(sched.sigmas), "cost": info["cost"], "total_cost": info["total_cost"],
           "Lambda_total": info["Lambda_total"], "seconds": info["seconds"], "toy": a.toy, "model": a.model, "data": source,
           "solver": sched.solver,
           "levels": a.levels, "n": a.n, "method": a.method, "seed": a.seed, "chunk": chunk}
    text = (f"wrote {a.out}: {sched.steps} steps, Stein cost per interval {info['cost'][0]:.4g} "
            f"({info['seconds']:.2f} s)\n" + " ".join(f"{s:.6g}" for s in sched.sigmas))
    emit(out, a.json, text)
    return 0
