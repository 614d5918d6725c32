"""DM-NonUniform: optimize a schedule for dpmpp_3m_lagrange from the noise process alone (no model).

    python -m core optimize nonuniform --steps 6 --out nonuniform6.json
    python -m core optimize nonuniform --steps 10 --p 2 --process vp-linear --json --out s.json

Writes a Schedule JSON with solver "dpmpp_3m_lagrange" (sample it with that solver) and exits 1 when no
start converged (the schedule is still written, flagged, with --allow-unconverged).
"""
from __future__ import annotations

from core.cli import emit
from core.errors import ScheduleLabError


def add_arguments(p):
    p.add_argument("--steps", type=int, required=True, help="steps = NFE of dpmpp_3m_lagrange")
    p.add_argument("--p", type=float, default=1.0, help="error model sigma_vp^p / alpha_vp: 1 pixel, 2 latent")
    p.add_argument("--process", default="edm", help="edm | vp-linear | vp-cosine | flow | discrete")
    p.add_argument("--sigma-min", type=float, default=None, help="default: the process's")
    p.add_argument("--sigma-max", type=float, default=None, help="default: the process's")
    p.add_argument("--starts", default="uniform_lambda,uniform_t,edm", help="comma-separated starts")
    p.add_argument("--quadrature", default="auto", help="auto | reference | all | number of first steps")
    p.add_argument("--maxiter", type=int, default=1000)
    p.add_argument("--allow-unconverged", action="store_true",
                   help="write the best schedule even when no start converged (flagged)")
    p.add_argument("--out", required=True, metavar="SCHEDULE.json")
    p.add_argument("--json", action="store_true")


def run(a) -> int:
    from core.optimizers.nonuniform import NonUniformOptimizer

    quad = int(a.quadrature) if str(a.quadrature).isdigit() else a.quadrature
    if a.maxiter < 1:
        raise ScheduleLabError(f"--maxiter must be >= 1; got {a.maxiter}")
    opt = NonUniformOptimizer(a.steps, a.sigma_min, a.sigma_max, p=a.p, process=a.process,
                              starts=[s.strip() for s in a.starts.split(",") if s.strip()],
                              quadrature=quad, strict=not a.allow_unconverged, maxiter=a.maxiter)
    for _ in opt.events():
        pass
    info = opt.info()
    if not info["converged"] and not a.allow_unconverged:
        opt.result()                                            # raises ScheduleLabError with the reasons
    sched = opt.result(check=False)
    sched.to_json(a.out)
    out = {"out": a.out, "sigmas": list(sched.sigmas), **{k: v for k, v in info.items() if k != "runs"},
           "runs": [{k: r[k] for k in ("start", "objective", "converged", "status", "nit", "optimality",
                                        "seconds")} for r in info["runs"]]}
    text = (f"wrote {a.out}: {sched.steps} steps for {info['solver']}, bound {info['objective']:.6g} "
            f"({'converged' if info['converged'] else 'NOT converged'}, best start {info['best_start']})\n"
            + " ".join(f"{s:.6g}" for s in sched.sigmas))
    emit(out, a.json, text)
    return 0 if info["converged"] else 1
