"""AYS KLUB per interval of a schedule on a toy, its share, and the density over log-sigma.

    python -m core curves klub --toy grid8x8 --schedule karras --steps 10 --json
"""
from __future__ import annotations

from core.cli import emit, parse_params


def add_arguments(p):
    p.add_argument("--toy", required=True, help="toy name or mixture JSON file")
    p.add_argument("--model", default="exact", choices=["exact", "mlp"])
    p.add_argument("--schedule", required=True, help="schedule name or JSON file")
    p.add_argument("--steps", type=int, default=None, help="steps (required for a name)")
    p.add_argument("--sigma-min", type=float, default=0.002)
    p.add_argument("--sigma-max", type=float, default=80.0)
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--c", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", type=int, default=24, help="density points per interval")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")


def run(a) -> int:
    from core.cli.model_args import toy_model_and_data
    from core.device import resolve_device
    from core.objectives.klub import klub_curves
    from core.schedules import load_schedule
    model, mix = toy_model_and_data(a.toy, a.model, resolve_device(a.device))
    sched = load_schedule(a.schedule, a.steps, a.sigma_min, a.sigma_max, **parse_params(a.param))
    r = klub_curves(model, mix.sample, sched, n_samples=a.samples, c=a.c, seed=a.seed, grid=a.grid)
    lines = [f"KLUB of {sched.label()} on {a.toy} ({a.model}), {a.samples} samples, c = {a.c}",
             f"{'sigma_hi':>10} {'sigma_lo':>10} {'klub':>11} {'se':>10} {'share':>7}"]
    for hi, lo, k, se, sh in zip(r["sigma_hi"], r["sigma_lo"], r["klub"], r["klub_se"], r["share"]):
        lines.append(f"{hi:10.4g} {lo:10.4g} {k:11.4g} {se:10.3g} {sh:7.1%}")
    lines.append(f"total {r['total']:.5g} +- {r['total_se']:.3g}")
    emit(r, a.json, "\n".join(lines))
    return 0
