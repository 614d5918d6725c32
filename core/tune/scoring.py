"""Held-out scoring of candidate schedules for `tune` (methods.md s.7), and the decision rule.

Every candidate is sampled from the SAME held-out noise: batch b starts from
x = sigma_max * z_b, z_b = initial_noise(seed_b) (core.sampling), with seeds that no optimizer saw.
One number per batch and metric (lower is better):

    nll   exact mixtures: mean -log p(x) of the batch's samples under the true density (nats);
          a collapsed sample can win it (issue 15), hence the ref guard below
    ref   any model, deterministic solver: mean over the batch of the per-sample RMS distance to a
          many-step Heun solution of the same ODE from the same z (core.compare)
    fd    models with the digits metrics: Frechet distance of the batch's classifier features to
          the HELD-OUT (test) split (core.metrics.images)
    swd   2-D models: sliced Wasserstein-2 to n fresh data samples drawn for the batch (seed_b + 10_000,
          the same for every candidate): from the mixture, or n of the user's data points; a
          collapsed or mode-dropping sample cannot win it

Statistics over the B batches (B >= 2): mean +- the 95 % Student-t half-width, and for each
candidate the PAIRED difference to the best heuristic, d_b = m_b(candidate) - m_b(best heuristic),
mean +- t half-width (the noise is shared, so the pairing removes most of the batch variance).

Decision (`decide`): an optimizer wins only when its paired difference on the primary metric is
significantly negative (upper end of the 95 % interval < 0; `require_significant=False` asks only
for a negative mean) and larger than round-off (mean < -1e-6 |best heuristic's mean|: with shared
noise a nudge of 1e-9 gives a "significant" 1e-12), and, when the primary metric is nll and ref was measured, when it is not
significantly WORSE than the best heuristic on swd (lower end of that interval > 0 rejects it).
ref is reported beside them, not used as the guard: AYS on the grid8x8 MLP at NFE 6 reached the
data's own NLL while sitting further from the many-step ODE solution than log-linear, which is a
distribution-level gain, not a collapse.
The winner is the lowest primary mean among those; without one, the best heuristic is returned.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from core.errors import ScheduleLabError
from core.metrics.toy import mean_ci
from core.sampling import generate, initial_noise
from core.solvers import get_solver

METRICS = ("nll", "ref", "fd", "swd")
REL_TOL = 1e-6       # a gain below 1e-6 of the best heuristic's value is round-off (shared noise), not a win


def interval(values) -> dict:
    """{"mean", "ci"} of per-batch values: mean and 95 % t half-width (None when not finite or B < 2)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or not np.all(np.isfinite(v)):
        return {"mean": None, "ci": None}
    m, h = mean_ci(v.tolist())
    return {"mean": m, "ci": h if math.isfinite(h) else None}


def paired(a, b) -> dict:
    """Paired difference a - b over batches: {"mean", "ci"} (see `interval`)."""
    if len(a) != len(b):
        raise ScheduleLabError(f"paired difference needs the same batches; got {len(a)} and {len(b)} values")
    return interval(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))


def significantly_below_zero(d: dict, require_significant: bool = True, tol: float = 0.0) -> bool:
    """d = paired(...): mean < -tol and the upper end of its interval < 0 (only the mean when not required)."""
    if d["mean"] is None or not d["mean"] < -tol:
        return False
    return not require_significant or (d["ci"] is not None and d["mean"] + d["ci"] < 0)


def significantly_above_zero(d: dict) -> bool:
    return d["mean"] is not None and d["ci"] is not None and d["mean"] - d["ci"] > 0


def decide(scores: dict, kinds: dict, primary: str, require_significant: bool = True, guard: str | None = None):
    """Pick the winner from per-batch scores.

    Args:
        scores: {candidate: {metric: [B values]}} (inf for a diverged batch).
        kinds: {candidate: "heuristic" | "optimizer"}.
        primary: the metric that decides; guard: a metric an optimizer must not be significantly
            worse on (None: no guard).
    Returns (winner, best_heuristic, rows) with rows {candidate: {"primary": interval,
    "diff": paired vs best heuristic, "guard_diff": ..., "wins": bool, "why": str}}.
    """
    heur = [c for c in scores if kinds[c] == "heuristic" and interval(scores[c][primary])["mean"] is not None]
    if not heur:
        raise ScheduleLabError(f"no heuristic gave a finite {primary} on the held-out noise; check the model "
                               "and the solver (every heuristic diverged)")
    best_h = min(heur, key=lambda c: interval(scores[c][primary])["mean"])
    tol = REL_TOL * abs(interval(scores[best_h][primary])["mean"])
    rows, winners = {}, []
    for c, sc in scores.items():
        row = {"primary": interval(sc[primary]), "diff": paired(sc[primary], scores[best_h][primary]),
               "guard_diff": None, "wins": False, "why": ""}
        if guard and guard in sc and guard in scores[best_h]:
            row["guard_diff"] = paired(sc[guard], scores[best_h][guard])
        if kinds[c] == "optimizer":
            if row["primary"]["mean"] is None:
                row["why"] = "diverged on some held-out batch"
            elif not significantly_below_zero(row["diff"], require_significant, tol):
                row["why"] = ("not better than the best heuristic" if row["diff"]["mean"] >= -tol else
                              "better on average, but the 95 % interval of the paired difference includes 0")
            elif row["guard_diff"] is not None and significantly_above_zero(row["guard_diff"]):
                row["why"] = f"better on {primary} but significantly worse on {guard} (collapse guard)"
            else:
                row["wins"], row["why"] = True, "significantly better than the best heuristic"
                winners.append(c)
        rows[c] = row
    winner = min(winners, key=lambda c: rows[c]["primary"]["mean"]) if winners else best_h
    return winner, best_h, rows


