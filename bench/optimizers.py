"""DM-NonUniform and score-optimal: optimizer speed, and the schedules' quality on grid8x8.

    python bench/optimizers.py [--n 20000] [--seeds 3] [--quick] [--only nonuniform|score]

1. DM-NonUniform, N = 5,6,7,8,10,12,15,20 (EDM 0.002..80, p = 1; and linear VP p = 2 at N = 20):
   CPU time (time.process_time, best of 3; the machine is shared) of 3 starts with exact closed-form
   derivatives vs SciPy's finite differences on the same formulation and tolerances ("fd") and vs
   the reference code's call ("ref"; see NU_RUNS), final bounds, converged starts; and
   trust-constr's own per-iteration cost vs one evaluation of the bound.
2. Score-optimal: time per 10-step schedule on the toys (exact mixture denoisers; the MLP too
   when its checkpoint exists), jvp and fd.
3. grid8x8, exact denoiser: NLL under the true density at NFE 6 / 8 / 10 with dpmpp_2m_sde and
   dpmpp_2m for karras, loglinear, kl_optimal, AYS (when core.optimizers.ays exists),
   DM-NonUniform (also with its own dpmpp_3m_lagrange) and score-optimal (default speed v = sigma, and
   v = 1 to show how much the speed matters); and the ODE discretization
   error against a 500-step solution from the same noise (dpmpp_3m_lagrange / dpmpp_2m) at NFE 5 / 6 / 8 / 10.
Prints the tables and writes bench/results/optimizers.json.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench._common import RESULTS, table, write  # noqa: E402
from core.evaluate import evaluate_toy  # noqa: E402
from core.models import MixtureDenoiser, load_toy_model, toy_checkpoint  # noqa: E402
from core.optimizers.nonuniform import (STARTS, optimize_nonuniform, resolve_range, solve_from,  # noqa: E402
                                        start_levels)
from core.optimizers.score_optimal import score_optimal_schedule  # noqa: E402
from core.sampling import generate  # noqa: E402
from core.schedules import make_schedule  # noqa: E402
from toy_data import get_toy  # noqa: E402


def _clock(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.process_time() - c, time.perf_counter() - w


# The three DM-NonUniform runs compared (same starts, each row: all 3 starts, best converged kept).
#   exact: the shipped run (closed-form gradient + Hessian; epigraph form with BFGS where kinks exist)
#   fd:    the same formulation and tolerances, SciPy finite differences (objective and epigraph
#          constraint Jacobian, jac="2-point") with BFGS (SciPy allows no Hessian from FD gradients);
#          the value function is the same closed-form numpy bound, so the ratio is the gradients' gain
#   ref:   the reference code's call: B itself, jac="2-point", BFGS, SciPy's default barrier 0.1 /
#          tolerance 0.1, xtol 1e-8, no ordering margin
NU_RUNS = {"exact": {}, "fd": {"gradient": "2-point"},
           "ref": {"gradient": "2-point", "form": "plain", "barrier": 0.1, "barrier_tol0": 0.1, "xtol": 1e-8,
                   "min_gap": 0.0}}


def _nu_runs(n, process, p, kw):
    _, smin, smax = resolve_range(process)
    return [solve_from(start_levels(st, n, smin, smax, process), p, start=st, **kw) for st in STARTS]


def nonuniform_speed(steps, process="edm", p=1.0, repeats=3):
    """CPU seconds (time.process_time, best of `repeats`) of 3 starts per run kind, best bounds."""
    rows = []
    for n in steps:
        row = {"process": process, "p": p, "N": n}
        for tag, kw in NU_RUNS.items():
            best_cpu = float("inf")
            for _ in range(repeats):
                runs, cpu, _ = _clock(lambda: _nu_runs(n, process, p, kw))
                best_cpu = min(best_cpu, cpu)
            ok = [r for r in runs if r.converged]
            best = min(ok or runs, key=lambda r: r.objective)
            row.update({f"{tag}_cpu_s": best_cpu, f"bound_{tag}": best.objective,
                        f"{tag}_converged": f"{len(ok)}/{len(runs)}",
                        f"{tag}_nit": "/".join(str(r.nit) for r in runs),
                        f"{tag}_nfev": "/".join(str(r.nfev) for r in runs)})
        for tag in ("fd", "ref"):
            row[f"speedup_{tag}"] = row[f"{tag}_cpu_s"] / row["exact_cpu_s"]
            row[f"exact_le_{tag}"] = bool(row["bound_exact"] <= row[f"bound_{tag}"] * (1 + 1e-9))
            row[f"rel_diff_{tag}"] = (row["bound_exact"] - row[f"bound_{tag}"]) / row[f"bound_{tag}"]
        rows.append(row)
        print(rows[-1], file=sys.stderr)
    return rows


def trust_constr_overhead(n=10, repeats=3):
    """Why the ratio is bounded at small N: SciPy trust-constr's own cost per iteration (a
    separable quadratic with the same ordering constraints, derivatives free) vs one evaluation
    of the bound's value / value + gradient / + Hessian (microseconds)."""
    from scipy.optimize import minimize
    from core.objectives.truncation import BoundNP
    from core.optimizers.nonuniform import ordering_constraint
    lam = start_levels("uniform_lambda", n, 0.002, 80.0)
    x0, xs, m = lam[1:-1], lam[1:-1] + 0.1, n - 2
    con = ordering_constraint(lam[0], lam[-1], m, 1e-3)
    eye = np.eye(m)
    opts = {"gtol": 1e-8, "xtol": 1e-12, "initial_barrier_parameter": 1e-8, "initial_barrier_tolerance": 1e-8}

    def quad():
        return minimize(lambda x: (0.5 * ((x - xs) ** 2).sum(), x - xs), x0, jac=True, hess=lambda x: eye,
                        method="trust-constr", constraints=[con], options=opts)
    best, nit = float("inf"), 0
    for _ in range(repeats):
        r, cpu, _ = _clock(quad)
        best, nit = min(best, cpu), r.nit
    out = {"N": n, "trust_constr_ms_per_iteration": 1e3 * best / nit, "quadratic_nit": nit}
    for order, name in ((0, "value_us"), (1, "value_grad_us"), (2, "value_grad_hess_us")):
        def ev(order=order):
            for _ in range(200):
                b = BoundNP(lam, 1.0, "auto", order)
                if order == 2:
                    b.hessian()
        _, cpu, _ = _clock(ev)
        out[name] = 1e6 * cpu / 200
    return out


