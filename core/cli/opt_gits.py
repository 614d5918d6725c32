"""GITS: a schedule fitted to the model's own ODE trajectories (Chen et al. 2024; methods.md s.8).

    python -m core optimize gits --toy grid8x8 --steps 10 --solver dpmpp_2m --out gits10.json
    python -m core optimize gits --toy moons --model mlp --steps 6 --solver ipndm --coeff 1.15 --out g.json
    python -m core optimize gits --model digits --steps 10 --out digits_gits10.json

Needs model calls but no data (a --data given is not used). The schedule records the solver it
was fitted for; sample it with that solver.
"""
from __future__ import annotations

import sys

from core.cli import emit
from core.cli.model_args import add_model_arguments
from core.errors import ScheduleLabError


def add_common(p, n_samples: int) -> None:
    """Arguments GITS and OSS share."""
    add_model_arguments(p)
    p.add_argument("--steps", type=int, required=True, help="n levels before the final 0 (NFE n; heun 2n - 1)")
    p.add_argument("--solver", default="dpmpp_2m", help="euler | heun | dpmpp_2m | ipndm | dpmpp_3m")
    p.add_argument("--sigma-min", type=float, default=None, help="default: the model's (toys 0.002)")
    p.add_argument("--sigma-max", type=float, default=None, help="default: the model's (toys 80)")
    p.add_argument("--n-samples", type=int, default=n_samples, help="teacher trajectories (noises)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 for toys, whose tensors are tiny; torch's own otherwise)")
    p.add_argument("--out", required=True, metavar="SCHEDULE.json")
    p.add_argument("--json", action="store_true")


def add_arguments(p):
    add_common(p, 256)
    p.add_argument("--coeff", type=float, default=1.15, help="DP coefficient (reference default 1.15)")
    p.add_argument("--grid", type=int, default=61, help="teacher grid levels (reference 61)")
    p.add_argument("--teacher", default="ipndm", help="teacher solver (reference ipndm)")
    p.add_argument("--metric", default="l2", choices=["l2", "l1", "dev"])


def load(a, device):
    """(Denoiser, label) for --toy T [--model exact|mlp] or --model SPEC (no data is loaded); sets --threads."""
    from core.device import set_threads
    threads = a.threads if a.threads is not None else (1 if a.toy is not None else None)
    set_threads(threads)
    if a.toy is not None:
        from core.cli.model_args import toy_model_and_data
        if a.model not in (None, "exact", "mlp"):
            raise ScheduleLabError(f"with --toy, --model is exact or mlp; got {a.model!r}")
        label, cfg = getattr(a, "label", None), getattr(a, "cfg", None)
        model = toy_model_and_data(a.toy, a.model or "exact", device, label, cfg)[0]
        info = {"toy": a.toy, "model": a.model or "exact", "label": label, "cfg": cfg}
        return model, {k: v for k, v in info.items() if v is not None}
    if a.model is None:
        raise ScheduleLabError("give --toy TOY (a 2-D toy) or --model MODEL (an image model; see `python -m core models`)")
    from core.cli import parse_params
    from core.models.registry import load_model
    if a.data is not None:
        print("note: --data is not used; the schedule fits the model's own trajectories", file=sys.stderr)
    from core.cli.model_args import apply_guidance
    model = apply_guidance(load_model(a.model, device, weights=a.weights, params=parse_params(a.param)), a)
    info = {"model": a.model, "label": getattr(a, "label", None), "cfg": getattr(a, "cfg", None)}
    return model, {k: v for k, v in info.items() if v is not None}


def drive(opt, a, total: int, unit: str, key: str):
    """Run the optimizer's events under a tqdm bar (stderr; off with --json)."""
    from tqdm import tqdm
    with tqdm(total=total, desc=f"{opt.method} ({unit})", disable=a.json, file=sys.stderr) as bar:
        for ev in opt.events():
            bar.update(ev.extra.get(key, total) - bar.n)


def finish(a, sched, info: dict, what: str) -> int:
    sched.to_json(a.out)
    out = {"out": a.out, "sigmas": list(sched.sigmas), "solver": sched.solver, **info}
    text = (f"wrote {a.out}: {what}, {sched.steps} steps for {sched.solver} ({info['seconds']:.2f} s)\n"
            + " ".join(f"{s:.6g}" for s in sched.sigmas))
    emit(out, a.json, text)
    return 0


def run(a) -> int:
    from core.device import resolve_device
    from core.optimizers.gits import GITSOptimizer

    model, label = load(a, resolve_device(a.device))
    opt = GITSOptimizer(model, a.steps, a.solver, sigma_min=a.sigma_min, sigma_max=a.sigma_max,
                        n_samples=a.n_samples, coeff=a.coeff, grid=a.grid, teacher=a.teacher, metric=a.metric,
                        seed=a.seed)
    drive(opt, a, a.n_samples, "teacher samples", "samples_done")
    sched = opt.result().with_name("gits", **label)
    info = {k: v for k, v in opt.info().items() if k != "grid_sigmas"}
    return finish(a, sched, {**info, **label}, f"GITS on a {a.grid}-level grid")
