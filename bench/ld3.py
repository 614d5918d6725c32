"""LD3 on the 2-D toys: optimization time, and distance to a 500-step Heun reference on held-out noise.

    python bench/ld3.py [--n 2000] [--toys grid8x8,moons] [--kinds exact,mlp] [--nfes 6,10]

For each toy (exact mixture denoiser and the shipped MLP) and NFE, with dpmpp_2m: mean ||x - x_ref||
over held-out noise (seed 12345, not used while optimizing) against a 500-step karras Heun solution
from the same noise, with a 95% CI, for karras, loglinear, OSS-ave (core.optimizers.oss defaults)
and LD3 (core.optimizers.ld3 defaults: 100 teacher pairs, 7 rounds); and each optimizer's time
(wall and CPU, one torch thread). Prints the tables and writes bench/results/ld3.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

from bench._common import heldout_reference, ref_distance, table, timed, write  # noqa: E402
from core.models import load_toy_model  # noqa: E402
from core.optimizers.ld3 import LD3Optimizer, ld3_solve, sample_loss  # noqa: E402
from core.optimizers.oss import optimize_oss  # noqa: E402
from core.schedules import make_schedule  # noqa: E402

HELDOUT_SEED = 12345
METHODS = ("oss", "ld3")



def _ld3(model, nfe, solver):
    """LD3 with its defaults -> (schedule, {LD3's own validation loss: of its schedule, of a given one})."""
    opt = LD3Optimizer(model, nfe, solver)
    for _ in opt.events():
        pass
    z, target = opt._teacher()

    def val_loss(sched):                       # the LD3 objective on the validation pairs, original noise
        lv = torch.tensor(sched.sigmas[:-1], dtype=torch.float64)
        x = ld3_solve(model, opt.stepper, lv, opt.sigma_max * z[opt.n_train:])
        return float(sample_loss(x, target[opt.n_train:]).mean())
    return opt.result(), val_loss


def run(toys, kinds, nfes, n, solver="dpmpp_2m"):
    time_rows, q_rows, schedules = [], [], {}
    for toy in toys:
        for kind in kinds:
            model = load_toy_model(toy, kind)
            lo, hi = model.sigma_min, model.sigma_max
            noise, ref = heldout_reference(model, n, HELDOUT_SEED)
            for nfe in nfes:
                cands = {"karras": make_schedule("karras", nfe, lo, hi),
                         "loglinear": make_schedule("loglinear", nfe, lo, hi)}
                for name, fn in (("oss", lambda: optimize_oss(model, nfe, solver)),
                                 ("ld3", lambda: _ld3(model, nfe, solver))):
                    out, wall, cpu = timed(fn)
                    if name == "ld3":
                        out, val_loss = out
                    cands[name] = out
                    time_rows.append({"toy": toy, "model": kind, "nfe": nfe, "method": name,
                                      "wall_s": wall, "cpu_s": cpu})
                row = {"toy": toy, "model": kind, "nfe": nfe}
                for name, s in cands.items():
                    row[name], row[f"{name}_ci"] = ref_distance(model, s, solver, noise, ref)
                best_h = min(row["karras"], row["loglinear"])
                for name in METHODS:
                    row[f"{name}/best_heuristic"] = row[name] / best_h
                row["ld3/oss"] = row["ld3"] / row["oss"]
                # LD3's own objective (validation pairs): is LD3 short of its optimum (underfit)?
                row["ld3_obj_ld3"], row["ld3_obj_oss"] = val_loss(cands["ld3"]), val_loss(cands["oss"])
                q_rows.append(row)
                schedules[f"{toy}/{kind}/{nfe}"] = {k: list(v.sigmas) for k, v in cands.items()}
                print(row, file=sys.stderr)
    return time_rows, q_rows, schedules


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--toys", default="grid8x8,moons")
    ap.add_argument("--kinds", default="exact,mlp")
    ap.add_argument("--nfes", default="6,10")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    nfes = [int(v) for v in a.nfes.split(",")]
    time_rows, q_rows, schedules = run(a.toys.split(","), a.kinds.split(","), nfes, a.n)
    print(table(time_rows, ["toy", "model", "nfe", "method", "wall_s", "cpu_s"],
                "optimization time, dpmpp_2m (one torch thread; wall on a shared machine)"))
    print()
    cols = ["toy", "model", "nfe", "karras", "loglinear", "oss", "ld3", "ld3_ci", "oss/best_heuristic",
            "ld3/best_heuristic", "ld3/oss"]
    cols2 = ["toy", "model", "nfe", "ld3_obj_ld3", "ld3_obj_oss"]
    print(table(q_rows, cols, f"mean ||x - x_ref(500-step Heun)|| on {a.n} held-out noises, dpmpp_2m"))
    print()
    print(table(q_rows, cols2, "LD3's objective (per-sample MSE to the teacher, its validation pairs) of LD3's "
                               "schedule and of OSS's"))
    wins = {m: int(sum(r[f"{m}/best_heuristic"] < 1 for r in q_rows)) for m in METHODS}
    print(f"\nbeats the best heuristic in {wins} of {len(q_rows)} (toy, model, NFE) cells")
    p = write("ld3", {"n": a.n, "heldout_seed": HELDOUT_SEED, "solver": "dpmpp_2m", "time": time_rows,
                      "quality": q_rows, "wins": wins, "schedules": schedules})
    print(f"wrote {p}")


if __name__ == "__main__":
    main()
