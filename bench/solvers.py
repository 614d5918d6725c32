"""Per solver: wall time for 100k toy samples and the engine's overhead over bare denoiser calls.

    python bench/solvers.py [--n 100000] [--steps 10] [--toy grid8x8]

Overhead = time(solver) / time(NFE bare calls of the same denoiser on the same batch), in one run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import table, timeit, write  # noqa: E402
from core.models import load_toy_model, toy_checkpoint  # noqa: E402
from core.sampling import initial_noise  # noqa: E402
from core.schedules import make_schedule  # noqa: E402
from core.solvers import SOLVERS  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--toy", default="grid8x8")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    kinds = ["exact"] + (["mlp"] if toy_checkpoint(a.toy).is_file() else [])
    sched = make_schedule("karras", a.steps)
    rows = []
    for kind in kinds:
        model = load_toy_model(a.toy, kind)
        x = initial_noise(model, a.n, sched.sigma_max, seed=0)
        with torch.no_grad():
            bare_one = timeit(lambda: model(x, 1.0), a.repeat)
        for name, spec in SOLVERS.items():
            g = torch.Generator().manual_seed(1)
            t = timeit(lambda: spec.fn(model, x.clone(), sched.tensor(), generator=g), a.repeat)
            nfe = spec.nfe(a.steps)
            rows.append({"model": kind, "solver": name, "steps": a.steps, "nfe": nfe, "seconds": t,
                         "bare_calls_s": bare_one * nfe, "overhead_ratio": t / (bare_one * nfe)})
            print(f"{kind:5s} {name:13s} {t:.3f}s  ratio {rows[-1]['overhead_ratio']:.3f}", file=sys.stderr)
    print(table(rows, ["model", "solver", "nfe", "seconds", "bare_calls_s", "overhead_ratio"],
                f"Solvers: {a.n} samples of {a.toy}, {a.steps} steps (karras)"))
    print("wrote", write("solvers", {"n": a.n, "toy": a.toy, "rows": rows}))


if __name__ == "__main__":
    main()
