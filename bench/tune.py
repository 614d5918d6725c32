"""`tune` on the toys and digits: every method x solver x NFE, judged on held-out noise.

    python bench/tune.py [--toys grid8x8,ring8,moons] [--kinds exact,mlp] [--digits] [--solvers ...]
                         [--nfe 4,6,8,10] [--methods all] [--quick] [--out tune]

For each model (toy x exact mixture / shipped MLP, and digits with --digits) and solver, and each NFE
(steps = the solver's steps for that NFE), one core.tune.Tuner run: every heuristic and optimizer,
scored on the same held-out noise batches (toys: exact NLL, with the distance to a 500-step Heun
reference from the same noise as the collapse guard; digits: FD to the test split).  Reports

1. per run: the best heuristic, the winner, the paired difference with its 95 % interval, and
   whether an optimizer beat the heuristic (tune never returns worse: else it returns the heuristic);
2. per method: its metric +- 95 % and its optimization time (seconds, this machine, shared CPU);
3. steps to match: the smallest NFE at which each method's mean is <= the best heuristic's at
   NFE 10 and at NFE 15 (heuristics only at 15), on the same noise.

Solver-independent schedules (heuristics, DM-NonUniform, score-optimal) are optimized once per model
and NFE and reused across solvers (their time is reported once).  Writes bench/results/OUT.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

from bench._common import table, write  # noqa: E402
from core.solvers import get_solver  # noqa: E402
from core.tune import Tuner  # noqa: E402


def models(toys, kinds, digits):
    from core.models import load_toy_model
    from toy_data import get_toy
    for t in [t for t in toys if t]:
        for k in [k for k in kinds if k]:
            yield f"{t}/{k}", load_toy_model(t, k), get_toy(t), None
    if digits:
        from core.models.registry import load_model
        yield "digits", load_model("digits"), None, "digits"


def fmt(m, ci, status="ok"):
    if status != "ok":
        return "-"
    if m is None:
        return "diverged"
    return f"{m:.4g}" + ("" if ci is None else f" ± {ci:.2g}")


def run(args):
    torch.set_num_threads(args.threads)
    rows, runs, match = [], [], []
    nfes = [int(v) for v in args.nfe.split(",")]
    for label, model, mix, spec in models(args.toys.split(","), args.kinds.split(","), args.digits):
        cache, refs = {}, {}
        kw = dict(n=args.n, batches=args.batches) if mix is not None else dict(n=args.image_n, batches=args.batches)
        for solver in args.solvers.split(","):
            sv = get_solver(solver)
            per_nfe = {}
            for nfe in nfes + [15]:
                steps = max([s for s in range(1, nfe + 1) if sv.nfe(s) <= nfe] or [0])   # Heun: NFE 2n - 1
                if steps < 2:
                    continue
                methods = args.methods if nfe != 15 or 15 in nfes else "heuristics"
                t0 = time.perf_counter()
                tn = Tuner(model, solver, steps, methods=methods, data=mix, spec=spec, cache=cache, refs=refs, **kw)
                res = None
                for ev in tn.events():
                    if args.verbose:
                        print("   ", ev.message, flush=True)
                    if ev.done:
                        res = ev.extra["result"]
                wall = time.perf_counter() - t0
                m = res.metric
                per_nfe[nfe] = {r["name"]: r for r in res.table}
                if nfe == 15 and 15 not in nfes:
                    continue
                bh = per_nfe[nfe][res.best_heuristic]
                win = per_nfe[nfe][res.winner]
                runs.append({"model": label, "solver": solver, "NFE": nfe, "steps": steps, "calls": sv.nfe(steps),
                             "metric": m,
                             "best heuristic": f"{res.best_heuristic} {fmt(bh.get(m), bh.get(m + '_ci'))}",
                             "winner": res.winner, "winner value": fmt(win.get(m), win.get(m + "_ci")),
                             "diff": fmt(win.get("diff"), win.get("diff_ci")),
                             "beats heuristic": not res.from_heuristic, "wall s": round(wall, 1)})
                for r in res.table:
                    rows.append({"model": label, "solver": solver, "NFE": nfe, "method": r["name"], "kind": r["kind"],
                                 "status": r["status"], "value": r.get(m), "ci": r.get(m + "_ci"),
                                 "diff": r.get("diff"), "diff_ci": r.get("diff_ci"), "ref": r.get("ref"),
                                 "ref_ci": r.get("ref_ci"), "swd": r.get("swd"), "swd_diff": r.get("swd_diff"),
                                 "swd_diff_ci": r.get("swd_diff_ci"), "opt_s": r["seconds"], "wins": r.get("wins", False),
                                 "reason": r["reason"] or r.get("why", ""), "metric": m})
                print(f"{label} {solver} NFE {nfe}: {res.reason} ({wall:.1f} s)", flush=True)
                _save(args, runs, rows, match)                     # a killed bench keeps every finished run
            match += steps_to_match(label, solver, per_nfe, nfes, m)
            _save(args, runs, rows, match)
    return runs, rows, match


def steps_to_match(label, solver, per_nfe, nfes, metric):
    """Smallest NFE in `nfes` where a method's mean <= the best heuristic's at NFE 10 and 15."""
    out = []
    targets = {}
    for t in (10, 15):
        if t in per_nfe:
            vals = [r.get(metric) for r in per_nfe[t].values() if r["kind"] == "heuristic" and r.get(metric) is not None]
            targets[t] = min(vals) if vals else None
    names = {n for nfe in nfes if nfe in per_nfe for n, r in per_nfe[nfe].items() if r["status"] == "ok"}
    for n in sorted(names):
        row = {"model": label, "solver": solver, "method": n}
        for t, tv in targets.items():
            hit = [nfe for nfe in nfes if nfe in per_nfe and per_nfe[nfe].get(n, {}).get(metric) is not None
                   and tv is not None and per_nfe[nfe][n][metric] <= tv + 1e-9 * abs(tv)]
            row[f"match best heuristic @{t}"] = min(hit) if hit else f">{max(nfes)}"
        out.append(row)
    return out


def _save(args, runs, rows, match):
    old = {"runs": [], "methods": [], "steps_to_match": [], "settings": []}
    path = Path(__file__).parent / "results" / f"{args.out}.json"
    if args.append and path.is_file() and getattr(args, "_old", None) is None:
        args._old = {k: v for k, v in json.loads(path.read_text()).items() if k in old}
    old = getattr(args, "_old", None) or old
    settings = old["settings"] if isinstance(old["settings"], list) else [old["settings"]]
    write(args.out, {"settings": settings + [{k: v for k, v in vars(args).items() if k != "_old"}],
                     "runs": old["runs"] + runs, "methods": old["methods"] + rows,
                     "steps_to_match": old["steps_to_match"] + match})


def print_tables(runs, rows, match):
    print(table(runs, list(runs[0]) if runs else [], "tune: winner vs best heuristic (held-out, paired 95 %)"))
    mrows = [{**r, "value": fmt(r["value"], r["ci"], r["status"]), "diff": fmt(r["diff"], r["diff_ci"], r["status"]),
              "ref": fmt(r.get("ref"), r.get("ref_ci"), r["status"]), "opt_s": round(r["opt_s"], 2)}
             for r in rows if r["kind"] == "optimizer" and r["status"] == "ok"]
    print(table(mrows, ["model", "solver", "NFE", "method", "value", "diff", "ref", "opt_s", "wins", "reason"],
                "optimizers: held-out metric, paired difference to the best heuristic, distance to the reference"))
    print(table(match, list(match[0]) if match else [], "steps to match (NFE)"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--toys", default="grid8x8,ring8,moons")
    p.add_argument("--kinds", default="exact,mlp")
    p.add_argument("--digits", action="store_true", help="also the shipped digits model (slow on CPU)")
    p.add_argument("--solvers", default="dpmpp_2m,euler,heun,dpmpp_3m")
    p.add_argument("--nfe", default="4,6,8,10")
    p.add_argument("--methods", default="all")
    p.add_argument("--n", type=int, default=1024, help="toy samples per held-out batch")
    p.add_argument("--image-n", type=int, default=250, help="digits samples per held-out batch")
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="n 1024, 3 batches, dpmpp_2m, NFE 6,10")
    p.add_argument("--out", default="tune")
    p.add_argument("--append", action="store_true", help="add to bench/results/OUT.json instead of replacing it")
    p.add_argument("--verbose", action="store_true", help="print every unit")
    p.add_argument("--merge", default=None, help="comma-separated result names to merge into OUT (no run)")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.batches, args.solvers, args.nfe = 1024, 3, "dpmpp_2m", "6,10"
    if args.merge:
        runs, rows, match, settings = [], [], [], []
        for name in args.merge.split(","):
            d = json.loads((Path(__file__).parent / "results" / f"{name}.json").read_text())
            runs, rows, match = runs + d["runs"], rows + d["methods"], match + d["steps_to_match"]
            settings += d["settings"] if isinstance(d["settings"], list) else [d["settings"]]
        write(args.out, {"settings": settings, "merged_from": args.merge.split(","), "runs": runs, "methods": rows,
                         "steps_to_match": match})
    else:
        runs, rows, match = run(args)
    print_tables(runs, rows, match)
    print("wrote", Path(__file__).parent / "results" / f"{args.out}.json")


if __name__ == "__main__":
    main()
