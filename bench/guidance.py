"""Does a schedule tuned at one guidance scale transfer to another? (issue 12)

For each guidance scale w in WS, optimize a schedule on the guided denoiser D_w, then evaluate every
schedule at every w (cross-evaluation). The metric is the discretization error against a many-step
solution of the same guided ODE from the same noise (the guided ODE's endpoint is not
p(x) p(c|x)^w, so it is the only exact target):
- toy: grid8x8 with 4 quadrant classes, label 3, exact guided denoiser; RMS distance per sample
  to a 256-step Heun solution (n samples).
- digits-flow: labels 0..9 cycled; RMS per pixel to DPM-Solver++(2M) with 40 steps uniform in t
  (itself 0.011 from the 99-NFE Heun reference, core/train/flow_card.py).
Optimizers: score-optimal (Stein cost on the guided denoiser, data = p(x | c) for the toy, the
training split for digits) and AYS (KLUB; toy only by default: on digits it costs minutes per w).
Baselines: EDM (karras rho 7) and log-linear (toy); uniform t, SD3 shift 3 and karras (digits).

    python bench/guidance.py [--toy-only] [--digits-only] [--steps 6] [--n 2000] [--digits-n 200]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import table, write  # noqa: E402
from core.models.guidance import GuidedDenoiser  # noqa: E402
from core.sampling import generate  # noqa: E402
from core.schedules import make_schedule  # noqa: E402

WS = (1.0, 2.0, 4.0, 7.0)
SOLVER = "dpmpp_2m"


def rms(x, ref) -> float:
    """Mean over samples of the RMS over coordinates (per pixel for images)."""
    return float((x.double() - ref.double()).square().flatten(1).mean(1).sqrt().mean())


def optimize(kind: str, model, sampler, steps: int, smin: float, smax: float, budget: dict):
    from core.optimizers.ays import AYSOptimizer
    from core.optimizers.score_optimal import ScoreOptimalOptimizer
    if kind == "score_optimal":
        opt = ScoreOptimalOptimizer(model, sampler, steps, smin, smax, levels=budget["levels"], n=budget["stein_n"],
                                    seed=0)
    else:
        opt = AYSOptimizer(model, sampler, steps=steps, stages=(steps,), start="karras", sigma_min=smin,
                           sigma_max=smax, n_samples=budget["klub_n"], max_iters=budget["sweeps"], heldout=None,
                           seed=0, chunk=budget.get("chunk", 4096))
    for _ in opt.events():
        pass
    return opt.result() if kind == "score_optimal" else opt.result(steps)


def run_case(name, base, label, sampler_for, smin, smax, baselines, kinds, steps, n, reference, budget):
    """Optimize per w, cross-evaluate. Returns (rows, payload)."""
    scheds, secs = {}, {}
    for w in WS:
        g = GuidedDenoiser(base, label, w)
        for kind in kinds:
            t0 = time.process_time()
            scheds[(kind, w)] = optimize(kind, g, sampler_for(w), steps, smin, smax, budget)
            secs[(kind, w)] = time.process_time() - t0
            print(f"{name}: {kind} at w={w:g} in {secs[(kind, w)]:.0f} CPU s", file=sys.stderr, flush=True)
    for b, s in baselines.items():
        for w in WS:
            scheds[(b, w)] = s
    err = {}
    for w_eval in WS:
        g = GuidedDenoiser(base, label, w_eval)
        ref = reference(g)
        for (kind, w_opt), s in scheds.items():
            if kind in baselines and w_opt != WS[0]:
                continue
            x = generate(g, s, n, SOLVER, seed=0).x
            err[(kind, w_opt, w_eval)] = rms(x, ref)
    rows = []
    for kind in list(kinds) + list(baselines):
        for w_opt in (WS if kind in kinds else WS[:1]):
            r = {"schedule": kind if kind in baselines else f"{kind} @ w={w_opt:g}"}
            for w_eval in WS:
                r[f"w={w_eval:g}"] = err[(kind, w_opt, w_eval)]
            rows.append(r)
    # transfer: does the schedule tuned at w_eval beat the ones tuned at other w (diagonal = best)?
    transfer = {}
    for kind in kinds:
        for w_eval in WS:
            own = err[(kind, w_eval, w_eval)]
            others = {w_opt: err[(kind, w_opt, w_eval)] for w_opt in WS}
            transfer[f"{kind} w={w_eval:g}"] = {"own": own, "best_w_opt": min(others, key=others.get),
                                                "worst_over_own": max(others.values()) / own}
    payload = {"steps": steps, "solver": SOLVER, "n": n, "ws": list(WS), "budget": budget,
               "schedules": {f"{k} @ w={w:g}": list(s.sigmas) for (k, w), s in scheds.items() if k in kinds},
               "optimize_cpu_seconds": {f"{k} @ w={w:g}": v for (k, w), v in secs.items()},
               "error": {f"{k} @ w={wo:g} -> w={we:g}": v for (k, wo, we), v in err.items()},
               "transfer": transfer}
    return rows, payload


def toy_case(steps: int, n: int, kinds):
    from core.models.mixture import LabelledMixtureDenoiser
    from toy_data.labelled import get_labelled_toy
    lm = get_labelled_toy("grid8x8")
    base, label, smin, smax = LabelledMixtureDenoiser(lm), 3, 0.002, 80.0
    cond = lm.conditional(label)
    baselines = {b: make_schedule(b, steps, smin, smax) for b in ("karras", "loglinear")}
    ref_sched = make_schedule("karras", 256, smin, smax)
    reference = lambda g: generate(g, ref_sched, n, "heun", seed=0).x  # noqa: E731
    budget = {"levels": 100, "stein_n": 256, "klub_n": 2048, "sweeps": 20, "chunk": 1 << 16}
    return run_case("grid8x8", base, label, lambda w: cond.sample, smin, smax, baselines, kinds, steps, n,
                    reference, budget)


def digits_case(steps: int, n: int, kinds):
    from core.metrics import images as im
    from core.models.registry import load_model, model_data
    base = load_model("digits-flow")
    label, smin, smax = list(range(10)), base.sigma_min, base.sigma_max
    data = model_data("digits-flow", base, None)
    baselines = {b: make_schedule(b, steps, smin, smax, **p) for b, p in
                 (("flow_uniform", {}), ("flow_shift", {"shift": 3.0}), ("karras", {}))}
    ref_sched = make_schedule("flow_uniform", 40, smin, smax)
    reference = lambda g: im.sample_images(g, ref_sched, "dpmpp_2m", n, 0)[0]  # noqa: E731
    budget = {"levels": 40, "stein_n": 32, "klub_n": 32, "sweeps": 2, "chunk": 256}
    return run_case("digits-flow", base, label, lambda w: data, smin, smax, baselines, kinds, steps, n,
                    reference, budget)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--n", type=int, default=2000, help="toy samples per evaluation")
    ap.add_argument("--digits-n", type=int, default=200, help="digits samples per evaluation")
    ap.add_argument("--toy-only", action="store_true")
    ap.add_argument("--digits-only", action="store_true")
    ap.add_argument("--digits-kinds", default="score_optimal", help="comma list of score_optimal, ays")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    out, text = {}, []
    cases = []
    if not a.digits_only:
        cases.append(("grid8x8 (label 3 of 4 quadrants)", lambda: toy_case(a.steps, a.n, ("score_optimal", "ays"))))
    if not a.toy_only:
        kinds = tuple(k for k in a.digits_kinds.split(",") if k)
        cases.append(("digits-flow (labels 0..9)", lambda: digits_case(a.steps, a.digits_n, kinds)))
    for title, fn in cases:
        t0 = time.perf_counter()
        rows, payload = fn()
        payload["wall_seconds"] = time.perf_counter() - t0
        out[title] = payload
        cols = ["schedule"] + [f"w={w:g}" for w in WS]
        text.append(table(rows, cols, f"{title}: RMS error to the many-step guided ODE, {SOLVER} {a.steps} steps "
                                      f"(rows: where the schedule was tuned; columns: where it is evaluated)"))
        print(text[-1], flush=True)
    name = "guidance" if not (a.toy_only or a.digits_only) else ("guidance_toy" if a.toy_only else "guidance_digits")
    print(f"wrote {write(name, {'cases': out, 'tables': text})}")


if __name__ == "__main__":
    main()
