"""Per-interval Stein cost of a schedule on a toy (score-optimal schedules' cost).

    python -m core curves stein --toy grid8x8 --schedule karras --steps 10 --json
"""
from __future__ import annotations

from core.cli import emit, parse_params
from core.errors import ScheduleLabError


def add_arguments(p):
    p.add_argument("--toy", required=True)
    p.add_argument("--model", default="exact", choices=["exact", "mlp"])
    p.add_argument("--schedule", required=True, help="schedule name or JSON file")
    p.add_argument("--steps", type=int, default=None, help="needed for a name; resamples a file")
    p.add_argument("--sigma-min", type=float, default=0.002)
    p.add_argument("--sigma-max", type=float, default=80.0)
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--levels", type=int, default=200)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--method", default="jvp", choices=["jvp", "fd"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")


def run(a) -> int:
    from core.cli.model_args import toy_model_and_data
    from core.device import resolve_device
    from core.objectives.stein import stein_curves
    from core.schedules import load_schedule

    if a.n < 2:
        raise ScheduleLabError(f"--n must be >= 2; got {a.n}")
    sched = load_schedule(a.schedule, a.steps, a.sigma_min, a.sigma_max, **parse_params(a.param))
    device = resolve_device(a.device)
    model, mix = toy_model_and_data(a.toy, a.model, device)
    mix = mix.to(device)                                # the analytic score runs where the model runs
    c = stein_curves(model, mix, sched, levels=a.levels, n=a.n, method=a.method, seed=a.seed)
    rows = [f"{i:3d}  {hi:10.5g} -> {lo:<10.5g}  {v:.4g}  ({100 * s:.1f} %)"
            for i, (hi, lo, v, s) in enumerate(zip(c["sigma_hi"], c["sigma_lo"], c["cost"], c["share"]))]
    emit(c, a.json, "\n".join(rows + [f"total {c['total_cost']:.5g}; constant-speed minimum "
                                      f"{c['optimal_cost']:.5g} (efficiency {c['efficiency']:.3f})"]))
    return 0
