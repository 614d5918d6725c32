"""`toys`, `solvers`, `schedules`, `schedule`, `sample`."""
from __future__ import annotations

from core.cli import emit, parse_params
from core.errors import ScheduleLabError


def register(sub):
    for name, fn, help_ in (("toys", _toys, "list toy distributions"),
                            ("solvers", _solvers, "list solvers"),
                            ("schedules", _schedules, "list schedule names")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=fn)

    p = sub.add_parser("schedule", help="print a schedule")
    p.add_argument("name")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--sigma-min", type=float, default=0.002)
    p.add_argument("--sigma-max", type=float, default=80.0)
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--format", default="json", choices=["json", "comfyui", "diffusers", "kdiffusion", "list",
                                                        "flow-comfyui", "flow-diffusers"],
                   help="flow-*: the levels as flow times t = sigma / (1 + sigma) for flow models")
    p.set_defaults(func=_schedule)

    p = sub.add_parser("sample", help="sample a toy and score it against the exact density")
    p.add_argument("--toy", required=True)
    p.add_argument("--model", default="exact", choices=["exact", "mlp"])
    p.add_argument("--schedule", required=True, help="schedule name or JSON file")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--solver", required=True)
    p.add_argument("--sigma-min", type=float, default=0.002)
    p.add_argument("--sigma-max", type=float, default=80.0)
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (seed, seed+1, ...) for a CI")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    from core.cli.model_args import add_guidance_arguments
    add_guidance_arguments(p)
    p.set_defaults(func=_sample)


def _toys(a):
    from toy_data import toy_names
    emit(list(toy_names()), a.json, "\n".join(toy_names()))


def _solvers(a):
    from core.solvers import SOLVERS
    rows = [{"name": s.name, "label": s.label, "order": s.order, "stochastic": s.stochastic}
            for s in SOLVERS.values()]
    emit(rows, a.json, "\n".join(f"{r['name']:14s} {r['label']}" for r in rows))


def _schedules(a):
    from core.schedules import schedule_names
    emit(list(schedule_names()), a.json, "\n".join(schedule_names()))


def _schedule(a):
    from core.schedules import export, make_schedule
    s = make_schedule(a.name, a.steps, a.sigma_min, a.sigma_max, **parse_params(a.param))
    if a.format.startswith("flow-"):
        from core.schedules.flow import export_flow
        print(export_flow(s, a.format[5:]))
        return
    print(export(s, a.format))


def _sample(a):
    from core.evaluate import evaluate_toy
    from core.models import load_toy_model
    from core.schedules import load_schedule
    from core.solvers import get_solver
    from toy_data import get_toy
    if a.n < 2 or a.seeds < 1:
        raise ScheduleLabError(f"--n must be >= 2 and --seeds >= 1; got {a.n}, {a.seeds}")
    get_solver(a.solver)
    if a.label is not None or a.cfg is not None:
        from core.cli.model_args import toy_model_and_data
        model, mix = toy_model_and_data(a.toy, a.model, a.device, a.label, a.cfg)
    else:
        mix = get_toy(a.toy)
        model = load_toy_model(a.toy, a.model, a.device) if a.model == "mlp" else _exact(mix, a.device)
    sched = load_schedule(a.schedule, a.steps, a.sigma_min, a.sigma_max, **parse_params(a.param))
    r = evaluate_toy(model, mix, sched, a.solver, n=a.n, seeds=tuple(range(a.seed, a.seed + a.seeds)))
    out = {k: r[k] for k in ("nll", "swd", "mmd", "nfe", "seconds", "sigmas")}
    out.update({k + "_ci": r[k + "_ci"] for k in ("nll", "swd", "mmd")})
    if getattr(model, "calls_per_eval", 1) == 2 or (a.cfg is not None and a.cfg != 1):
        from core.sampling import generate
        from core.schedules import make_schedule
        ref = generate(model, make_schedule("karras", 256, sched.sigma_min, sched.sigma_max), a.n, "heun", a.seed).x
        x = generate(model, sched, a.n, a.solver, a.seed).x
        out["ref_rmse"] = float((x - ref).double().square().sum(1).mean().sqrt())
        out["note"] = ("guided (w != 1): nll / swd / mmd compare with p(x | c), which the guided ODE does not "
                       "sample; ref_rmse is the RMS distance to a 256-step Heun solution of the same guided ODE")
    emit(out, a.json, "\n".join(f"{k}: {v}" for k, v in out.items()))


def _exact(mix, device):
    from core.models import MixtureDenoiser
    return MixtureDenoiser(mix).to(device)
