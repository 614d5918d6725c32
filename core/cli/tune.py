"""`python -m core tune`: the best schedule for a model and solver, proven on held-out noise.

    python -m core tune --toy grid8x8 --solver dpmpp_2m --steps 10 --out tuned.json
    python -m core tune --toy moons --model mlp --solver heun --steps 5 --methods ays,nonuniform --out t.json
    python -m core tune --model digits --solver dpmpp_2m --steps 10 --budget-s 600 --out digits10.json
    python -m core tune --model my/mlp.py:MLP --weights w.safetensors --param shape=2 ... --data points.npy \
        --solver heun --steps 6 --out t.json                 # your own 2-D network: swd to the points
                                                             # (--toy MIXTURE.json too: nll under it)
    python -m core tune ... --out t.json --resume            # continue a killed run from its state
    python -m core tune ... --out t.json --force             # start afresh (the old state is kept as .bak)

Runs every heuristic and the chosen optimizers (core.tune), scores them on held-out noise with
the model's metric, and writes the winner as a Schedule JSON with the whole leaderboard under
"tune".  It never returns a schedule worse than the best heuristic: when no optimizer is
significantly better on held-out noise, the heuristic is written and the output says so.
The state is written after every unit to --state (default OUT with .state.json).
"""
from __future__ import annotations

import sys
from pathlib import Path

from core.cli import emit
from core.cli.model_args import add_model_arguments, resolve_model
from core.errors import ScheduleLabError


