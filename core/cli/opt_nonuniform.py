"""DM-NonUniform: optimize a schedule for dpmpp_3m_lagrange from the noise process alone (no model).

    python -m core optimize nonuniform --steps 6 --out nonuniform6.json
    python -m core optimize nonuniform --steps 10 --p 2 --process vp-linear --json --out s.json
    python -m core optimize nonuniform --steps 6 --model net.py:UNet --weights w.pt --param ... --out s.json
    python -m core optimize nonuniform --steps 5 --p 2 --process vp-linear --convention paper --out s.json

--model takes the noise process (a discrete table of any length, continuous VP, EDM, flow) and the sigma
range from the loaded model (the model itself is never called: the bound is data-free).
--convention paper is the reference code's setting (N calls over N intervals ending at sigma_min; the
N + 1 levels followed by 0 are written).

Writes a Schedule JSON with solver "dpmpp_3m_lagrange" (sample it with that solver) and exits 1 when no
start converged (the schedule is still written, flagged, with --allow-unconverged).
"""
from __future__ import annotations

from core.cli import emit
from core.errors import ScheduleLabError


def add_arguments(p):
    p.add_argument("--steps", type=int, required=True, help="steps = NFE of dpmpp_3m_lagrange")
    p.add_argument("--p", type=float, default=1.0, help="error model sigma_vp^p / alpha_vp: 1 pixel, 2 latent")
    p.add_argument("--process", default=None, help="edm (default) | vp-linear | vp-cosine | flow | discrete")
    p.add_argument("--model", default=None, help="take the process and sigma range from this model (digits, a "
                                                 "diffusers folder, module.py:Class with --weights / --param)")
    p.add_argument("--weights", default=None, help="--model module.py:Class: its weights file")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="--model module.py:Class: constructor / wrapper parameters")
    p.add_argument("--convention", default="ours", choices=["ours", "paper"],
                   help="ours: n calls, the last D at sigma_min for the jump to 0 (n - 2 free levels); paper: "
                        "the reference code's N calls over N intervals ending at sigma_min (N - 1 free levels)")
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
    process, smin, smax = a.process or "edm", a.sigma_min, a.sigma_max
    if a.model is not None:
        if a.process is not None:
            raise ScheduleLabError("give --process or --model (the model fixes its own process), not both")
        from core.cli import parse_params
        from core.models.registry import load_model
        from core.optimizers.nonuniform import model_process
        process, m_min, m_max = model_process(load_model(a.model, "cpu", weights=a.weights,
                                                         params=parse_params(a.param)))
        smin = m_min if smin is None else smin
        smax = m_max if smax is None else smax
    opt = NonUniformOptimizer(a.steps, smin, smax, p=a.p, process=process,
                              starts=[s.strip() for s in a.starts.split(",") if s.strip()],
                              quadrature=quad, strict=not a.allow_unconverged, maxiter=a.maxiter,
                              convention=a.convention)
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
    conv = "" if a.convention == "ours" else f" (paper convention: N = {a.steps} calls, N + 1 levels then 0)"
    text = (f"wrote {a.out}: {sched.steps} steps for {info['solver']}{conv}, bound {info['objective']:.6g} "
            f"({'converged' if info['converged'] else 'NOT converged'}, best start {info['best_start']})\n"
            + " ".join(f"{s:.6g}" for s in sched.sigmas))
    emit(out, a.json, text)
    return 0 if info["converged"] else 1
