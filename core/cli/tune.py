"""`python -m core tune`: the best schedule for a model and solver, proven on held-out noise.

    python -m core tune --toy grid8x8 --solver dpmpp_2m --steps 10 --out tuned.json
    python -m core tune --toy moons --model mlp --solver heun --steps 5 --methods ays,nonuniform --out t.json
    python -m core tune --model digits --solver dpmpp_2m --steps 10 --budget-s 600 --out digits10.json
    python -m core tune ... --out t.json --resume            # continue a killed run from its state

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
    p.add_argument("--resume", action="store_true", help="continue from the state file (else it is started afresh)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(a) -> int:
    import torch
    from tqdm import tqdm

    from core.device import resolve_device
    from core.tune import Tuner

    if a.threads is not None:
        if a.threads < 1:
            raise ScheduleLabError(f"--threads must be >= 1; got {a.threads}")
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    state = Path(a.state) if a.state else out.with_name(out.stem + ".state.json")
    if a.resume and not state.is_file():
        raise ScheduleLabError(f"--resume: no state at {state}; run without --resume to start")
    if not a.resume and state.exists():
        state.unlink()
    mc = resolve_model(a, resolve_device(a.device), "tune")
    t = Tuner(mc.model, a.solver, a.steps, methods=a.methods, budget_s=a.budget_s, seed=a.seed,
              data=mc.data, metric=a.metric, state_path=state, spec=None if mc.toy else a.model, n=a.n,
              batches=a.batches, ref_steps=a.ref_steps, require_significant=not a.mean_only,
              sigma_min=mc.sigma_min, sigma_max=mc.sigma_max)
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
