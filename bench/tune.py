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
import os
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
    nfes = [int(v) for v in args.nfe.split(",") if v]
    extra = [int(v) for v in args.heuristic_nfe.split(",") if v and int(v) not in nfes]
    for label, model, mix, spec in models(args.toys.split(","), args.kinds.split(","), args.digits):
        cache, refs = {}, {}
        kw = dict(n=args.n, batches=args.batches) if mix is not None else dict(n=args.image_n, batches=args.batches)
        for solver in args.solvers.split(","):
            sv = get_solver(solver)
            for nfe in sorted(nfes + extra):
                steps = max([s for s in range(1, nfe + 1) if sv.nfe(s) <= nfe] or [0])   # Heun: NFE 2n - 1
                if steps < 2:
                    continue
                methods = args.methods if nfe in nfes else "heuristics"
                t0, c0 = time.perf_counter(), time.process_time()
                tn = Tuner(model, solver, steps, methods=methods, data=mix, spec=spec, cache=cache, refs=refs, **kw)
                if args.part:                                      # only these candidates' units, into a state
                    run_part(args, tn, label, solver, nfe)
                    continue
                missing = []
                if args.state_dir:                                 # the parts' states, merged: Tuner decides
                    missing = collect(args, tn, label, solver, nfe)
                    if not any(n in tn.state["scores"] for n in tn.names if tn.table[n].kind == "heuristic"):
                        print(f"{label} {solver} NFE {nfe}: no part has scored a heuristic yet; skipped", flush=True)
                        continue
                res = tn.result() if missing else None             # an unfinished run: what the parts have
                for ev in ([] if missing else tn.events()):
                    if args.verbose:
                        print("   ", ev.message, f"[{time.perf_counter() - t0:.0f} s wall, "
                              f"{time.process_time() - c0:.0f} s cpu]", flush=True)
                    if ev.done:
                        res = ev.extra["result"]
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                m = res.metric
                per = {r["name"]: r for r in res.table}
                bh, win = per[res.best_heuristic], per[res.winner]
                runs.append({"model": label, "solver": solver, "NFE": nfe, "steps": steps, "calls": sv.nfe(steps),
                             "metric": m, "methods": methods,
                             "best heuristic": f"{res.best_heuristic} {fmt(bh.get(m), bh.get(m + '_ci'))}",
                             "winner": res.winner, "winner value": fmt(win.get(m), win.get(m + "_ci")),
                             "diff": fmt(win.get("diff"), win.get("diff_ci")),
                             "beats heuristic": not res.from_heuristic, "wall s": round(wall, 1),
                             "cpu s": round(cpu, 1), "load": round(os.getloadavg()[0], 1),
                             "units not run": ", ".join(missing) or "-"})
                for r in res.table:
                    unscored = r["status"] == "ok" and r["name"] not in tn.state["scores"]   # an unfinished part
                    rows.append({"model": label, "solver": solver, "NFE": nfe, "method": r["name"], "kind": r["kind"],
                                 "status": "not scored" if unscored else r["status"], "value": r.get(m), "ci": r.get(m + "_ci"),
                                 "diff": r.get("diff"), "diff_ci": r.get("diff_ci"), "ref": r.get("ref"),
                                 "ref_ci": r.get("ref_ci"), "ref_diff": r.get("ref_diff"),
                                 "ref_diff_ci": r.get("ref_diff_ci"), "swd": r.get("swd"), "swd_diff": r.get("swd_diff"),
                                 "swd_diff_ci": r.get("swd_diff_ci"), "opt_s": r["seconds"],
                                 "opt_cpu_s": r.get("cpu_seconds"), "wins": r.get("wins", False),
                                 "reason": r["reason"] or r.get("why", ""), "metric": m,
                                 "batches": (r.get("per_batch") or {}).get(m)})
                print(f"{label} {solver} NFE {nfe}: {res.reason} ({wall:.1f} s wall, {cpu:.1f} s cpu)", flush=True)
                _save(args, runs, rows, match)                     # a killed bench keeps every finished run
            match += steps_to_match(rows, label, solver)
            _save(args, runs, rows, match)
    return runs, rows, match


