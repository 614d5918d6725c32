"""Align Your Steps on grid8x8 (exact denoiser, 8,192 samples), in one run:

  (a) a direct implementation (loops over points, candidates and intervals; fresh noise per
      candidate; the literal forward coupling; the engine's float64 denoiser) against ours
      (odd/even batches, common random numbers, bridge coupling, float32 matmul denoiser):
      time per sweep, standard error of candidate-difference estimates, time to equal SE;
  (b) wall and CPU time of the full hierarchy (10 -> 19 -> 37 steps, early stopping on NLL);
  (c) NLL at NFE 6 / 8 / 10 with SDE-DPM-Solver++(2M) for EDM, log-linear, KL-optimal and AYS
      (exact denoiser; the MLP too when its checkpoint loads), plus heuristics at 1.5 x NFE.
      "ays" is optimized at each NFE (early stopping on NLL); "ays_interp" is the paper's recipe
      for other step counts, log-linear interpolation of the 10-step hierarchy's finest schedule;
      on the MLP, "ays" is the exact-denoiser schedule and "ays_mlp" is optimized on the MLP.

    python bench/ays.py [--threads 1] [--samples 8192] [--n 20000] [--seeds 3] [--mlp PATH]

Prints tables and writes bench/results/ays.json. Timings on a shared machine vary: CPU time of
this process is reported beside wall time; all ratios are within one run.
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
from core.evaluate import evaluate_toy  # noqa: E402
from core.models import Denoiser, MixtureDenoiser  # noqa: E402
from core.objectives.fast_denoiser import FastMixtureDenoiser  # noqa: E402
from core.objectives.klub import (_gap, draw_noise, klub_normalizer, klub_samples,  # noqa: E402
                                  sample_sigma)
from core.optimizers.ays import AYSOptimizer, candidates, nested_stages  # noqa: E402
from core.schedules import make_schedule  # noqa: E402

# kl_optimal at the toys' data std (the AYS theorem's c), not ComfyUI's default c = 1
DATA_SCALED = {"kl_optimal": {"c": 0.5}}
from toy_data import get_toy  # noqa: E402

PAPER = {"karras": (9.02, 4.03, 1.52), "loglinear": (6.25, 1.83, 0.07), "ays": (-0.14, -0.51, -0.57)}


class Reference(Denoiser):
    """The engine's float64 mixture denoiser, hidden from the fast path (what a direct port calls)."""

    def __init__(self, mix):
        super().__init__()
        self.mix, self.event_shape, self.name = mix, (mix.dim,), f"ref:{mix.name}"

    @property
    def dtype(self):
        return torch.float64

    def denoise(self, x, sigma):
        return self.mix.denoise(x, sigma)


class Clock:
    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *a):
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


# ---- (a) direct implementation ---------------------------------------------------------------
def direct_klub(model, sampler, a, b, n, c, gen):
    """KLUB(a, b) with its own fresh samples, Eq. (1) literally: (estimate, se)."""
    noise = draw_noise(sampler, n, gen)
    s = sample_sigma(noise["u"], [a], [b], c)[0]
    xs = noise["x0"] + s[:, None] * noise["e1"]
    xb = xs + torch.sqrt((b - s) * (b + s))[:, None] * noise["e2"]
    w = (model(xs, s) - model(xb, torch.full_like(s, b))).pow(2).sum(1) / _gap(s, b, c)
    w = w * float(klub_normalizer([a], [b], c)[0])
    return float(w.mean()), float(w.std() / math.sqrt(n))


def direct_sweep(model, sampler, levels, n, c, k, gen):
    """Paper Alg. 1 as loops over points, candidates and intervals, fresh noise per candidate and
    interval. Every point is scored against the sweep's starting neighbours (as our first
    half-sweep sees them, so the (point, candidate) pairs match ours); the same work as a
    point-by-point sweep. Returns (levels, [(point, cand, diff, se_diff)])."""
    L = list(levels)
    diffs, new = [], list(levels)
    for j in range(1, len(L) - 1):
        cand = candidates(torch.tensor([L[j + 1]]), torch.tensor([L[j - 1]]), torch.tensor([L[j]]), k)[0].tolist()
        scores = []
        for x in cand:
            lo, se_lo = direct_klub(model, sampler, L[j + 1], x, n, c, gen)
            hi, se_hi = direct_klub(model, sampler, x, L[j - 1], n, c, gen)
            scores.append((lo + hi, math.hypot(se_lo, se_hi)))
        for i in range(1, len(cand)):
            diffs.append((j, i, scores[i][0] - scores[0][0], math.hypot(scores[i][1], scores[0][1])))
        new[j] = cand[min(range(len(cand)), key=lambda i: scores[i][0])]
    return new, diffs