NU_COLS = ["process", "p", "N", "exact_cpu_s", "fd_cpu_s", "speedup_fd", "ref_cpu_s", "speedup_ref",
           "bound_exact", "rel_diff_fd", "rel_diff_ref", "exact_le_fd", "exact_converged", "fd_converged",
           "ref_converged", "exact_nit", "fd_nit", "ref_nit"]


def run_nonuniform(quick=False):
    steps = [5, 6, 8] if quick else [5, 6, 7, 8, 10, 12, 15, 20]
    nu = nonuniform_speed(steps) + nonuniform_speed([20] if not quick else [6], "vp-linear", 2.0)
    print(table(nu, NU_COLS, "DM-NonUniform: exact derivatives vs SciPy finite differences "
                             "(3 starts each; CPU s, best of 3)"))
    over = [trust_constr_overhead(k) for k in ((5, 8, 20) if not quick else (8,))]
    print(table(over, list(over[0]), "trust-constr's own cost per iteration vs one bound evaluation"))
    return nu, over


def score_speed(toys, levels=200, n=256):
    """Warm timings (torch.func's first jvp in a process costs ~1 s once; measured separately)."""
    rows = []
    mix = get_toy(toys[0])
    _, cold, _ = _clock(lambda: score_optimal_schedule(MixtureDenoiser(mix), mix, 10, levels=16, n=8))
    rows.append({"toy": toys[0], "model": "exact", "method": "jvp", "levels": 16, "n": 8, "cpu_s": cold,
                 "sigmas": "(first call in the process: torch.func warm-up)"})
    for toy in toys:
        mix = get_toy(toy)
        kinds = ["exact"] + (["mlp"] if toy_checkpoint(toy).is_file() else [])
        for kind in kinds:
            model = MixtureDenoiser(mix) if kind == "exact" else load_toy_model(toy, "mlp")
            for method in ("jvp", "fd"):
                (s, info), cpu, wall = _clock(lambda: score_optimal_schedule(model, mix, 10, levels=levels, n=n,
                                                                              method=method))
                cost = np.asarray(info["cost"])
                rows.append({"toy": toy, "model": kind, "method": method, "levels": levels, "n": n,
                             "cpu_s": cpu, "wall_s": wall, "cost_spread": float(cost.std() / cost.mean()),
                             "sigmas": " ".join(f"{v:.3g}" for v in s.sigmas[1:-2])})
                print(rows[-1], file=sys.stderr)
    return rows


