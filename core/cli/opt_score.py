"""Score-optimal schedule of a toy: constant speed in the Stein cost (no solver assumed).

    python -m core optimize score-optimal --toy grid8x8 --steps 10 --out score10.json
    python -m core optimize score-optimal --toy moons --model mlp --steps 8 --method fd --out s.json
"""
from __future__ import annotations

from core.cli import emit
from core.errors import ScheduleLabError


def add_arguments(p):
    p.add_argument("--toy", required=True, help="toy name or mixture JSON file")
    p.add_argument("--model", default="exact", choices=["exact", "mlp"])
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--sigma-min", type=float, default=0.002)
    p.add_argument("--sigma-max", type=float, default=80.0)
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
    from core.optimizers.score_optimal import score_optimal_schedule

    if a.n < 2:
        raise ScheduleLabError(f"--n must be >= 2; got {a.n}")
    model, mix = toy_model_and_data(a.toy, a.model, resolve_device(a.device))
    sched, info = score_optimal_schedule(model, mix, a.steps, a.sigma_min, a.sigma_max, levels=a.levels,
                                         n=a.n, method=a.method, seed=a.seed)
    sched = sched.with_name("score_optimal", toy=a.toy)
    sched.to_json(a.out)
    out = {"out": a.out, "sigmas": list(sched.sigmas), "cost": info["cost"], "total_cost": info["total_cost"],
           "Lambda_total": info["Lambda_total"], "seconds": info["seconds"], "toy": a.toy, "model": a.model,
           "levels": a.levels, "n": a.n, "method": a.method, "seed": a.seed}
    text = (f"wrote {a.out}: {sched.steps} steps, Stein cost per interval {info['cost'][0]:.4g} "
            f"({info['seconds']:.2f} s)\n" + " ".join(f"{s:.6g}" for s in sched.sigmas))
    emit(out, a.json, text)
    return 0
