"""AYS paper Table 4 setting: grid8x8, SDE-DPM-Solver++(2M), NLL under the true density at NFE 6/8/10.

    python bench/toy_nll.py [--n 20000] [--seeds 3] [--schedules karras,loglinear,kl_optimal]

Schedules may include JSON files (e.g. an optimized AYS schedule); exact and MLP denoisers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import table, write  # noqa: E402
from core.evaluate import evaluate_toy  # noqa: E402
from core.models import load_toy_model, toy_checkpoint  # noqa: E402
from core.schedules import load_schedule  # noqa: E402

# kl_optimal at the toys' data std (the AYS theorem's c), not ComfyUI's default c = 1
DATA_SCALED = {"kl_optimal": {"c": 0.5}}
from toy_data import get_toy  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--toy", default="grid8x8")
    ap.add_argument("--solver", default="dpmpp_2m_sde")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--nfe", default="6,8,10")
    ap.add_argument("--schedules", default="karras,loglinear,kl_optimal")
    a = ap.parse_args(argv)
    mix = get_toy(a.toy)
    kinds = ["exact"] + (["mlp"] if toy_checkpoint(a.toy).is_file() else [])
    rows = []
    for kind in kinds:
        model = load_toy_model(a.toy, kind)
        for name in a.schedules.split(","):
            row = {"model": kind, "schedule": Path(name).stem}
            for nfe in map(int, a.nfe.split(",")):
                r = evaluate_toy(model, mix, load_schedule(name, nfe, **DATA_SCALED.get(name, {})), a.solver, n=a.n, seeds=tuple(range(a.seeds)))
                row[f"nll@{nfe}"] = f"{r['nll']:.2f} ± {r['nll_ci']:.2f}"
                row[f"_nll{nfe}"] = r["nll"]
            rows.append(row)
            print(row, file=sys.stderr)
    cols = ["model", "schedule"] + [f"nll@{n}" for n in a.nfe.split(",")]
    print(table(rows, cols, f"NLL on {a.toy}, {a.solver}, {a.n} samples x {a.seeds} seeds (95% CI)"))
    print("wrote", write("toy_nll", {"args": vars(a), "rows": rows}))


if __name__ == "__main__":
    main()
