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
from core.errors import ScheduleLabError


def add_arguments(p):
    p.add_argument("--toy", default=None, help="toy name or mixture JSON file")
    p.add_argument("--model", default=None,
                   help="with --toy: exact (default) | mlp; without: an image model (digits, a diffusers folder, "
                        "a UNet .safetensors, module.py:Class with --weights)")
    p.add_argument("--data", default=None, help="image model: a PNG folder or .npz of data images")
    p.add_argument("--weights", default=None, help="image model module.py:Class: its weights file")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="image model module.py:Class: constructor / wrapper parameters")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--sigma-min", type=float, default=None, help="default: 0.002 (toys) or the model's")
    p.add_argument("--sigma-max", type=float, default=None, help="default: 80 (toys) or the model's")
    p.add_argument("--levels", type=int, default=200, help="log-spaced grid levels (100-1000)")
    p.add_argument("--n", type=int, default=256, help="data samples per level")
    p.add_argument("--method", default="jvp", choices=["jvp", "fd"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, metavar="SCHEDULE.json")
    p.add_argument("--json", action="store_true")


def toy_model_and_data(toy: str, kind: str, device):
    """(Denoiser, mixture) for a toy name or mixture file; kind 'exact' | 'mlp'."""
    from core.models import MixtureDenoiser, load_toy_model
    from toy_data import get_toy
    mix = get_toy(toy)
    model = MixtureDenoiser(mix).to(device) if kind == "exact" else load_toy_model(toy, "mlp", device)
    return model, mix.to(device) if hasattr(mix, "to") else mix


def run(a) -> int:
    from core.device import resolve_device
    from tqdm import tqdm

    from core.optimizers.score_optimal import ScoreOptimalOptimizer

    if a.n < 2:
        raise ScheduleLabError(f"--n must be >= 2; got {a.n}")
    source = None
    if a.toy is not None:
        if a.model not in (None, "exact", "mlp"):
            raise ScheduleLabError(f"with --toy, --model is exact or mlp; got {a.model!r}")
        model, mix = toy_model_and_data(a.toy, a.model or "exact", resolve_device(a.device))
        lo, hi = 0.002, 80.0
    elif a.model is None:
        raise ScheduleLabError("give --toy TOY (a 2-D toy) or --model MODEL (an image model; see `python -m core models`)")
    else:
        from core.cli import parse_params
        from core.models.registry import load_model, model_data
        model = load_model(a.model, a.device, weights=a.weights, params=parse_params(a.param))
        mix = model_data(a.model, model, a.data)
        source = mix.source + (" - the schedule fits the model's own samples, not data" if mix.generated else "")
        print(f"data: {source}", file=sys.stderr)
        lo, hi = model.sigma_min, model.sigma_max
    smin = lo if a.sigma_min is None else a.sigma_min
    smax = hi if a.sigma_max is None else a.sigma_max
    opt = ScoreOptimalOptimizer(model, mix, a.steps, smin, smax, levels=a.levels, n=a.n, method=a.method,
                                seed=a.seed, chunk_points=max(a.n, min(32768, a.n * max(1, a.levels // 20))))
    with tqdm(total=a.levels, desc="Stein density (levels)", disable=a.json, file=sys.stderr) as bar:
        for ev in opt.events():
            bar.update(ev.extra.get("levels_done", a.levels) - bar.n)
    sched, info = opt.result(), opt.info()
    sched = sched.with_name("score_optimal", **({"toy": a.toy} if a.toy else {"model": a.model}))
    sched.to_json(a.out)
    out = {"out": a.out, "sigmas": list(sched.sigmas), "cost": info["cost"], "total_cost": info["total_cost"],
           "Lambda_total": info["Lambda_total"], "seconds": info["seconds"], "toy": a.toy, "model": a.model, "data": source,
           "solver": sched.solver,
           "levels": a.levels, "n": a.n, "method": a.method, "seed": a.seed}
    text = (f"wrote {a.out}: {sched.steps} steps, Stein cost per interval {info['cost'][0]:.4g} "
            f"({info['seconds']:.2f} s)\n" + " ".join(f"{s:.6g}" for s in sched.sigmas))
    emit(out, a.json, text)
    return 0