class HeldoutScorer:
    """schedule -> {metric: [value per held-out batch]} for one model and solver.

    Args:
        model: the Denoiser; mixture: the exact GaussianMixture (nll) or None; points: data points
            (core.models.user_model.ImageData, [M, d]) swd compares with instead of mixture samples.
        solver: solver name; metrics: names from METRICS to measure.
        seeds: one held-out noise seed per batch; n: samples per batch.
        ref_steps: Heun steps of the reference ("ref"); image: an image model (fd features, chunked
            sampling, the on-disk reference cache); refs: a dict to share references between scorers.
    """

    def __init__(self, model, solver: str, metrics, seeds, n: int, mixture=None, ref_steps: int = 500,
                 image: bool = False, refs: dict | None = None, points=None):
        from core.optimizers.heldout import sampling_model
        self.spec = get_solver(solver)
        bad = [m for m in metrics if m not in METRICS]
        if bad:
            raise ScheduleLabError(f"unknown tune metric {bad[0]!r}; choose from {', '.join(METRICS)}")
        if "nll" in metrics and mixture is None:
            raise ScheduleLabError("metric 'nll' needs the exact data mixture (a toy); use 'swd', 'ref' or 'fd'")
        if "swd" in metrics and mixture is None and points is None:
            raise ScheduleLabError("metric 'swd' needs the data: the mixture or data points; use 'ref' or 'fd'")
        if "ref" in metrics and self.spec.stochastic:
            raise ScheduleLabError(f"metric 'ref' (distance to the ODE reference from the same noise) needs a "
                                   f"deterministic solver; {solver!r} is stochastic: use nll (toys) or fd (digits)")
        if not isinstance(n, int) or n < 2:
            raise ScheduleLabError(f"held-out samples per batch must be an integer >= 2; got {n!r}")
        self.model, self.mixture, self.points, self.metrics = model, mixture, points, tuple(metrics)
        self.seeds, self.n, self.ref_steps, self.image = [int(s) for s in seeds], n, int(ref_steps), image
        self._fast = model if image else sampling_model(model)
        self._refs = {} if refs is None else refs      # may be shared between scorers of one model

    def sample(self, schedule, seed: int) -> torch.Tensor:
        """n samples of `schedule` from the batch's noise z(seed); float64 CPU."""
        if self.image:
            from core.metrics.images import sample_images
            x, _, _ = sample_images(self.model, schedule, self.spec.name, self.n, seed)
            return x.double()
        with torch.no_grad():
            return generate(self._fast, schedule, self.n, self.spec.name, seed=seed).x.double().cpu()

    def reference(self, seed: int, sigma_max: float) -> torch.Tensor:
        key = (getattr(self.model, "name", ""), seed, float(sigma_max), self.n, self.ref_steps)
        if key not in self._refs:
            if self.image:
                from core.metrics.images import reference_samples
                self._refs[key] = reference_samples(self.model, self.n, seed, sigma_max, steps=self.ref_steps).double()
            else:
                from core.compare import reference_solution
                self._refs[key] = reference_solution(self._fast, self.n, seed, sigma_max, self.ref_steps,
                                                     "heun", sigma_min=self.model.sigma_min)
        return self._refs[key]

    def noise(self, seed: int, sigma_max: float) -> torch.Tensor:
        """The batch's initial state x = sigma_max z (what every candidate starts from)."""
        return initial_noise(self._fast, self.n, sigma_max, seed)

    def swd_data(self, seed: int) -> torch.Tensor:
        """The batch's data for swd (the same for every candidate): n fresh mixture samples, or n of the
        data points drawn without replacement (with, when there are fewer than n), seed_b + 10_000."""
        g = torch.Generator().manual_seed(seed + 10_000)
        if self.points is None:
            return self.mixture.sample(self.n, g).double().cpu()
        pts = self.points.images
        m = pts.shape[0]
        idx = torch.randperm(m, generator=g)[:self.n] if m >= self.n else torch.randint(m, (self.n,), generator=g)
        return pts[idx].double().cpu()

    def __call__(self, schedule) -> dict:
        out = {m: [] for m in self.metrics}
        for seed in self.seeds:
            x = self.sample(schedule, seed)
            ok = bool(torch.isfinite(x).all())
            for m in self.metrics:
                out[m].append(self._metric(m, x, seed, schedule) if ok else math.inf)
        return out

    def _metric(self, m: str, x: torch.Tensor, seed: int, schedule) -> float:
        if m == "nll":
            v = float(-self.mixture.log_prob(x.to(self.mixture.means.device)).mean())
        elif m == "swd":
            from core.metrics.toy import sliced_wasserstein
            data = self.swd_data(seed)
            v = sliced_wasserstein(x, data, seed=seed)
        elif m == "ref":
            ref = self.reference(seed, schedule.sigma_max)
            v = float((x - ref).flatten(1).pow(2).mean(1).sqrt().mean())
        else:
            from core.metrics import images as im
            v = im.frechet_distance(im.classify(x.float())[1], im.real_features("test")[1])
        return v if math.isfinite(v) else math.inf