def _part_path(args, label, solver, nfe, names):
    return Path(args.state_dir) / f"{label.replace('/', '-')}_{solver}_{nfe}_{'+'.join(names)}.json"


def run_part(args, tn, label, solver, nfe):
    """--part A,B,...: run only those candidates' units of this model x solver x NFE and write their state
    (--state-dir).  Several parts run as separate processes; --state-dir without --part then merges
    them (`collect`).  Every method draws its seeds from --seed alone, so the parts together are the
    same run as one process, only spread over the CPUs."""
    names = [n for n in args.part.split(",") if n in tn.names]
    if not names:
        return
    tn.state_path = _part_path(args, label, solver, nfe, names)
    if tn.state_path.is_file():
        tn.load_state(json.loads(tn.state_path.read_text()))
    t0, c0 = time.perf_counter(), time.process_time()
    for kind, name in tn.units():
        if name not in names or tn._unit_done(kind, name):
            continue
        msg = tn._optimize(name) if kind == "optimize" else tn._score(name)
        tn._check_seeds()
        tn._save()
        print(f"{label} {solver} NFE {nfe} part: {msg} [{time.perf_counter() - t0:.0f} s wall, "
              f"{time.process_time() - c0:.0f} s cpu, load {os.getloadavg()[0]:.1f}]", flush=True)


def collect(args, tn, label, solver, nfe):
    """Merge the parts' states of this model x solver x NFE into tn; returns the units no part finished
    (then the run's table holds what the parts have, and says which units are missing)."""
    st = tn._fresh()
    for f in sorted(Path(args.state_dir).glob(f"{label.replace('/', '-')}_{solver}_{nfe}_*.json")):
        part = json.loads(f.read_text())
        for k in ("candidates", "scores"):
            st[k].update({n: v for n, v in part[k].items() if n in tn.names})
        st["opt_seeds"] = sorted(set(st["opt_seeds"]) | set(part["opt_seeds"]))
        st["score_s"] += part["score_s"]
    tn.load_state(st)
    return [f"{k}:{n}" for k, n in tn.units() if not tn._unit_done(k, n)]


def _by_nfe(rows, label, solver):
    """{NFE: {method: row}} of one model and solver (scored rows only)."""
    out = {}
    for r in rows:
        if r["model"] == label and r["solver"] == solver and r["status"] == "ok" and r["value"] is not None:
            out.setdefault(r["NFE"], {})[r["method"]] = r
    return out


def steps_to_match(rows, label, solver, targets=(10, 15)):
    """Smallest measured NFE where a method's mean <= the best heuristic's mean at NFE 10 and at 15."""
    per_nfe = _by_nfe(rows, label, solver)
    tv = {t: min((r["value"] for r in per_nfe[t].values() if r["kind"] == "heuristic"), default=None)
          for t in targets if t in per_nfe}
    names = sorted({n for p in per_nfe.values() for n in p})
    out = []
    for n in names:
        mine = sorted(nfe for nfe, p in per_nfe.items() if n in p)
        row = {"model": label, "solver": solver, "method": n, "NFE measured": ",".join(map(str, mine))}
        for t, v in tv.items():
            hit = [nfe for nfe in mine if v is not None and per_nfe[nfe][n]["value"] <= v + 1e-9 * abs(v)]
            row[f"match best heuristic @{t}"] = min(hit) if hit else f">{max(mine)}"
        out.append(row)
    return out


