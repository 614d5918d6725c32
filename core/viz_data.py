"""Arrays the app plots, computed by the engine (the UI draws them, never computes them).

`density_grid`      the exact (noisy) log-density of a 2D toy on a regular grid.
`cumulative_share`  running share of a per-interval cost from sigma_max down to 0.
`schedule_table`    one row of summary numbers per schedule (for tables).
`objective_totals`  KLUB / Stein / truncation totals per schedule and the winner of each.
`metric_winners`    the best schedule per metric of a metrics table.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from core.errors import ScheduleLabError


def default_extent(mixture, pad: float = 3.0) -> tuple:
    """A square (lo, hi) covering every component mean +- pad component std, plus the total
    spread: the window in which a 2D toy's density is drawn."""
    sd = float(mixture.evals.clamp_min(0).sqrt().max())
    lo = float(mixture.means.min()) - pad * sd
    hi = float(mixture.means.max()) + pad * sd
    half = max(hi - lo, 4 * mixture.std()) / 2 * 1.1
    mid = (hi + lo) / 2
    return (mid - half, mid + half)


def density_grid(mixture, n: int = 200, extent: tuple | None = None, sigma: float = 0.0,
                 chunk: int = 20000) -> dict:
    """log p_sigma on an n x n grid over extent x extent (2D toys only).

    Args:
        mixture: a toy_data GaussianMixture with dim 2.
        n: grid points per axis (>= 2).
        extent: (lo, hi) for both axes; default `default_extent(mixture)`.
        sigma: noise level of the marginal p_sigma = p * N(0, sigma^2 I) (0: the data).
    Returns:
        {"x": [n] float64, "y": [n] float64, "log_density": [n, n] float64 with rows indexed
        by y and columns by x (plotly heatmap convention), "extent": (lo, hi), "sigma"}.
    """
    if mixture.dim != 2:
        raise ScheduleLabError(f"density_grid draws 2D toys; {mixture.name!r} has dim {mixture.dim}")
    if int(n) < 2:
        raise ScheduleLabError(f"density_grid needs n >= 2 grid points; got {n}")
    if sigma < 0 or not math.isfinite(sigma):
        raise ScheduleLabError(f"sigma must be a finite number >= 0; got {sigma}")
    lo, hi = extent if extent is not None else default_extent(mixture)
    if not hi > lo:
        raise ScheduleLabError(f"extent must be (lo, hi) with hi > lo; got {(lo, hi)}")
    ax = torch.linspace(float(lo), float(hi), int(n), dtype=torch.float64)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1).to(mixture.device)
    logp = torch.cat([mixture.log_prob(p, sigma) for p in pts.split(chunk)]).reshape(int(n), int(n))
    return {"x": ax.numpy(), "y": ax.numpy(), "log_density": logp.cpu().numpy(),
            "extent": (float(lo), float(hi)), "sigma": float(sigma)}


def cumulative_share(sigma_lo, sigma_hi, share) -> dict:
    """Running share of a per-interval cost, accumulated from the noisiest interval down.

    Args:
        sigma_lo, sigma_hi: [n] interval ends (any order of intervals).
        share: [n] each interval's share of the total (sums to 1).
    Returns:
        {"sigma": [n] the lower end of each interval, from sigma_max downwards,
         "cumulative": [n] share of the total spent between sigma_max and that sigma}.
    """
    lo, hi, sh = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (sigma_lo, sigma_hi, share))
    if not (lo.shape == hi.shape == sh.shape):
        raise ScheduleLabError(f"cumulative_share needs arrays of one length; got {lo.shape}, "
                               f"{hi.shape}, {sh.shape}")
    order = np.argsort(-hi, kind="stable")
    return {"sigma": lo[order], "cumulative": np.cumsum(sh[order])}


def schedule_table(schedules: dict) -> list:
    """{label: Schedule} -> rows {label, name, steps, sigma_max, sigma_min, solver, sigmas}
    with the sigmas as a short comma string (4 significant digits)."""
    rows = []
    for label, s in schedules.items():
        rows.append({"label": label, "name": s.name, "steps": s.steps, "sigma_max": s.sigma_max,
                     "sigma_min": s.sigma_min, "solver": s.solver or "",
                     "sigmas": ", ".join(f"{v:.4g}" for v in s.sigmas)})
    return rows


def objective_totals(klub: dict, stein: dict, truncation: dict) -> dict:
    """One row of totals per schedule from the per-interval curves, and the winner of each column.

    Args: {label: curves} of core.objectives.klub.klub_curves (total, total_se),
        core.objectives.stein.stein_curves (total_cost) and
        core.objectives.truncation.truncation_curve (objective); a dict may be empty (that
        objective failed) and its column is then left out.
    Returns {"rows": [{"schedule", "KLUB", "KLUB s.e.", "Stein", "bound"} ...] in the order of the
    labels, "best": {column: label with the lowest finite total}} (lower is better for all three;
    a NaN total is shown as None and never wins)."""
    cols = {"KLUB": (klub, "total"), "Stein": (stein, "total_cost"), "bound": (truncation, "objective")}
    labels = list(dict.fromkeys([*klub, *stein, *truncation]))
    rows, best = [], {}
    for label in labels:
        row = {"schedule": label}
        for col, (curves, key) in cols.items():
            if curves:
                v = float(curves[label][key]) if label in curves else math.nan
                row[col] = v if math.isfinite(v) else None
                if col == "KLUB":
                    se = float(curves[label].get("total_se", math.nan)) if label in curves else math.nan
                    row["KLUB s.e."] = se if math.isfinite(se) else None
        rows.append(row)
    for col, (curves, _) in cols.items():
        vals = [(r[col], r["schedule"]) for r in rows if r.get(col) is not None]
        if vals:
            best[col] = min(vals, key=lambda t: t[0])[1]          # first listed on a tie
    return {"rows": rows, "best": best}


def metric_winners(metrics: dict, keys, higher_is_better=()) -> dict:
    """{metric: label of the best finite value} over {label: {metric: value}} (lowest wins, highest
    for the keys in `higher_is_better`; first listed on a tie; a metric with no finite value has
    no winner)."""
    best = {}
    for k in keys:
        vals = [(float(m[k]), label) for label, m in metrics.items()
                if m.get(k) is not None and math.isfinite(float(m[k]))]
        if vals:
            sign = -1.0 if k in higher_is_better else 1.0
            best[k] = min(vals, key=lambda t: sign * t[0])[1]
    return best
