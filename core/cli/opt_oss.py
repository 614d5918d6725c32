"""OSS, Optimal Stepsize: a schedule from a DP over a many-step teacher that carries the student's
own state (Pei et al. 2025; methods.md s.8).

    python -m core optimize oss --toy grid8x8 --steps 10 --solver dpmpp_2m --out oss10.json
    python -m core optimize oss --toy ring8 --model mlp --steps 6 --per-sample --out o.json
    python -m core optimize oss --model digits --steps 10 --n-samples 16 --out digits_oss10.json

Default OSS-ave (the error averaged over the noises); --per-sample: one DP per noise and their
median (the reference code's). Needs model calls but no data.
"""
from __future__ import annotations

from core.cli.opt_gits import add_common, drive, finish, load


def add_arguments(p):
    add_common(p, 64)
    p.add_argument("--teacher-steps", type=int, default=200, help="teacher steps on the grid (reference 200)")
    p.add_argument("--teacher", default=None, help="teacher solver (default: the student's, as the reference)")
    p.add_argument("--per-sample", action="store_true", help="per-noise DPs and their median (else OSS-ave)")


def run(a) -> int:
    from core.device import resolve_device
    from core.optimizers.oss import OSSOptimizer

    model, label = load(a, resolve_device(a.device))
    opt = OSSOptimizer(model, a.steps, a.solver, sigma_min=a.sigma_min, sigma_max=a.sigma_max,
                       n_samples=a.n_samples, teacher_steps=a.teacher_steps, per_sample=a.per_sample,
                       teacher=a.teacher, seed=a.seed)
    drive(opt, a, a.steps - 1, "DP rows", "row")
    sched = opt.result().with_name("oss", **label)
    info = {k: v for k, v in opt.info().items() if k != "per_sample_indices"}
    return finish(a, sched, {**info, **label}, f"OSS{'' if a.per_sample else '-ave'} on a "
                                               f"{a.teacher_steps}-step teacher")
