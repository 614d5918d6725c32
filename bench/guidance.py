"""Schedules for guided models (issue 12): do optimizers beat the flow heuristics at w = 3, and does a
schedule tuned at one guidance scale transfer to another?

1. digits-flow at w = 3 (`--compare-*`): AYS, OSS, GITS and score-optimal, each fitted on the guided
   denoiser D_w for DPM-Solver++(2M), against uniform t, SD3 shift 3 and karras at each step count.
   NFE counts network calls (the repo's convention, core.models.guidance): 2 per step at w != 1, so
   NFE 6 and 10 are 3 and 5 steps; 6 and 10 steps (NFE 12 and 20) are run too. Judged on held-out
   noise (EVAL_SEED; the optimizers draw from seed 0), labels 0..9 cycled: RMS per pixel to a
   100-step solution of the same guided ODE from the same noise, FD to the held-out digits and
   conditional accuracy under the metric classifier. "Beats" = the paired per-sample RMS difference
   of the best optimizer (lowest mean RMS) to the baseline is below 0 with its 95 % interval.
2. Transfer (cross-evaluation): for each w in WS optimize a schedule on D_w, then evaluate every
   schedule at every w; the metric is the discretization error against a many-step solution of the
   same guided ODE from the same noise (the guided ODE's endpoint is not p(x) p(c|x)^w, so it is the
   only exact target):
   - toy: grid8x8 with 4 quadrant classes, label 3, exact guided denoiser; RMS distance per sample to
     a 256-step Heun solution (n samples; noise seed 0). Optimizers: score-optimal and AYS.
   - digits-flow: labels 0..9 cycled, held-out noise; RMS per pixel to the 100-step reference.
     Optimizers: `--digits-kinds` (default score-optimal). Baselines: uniform t, SD3 shift 3, karras.

    python bench/guidance.py [--toy-only] [--digits-only] [--steps 6] [--n 2000] [--digits-n 200]
        [--digits-kinds gits] [--compare-w 3] [--compare-steps 3,5,6,10] [--compare-n 300]
        [--compare-kinds score_optimal,gits,oss,ays] [--budget JSON] [--weights FILE] [--keep]

The recorded bench/results/guidance_digits.json: `--digits-only --digits-kinds "" --keep` (comparison)
and `--digits-only --compare-steps "" --digits-kinds gits --keep` (transfer), 1 torch thread each.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import RESULTS, table, write  # noqa: E402
from core.models.guidance import GuidedDenoiser  # noqa: E402
from core.sampling import generate  # noqa: E402
from core.schedules import make_schedule  # noqa: E402

WS = (1.0, 2.0, 4.0, 7.0)
SOLVER = "dpmpp_2m"
EVAL_SEED = 1000               # held-out noise on digits-flow: every optimizer draws from seed 0
DIGITS_REF = {"solver": "dpmpp_2m", "schedule": "flow_uniform", "steps": 100}
DIGITS_BASELINES = {"flow_uniform": ("flow_uniform", {}), "flow_shift3": ("flow_shift", {"shift": 3.0}),
                    "karras": ("karras", {})}
# Small enough for 2 shared CPU cores: score-optimal (Stein density on `levels` x `stein_n`), AYS (KLUB on
# `klub_n` samples, `sweeps` sweeps from karras), GITS (`gits_n` ipndm teachers on a `gits_grid` grid), OSS
# (OSS-ave over `oss_n` noises, `oss_teacher`-step teacher).
DIGITS_BUDGET = {"levels": 100, "stein_n": 32, "klub_n": 48, "sweeps": 3, "chunk": 256, "gits_n": 128,
                 "gits_grid": 61, "oss_n": 16, "oss_teacher": 100}


def rms(x, ref) -> float:
    """Mean over samples of the RMS over coordinates (per pixel for images)."""
    return float((x.double() - ref.double()).square().flatten(1).mean(1).sqrt().mean())


def optimize(kind: str, model, sampler, steps: int, smin: float, smax: float, budget: dict):
    """One schedule of `steps` steps for `kind` on `model` (see optimize_steps)."""
    return optimize_steps(kind, model, sampler, [steps], smin, smax, budget)[steps]


def optimize_steps(kind: str, model, sampler, steps_list, smin: float, smax: float, budget: dict) -> dict:
    """{steps: Schedule} for `kind` (score_optimal | ays | gits | oss), fitted for SOLVER.

    score_optimal and GITS fit once for every step count (the Stein density, the GITS cost matrix do
    not depend on it); AYS and OSS run once per step count. Every optimizer draws its noise from
    seed 0 (OSS, GITS: their teacher trajectories), never from the evaluation noise."""
    from core.optimizers.ays import AYSOptimizer
    from core.optimizers.gits import GITSOptimizer
    from core.optimizers.oss import OSSOptimizer
    from core.optimizers.score_optimal import ScoreOptimalOptimizer
    steps_list = sorted(steps_list)
    if kind in ("score_optimal", "gits"):
        if kind == "score_optimal":
            opt = ScoreOptimalOptimizer(model, sampler, steps_list[0], smin, smax, levels=budget["levels"],
                                        n=budget["stein_n"], seed=0)
        else:
            opt = GITSOptimizer(model, steps_list[0], SOLVER, sigma_min=smin, sigma_max=smax,
                                n_samples=budget["gits_n"], grid=budget["gits_grid"], seed=0)
        for _ in opt.events():
            pass
        out = {}
        for n in steps_list:
            opt.steps, opt.path = n, None          # the same density / cost matrix, one more DP or inverse
            out[n] = opt.result()
        return out
    out = {}
    for n in steps_list:
        if kind == "oss":
            opt = OSSOptimizer(model, n, SOLVER, sigma_min=smin, sigma_max=smax, n_samples=budget["oss_n"],
                               teacher_steps=budget["oss_teacher"], seed=0)
        elif kind == "ays":
            opt = AYSOptimizer(model, sampler, steps=n, stages=(n,), start=budget.get("ays_start", "karras"),
                               sigma_min=smin, sigma_max=smax, n_samples=budget["klub_n"],
                               max_iters=budget["sweeps"], heldout=None, seed=0, chunk=budget.get("chunk", 4096))
        else:
            raise ValueError(f"unknown optimizer {kind!r}")
        for _ in opt.events():
            pass
        out[n] = opt.result(n) if kind == "ays" else opt.result()
    return out


def run_case(name, base, label, sampler_for, smin, smax, baselines, kinds, steps, n, reference, budget,
             eval_seed: int = 0):
    """Optimize per w, cross-evaluate on the noise of `eval_seed` (`reference(g)` must solve from the
    same noise). Returns (rows, payload)."""
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
            x = generate(g, s, n, SOLVER, seed=eval_seed).x
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
    payload = {"steps": steps, "solver": SOLVER, "n": n, "ws": list(WS), "budget": budget, "eval_seed": eval_seed,
               "model": getattr(base, "name", "model"),
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


def load_flow(weights=None):
    """The shipped digits-flow model, or the checkpoint at `weights` (a candidate before it ships)."""
    from core.models.registry import load_model
    if weights is None:
        return load_model("digits-flow")
    from core.models.digits_flow import load_flow_checkpoint
    return load_flow_checkpoint(weights, name="digits-flow")


def digits_reference(g, noise):
    """The many-step solution of the guided ODE from `noise`: DIGITS_REF (DPM-Solver++(2M), 100 steps
    uniform in t; its 40-step version is 0.011 RMS per pixel from the 99-NFE Heun reference)."""
    from core.metrics import images as im
    sched = make_schedule(DIGITS_REF["schedule"], DIGITS_REF["steps"], g.sigma_min, g.sigma_max)
    return im.sample_images(g, sched, DIGITS_REF["solver"], noise.shape[0], noise=noise.clone())[0]


def digits_case(steps: int, n: int, kinds, weights=None, budget=None):
    """Transfer on digits-flow: `kinds` optimized at each w in WS, every schedule evaluated at every w,
    RMS per pixel to DIGITS_REF from the held-out noise (EVAL_SEED), labels 0..9 cycled."""
    from core.models.registry import model_data
    from core.sampling import initial_noise
    base = load_flow(weights)
    label, smin, smax = list(range(10)), base.sigma_min, base.sigma_max
    data = model_data("digits-flow", base, None)
    baselines = {b: make_schedule(b, steps, smin, smax, **p) for b, p in
                 (("flow_uniform", {}), ("flow_shift", {"shift": 3.0}), ("karras", {}))}
    noise = initial_noise(base, n, smax, EVAL_SEED)
    reference = lambda g: digits_reference(g, noise)  # noqa: E731
    return run_case("digits-flow", base, label, lambda w: data, smin, smax, baselines, kinds, steps, n,
                    reference, budget or DIGITS_BUDGET, eval_seed=EVAL_SEED)


def digits_compare(w: float, steps_list, n: int, kinds, weights=None, budget=None):
    """digits-flow at guidance scale w: every optimizer in `kinds` against uniform t, SD3 shift 3 and
    karras at each step count, on held-out noise (EVAL_SEED; labels 0..9 cycled over n samples).

    Per schedule: RMS per pixel to DIGITS_REF from the same noise (mean, 95 % CI over samples), FD to
    the held-out split and conditional accuracy under the digits metric classifier, and for the best
    optimizer (lowest RMS) the paired per-sample difference to uniform t and to shift 3.
    Returns (rows, payload)."""
    from core.metrics import images as im
    from core.metrics.toy import mean_ci
    from core.models.registry import model_data
    from core.sampling import initial_noise
    budget = budget or DIGITS_BUDGET
    base = load_flow(weights)
    g = GuidedDenoiser(base, list(range(10)), w)
    smin, smax = base.sigma_min, base.sigma_max
    data = model_data("digits-flow", base, None)
    noise = initial_noise(g, n, smax, EVAL_SEED)
    labels = g.expected_labels(n, 500)                        # sample_images' chunk
    c0 = time.process_time()
    ref = digits_reference(g, noise)
    ref_cpu = time.process_time() - c0
    ref_fd = im.image_metrics(ref)["fd"]
    ref_acc = im.label_accuracy(ref, labels)["accuracy"]
    print(f"digits-flow w={w:g}: reference in {ref_cpu:.0f} CPU s, FD {ref_fd:.4f}, accuracy {ref_acc:.3f}",
          file=sys.stderr, flush=True)
    scheds, secs = {}, {}
    for kind in kinds:
        c0 = time.process_time()
        for k, sc in optimize_steps(kind, g, data, steps_list, smin, smax, budget).items():
            scheds[(kind, k)] = sc
        secs[kind] = time.process_time() - c0
        print(f"digits-flow w={w:g}: {kind} for steps {list(steps_list)} in {secs[kind]:.0f} CPU s "
              f"(load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
    for n_steps in steps_list:
        for b, p in DIGITS_BASELINES.items():
            scheds[(b, n_steps)] = make_schedule(p[0], n_steps, smin, smax, **p[1])
    per_sample, rows, res = {}, [], {}
    for (name, n_steps), sc in scheds.items():
        x, nfe, _ = im.sample_images(g, sc, SOLVER, n, noise=noise.clone())
        e = (x.double() - ref.double()).square().flatten(1).mean(1).sqrt()
        if not torch.isfinite(e).all():
            raise RuntimeError(f"{name} at {n_steps} steps gave non-finite samples")
        per_sample[(name, n_steps)] = e
        m, ci = mean_ci(e.numpy())
        res[(name, n_steps)] = {"steps": n_steps, "nfe": nfe, "ref_rms": m, "ref_rms_ci": ci,
                                "fd": im.image_metrics(x)["fd"], "accuracy": im.label_accuracy(x, labels)["accuracy"],
                                "sigmas": list(sc.sigmas)}
    verdict = {}
    for n_steps in steps_list:
        opt_names = [k for k in kinds if (k, n_steps) in res]
        best = min(opt_names, key=lambda k: res[(k, n_steps)]["ref_rms"]) if opt_names else None
        for name in list(kinds) + list(DIGITS_BASELINES):
            r = res[(name, n_steps)]
            rows.append({"steps": n_steps, "NFE": r["nfe"], "schedule": name + (" (best)" if name == best else ""),
                         "RMS to ref": f"{r['ref_rms']:.4f} ± {r['ref_rms_ci']:.4f}", "FD": r["fd"],
                         "accuracy": r["accuracy"]})
        if best is not None:
            v = {"best": best}
            for b in ("flow_uniform", "flow_shift3"):
                d, dci = mean_ci((per_sample[(best, n_steps)] - per_sample[(b, n_steps)]).numpy())
                v[f"minus_{b}"] = [d, dci]
                v[f"beats_{b}"] = bool(d + dci < 0)
                v[f"fd_beats_{b}"] = bool(res[(best, n_steps)]["fd"] < res[(b, n_steps)]["fd"])
            verdict[str(n_steps)] = v
    payload = {"w": w, "steps": list(steps_list), "solver": SOLVER, "n": n, "eval_seed": EVAL_SEED,
               "reference": {**DIGITS_REF, "fd": ref_fd, "accuracy": ref_acc, "cpu_seconds": ref_cpu},
               "budget": budget, "weights": str(weights or "checkpoints/digits-flow/unet.safetensors"),
               "model_fingerprint": im.model_fingerprint(base),
               "results": {f"{k} @ {n_steps}": v for (k, n_steps), v in res.items()},
               "optimize_cpu_seconds": secs, "verdict": verdict}
    return rows, payload


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="steps of the transfer runs")
    ap.add_argument("--n", type=int, default=2000, help="toy samples per evaluation")
    ap.add_argument("--digits-n", type=int, default=200, help="digits samples per evaluation (transfer)")
    ap.add_argument("--toy-only", action="store_true")
    ap.add_argument("--digits-only", action="store_true")
    ap.add_argument("--digits-kinds", default="score_optimal",
                    help="optimizers of the digits transfer run: comma list of score_optimal, ays, gits, oss; "
                         "empty: no transfer run")
    ap.add_argument("--compare-w", type=float, default=3.0, help="guidance scale of the digits comparison")
    ap.add_argument("--compare-steps", default="3,5,6,10",
                    help="step counts of the digits comparison (NFE = 2 x steps at w != 1); empty: none")
    ap.add_argument("--compare-kinds", default="score_optimal,gits,oss,ays")
    ap.add_argument("--compare-n", type=int, default=300, help="held-out samples of the digits comparison")
    ap.add_argument("--weights", default=None, help="a digits-flow checkpoint other than the shipped one")
    ap.add_argument("--budget", default="{}", help="JSON overrides of DIGITS_BUDGET, e.g. '{\"oss_n\": 8}'")
    ap.add_argument("--keep", action="store_true", help="keep the cases of the results file that this run "
                                                        "does not redo")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    budget = {**DIGITS_BUDGET, **json.loads(a.budget)}
    out, text = {}, {}
    cases = []
    if not a.digits_only:
        cases.append(("grid8x8 (label 3 of 4 quadrants)", "transfer",
                      lambda: toy_case(a.steps, a.n, ("score_optimal", "ays"))))
    if not a.toy_only:
        steps = [int(v) for v in a.compare_steps.split(",") if v]
        kinds = tuple(k for k in a.compare_kinds.split(",") if k)
        if steps:
            cases.append((f"digits-flow w={a.compare_w:g}: optimizers vs uniform t and SD3 shift 3", "compare",
                          lambda: digits_compare(a.compare_w, steps, a.compare_n, kinds, a.weights, budget)))
        kinds_t = tuple(k for k in a.digits_kinds.split(",") if k)
        if kinds_t:
            cases.append(("digits-flow (labels 0..9)", "transfer",
                          lambda: digits_case(a.steps, a.digits_n, kinds_t, a.weights, budget)))
    name = "guidance" if not (a.toy_only or a.digits_only) else ("guidance_toy" if a.toy_only else "guidance_digits")
    path = RESULTS / f"{name}.json"
    for title, what, fn in cases:
        t0, c0 = time.perf_counter(), time.process_time()
        rows, payload = fn()
        payload.update(wall_seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0,
                       load_after=os.getloadavg()[0], when=time.strftime("%Y-%m-%d %H:%M:%S"))
        out[title] = payload
        if what == "compare":
            t = table(rows, ["steps", "NFE", "schedule", "RMS to ref", "FD", "accuracy"],
                      f"{title}: {SOLVER}, {payload['n']} held-out noises (labels 0..9 cycled); RMS per pixel to the "
                      f"{DIGITS_REF['steps']}-step reference (95 % CI over samples), FD to the held-out split and "
                      f"accuracy under the metric classifier (reference: FD {payload['reference']['fd']:.4f}, "
                      f"accuracy {payload['reference']['accuracy']:.3f}). "
                      "NFE counts network calls: 2 per step at w != 1")
            vrows = [{"steps": k, "best optimizer": v["best"],
                      **{f"RMS diff vs {b}": f"{v['minus_' + b][0]:+.4f} ± {v['minus_' + b][1]:.4f}"
                         for b in ("flow_uniform", "flow_shift3")},
                      "beats both (RMS, paired 95 %)": v["beats_flow_uniform"] and v["beats_flow_shift3"],
                      "beats both (FD)": v["fd_beats_flow_uniform"] and v["fd_beats_flow_shift3"]}
                     for k, v in payload["verdict"].items()]
            t += "\n\n" + table(vrows, list(vrows[0]) if vrows else [], f"{title}: the target")
        else:
            cols = ["schedule"] + [f"w={w:g}" for w in WS]
            t = table(rows, cols, f"{title}: RMS error to the many-step guided ODE, {SOLVER} {a.steps} steps "
                                  f"(rows: where the schedule was tuned; columns: where it is evaluated)")
        text[title] = t
        print(t, flush=True)
        print(f"({payload['cpu_seconds']:.0f} CPU s, {payload['wall_seconds']:.0f} wall s, load "
              f"{payload['load_after']:.1f})", flush=True)
        if a.keep and path.is_file():                         # re-read now: another run may have written
            prev = json.loads(path.read_text())
            out = {**prev.get("cases", {}), **out}
            text = {**(prev["tables"] if isinstance(prev.get("tables"), dict) else {}), **text}
        write(name, {"cases": out, "tables": text})          # a killed run keeps the cases already done
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