def ours_differences(model, sampler, levels, n, c, k, seed, dtype=torch.float32):
    """Candidate differences of every interior point under CRN, from one batched call per parity:
    [(point, cand, diff, se_diff)] evaluated at `levels` (Jacobi, as a batched half-sweep sees them)."""
    den = FastMixtureDenoiser(model.mixture, dtype)
    noise = draw_noise(sampler, n, torch.Generator().manual_seed(seed))
    L = torch.tensor(levels, dtype=torch.float64)
    out = []
    for idx in (list(range(1, len(L) - 1, 2)), list(range(2, len(L) - 1, 2))):
        j = torch.tensor(idx)
        cand = candidates(L[j + 1], L[j - 1], L[j], k)
        P, C = cand.shape
        lo = torch.cat([L[j + 1].unsqueeze(1).expand(P, C), cand]).reshape(-1)
        hi = torch.cat([cand, L[j - 1].unsqueeze(1).expand(P, C)]).reshape(-1)
        v = klub_samples(den, noise, lo, hi, c).view(2, P, C, -1).sum(0)
        d = v[:, 1:] - v[:, :1]
        for q, jj in enumerate(idx):
            for i in range(C - 1):
                out.append((jj, i + 1, float(d[q, i].mean()), float(d[q, i].std() / math.sqrt(n))))
    return out


