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

    from core.schedules import FORMATS
    p = sub.add_parser("schedule", help="print a schedule")
    p.add_argument("name")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--sigma-min", type=float, default=None, help="default: the table's, else 0.002")
    p.add_argument("--sigma-max", type=float, default=None, help="default: the table's, else 80")
    p.add_argument("--table", default=None, help="model noise table: sd15|sdxl|sd2|ddpm-linear|ddpm-cosine or a "
                                                 "diffusers scheduler config JSON (needed by table schedulers)")
    p.add_argument("--denoise", type=float, default=1.0, help="ComfyUI's denoise (AYS presets, table schedulers)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--model", default=None, help="model named in the export's provenance comment")
    p.add_argument("--format", default="json", choices=list(FORMATS) + ["flow-comfyui", "flow-diffusers"],
                   help="flow-*: the levels as flow times t = sigma / (1 + sigma) for flow models")
    p.set_defaults(func=_schedule)

    p = sub.add_parser("sample", help="sample a toy (or your own model) and score it against the data")
    p.add_argument("--toy", default=None, help="toy name or mixture JSON: the exact density (NLL)")
    p.add_argument("--model", default="exact",
                   help="exact | mlp (with --toy), or your own model: module.py:Class with --weights / "
                        "--model-param (docs/models.md)")
    p.add_argument("--weights", default=None, help="--model module.py:Class: its weights file")
    p.add_argument("--model-param", action="append", default=[], metavar="KEY=VALUE",
                   help="--model module.py:Class: constructor / wrapper parameters")
    p.add_argument("--data", default=None, help="your own model: data points (.npy, .npz, .csv/.txt) for SWD / MMD")
    p.add_argument("--schedule", required=True, help="schedule name or JSON file")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--solver", required=True)
    p.add_argument("--sigma-min", type=float, default=None, help="default: 0.002 (toys) or the model's")
    p.add_argument("--sigma-max", type=float, default=None, help="default: 80 (toys) or the model's")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="schedule parameters")
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
    emit(rows, a.json, "\n".join(f"{r['name']:19s} {r['label']}" for r in rows))


def _schedules(a):
    from core.schedules import schedule_names, table_schedule_names
    names = list(schedule_names()) + list(table_schedule_names())
    emit(names, a.json, "\n".join(list(schedule_names()) + [f"{n}  (needs --table)" for n in table_schedule_names()]))


def _schedule(a):
    import sys
    from core.schedules import export, make_schedule
    from core.schedules.io import provenance
    s = make_schedule(a.name, a.steps, a.sigma_min, a.sigma_max, table=a.table, denoise=a.denoise,
                      **parse_params(a.param))
    if a.format.startswith("flow-"):
        from core.schedules.flow import export_flow
        print(export_flow(s, a.format[5:]))
        return
    if a.format in ("comfyui", "list"):
        sys.stderr.write("# " + provenance(s, a.model) + "\n")
    print(export(s, a.format, table=a.table, model=a.model))


def _sample(a):
    from core.evaluate import evaluate_model, evaluate_toy
    from core.models import load_toy_model
    from core.schedules import load_schedule
    from core.solvers import get_solver
    from toy_data import get_toy
    if a.n < 2 or a.seeds < 1:
        raise ScheduleLabError(f"--n must be >= 2 and --seeds >= 1; got {a.n}, {a.seeds}")
    get_solver(a.solver)
    seeds = tuple(range(a.seed, a.seed + a.seeds))
    guided = a.label is not None or a.cfg is not None
    if a.model in ("exact", "mlp"):
        if a.toy is None:
            raise ScheduleLabError("--model exact / mlp needs --toy; for your own model give --model module.py:Class")
        if guided:
            from core.cli.model_args import toy_model_and_data
            model, mix = toy_model_and_data(a.toy, a.model, a.device, a.label, a.cfg)
        else:
            mix = get_toy(a.toy)
            model = load_toy_model(a.toy, a.model, a.device) if a.model == "mlp" else _exact(mix, a.device)
        sched = load_schedule(a.schedule, a.steps, _or(a.sigma_min, 0.002), _or(a.sigma_max, 80.0),
                              **parse_params(a.param))
        r = evaluate_toy(model, mix, sched, a.solver, n=a.n, seeds=seeds)
    else:
        from core.models.registry import load_model
        from core.models.user_model import read_points
        if guided:
            raise ScheduleLabError("--label / --cfg on sample take a labelled toy (--toy grid8x8|ring8 --model exact); "
                                   "for your own conditional network use `images` or the Python API")
        mix = get_toy(a.toy) if a.toy is not None else None
        if a.data is None and mix is None:
            raise ScheduleLabError("your own model needs --data POINTS (SWD / MMD) and/or --toy MIXTURE.json (NLL)")
        model = load_model(a.model, a.device, weights=a.weights, params=parse_params(a.model_param))
        data = read_points(a.data, model.event_shape) if a.data is not None else None
        sched = load_schedule(a.schedule, a.steps, _or(a.sigma_min, model.sigma_min), _or(a.sigma_max, model.sigma_max),
                              **parse_params(a.param))
        r = evaluate_model(model, sched, a.solver, n=a.n, seeds=seeds, data=data, mixture=mix)
    import sys

    from core.schedules.provenance import model_mismatch, solver_mismatch
    for w in (solver_mismatch(sched, a.solver), model_mismatch(sched, str(getattr(model, "name", "")))):
        if w:                                               # a schedule used where it was not made for
            sys.stderr.write(f"warning: {w}\n")
    out = {k: r[k] for k in ("nll", "kde_nll", "coverage", "swd", "mmd", "nfe", "seconds", "sigmas")}
    out.update({k + "_ci": r[k + "_ci"] for k in ("nll", "kde_nll", "coverage", "swd", "mmd")})
    if getattr(model, "calls_per_eval", 1) == 2 or (a.cfg is not None and a.cfg != 1):
        from core.sampling import generate
        from core.schedules import make_schedule
        ref = generate(model, make_schedule("karras", 256, sched.sigma_min, sched.sigma_max), a.n, "heun", a.seed).x
        x = generate(model, sched, a.n, a.solver, a.seed).x
        out["ref_rmse"] = float((x - ref).double().square().sum(1).mean().sqrt())
        out["note"] = ("guided (w != 1): nll / swd / mmd compare with p(x | c), which the guided ODE does not "
                       "sample; ref_rmse is the RMS distance to a 256-step Heun solution of the same guided ODE")
    emit(out, a.json, "\n".join(f"{k}: {v}" for k, v in out.items()))


def _or(v, default):
    return default if v is None else v


def _exact(mix, device):
    from core.models import MixtureDenoiser
    return MixtureDenoiser(mix).to(device)
