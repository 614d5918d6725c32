"""DM-NonUniform's error bound per step of a schedule (dpmpp_3m_lagrange; no model needed).

    python -m core curves truncation --schedule karras --steps 10 --json
    python -m core curves truncation --schedule nonuniform6.json --p 2
"""
from __future__ import annotations

from core.cli import emit, parse_params


def add_arguments(p):
    p.add_argument("--schedule", required=True, help="schedule name or JSON file")
    p.add_argument("--steps", type=int, default=None, help="needed for a name; resamples a file")
    p.add_argument("--sigma-min", type=float, default=0.002)
    p.add_argument("--sigma-max", type=float, default=80.0)
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--p", type=float, default=1.0, help="error model exponent: 1 pixel, 2 latent")
    p.add_argument("--quadrature", default="auto", help="auto | reference | all | number of first steps")
    p.add_argument("--json", action="store_true")


def run(a) -> int:
    from core.objectives.truncation import truncation_curve
    from core.schedules import load_schedule

    sched = load_schedule(a.schedule, a.steps, a.sigma_min, a.sigma_max, **parse_params(a.param))
    quad = int(a.quadrature) if str(a.quadrature).isdigit() else a.quadrature
    c = truncation_curve(sched, p=a.p, quadrature=quad)
    rows = [f"{i:3d}  {hi:10.5g} -> {lo:<10.5g} order {o}  {v:.4g}  ({100 * s:.1f} %)"
            for i, (hi, lo, o, v, s) in enumerate(zip(c["sigma_hi"], c["sigma_lo"], c["order"],
                                                     c["contribution"], c["share"]))]
    emit(c, a.json, "\n".join(rows + [f"bound {c['objective']:.6g} (p = {a.p:g}, solver {c['solver']})"]))
    return 0
