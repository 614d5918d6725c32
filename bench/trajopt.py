"""GITS and OSS on the 2-D toys: optimization time, and distance to a 500-step Heun reference.

    python bench/trajopt.py [--n 2000] [--toys grid8x8,ring8,moons] [--nfes 6,10] [--quick]

For each toy (exact mixture denoiser and the shipped MLP) and NFE, with dpmpp_2m:
- time (wall and CPU, one torch thread) of GITS (defaults: 256 samples, 61-level grid, coeff 1.15)
  and OSS (defaults: 64 samples, 200 teacher steps; OSS-ave and per-sample median);
- mean ||x - x_ref|| over held-out noise (seed 12345, not used while optimizing) against a 500-step
  karras Heun solution from the same noise, with a 95% CI over the samples, for karras, loglinear,
  GITS, OSS-ave and OSS per-sample. "best heuristic" = the better of karras and loglinear.
- the same distance for GITS with the solvers its one-jump cost models exactly (euler) or that its
  paper uses (ipndm), against karras / loglinear with that solver.
Prints the tables and writes bench/results/trajopt.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench._common import heldout_reference, ref_distance, table, timed, write  # noqa: E402
from core.models import load_toy_model  # noqa: E402
from core.optimizers.gits import optimize_gits  # noqa: E402
from core.optimizers.oss import optimize_oss  # noqa: E402
from core.schedules import make_schedule  # noqa: E402

HELDOUT_SEED = 12345



def run(toys, kinds, nfes, n, solver="dpmpp_2m"):
    time_rows, q_rows, schedules = [], [], {}
    for toy in toys:
        for kind in kinds:
            model = load_toy_model(toy, kind)
            lo, hi = model.sigma_min, model.sigma_max
            noise, ref = heldout_reference(model, n, HELDOUT_SEED)
            for nfe in nfes:
                cands = {"karras": make_schedule("karras", nfe, lo, hi), "loglinear": make_schedule("loglinear", nfe, lo, hi)}
                for name, fn in (("gits", lambda: optimize_gits(model, nfe, solver)),
                                 ("oss", lambda: optimize_oss(model, nfe, solver)),
                                 ("oss_per_sample", lambda: optimize_oss(model, nfe, solver, per_sample=True))):
                    cands[name], wall, cpu = timed(fn)
                    time_rows.append({"toy": toy, "model": kind, "nfe": nfe, "method": name,
                                      "wall_s": wall, "cpu_s": cpu})
                row = {"toy": toy, "model": kind, "nfe": nfe}
                for name, s in cands.items():
                    row[name], row[f"{name}_ci"] = ref_distance(model, s, solver, noise, ref)
                best_h = min(row["karras"], row["loglinear"])
                for name in ("gits", "oss", "oss_per_sample"):
                    row[f"{name}/best_heuristic"] = row[name] / best_h
                q_rows.append(row)
                schedules[f"{toy}/{kind}/{nfe}"] = {k: list(v.sigmas) for k, v in cands.items()}
                print(row, file=sys.stderr)
    return time_rows, q_rows, schedules


def run_gits_solvers(toys, kinds, nfes, n, solvers=("euler", "ipndm")):
    rows = []
    for toy in toys:
        for kind in kinds:
            model = load_toy_model(toy, kind)
            lo, hi = model.sigma_min, model.sigma_max
            noise, ref = heldout_reference(model, n, HELDOUT_SEED)
            for solver in solvers:
                for nfe in nfes:
                    row = {"toy": toy, "model": kind, "solver": solver, "nfe": nfe}
                    for name, s in (("karras", make_schedule("karras", nfe, lo, hi)),
                                    ("loglinear", make_schedule("loglinear", nfe, lo, hi)),
                                    ("gits", optimize_gits(model, nfe, solver))):
                        row[name] = ref_distance(model, s, solver, noise, ref)[0]
                    row["gits/best_heuristic"] = row["gits"] / min(row["karras"], row["loglinear"])
                    rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--toys", default="grid8x8,ring8,moons")
    ap.add_argument("--kinds", default="exact,mlp")
    ap.add_argument("--nfes", default="6,10")
    ap.add_argument("--quick", action="store_true", help="one toy, n = 500")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    toys = ["grid8x8"] if a.quick else a.toys.split(",")
    n = 500 if a.quick else a.n
    nfes = [int(v) for v in a.nfes.split(",")]
    time_rows, q_rows, schedules = run(toys, a.kinds.split(","), nfes, n)
    print(table(time_rows, ["toy", "model", "nfe", "method", "wall_s", "cpu_s"],
                "optimization time, dpmpp_2m (one torch thread; wall on a shared machine)"))
    print()
    cols = ["toy", "model", "nfe", "karras", "loglinear", "gits", "oss", "oss_per_sample",
            "gits/best_heuristic", "oss/best_heuristic", "oss_per_sample/best_heuristic"]
    print(table(q_rows, cols, f"mean ||x - x_ref(500-step Heun)|| on {n} held-out noises, dpmpp_2m"))
    wins = {m: int(sum(r[f"{m}/best_heuristic"] < 1 for r in q_rows)) for m in ("gits", "oss", "oss_per_sample")}
    print(f"\nbeats the best heuristic in {wins} of {len(q_rows)} (toy, model, NFE) cells")
    cpu10 = {m: max([r["cpu_s"] for r in time_rows if r["method"] == m and r["nfe"] == 10] or [np.nan])
             for m in ("gits", "oss", "oss_per_sample")}
    print(f"slowest CPU time at NFE 10: {cpu10}")
    g_rows = run_gits_solvers(toys, a.kinds.split(","), nfes, n)
    print()
    print(table(g_rows, ["toy", "model", "solver", "nfe", "karras", "loglinear", "gits", "gits/best_heuristic"],
                "GITS with euler (what its cost models) and ipndm (its paper's solver)"))
    p = write("trajopt", {"gits_other_solvers": g_rows, "n": n, "heldout_seed": HELDOUT_SEED, "solver": "dpmpp_2m", "time": time_rows,
                          "quality": q_rows, "wins": wins, "cpu_at_nfe10_max": cpu10, "schedules": schedules})
    print(f"wrote {p}")


if __name__ == "__main__":
    main()