def one_and_a_half(rows, label, solver):
    """Each method at n against the best heuristic at round(1.5 n), on the same held-out batches: mean
    values, the paired per-batch difference with its 95 % interval, and the verdict."""
    from core.tune import paired
    per_nfe = _by_nfe(rows, label, solver)
    out = []
    for n in sorted(per_nfe):
        big = round(1.5 * n)
        if big not in per_nfe:
            continue
        heur = [r for r in per_nfe[big].values() if r["kind"] == "heuristic"]
        if not heur:
            continue
        bh = min(heur, key=lambda r: r["value"])
        for name, r in sorted(per_nfe[n].items(), key=lambda kv: kv[1]["value"]):
            d = (paired(r["batches"], bh["batches"]) if r.get("batches") and bh.get("batches")
                 and len(r["batches"]) == len(bh["batches"]) else {"mean": None, "ci": None})
            verdict = ("as good (mean <=)" if r["value"] <= bh["value"] else
                       "worse, not significantly" if d["ci"] is None or d["mean"] - d["ci"] <= 0 else
                       "significantly worse")
            out.append({"model": label, "solver": solver, "n": n, "method": name, "kind": r["kind"],
                        "value @n": fmt(r["value"], r["ci"]), "1.5n": big,
                        "best heuristic @1.5n": f"{bh['method']} {fmt(bh['value'], bh['ci'])}",
                        "paired diff": fmt(d["mean"], d["ci"]), "verdict": verdict})
    return out


def per_group(table, rows) -> list:
    """table(rows, model, solver) for each (model, solver) of the rows, in order, concatenated."""
    return [o for g in sorted({(r["model"], r["solver"]) for r in rows}) for o in table(rows, *g)]


def merge_cells(runs, rows):
    """Runs and method rows of several result files, one per cell: a method row measured later replaces
    an earlier one of the same model, solver, NFE and method unless it was not run; a cell's run summary
    is the one with the most methods, its "units not run" recounted from the merged rows.  A method
    that beats the best heuristic (same heuristics, same noise) with a lower value than the kept
    summary's winner is an error: that cell must be rerun whole."""
    key = lambda r: (r["model"], r["solver"], r["NFE"])  # noqa: E731
    by = {}
    for r in rows:
        k = (*key(r), r["method"])
        if k not in by or r["status"] != "not run":
            by[k] = r
    out_rows = list(by.values())
    kept = {}
    for r in runs:
        full = r.get("methods", "all") == "all"
        if key(r) not in kept or (full and kept[key(r)].get("methods", "all") != "all"):
            kept[key(r)] = r
    for k, r in kept.items():
        cell = [m for m in out_rows if key(m) == k]
        missing = [m["method"] for m in cell if m["status"] == "not run"]
        r["units not run"] = ", ".join(missing) or "-"
        win = next((m["value"] for m in cell if m["method"] == r["winner"]), None)
        late = [m["method"] for m in cell if m.get("wins") and win is not None and m["value"] < win]
        if late:
            raise SystemExit(f"{k}: {late} beat the best heuristic in a later part, the summary names "
                             f"{r['winner']}: rerun the cell whole")
    return list(kept.values()), out_rows


def _save(args, runs, rows, match):
    if args.part:
        return                                     # a part writes only its state (run_part)
    old = {"runs": [], "methods": [], "steps_to_match": [], "settings": []}
    path = Path(__file__).parent / "results" / f"{args.out}.json"
    if args.append and path.is_file() and getattr(args, "_old", None) is None:
        args._old = {k: v for k, v in json.loads(path.read_text()).items() if k in old}
    old = getattr(args, "_old", None) or old
    settings = old["settings"] if isinstance(old["settings"], list) else [old["settings"]]
    write(args.out, {"settings": settings + [{k: v for k, v in vars(args).items() if k != "_old"}],
                     "runs": old["runs"] + runs, "methods": old["methods"] + rows,
                     "steps_to_match": old["steps_to_match"] + match,
                     "one_and_a_half": per_group(one_and_a_half, rows)})