def register(sub):
    p = sub.add_parser("tune", help="best schedule for a model and solver, judged on held-out noise")
    add_model_arguments(p)
    p.add_argument("--solver", default="dpmpp_2m")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--methods", default="all", help="all, or comma-separated optimizers (heuristics always run): "
                                                    "ays, nonuniform, score_optimal, gits, oss, ays_shipped")
    p.add_argument("--budget-s", type=float, default=None, help="wall-clock budget in seconds for the whole run")
    p.add_argument("--metric", default="auto", choices=["auto", "nll", "ref", "fd", "swd"],
                   help="auto: nll for toys (guarded by swd, ref reported), fd for digits, else ref")
    p.add_argument("--n", type=int, default=None, help="held-out samples per batch (toys 2048, images 250)")
    p.add_argument("--batches", type=int, default=None, help="held-out seed batches (toys 5, images 4)")
    p.add_argument("--ref-steps", type=int, default=None, help="Heun steps of the reference (toys 500, images 50)")
    p.add_argument("--seed", type=int, default=0, help="first optimization seed")
    p.add_argument("--sigma-min", type=float, default=None, help="default: 0.002 (toys) or the model's")
    p.add_argument("--sigma-max", type=float, default=None, help="default: 80 (toys) or the model's")
    p.add_argument("--mean-only", action="store_true",
                   help="an optimizer wins with a lower mean alone (default: its paired 95 %% interval must be < 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, metavar="SCHEDULE.json")
    p.add_argument("--state", default=None, metavar="FILE", help="state file (default OUT.state.json)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="STATE",
                   help="continue from the state file (--state, or the one given here)")
    p.add_argument("--force", action="store_true",
                   help="start afresh over an existing state file (the old one is kept as STATE.bak)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(a) -> int:
    from tqdm import tqdm

    from core.device import resolve_device, set_threads
    from core.tune import Tuner

    set_threads(a.threads)
    out = Path(a.out)
    from core.optimizers.resume import check_writable, claim_state_path
    check_writable(out, "--out")
    state = Path(a.resume if isinstance(a.resume, str) else a.state or out.with_name(out.stem + ".state.json"))
    if a.resume:
        if not state.is_file():
            raise ScheduleLabError(f"--resume: no state at {state}; run without --resume to start")
    else:                                  # never clobber a state without being asked (issue 13)
        bak = claim_state_path(state, None, a.force)
        if bak is not None:
            print(f"--force: the old state {state} is kept as {bak}", file=sys.stderr)
            state.unlink()
    device = resolve_device(a.device)
    mc, points, loaded = _user_2d(a, device)
    if mc is None:
        mc = resolve_model(a, device, "tune", loaded=loaded)
    t = Tuner(mc.model, a.solver, a.steps, methods=a.methods, budget_s=a.budget_s, seed=a.seed,
              data=mc.data, metric=a.metric, state_path=state, spec=None if mc.toy else a.model, n=a.n,
              batches=a.batches, ref_steps=a.ref_steps, require_significant=not a.mean_only,
              sigma_min=mc.sigma_min, sigma_max=mc.sigma_max, points=points)
    res = None
    with tqdm(total=len(t.units()), desc="tune", unit="unit", disable=a.quiet or a.json, file=sys.stderr,
              dynamic_ncols=True) as bar:
        for ev in t.events():
            bar.n = ev.done_units
            bar.set_postfix_str(ev.message[:60])
            bar.refresh()
            if ev.done:
                res = ev.extra["result"]
    out.parent.mkdir(parents=True, exist_ok=True)
    res.write(out)
    summary = {"out": str(out), "state": str(state), **{k: v for k, v in res.to_dict().items() if k != "schedule"},
               "sigmas": list(res.schedule.sigmas)}
    for row in summary["table"]:
        row.pop("per_batch", None)
    emit(summary, a.json, _text(res, out))
    return 0


def _user_2d(a, device):
    """--model module.py:Class of a 2-D (1-d event) network: (ModelChoice, data points or None, model), its
    data the mixture given as --toy MIXTURE.json (nll, swd) and / or the points of --data (swd to them);
    (None, None, the loaded model or None) for every other model (resolve_model handles it)."""
    if a.model is None or a.model in ("exact", "mlp") or ":" not in a.model:
        return None, None, None
    from core.cli import parse_params
    from core.cli.model_args import ModelChoice
    from core.models.registry import load_model
    from core.models.user_model import ImageData, read_points
    model = load_model(a.model, device, weights=a.weights, params=parse_params(a.param))
    if len(model.event_shape) != 1:
        if a.toy is not None:
            raise ScheduleLabError(f"--toy is a 2-D mixture; {a.model} makes samples of shape "
                                   f"{tuple(model.event_shape)} (an image model: give --data images or nothing)")
        return None, None, model
    if a.label is not None or a.cfg is not None:
        raise ScheduleLabError("--label / --cfg: tune on your own 2-D network is unconditional")
    if a.toy is None and a.data is None:
        raise ScheduleLabError(f"{a.model} is a 2-D model: give its data, --data POINTS (.npy, .npz, .csv; swd) "
                               "and / or --toy MIXTURE.json (its exact density; nll)")
    from toy_data import get_toy
    mix = get_toy(a.toy) if a.toy is not None else None
    if mix is not None and mix.dim != model.event_shape[0]:
        raise ScheduleLabError(f"the mixture {a.toy} is {mix.dim}-D, the model's samples {model.event_shape[0]}-D")
    pts = None
    if a.data is not None:
        pts = ImageData(read_points(a.data, model.event_shape), str(a.data), False)
    print(f"data: {'the mixture ' + str(a.toy) + ' (nll)' if mix is not None else ''}"
          f"{' and ' if mix is not None and pts is not None else ''}"
          f"{'points ' + str(a.data) + ' (' + str(len(pts)) + ', swd)' if pts is not None else ''}", file=sys.stderr)
    lo, hi = model.sigma_min, model.sigma_max
    return ModelChoice(model, mix if mix is not None else pts, True, lo if a.sigma_min is None else a.sigma_min,
                       hi if a.sigma_max is None else a.sigma_max), (pts if mix is not None else None), model


def _text(res, out) -> str:
    m = res.metric
    lines = [f"wrote {out}: {res.winner} ({res.winner_kind}) - {res.reason}",
             f"| candidate | kind | {m} | 95% | diff vs {res.best_heuristic} | 95% | status |", "|---|---|---|---|---|---|---|"]

    def f(v):
        return "-" if v is None else f"{v:.4g}"
    for r in res.table:
        lines.append(f"| {r['name']} | {r['kind']} | {f(r.get(m))} | {f(r.get(m + '_ci'))} | {f(r.get('diff'))} | "
                     f"{f(r.get('diff_ci'))} | {r['status']}{': ' + r['reason'] if r['reason'] else ''} |")
    return "\n".join(lines)