def bench_sweeps(mix, n, c, k, seed):
    start = list(make_schedule("karras", 10).sigmas[:-1])
    rows = []
    ref_model = Reference(mix)
    with Clock() as t_direct:
        _, d_direct = direct_sweep(ref_model, mix.sample, start, n, c, k, torch.Generator().manual_seed(seed))
    ours = {}
    for label, model, dtype in (("ours (float32 matmul denoiser)", MixtureDenoiser(mix), torch.float32),
                                ("ours (engine float64 denoiser)", ref_model, torch.float64)):
        opt = AYSOptimizer(model, mix.sample, steps=10, stages=(10,), n_samples=n, heldout=None, c=c,
                           n_candidates=k, seed=seed, dtype=dtype)
        opt._started = True                                  # skip the start evaluation: time one sweep
        with Clock() as t:
            next(opt.events())
        ours[label] = t
    d_ours = ours_differences(MixtureDenoiser(mix), mix.sample, start, n, c, k, seed)
    ratios = sorted((dd[3] / do[3]) ** 2 for dd, do in zip(d_direct, _match(d_direct, d_ours)))
    med = ratios[len(ratios) // 2]
    rows.append({"method": "direct (loops, fresh noise, float64)", "wall_s": t_direct.wall, "cpu_s": t_direct.cpu,
                 "sweep_speedup": 1.0, "variance_reduction": 1.0, "time_to_equal_se_x": 1.0,
                 "time_to_equal_se_x_cpu": 1.0})
    for label, t in ours.items():
        rows.append({"method": label, "wall_s": t.wall, "cpu_s": t.cpu, "sweep_speedup": t_direct.wall / t.wall,
                     "variance_reduction": med, "time_to_equal_se_x": t_direct.wall * med / t.wall,
                     "time_to_equal_se_x_cpu": t_direct.cpu * med / t.cpu})
    pooled = sum(d[3] ** 2 for d in d_direct) / sum(d[3] ** 2 for d in d_ours)
    return rows, {"median_variance_ratio_direct_over_ours": med, "pairs": len(ratios),
                  "pooled_variance_ratio_direct_over_ours": pooled,
                  "quartiles": [ratios[len(ratios) // 4], ratios[3 * len(ratios) // 4]],
                  "direct": d_direct, "ours": d_ours}


def _match(d_direct, d_ours):
    """Our (point, candidate) pairs in the order of the direct list."""
    by = {(p, i): (p, i, d, s) for p, i, d, s in d_ours}
    return [by[(p, i)] for p, i, _, _ in d_direct]


def empirical_se(mix, n, c, k, repeats, points=(5, 8)):
    """Std over `repeats` seeds of the candidate-difference estimates of some points: ours (CRN)
    against direct (fresh noise), the check of the per-run standard errors used above."""
    lv = list(make_schedule("karras", 10).sigmas[:-1])
    ours, direct = [], []
    ref_model = Reference(mix)
    for r in range(repeats):
        ours.append([d for p, i, d, s in ours_differences(MixtureDenoiser(mix), mix.sample, lv, n, c, k, 100 + r)
                     if p in points])
        g = torch.Generator().manual_seed(200 + r)
        row = []
        for p in points:
            cand = candidates(torch.tensor([lv[p + 1]]), torch.tensor([lv[p - 1]]), torch.tensor([lv[p]]), k)[0]
            sc = [direct_klub(ref_model, mix.sample, lv[p + 1], float(x), n, c, g)[0]
                  + direct_klub(ref_model, mix.sample, float(x), lv[p - 1], n, c, g)[0] for x in cand]
            row += [v - sc[0] for v in sc[1:]]
        direct.append(row)
    o, d = torch.tensor(ours), torch.tensor(direct)
    ratio = (d.std(0) / o.std(0)) ** 2
    return {"points": list(points), "repeats": repeats, "ours_std": o.std(0).tolist(),
            "direct_std": d.std(0).tolist(), "median_variance_ratio_direct_over_ours": float(ratio.median())}


# ---- (b) hierarchy and (c) NLL ---------------------------------------------------------------
def run_hierarchy(model, mix, n, seed, steps=10, stages=None):
    """The hierarchy measured in bench/results/ays.json: nested subdivision (10 -> 19 -> 37, only the new
    points move) unless `stages` is given (the optimizer's default is now 10 -> 20 -> 40 by resampling)."""
    stages = nested_stages(steps) if stages is None else stages
    opt = AYSOptimizer(model, mix.sample, steps=steps, stages=stages, n_samples=n, seed=seed, mixture=mix)
    with Clock() as t:
        evs = list(opt.events())
    return opt, t, evs


def ays_per_nfe(model, mix, n, seed, nfes, full):
    """AYS for each NFE: the first stage run at that step count (result(n) of a hierarchy started
    at n is exactly its first stage, so later stages are skipped); `full` serves its own steps."""
    out = {}
    for nfe in nfes:
        if full is not None and nfe == full.steps:
            out[nfe] = full
        else:
            out[nfe] = run_hierarchy(model, mix, n, seed, nfe, (nfe,))[0]
    return out


def nll_rows(model, mix, kind, schedules, nfes, n, seeds, solver):
    rows = []
    for name, make in schedules.items():
        row = {"model": kind, "schedule": name}
        for nfe in nfes:
            r = evaluate_toy(model, mix, make(nfe), solver, n=n, seeds=tuple(range(seeds)))
            row[f"nll@{nfe}"], row[f"ci@{nfe}"] = r["nll"], r["nll_ci"]
        rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--samples", type=int, default=8192)
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--c", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=6, help="seeds for the empirical SE check")
    ap.add_argument("--n", type=int, default=20000, help="samples per NLL evaluation")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--solver", default="dpmpp_2m_sde")
    ap.add_argument("--mlp", default=None, help="MLP checkpoint (default checkpoints/toy_mlp/grid8x8.safetensors)")
    ap.add_argument("--mlp-samples", type=int, default=2048, help="MC samples when optimizing on the MLP")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    mix = get_toy("grid8x8")
    exact = MixtureDenoiser(mix)
    load = os.getloadavg()[0]
    print(f"grid8x8, {a.samples} samples, {a.threads} thread(s), load average {load:.1f} on {os.cpu_count()} cores")

    sweep_rows, sweep_extra = bench_sweeps(mix, a.samples, a.c, a.candidates, a.seed)
    print(table(sweep_rows, ["method", "wall_s", "cpu_s", "sweep_speedup", "variance_reduction",
                             "time_to_equal_se_x", "time_to_equal_se_x_cpu"], "(a) one sweep from EDM, 10 steps (8 points x 11 candidates)"))
    q = sweep_extra["quartiles"]
    print(f"variance of candidate differences, direct / ours: median "
          f"{sweep_extra['median_variance_ratio_direct_over_ours']:.4g}, quartiles {q[0]:.3g} .. {q[1]:.3g} "
          f"over {sweep_extra['pairs']} (point, candidate) pairs; pooled (sum of variances) "
          f"{sweep_extra['pooled_variance_ratio_direct_over_ours']:.3g}")
    emp = empirical_se(mix, a.samples, a.c, a.candidates, a.repeats)
    print(f"empirical check (points {emp['points']}, {emp['repeats']} seeds): variance of differences direct / ours"
          f" = {emp['median_variance_ratio_direct_over_ours']:.3g} (median over candidates)")

    opt, t_h, evs = run_hierarchy(exact, mix, a.samples, a.seed)
    stages = [sum(1 for e in evs if e.stage == s and e.iteration > 0) for s in range(len(opt.stages))]
    hier = {"wall_s": t_h.wall, "cpu_s": t_h.cpu, "sweeps_per_stage": stages, "stages": list(opt.stages),
            "early_stopped_at": opt.state_dict()["early_stopped_at"], "sigmas_10": list(opt.result(10).sigmas),
            "finest": list(opt.finest().sigmas),
            "curve": [{"iteration": e.iteration, "stage": e.stage, "klub": e.objective, "nll": e.heldout}
                      for e in evs]}
    print(table([{k: v for k, v in hier.items() if k in ("wall_s", "cpu_s", "sweeps_per_stage", "early_stopped_at")}],
                ["wall_s", "cpu_s", "sweeps_per_stage", "early_stopped_at"], "(b) full hierarchy 10 -> 19 -> 37"))

    nfes = (6, 8, 10)
    heur = {name: (lambda nfe, name=name: make_schedule(name, nfe, **DATA_SCALED.get(name, {})))
            for name in ("karras", "loglinear", "kl_optimal")}
    per = ays_per_nfe(exact, mix, a.samples, a.seed, nfes, opt)
    scheds = {**heur, "ays": lambda nfe: per[nfe].result(nfe), "ays_interp": lambda nfe: opt.result(nfe)}
    hier["per_nfe"] = {nfe: {"sigmas": list(o.result(nfe).sigmas), "early_stopped_at": o.state_dict()["early_stopped_at"],
                             "sweeps": len(o.history) - 1} for nfe, o in per.items()}
    fast = FastMixtureDenoiser(mix, torch.float64)        # same maths as the engine's, 4x faster
    rows = nll_rows(fast, mix, "exact", scheds, nfes, a.n, a.seeds, a.solver)
    rows15 = nll_rows(fast, mix, "exact", heur, (9, 12, 15), a.n, a.seeds, a.solver)
    mlp_note = None
    try:
        mlp = _load_mlp(a.mlp)
    except Exception as e:                                    # noqa: BLE001 - report and go on
        mlp, mlp_note = None, f"MLP rows skipped: {e}"
    if mlp is not None:
        with Clock() as t_m:
            mper = ays_per_nfe(mlp, mix, a.mlp_samples, a.seed, nfes, None)     # first stages only
        mrows = nll_rows(mlp, mix, "mlp", {**heur, "ays": scheds["ays"], "ays_mlp": lambda nfe: mper[nfe].result(nfe)},
                         nfes, a.n, a.seeds, a.solver)
        rows += mrows
        hier["mlp"] = {"checkpoint": str(_load_mlp.path), "optimize_wall_s": t_m.wall, "optimize_cpu_s": t_m.cpu, "samples": a.mlp_samples,
                       "per_nfe": {nfe: {"sigmas": list(o.result(nfe).sigmas), "sweeps": len(o.history) - 1,
                                         "early_stopped_at": o.state_dict()["early_stopped_at"]}
                                   for nfe, o in mper.items()}}
    for r in rows:
        if r["model"] == "exact" and r["schedule"] in PAPER:
            r.update({f"paper@{n}": v for n, v in zip(nfes, PAPER[r["schedule"]])})
    cols = ["model", "schedule"] + [f"nll@{n}" for n in nfes] + [f"ci@{n}" for n in nfes] + [f"paper@{n}" for n in nfes]
    print(table(rows, cols, f"(c) NLL (nats, lower is better), {a.solver}, {a.n} samples x {a.seeds} seeds"))
    print(table(rows15, ["model", "schedule", "nll@9", "nll@12", "nll@15"], "heuristics at 1.5 x NFE"))
    if mlp_note:
        print(mlp_note)
    checks = _checks(rows, rows15, nfes)
    for k, v in checks.items():
        print(f"{k}: {v}")
    p = write("ays", {"threads": a.threads, "load_average": load, "samples": a.samples, "sweeps": sweep_rows,
                      "sweep_stats": {k: v for k, v in sweep_extra.items() if k not in ("direct", "ours")},
                      "empirical_se": emp, "hierarchy": hier, "nll": rows, "nll_heuristics_1_5x": rows15,
                      "checks": checks, "mlp_note": mlp_note})
    print(f"wrote {p}")


def _load_mlp(path):
    import core.models as cm
    if path is not None:
        cm.toy_checkpoint = lambda toy: Path(path)
    _load_mlp.path = cm.toy_checkpoint("grid8x8")
    if not _load_mlp.path.is_file():
        raise FileNotFoundError(f"{_load_mlp.path} not found (trained by the toy-MLP task)")
    return cm.load_toy_mlp("grid8x8")


def _checks(rows, rows15, nfes):
    out = {}
    for kind in sorted({r["model"] for r in rows}):
        by = {r["schedule"]: r for r in rows if r["model"] == kind}
        for ays in [s for s in by if s.startswith("ays")]:
            out[f"{kind}: {ays} beats every heuristic at NFE {nfes}"] = all(
                by[ays][f"nll@{n}"] < min(by[h][f"nll@{n}"] for h in ("karras", "loglinear", "kl_optimal"))
                for n in nfes)
    ex = {r["schedule"]: r for r in rows if r["model"] == "exact"}
    h15 = {(r["schedule"], n): r[f"nll@{n}"] for r in rows15 for n in (9, 12, 15)}
    out["exact: ays at n <= best heuristic at 1.5n"] = all(
        ex["ays"][f"nll@{n}"] <= min(h15[(h, m)] for h in ("karras", "loglinear", "kl_optimal"))
        for n, m in zip(nfes, (9, 12, 15)))
    return out


if __name__ == "__main__":
    main()
