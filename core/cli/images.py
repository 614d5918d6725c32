"""`images` (sample a grid from an image model, write a PNG, report metrics) and `models`."""
from __future__ import annotations

import sys

from core.cli import emit, parse_params
from core.cli.model_args import add_guidance_arguments, apply_guidance
from core.errors import ScheduleLabError


def register(sub):
    p = sub.add_parser("images", help="sample an image grid under a schedule and solver (PNG + metrics)")
    p.add_argument("--model", default="digits",
                   help="digits, a UNet .safetensors, a diffusers folder, or module.py:ClassName")
    p.add_argument("--weights", default=None, help="weights file for a module.py:ClassName model")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="model option (module.py:ClassName models, see docs/models.md)")
    p.add_argument("--allow-hub", action="store_true", help="allow a diffusers hub id to download")
    add_guidance_arguments(p)
    p.add_argument("--schedule", required=True, help="schedule name or JSON file")
    p.add_argument("--schedule-param", action="append", default=[], metavar="KEY=VALUE",
                   help="schedule parameter, e.g. rho=7")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--solver", required=True)
    p.add_argument("--sigma-min", type=float, default=None, help="default: the model's")
    p.add_argument("--sigma-max", type=float, default=None, help="default: the model's")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="PNG path for the grid")
    p.add_argument("--nrow", type=int, default=None, help="images per row (default sqrt(n))")
    p.add_argument("--scale", type=int, default=4, help="pixel repeat factor in the PNG")
    p.add_argument("--normalise", default=None, choices=["clamp", "minmax"],
                   help="display mapping (default: the model's, else clamp)")
    p.add_argument("--no-metrics", action="store_true", help="skip FD / KID / classifier metrics")
    p.add_argument("--no-reference", action="store_true", help="skip the many-step reference (ref_error)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_images)

    p = sub.add_parser("models", help="list image models and accepted --model forms")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_models)


def _images(a):
    from core.images_io import save_grid
    from core.metrics import images as im
    from core.models.registry import load_model, model_entry
    from core.schedules import load_schedule
    from core.solvers import get_solver
    if a.n < 1 or a.steps < 1:
        raise ScheduleLabError(f"--n and --steps must be >= 1; got {a.n}, {a.steps}")
    if a.out is not None and not a.out.lower().endswith(".png"):
        raise ScheduleLabError(f"--out must be a .png file; got {a.out!r}")
    spec = get_solver(a.solver)
    opts = {"weights": a.weights, "params": parse_params(a.param), "allow_hub": a.allow_hub}
    model = apply_guidance(load_model(a.model, a.device, **opts), a)
    from core.limits import check_rows
    check_rows(a.n, "--n", model.event_shape)                 # the cap for this model's image size
    smin = a.sigma_min if a.sigma_min is not None else model.sigma_min
    smax = a.sigma_max if a.sigma_max is not None else model.sigma_max
    sched = load_schedule(a.schedule, a.steps, smin, smax, **parse_params(a.schedule_param))
    x, nfe, seconds = im.sample_images(model, sched, a.solver, a.n, a.seed)
    out = {"model": a.model, "schedule": sched.name, "sigmas": list(sched.sigmas), "solver": spec.name,
           "steps": sched.steps, "nfe": nfe, "seconds": seconds, "n": a.n, "seed": a.seed,
           "fd": None, "kid": None, "confidence": None, "class_balance": None, "ref_error": None}
    entry = model_entry(a.model)
    if not a.no_reference and not spec.stochastic:
        ref = im.reference_samples(model, a.n, a.seed, sched.sigma_max)
        out["ref_error"] = im.reference_error(x, ref)
    if not a.no_metrics and entry is not None and entry.metrics == "digits":
        m = im.image_metrics(x)
        out.update({k: m[k] for k in ("fd", "kid", "confidence", "class_balance", "balance_max_dev")})
        labels = model.expected_labels(a.n, 500) if hasattr(model, "expected_labels") else None
        if labels is not None:
            out["label_accuracy"] = im.label_accuracy(x, labels)["accuracy"]
    if a.out:
        norm = a.normalise or getattr(model, "display", None) or "clamp"
        out["out"] = str(save_grid(x, a.out, nrow=a.nrow, scale=a.scale, normalise=norm))
    text = (f"{sched.name} x {spec.name}: {a.n} images, NFE {nfe}, {seconds:.2f} s"
            + "".join(f", {k} {out[k]:.4g}" for k in ("fd", "kid", "confidence", "ref_error", "label_accuracy")
                      if out.get(k) is not None)
            + (f" -> {out['out']}" if a.out else ""))
    emit(out, a.json, text)
    if not a.out and not a.json:
        print("(no --out given: nothing written)", file=sys.stderr)
    return 0


def _models(a):
    from core.models.registry import list_models
    rows = list_models()
    lines = [f"{r['name'] or '<' + r['kind'] + '>':12s} {'ok ' if r['available'] else 'MISSING'} "
             f"{r['path'] or ''}  {r['description']}" for r in rows]
    emit(rows, a.json, "\n".join(lines))
