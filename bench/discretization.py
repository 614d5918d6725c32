"""Discretization error of every schedule family through every deterministic solver, on the shipped
toy MLPs (methods.md s.7): mean distance of the n-step sample to a 500-step dpmpp_3m_lagrange solution of
the same probability-flow ODE from the same noise (600 points, sigma 0.002..80).

Schedules: uniform lambda (log-linear), EDM rho = 7, DM-NonUniform (p = 1; the bound models
dpmpp_3m_lagrange) and score-optimal (v = sigma; Stein density estimated from the MLP itself).  NFE is the
budget: n = NFE levels for the one-call solvers, n = (NFE + 1) / 2 for Heun (odd NFE only).

    python bench/discretization.py [--toys moons,ring8,grid8x8] [--nfe 5,6,7,8,10]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import table, write  # noqa: E402
from core.models import load_toy_model  # noqa: E402
from core.optimizers.nonuniform import optimize_nonuniform  # noqa: E402
from core.optimizers.score_optimal import score_optimal_schedule  # noqa: E402
from core.sampling import generate  # noqa: E402
from core.schedules import make_schedule  # noqa: E402
from toy_data import get_toy  # noqa: E402

SOLVERS = ("euler", "heun", "dpmpp_2m", "dpmpp_3m_lagrange")
SMIN, SMAX = 0.002, 80.0


def schedules(model, mix, n, seed):
    return {"uniform_lambda": make_schedule("loglinear", n, SMIN, SMAX),
            "edm": make_schedule("karras", n, SMIN, SMAX),
            "nonuniform": optimize_nonuniform(n, SMIN, SMAX, p=1)[0],
            "score_optimal": score_optimal_schedule(model, mix, n, SMIN, SMAX, seed=seed)[0]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--toys", default="moons,ring8,grid8x8")
    ap.add_argument("--nfe", default="5,6,7,8,10")
    ap.add_argument("--seed", type=int, default=3)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    t0 = time.perf_counter()
    for toy in a.toys.split(","):
        model, mix = load_toy_model(toy, "mlp"), get_toy(toy)
        noise = (SMAX * torch.randn(600, 2, generator=torch.Generator().manual_seed(a.seed),
                                    dtype=torch.float64)).to(model.dtype)
        ref = generate(model, make_schedule("karras", 500, SMIN, SMAX), 600, solver="dpmpp_3m_lagrange", noise=noise).x
        cache = {}
        for nfe in (int(v) for v in a.nfe.split(",")):
            for solver in SOLVERS:
                n = (nfe + 1) // 2 if solver == "heun" else nfe
                if solver == "heun" and nfe % 2 == 0:
                    continue
                if n not in cache:
                    cache[n] = schedules(model, mix, n, a.seed)
                row = {"toy": toy, "nfe": nfe, "solver": solver, "levels": n}
                for name, s in cache[n].items():
                    x = generate(model, s, 600, solver=solver, noise=noise.clone()).x
                    row[name] = float((x - ref).norm(dim=1).mean())
                best = min(cache[n], key=lambda k: row[k])
                row["best"] = best
                rows.append(row)
                print(row, file=sys.stderr, flush=True)
    cols = ["toy", "nfe", "solver", "levels", "uniform_lambda", "edm", "nonuniform", "score_optimal", "best"]
    print(table(rows, cols, "discretization error vs a 500-step reference (mean L2, 600 points)"))
    p = write("discretization", {"rows": rows, "seconds": time.perf_counter() - t0, "sigma_min": SMIN,
                                 "sigma_max": SMAX, "seed": a.seed})
    print(f"wrote {p}")


if __name__ == "__main__":
    main()