def ays_schedules(model, mix, nfes):
    """AYS (core.optimizers.ays) at each NFE as bench/ays.py's "ays" rows: the first stage run at
    that step count (8192 samples, early stopping on held-out NLL), or a note when it is absent."""
    try:
        ays = importlib.import_module("core.optimizers.ays")
    except ModuleNotFoundError:
        return {}, "core.optimizers.ays is not on this branch: AYS rows skipped"
    out = {}
    for nfe in nfes:
        opt = ays.AYSOptimizer(model, mix.sample, steps=nfe, stages=(nfe,), n_samples=8192, seed=0, mixture=mix)
        for _ in opt.events():
            pass
        out[nfe] = opt.result(nfe)
    return out, "AYS: first stage at each NFE (8192 samples, early stopping on held-out NLL), as bench/ays.py"


def _unit_speed(s):
    """v(sigma) = 1: the score-optimal variant with unit speed (the default is v = sigma)."""
    return np.ones_like(s)


def quality(nfes, n, seeds, disc_nfes):
    mix = get_toy("grid8x8")
    model = MixtureDenoiser(mix)
    ays, note = ays_schedules(model, mix, nfes)
    table_rows, disc_rows = [], []
    sched = {}
    for nfe in sorted(set(nfes) | set(disc_nfes)):
        sched[nfe] = {"karras": make_schedule("karras", nfe), "loglinear": make_schedule("loglinear", nfe),
                      "kl_optimal": make_schedule("kl_optimal", nfe, c=0.5),
                      "nonuniform": optimize_nonuniform(nfe, 0.002, 80.0, p=1)[0],
                      "score_optimal": score_optimal_schedule(model, mix, nfe)[0],
                      "score_optimal_v1": score_optimal_schedule(model, mix, nfe, v=_unit_speed)[0]}
        if nfe in ays:
            sched[nfe]["ays"] = ays[nfe]
    names = (["karras", "loglinear", "kl_optimal"] + (["ays"] if ays else [])
             + ["nonuniform", "score_optimal", "score_optimal_v1"])
    for solver in ("dpmpp_2m_sde", "dpmpp_2m", "dpmpp_3m_lagrange"):
        for name in names:
            if solver == "dpmpp_3m_lagrange" and name != "nonuniform":
                continue
            row = {"solver": solver, "schedule": name}
            for nfe in nfes:
                r = evaluate_toy(model, mix, sched[nfe][name], solver, n=n, seeds=tuple(range(seeds)))
                row[f"nll@{nfe}"] = f"{r['nll']:.2f} ± {r['nll_ci']:.2f}"
                row[f"_nll{nfe}"] = r["nll"]
            table_rows.append(row)
            print(row, file=sys.stderr)
    noise = 80.0 * torch.randn(4000, 2, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    for solver in ("dpmpp_3m_lagrange", "dpmpp_2m"):
        ref = generate(model, make_schedule("karras", 500), 4000, solver=solver, noise=noise.clone()).x
        for name in ["loglinear", "karras", "nonuniform", "score_optimal", "score_optimal_v1"]:
            row = {"solver": solver, "schedule": name}
            for nfe in disc_nfes:
                x = generate(model, sched[nfe][name], 4000, solver=solver, noise=noise.clone()).x
                row[f"err@{nfe}"] = float((x - ref).norm(dim=1).mean())
            disc_rows.append(row)
    return table_rows, disc_rows, note, {nfe: {k: list(v.sigmas) for k, v in d.items()} for nfe, d in sched.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="samples per NLL evaluation")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: no OpenMP spin on a busy machine)")
    ap.add_argument("--quick", action="store_true", help="fewer N, samples and seeds (smoke run)")
    ap.add_argument("--only", choices=["nonuniform", "score"], help="run only this section and update its keys in "
                    "bench/results/optimizers.json (the other sections are kept)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    n, seeds = (4000, 1) if a.quick else (a.n, a.seeds)
    load = os.getloadavg()[0]

    if a.only == "score":
        so = score_speed(["grid8x8", "moons", "ring8"])
        print(table(so, ["toy", "model", "method", "levels", "n", "cpu_s", "wall_s", "cost_spread", "sigmas"],
                    "Score-optimal: one 10-step schedule (density on the grid + constant-speed inverse)"))
        path = RESULTS / "optimizers.json"
        old = json.loads(path.read_text()) if path.is_file() else {}
        old = {k: v for k, v in old.items() if k not in ("machine", "when")}
        old.update({"score_optimal": so, "score_load_average": load})
        print(f"load average at start: {load:.1f} on {os.cpu_count()} cores")
        print("wrote", write("optimizers", old))
        return
    nu, over = run_nonuniform(a.quick)
    if a.only == "nonuniform":
        path = RESULTS / "optimizers.json"
        old = json.loads(path.read_text()) if path.is_file() else {}
        old = {k: v for k, v in old.items() if k not in ("machine", "when")}
        old.update({"nonuniform": nu, "trust_constr_overhead": over, "nonuniform_args": vars(a),
                    "nonuniform_load_average": load})
        print(f"load average at start: {load:.1f} on {os.cpu_count()} cores")
        print("wrote", write("optimizers", old))
        return
    so = score_speed(["grid8x8", "moons", "ring8"])
    print(table(so, ["toy", "model", "method", "levels", "n", "cpu_s", "wall_s", "cost_spread", "sigmas"],
                "Score-optimal: one 10-step schedule (density on the grid + constant-speed inverse)"))
    nfes = [6, 8, 10]
    q, disc, note, sigmas = quality(nfes, n, seeds, [5, 6, 8, 10])
    print(table(q, ["solver", "schedule"] + [f"nll@{k}" for k in nfes],
                f"grid8x8, exact denoiser: NLL at NFE 6/8/10, {n} samples x {seeds} seeds (95% CI; lower is better)"))
    print(note)
    print(table(disc, ["solver", "schedule"] + [f"err@{k}" for k in (5, 6, 8, 10)],
                "grid8x8, exact denoiser: mean |x_N - x_500| from the same noise (ODE discretization error)"))
    print(f"load average at start: {load:.1f} on {os.cpu_count()} cores; torch threads {a.threads}")
    print("wrote", write("optimizers", {"args": vars(a), "load_average": load, "nonuniform": nu,
                                        "trust_constr_overhead": over, "score_optimal": so,
                                        "nll": q, "ays_note": note, "discretization": disc, "sigmas": sigmas}))


if __name__ == "__main__":
    main()
