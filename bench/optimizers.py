"""DM-NonUniform and score-optimal: optimizer speed, and the schedules' quality on grid8x8.

    python bench/optimizers.py [--n 20000] [--seeds 3] [--quick]

1. DM-NonUniform, N = 5..20 (EDM 0.002..80, p = 1; and linear VP, p = 2): time with exact
   autograd gradients vs SciPy's finite differences (the reference code's run: the bound itself,
   jac="2-point", BFGS), same starts, final bounds.  Times are process CPU seconds (the machine
   is shared) and wall seconds.
2. Score-optimal: time per 10-step schedule on the toys (exact mixture denoisers; the MLP too
   when its checkpoint exists), jvp and fd.
3. grid8x8, exact denoiser: NLL under the true density at NFE 6 / 8 / 10 with dpmpp_2m_sde and
   dpmpp_2m for karras, loglinear, kl_optimal, AYS (when core.optimizers.ays exists),
   DM-NonUniform (also with its own dpmpp_3m) and score-optimal (default speed v = sigma, and
   v = 1 to show how much the speed matters); and the ODE discretization
   error against a 500-step solution from the same noise (dpmpp_3m / dpmpp_2m) at NFE 5 / 6 / 8 / 10.
Prints the tables and writes bench/results/optimizers.json.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench._common import table, write  # noqa: E402
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


def nonuniform_speed(steps, process="edm", p=1.0):
    rows = []
    for n in steps:
        (sched, info), cpu, wall = _clock(lambda: optimize_nonuniform(n, process=process, p=p, strict=False))
        _, smin, smax = resolve_range(process)

        row = {"process": process, "p": p, "N": n, "exact_cpu_s": cpu, "exact_wall_s": wall,
               "bound_exact": info["objective"],
               "converged": f"{sum(r['converged'] for r in info['runs'])}/{len(info['runs'])}",
               "nit": "/".join(str(r["nit"]) for r in info["runs"])}
        # "ref": the reference code's call (SciPy defaults: barrier 0.1, xtol 1e-8, no margin);
        # "fd": finite differences with our settings (isolates the gradient's cost)
        for tag, kw in (("ref", {"barrier": 0.1, "xtol": 1e-8, "min_gap": 0.0}), ("fd", {})):
            def fd_runs():
                return [solve_from(start_levels(st, n, smin, smax, process), p, start=st, gradient="2-point", **kw)
                        for st in STARTS]
            fd, fd_cpu, fd_wall = _clock(fd_runs)
            fd_ok = [r for r in fd if r.converged]
            fd_best = min(fd_ok or fd, key=lambda r: r.objective)
            row.update({f"{tag}_cpu_s": fd_cpu, f"{tag}_wall_s": fd_wall, f"speedup_{tag}": fd_cpu / cpu,
                        f"bound_{tag}": fd_best.objective,
                        f"exact_le_{tag}": info["objective"] <= fd_best.objective * (1 + 1e-9),
                        f"{tag}_converged": f"{len(fd_ok)}/{len(fd)}",
                        f"{tag}_nit": "/".join(str(r.nit) for r in fd)})
        rows.append(row)
        print(rows[-1], file=sys.stderr)
    return rows


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
    for solver in ("dpmpp_2m_sde", "dpmpp_2m", "dpmpp_3m"):
        for name in names:
            if solver == "dpmpp_3m" and name != "nonuniform":
                continue
            row = {"solver": solver, "schedule": name}
            for nfe in nfes:
                r = evaluate_toy(model, mix, sched[nfe][name], solver, n=n, seeds=tuple(range(seeds)))
                row[f"nll@{nfe}"] = f"{r['nll']:.2f} ± {r['nll_ci']:.2f}"
                row[f"_nll{nfe}"] = r["nll"]
            table_rows.append(row)
            print(row, file=sys.stderr)
    noise = 80.0 * torch.randn(4000, 2, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    for solver in ("dpmpp_3m", "dpmpp_2m"):
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
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    steps = [5, 6, 8, 12] if a.quick else list(range(5, 21))
    n, seeds = (4000, 1) if a.quick else (a.n, a.seeds)
    load = os.getloadavg()[0]

    nu = nonuniform_speed(steps) + nonuniform_speed([5, 6, 10, 20] if not a.quick else [6], "vp-linear", 2.0)
    cols = ["process", "p", "N", "exact_cpu_s", "ref_cpu_s", "speedup_ref", "fd_cpu_s", "speedup_fd", "bound_exact",
            "bound_ref", "bound_fd", "converged", "ref_converged", "fd_converged", "nit", "ref_nit", "fd_nit"]
    print(table(nu, cols, "DM-NonUniform: exact gradients vs SciPy finite differences (3 starts each)"))
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
    print("wrote", write("optimizers", {"args": vars(a), "load_average": load, "nonuniform": nu, "score_optimal": so,
                                        "nll": q, "ays_note": note, "discretization": disc, "sigmas": sigmas}))


if __name__ == "__main__":
    main()
