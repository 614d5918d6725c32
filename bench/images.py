"""Schedules on the shipped digits model: FD / KID / reference error per schedule x solver x NFE.

    python bench/images.py [--n 1000] [--seeds 1] [--nfe 5,6,8,10,15,20] [--quick] [--resume]

- heuristics: EDM (karras, rho 7), log-linear, time-uniform (VP), KL-optimal (c = 0.5);
- optimized schedules when their modules are in the tree (imported guardedly): AYS
  (core.optimizers.ays, optimized on the digits training split, its wall time reported),
  DM-NonUniform (core.optimizers.nonuniform, data-free, one optimization per NFE),
  score-optimal (core.optimizers.score_optimal: one Stein-density estimate, a constant-speed walk
  per NFE); --resume reuses the cells of an earlier run on the same weights, n and seeds;
- solvers DPM-Solver++(2M), SDE-DPM-Solver++(2M), Euler; NFE 9 is added for dpmpp_2m so the
  papers' headline "optimized at n >= best heuristic at 1.5 n" can be checked at n = 6 and 10;
- metrics (core.metrics.images) against the 450 held-out digits; the reference error is against
  Heun 50 steps (99 NFE) from the same noise, ODE solvers only;
- interactive timing: a 64-image grid at NFE 10 with dpmpp_2m, and its ratio to 10 bare calls
  of the same denoiser on the same batch (engine overhead), best of several repeats.
Writes bench/results/images.json and prints markdown tables.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import table, write  # noqa: E402
from bench.images_ays import add_arguments as add_ays_arguments  # noqa: E402
from core.metrics import images as im  # noqa: E402
from core.optional import optional  # noqa: E402
from core.models.digits import load_digits_model  # noqa: E402
from core.sampling import generate, initial_noise  # noqa: E402
from core.schedules import make_schedule  # noqa: E402
from core.solvers import get_solver  # noqa: E402

HEURISTICS = ("karras", "loglinear", "time_uniform", "kl_optimal")
# kl_optimal at the digits data std (the AYS theorem's c), not ComfyUI's default c = 1
DATA_SCALED = {"kl_optimal": {"c": 0.5}}
SOLVERS = ("dpmpp_2m", "dpmpp_2m_sde", "euler")
NFES = (5, 6, 8, 10, 15, 20)


def interactive_timing(model, repeat: int = 9) -> dict:
    """64 images, NFE 10, dpmpp_2m on karras: engine time vs 10 bare denoiser calls on the same batch.

    Interleaved repeats (both see the same load), best of `repeat`, in wall time and in process
    CPU time (less sensitive to other jobs on a shared machine; run with OMP_WAIT_POLICY=PASSIVE
    there so that waiting threads do not burn CPU)."""
    sched = make_schedule("karras", 10)
    x = initial_noise(model, 64, sched.sigma_max, seed=0)

    def bare():
        with torch.no_grad():
            for s in sched.sigmas[:10]:
                model(x, s)

    def engine():
        generate(model, sched, 64, "dpmpp_2m", seed=0)

    bare()                                                          # warm-up
    best = {"bare": [math.inf, math.inf], "engine": [math.inf, math.inf]}
    for _ in range(repeat):
        for name, fn in (("bare", bare), ("engine", engine)):
            w, c = time.perf_counter(), time.process_time()
            fn()
            w, c = time.perf_counter() - w, time.process_time() - c
            best[name] = [min(best[name][0], w), min(best[name][1], c)]
    (bw, bc), (ew, ec) = best["bare"], best["engine"]
    return {"grid_seconds": ew, "bare_calls_seconds": bw, "overhead_ratio": ew / bw,
            "grid_cpu_seconds": ec, "bare_calls_cpu_seconds": bc, "overhead_ratio_cpu": ec / bc,
            "threads": torch.get_num_threads(), "load_average": os.getloadavg()[0],
            "target_seconds": 1.0, "target_overhead": 1.05}




def optimized_schedules(model, nfes, a) -> tuple:
    """{name: {nfe: Schedule}} for every optimizer present, and {name: info (seconds, error)}."""
    out, info = {}, {}
    data = load_digits_train()
    ays = optional("core.optimizers.ays")
    if ays is not None and not a.no_ays:
        try:
            reused = _reused_ays(a, nfes)
            if reused is not None:
                info["ays"], out["ays"] = reused
            else:
                from bench.images_ays import run_ays
                opt, info["ays"] = run_ays(model, data, a)
                out["ays"] = {n: opt.result(n) for n in nfes}
                info["ays"]["schedules"] = {str(n): list(s.sigmas) for n, s in out["ays"].items()}
        except Exception as e:  # an optimizer still in development must not sink the bench
            info["ays"] = {"error": f"{type(e).__name__}: {e}"}
    nu = optional("core.optimizers.nonuniform")
    if nu is not None:
        try:
            from core.optimizers.base import run_to_end
            t0, sch = time.perf_counter(), {}
            for n in nfes:
                sch[n] = run_to_end(nu.NonUniformOptimizer(n, model.sigma_min, model.sigma_max, p=1.0))
            info["nonuniform"] = {"seconds": time.perf_counter() - t0}
            out["nonuniform"] = sch
        except Exception as e:
            info["nonuniform"] = {"error": f"{type(e).__name__}: {e}"}
    so = optional("core.optimizers.score_optimal")
    if so is not None and not a.no_score:
        try:
            from core.objectives.stein import constant_speed_schedule
            sampler = lambda k, g: data[torch.randint(0, data.shape[0], (k,), generator=g)]  # noqa: E731
            t0 = time.perf_counter()
            opt = so.ScoreOptimalOptimizer(model, sampler, 10, levels=a.score_levels, n=a.score_n,
                                           precision=a.score_precision, seed=0)
            for _ in opt.events():
                pass
            # the Stein density does not depend on n: one estimate, one constant-speed walk per NFE
            out["score_optimal"] = {n: constant_speed_schedule(opt.grid, opt.delta, n, model.sigma_min,
                                                               model.sigma_max) for n in nfes}
            info["score_optimal"] = {"seconds": time.perf_counter() - t0, "levels": a.score_levels,
                                     "n": a.score_n, "precision": a.score_precision}
        except Exception as e:
            info["score_optimal"] = {"error": f"{type(e).__name__}: {e}"}
    return out, info


AYS_KEYS = ("stages", "n_samples", "max_iters", "heldout", "heldout_n", "patience", "chunk")


def _reused_ays(a, nfes):
    """(info, {nfe: Schedule}) of an earlier AYS run in bench/results/OUT.json with the same budget
    (--ays-reuse), else None."""
    import json

    from bench._common import RESULTS
    from core.schedules import Schedule
    p = RESULTS / f"{a.out}.json"
    if not a.ays_reuse or not p.is_file():
        return None
    old = json.loads(p.read_text()).get("optimizers", {}).get("ays", {})
    want = {"stages": [int(v) for v in a.ays_stages.split(",")], "n_samples": a.ays_samples,
            "max_iters": [int(v) for v in a.ays_iters.split(",")],
            "heldout": "fd_train" if a.ays_heldout == "fd" else a.ays_heldout, "heldout_n": a.ays_heldout_n,
            "patience": a.ays_patience, "chunk": a.ays_chunk}
    sch = old.get("schedules", {})
    if any(old.get(k) != want[k] for k in AYS_KEYS) or any(str(n) not in sch for n in nfes):
        print("AYS: no earlier run with this budget to reuse; optimizing", file=sys.stderr)
        return None
    print("AYS: reusing the schedules of the earlier run (--ays-reuse)", file=sys.stderr)
    return {**old, "reused": True}, {n: Schedule(tuple(sch[str(n)]), name="ays") for n in nfes}


def load_digits_train():
    from core.data.digits import load_digits_split
    return load_digits_split().train_x


def run_cells(model, schedules: dict, solvers, nfes, n, seeds, progress=True, done=None) -> list:
    """One row per (schedule, solver, nfe) with fd, kid, ref_error (+ CIs), confidence.
    `done`: {(schedule, solver, sigmas): row} of earlier results to reuse instead of recomputing."""
    rows = []
    for name, by_nfe in schedules.items():
        for solver in solvers:
            spec = get_solver(solver)
            for nfe in nfes:
                if nfe not in by_nfe:
                    continue
                key = (name, spec.name, tuple(by_nfe[nfe].sigmas))
                if done and key in done:
                    rows.append(done[key])
                    continue
                t0 = time.perf_counter()
                r = im.evaluate_images(model, by_nfe[nfe], solver, n=n, seeds=seeds)
                row = {"schedule": name, "solver": spec.name, "nfe": r["nfe"], "n": n, "seeds": list(seeds),
                       "sigmas": r["sigmas"], "seconds": time.perf_counter() - t0}
                for k in ("fd", "kid", "ref_error", "confidence", "balance_max_dev"):
                    row[k], row[k + "_ci"] = r[k], r[k + "_ci"]
                row["fd_per_seed"] = [p["fd"] for p in r["per_seed"]]      # same noise per seed: pairable
                rows.append(row)
                if progress:
                    print(f"{name:13s} {spec.name:13s} NFE {r['nfe']:2d}  FD {r['fd']:.4f}  KID {r['kid']:.4f}"
                          f"  ref {r['ref_error'] if r['ref_error'] is not None else float('nan'):.4f}"
                          f"  {row['seconds']:.0f} s", file=sys.stderr, flush=True)
    return rows


def headline(rows, optimized, ns=(6, 10), solver="dpmpp_2m") -> list:
    """Optimized at n vs the best heuristic at round(1.5 n) (FD, dpmpp_2m)."""
    out = []
    fd = {(r["schedule"], r["solver"], r["nfe"]): r["fd"] for r in rows}
    for n in ns:
        m = round(1.5 * n)
        heur = [(fd[(h, solver, m)], h) for h in HEURISTICS if (h, solver, m) in fd]
        if not heur:
            continue
        best_fd, best = min(heur)
        for o in optimized:
            if (o, solver, n) in fd:
                row = {"optimized": o, "n": n, "fd_optimized": fd[(o, solver, n)], "heuristic": best,
                       "nfe_heuristic": m, "fd_heuristic": best_fd, "holds": fd[(o, solver, n)] <= best_fd}
                row.update(_paired(rows, (o, solver, n), (best, solver, m)))
                out.append(row)
    return out


def _paired(rows, a, b) -> dict:
    """FD(a) - FD(b) per seed (every seed has the same initial noise for both) and its 95 % t-interval,
    when both rows carry fd_per_seed over the same seeds."""
    from core.metrics.toy import mean_ci
    by = {(r["schedule"], r["solver"], r["nfe"]): r for r in rows}
    ra, rb = by.get(a, {}), by.get(b, {})
    if not (ra.get("fd_per_seed") and rb.get("fd_per_seed")) or ra.get("seeds") != rb.get("seeds"):
        return {}
    d = [x - y for x, y in zip(ra["fd_per_seed"], rb["fd_per_seed"])]
    m, ci = mean_ci(d)
    return {"fd_diff_paired": m, "fd_diff_paired_ci": ci}


def _earlier_rows(out: str, model) -> list:
    """Every row (`rows` and `earlier_rows`) of an earlier run of this bench on the same weights, each
    with its own n and seeds."""
    import json

    from bench._common import RESULTS
    p = RESULTS / f"{out}.json"
    if not p.is_file():
        return []
    old = json.loads(p.read_text())
    if old.get("model_fingerprint") != im.model_fingerprint(model):
        return []
    return [{"n": old.get("n"), "seeds": old.get("seeds"), **r} for r in old.get("rows", []) + old.get("earlier_rows", [])]


def _earlier_cells(old_rows: list, n: int, seeds) -> dict:
    """Earlier rows with the same n and seeds, keyed by (schedule, solver, sigmas)."""
    return {(r["schedule"], r["solver"], tuple(r["sigmas"])): r for r in old_rows
            if r["n"] == n and r["seeds"] == list(seeds)}


def _kept_rows(old_rows: list, rows: list, schedules: dict) -> list:
    """Earlier rows of cells this run did not measure with the same n and seeds (other solvers, NFEs, n
    or seeds), minus those of a schedule whose sigmas changed (e.g. a re-optimized AYS): they stay in
    the JSON as earlier_rows, each with its own n and seeds."""
    def key(r):
        return r["schedule"], r["solver"], r["nfe"], r["n"], tuple(r["seeds"])
    done = {key(r) for r in rows}
    stale = {name for name, by_nfe in schedules.items() for r in old_rows
             if r["schedule"] == name and r["nfe"] in by_nfe and list(by_nfe[r["nfe"]].sigmas) != r["sigmas"]}
    seen, kept = set(), []
    for r in old_rows:
        k = key(r)
        if k not in done and k not in seen and r["schedule"] not in stale:
            seen.add(k)
            kept.append(r)
    return kept


def ays_tables(info: dict) -> str:
    """Per-stage timing and KLUB start/end tables of an AYS info dict (bench.images_ays.run_ays)."""
    if "per_stage" not in info:
        return f"ays: {info}"
    t = table(info["per_stage"], ["stage", "steps", "sweeps", "wall_s", "cpu_s"],
              f"AYS on digits: {info['seconds']:.0f} s wall, {info['cpu_seconds']:.0f} s CPU "
              f"({info['threads']} thread(s), load {info['load_average'][0]:.1f} -> {info['load_average'][1]:.1f}; "
              f"target 600 s), {info['n_samples']} samples/sweep, early stop kept sweep {info['early_stopped_at']}")
    k = table(info["klub"], ["stage", "steps", "n", "klub_start", "klub_start_se", "klub_end", "klub_end_se",
                             "klub_end_minus_start", "klub_end_minus_start_se", "klub_loglinear", "klub_loglinear_se"],
              "AYS KLUB per stage: start vs end schedule (fresh common samples, paired difference)")
    return t + "\n\n" + k


def _ays_only(a):
    import json

    from bench._common import RESULTS
    from bench.images_ays import run_ays
    opt, info = run_ays(load_digits_model(), load_digits_train(), a)
    nfes = tuple(int(v) for v in a.nfe.split(","))
    info["schedules"] = {str(n): list(opt.result(n).sigmas) for n in nfes}
    print(ays_tables(info))
    p = RESULTS / f"{a.out}.json"
    if p.is_file():
        payload = json.loads(p.read_text())
        payload.setdefault("optimizers", {})["ays"] = info
        p.write_text(json.dumps(payload, indent=1, default=float))
        print("updated", p)


def _earlier_timing(out: str):
    import json

    from bench._common import RESULTS
    p = RESULTS / f"{out}.json"
    return json.loads(p.read_text()).get("interactive") if p.is_file() else None


def _timing_only(out: str):
    import json

    from bench._common import RESULTS
    timing = interactive_timing(load_digits_model())
    print(table([timing], ["grid_seconds", "bare_calls_seconds", "overhead_ratio", "grid_cpu_seconds",
                           "bare_calls_cpu_seconds", "overhead_ratio_cpu", "load_average"],
                "Interactive: 64 images, NFE 10, dpmpp_2m"))
    p = RESULTS / f"{out}.json"
    if p.is_file():
        payload = json.loads(p.read_text())
        payload["interactive"] = timing
        p.write_text(json.dumps(payload, indent=1, default=float))
        print("updated", p)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="samples per cell and seed")
    ap.add_argument("--seeds", type=int, default=1, help="seeds per cell (CIs need >= 2)")
    ap.add_argument("--nfe", default=",".join(map(str, NFES)))
    ap.add_argument("--solvers", default=",".join(SOLVERS))
    ap.add_argument("--schedules", default=",".join(HEURISTICS))
    ap.add_argument("--no-ays", action="store_true", help="skip the AYS optimization")
    add_ays_arguments(ap)
    ap.add_argument("--ays-reuse", action="store_true",
                    help="reuse the AYS schedules of bench/results/OUT.json when its AYS budget is the same")
    ap.add_argument("--ays-only", action="store_true",
                    help="only run AYS (+ its timing and KLUB table) and update it in bench/results/OUT.json")
    ap.add_argument("--no-score", action="store_true", help="skip the score-optimal schedule")
    ap.add_argument("--score-levels", type=int, default=100, help="Stein density grid size")
    ap.add_argument("--score-n", type=int, default=128, help="data samples per level")
    ap.add_argument("--score-precision", default="model", choices=["model", "float64"])
    ap.add_argument("--resume", action="store_true",
                    help="reuse cells of an earlier bench/results/OUT.json with the same model, n, seeds, sigmas")
    ap.add_argument("--quick", action="store_true", help="n=200, NFE 5,10, dpmpp_2m only, no AYS")
    ap.add_argument("--timing-only", action="store_true",
                    help="only re-measure the interactive timing and update it in bench/results/OUT.json")
    ap.add_argument("--no-timing", action="store_true",
                    help="keep the interactive timing of bench/results/OUT.json (measured on an idle machine)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine)")
    ap.add_argument("--out", default="images")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.timing_only:
        return _timing_only(a.out)
    if a.ays_only:
        return _ays_only(a)
    if a.quick:
        a.n, a.nfe, a.solvers, a.no_ays, a.no_score = 200, "5,10", "dpmpp_2m", True, True
    nfes = tuple(int(v) for v in a.nfe.split(","))
    solvers = tuple(a.solvers.split(","))
    seeds = tuple(range(a.seeds))
    t_all = time.perf_counter()
    model = load_digits_model()
    old_rows = _earlier_rows(a.out, model) if a.resume else []
    done = _earlier_cells(old_rows, a.n, seeds)
    timing = _earlier_timing(a.out) if a.no_timing else None
    if timing is None:
        timing = interactive_timing(model)
    print(f"64-image grid, NFE 10, dpmpp_2m: {timing['grid_seconds']:.3f} s, overhead x{timing['overhead_ratio']:.3f} "
          f"(CPU time: x{timing['overhead_ratio_cpu']:.3f})", file=sys.stderr)
    heur_nfes = sorted(set(nfes) | ({9} if "dpmpp_2m" in solvers and {6, 10} <= set(nfes) else set()))
    schedules = {h: {k: make_schedule(h, k, **DATA_SCALED.get(h, {})) for k in heur_nfes} for h in a.schedules.split(",")}
    opt, opt_info = optimized_schedules(model, nfes, a)
    # headline cells (optimized at 6 / 10, heuristics at 9 / 15) are recomputed when an earlier row lacks
    # its per-seed FDs, so that the headline can pair them seed by seed
    need = {(o, 6) for o in opt} | {(o, 10) for o in opt} | {(h, k) for h in schedules for k in (9, 15)}
    done = {k: r for k, r in done.items() if r.get("fd_per_seed") or r["solver"] != "dpmpp_2m"
            or (r["schedule"], r["nfe"]) not in need}
    rows = run_cells(model, schedules, ("dpmpp_2m",), [9], a.n, seeds, done=done) if 9 in heur_nfes else []
    for name in schedules:
        schedules[name].pop(9, None)
    rows += run_cells(model, {**schedules, **opt}, solvers, nfes, a.n, seeds, done=done)
    kept = _kept_rows(old_rows, rows, {**schedules, **opt})
    head = headline(rows, list(opt))
    for metric in ("fd", "kid", "ref_error"):
        trows = []
        for (s, sol) in dict.fromkeys((r["schedule"], r["solver"]) for r in rows):
            cell = {r["nfe"]: r[metric] for r in rows if r["schedule"] == s and r["solver"] == sol}
            trows.append({"schedule": s, "solver": sol, **{f"NFE {k}": (math.nan if v is None else v)
                                                            for k, v in sorted(cell.items())}})
        cols = ["schedule", "solver"] + [f"NFE {k}" for k in sorted({r["nfe"] for r in rows})]
        print(table(trows, cols, f"{metric} (digits, n={a.n} per cell, {len(seeds)} seed(s))"))
        print()
    print(table([timing], ["grid_seconds", "bare_calls_seconds", "overhead_ratio", "grid_cpu_seconds",
                           "bare_calls_cpu_seconds", "overhead_ratio_cpu", "load_average"],
                "Interactive: 64 images, NFE 10, dpmpp_2m"))
    print()
    if head:
        print(table(head, ["optimized", "n", "fd_optimized", "heuristic", "nfe_heuristic", "fd_heuristic", "holds",
                           "fd_diff_paired", "fd_diff_paired_ci"],
                    "Headline: optimized at n vs best heuristic at 1.5 n (FD, dpmpp_2m)"))
    for k, v in opt_info.items():
        print(ays_tables(v) if k == "ays" else f"{k}: {v}")
    real = im.frechet_distance(im.real_features("train")[1], im.real_features("test")[1])
    payload = {"n": a.n, "seeds": list(seeds), "nfes": list(nfes), "solvers": list(solvers),
               "model_fingerprint": im.model_fingerprint(model), "fd_real_train_vs_heldout": real,
               "interactive": timing, "optimizers": opt_info, "headline": head, "rows": rows,
               "earlier_rows": kept,
               "seconds_total": time.perf_counter() - t_all, "load_average_end": os.getloadavg()[0]}
    print("wrote", write(a.out, payload))


if __name__ == "__main__":
    main()