def print_tables(runs, rows, match, models_=None):
    if models_ is not None:
        runs, match = [r for r in runs if r["model"] in models_], [m for m in match if m["model"] in models_]
    print(table(runs, list(runs[0]) if runs else [], "tune: winner vs best heuristic (held-out, paired 95 %)"))
    mrows = [{**r, "value": fmt(r["value"], r["ci"], r["status"]), "diff": fmt(r["diff"], r["diff_ci"], r["status"]),
              "ref": fmt(r.get("ref"), r.get("ref_ci"), r["status"]),
              "ref diff": fmt(r.get("ref_diff"), r.get("ref_diff_ci"), r["status"]), "opt_s": round(r["opt_s"], 2),
              "opt_cpu_s": "-" if r.get("opt_cpu_s") is None else round(r["opt_cpu_s"], 1)}
             for r in rows if r["kind"] == "optimizer" and r["status"] == "ok"
             and (models_ is None or r["model"] in models_)]
    print(table(mrows, ["model", "solver", "NFE", "method", "value", "diff", "ref", "ref diff", "opt_s", "opt_cpu_s",
                        "wins", "reason"],
                "optimizers: held-out metric, paired difference to the best heuristic, distance to the reference"))
    print(table(match, list(match[0]) if match else [], "steps to match (NFE)"))
    oh = per_group(one_and_a_half, [r for r in rows if models_ is None or r["model"] in models_])
    if oh:
        print(table(oh, list(oh[0]), "method at n steps vs the best heuristic at 1.5 n (same held-out noise)"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--toys", default="grid8x8,ring8,moons")
    p.add_argument("--kinds", default="exact,mlp")
    p.add_argument("--digits", action="store_true", help="also the shipped digits model (slow on CPU)")
    p.add_argument("--solvers", default="dpmpp_2m,euler,heun,dpmpp_3m")
    p.add_argument("--nfe", default="4,6,8,10")
    p.add_argument("--heuristic-nfe", default="15", help="NFEs where only the heuristics run (steps to match "
                                                           "@15; 9 for the 1.5 n comparison at n = 6)")
    p.add_argument("--methods", default="all")
    p.add_argument("--n", type=int, default=1024, help="toy samples per held-out batch")
    p.add_argument("--image-n", type=int, default=250, help="digits samples per held-out batch")
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="n 1024, 3 batches, dpmpp_2m, NFE 6,10")
    p.add_argument("--out", default="tune")
    p.add_argument("--append", action="store_true", help="add to bench/results/OUT.json instead of replacing it")
    p.add_argument("--part", default=None, help="comma-separated candidates: run only their units (with --state-dir)")
    p.add_argument("--state-dir", default=None, help="where --part writes its state; without --part: merge them")
    p.add_argument("--show", default=None, help="comma-separated models to print (default: all)")
    p.add_argument("--verbose", action="store_true", help="print every unit")
    p.add_argument("--merge", default=None, help="comma-separated result names to merge into OUT (no run)")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.batches, args.solvers, args.nfe = 1024, 3, "dpmpp_2m", "6,10"
    if args.merge:
        runs, rows, settings, sources = [], [], [], []
        for name in args.merge.split(","):
            d = json.loads((Path(__file__).parent / "results" / f"{name}.json").read_text())
            runs, rows, sources = runs + d["runs"], rows + d["methods"], sources + d.get("merged_from", [name])
            settings += d["settings"] if isinstance(d["settings"], list) else [d["settings"]]
        runs, rows = merge_cells(runs, rows)
        match = per_group(steps_to_match, rows)
        write(args.out, {"settings": settings, "merged_from": sources, "runs": runs, "methods": rows,
                         "steps_to_match": match,
                         "one_and_a_half": per_group(one_and_a_half, rows)})
    else:
        runs, rows, match = run(args)
        if args.part:
            return
    print_tables(runs, rows, match, args.show.split(",") if args.show else None)
    print("wrote", Path(__file__).parent / "results" / f"{args.out}.json")


if __name__ == "__main__":
    main()
