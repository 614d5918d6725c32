"""Plotly figures of the Optimizer page, per method (issue 15 item 12). Like app_lib.plots they
arrange what the engine computed (the run's history, the Stein density on its grid) into traces
and compute nothing; trace names are stable so tests can find them.

    optimizer_points_fig(history)           every iteration's levels, one series per AYS stage /
                                            DM-NonUniform start
    optimizer_curves_fig(history, ...)      objective (one line per stage / start: a new start's
                                            first value is not a divergence) and the held-out metric
    stein_density_fig(density, sigmas)      score-optimal: dLambda / dlog sigma with the schedule's
                                            levels, which cut it into equal areas
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from app_lib.plots import _layout, _positive, color, sigma_ticks

BANDS = ("rgba(31, 119, 180, 0.28)", "rgba(31, 119, 180, 0.12)")      # alternating interval fills
LOG_SPAN = 30.0            # an objective spanning more than this factor gets a log axis


def _legend_below(fig: go.Figure) -> go.Figure:
    """The legend under the x axis's title (app_lib.plots._layout's sits on it)."""
    fig.update_layout(legend=dict(orientation="h", y=-0.2, yanchor="top"))
    return fig


def _group(h: dict) -> str:
    return h.get("group", f"stage {h['stage']}")


def optimizer_points_fig(history: list, title: str = "Schedule points over iterations") -> go.Figure:
    """Every event's positive sigmas against its iteration (log y), one series per "group" (AYS
    stage, DM-NonUniform start); placeholder events (no schedule yet) are left out."""
    fig = go.Figure()
    shown = [h for h in history if not h.get("placeholder")]
    for j, g in enumerate(dict.fromkeys(_group(h) for h in shown)):
        xs, ys = [], []
        for h in shown:
            if _group(h) == g:
                pos = _positive(h["sigmas"])
                xs.extend([h["iteration"]] * len(pos))
                ys.extend(pos.tolist())
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=g, marker=dict(size=5, color=color(j))))
    fig.update_yaxes(type="log", title="sigma", **sigma_ticks([h["sigmas"] for h in shown]))
    fig.update_xaxes(title="iteration")
    return _legend_below(_layout(fig, title))


def optimizer_curves_fig(history: list, early_stopped_at=None, best_so_far=None,
                         title: str = "Objective and held-out metric", objective_name: str = "objective") -> go.Figure:
    """The objective (left axis, `objective_name`) per iteration, one line per group: "objective" when
    the run has one group, else "objective, GROUP" (AYS "stage K": each stage has more steps, so its
    total is on another level; DM-NonUniform "start NAME": each start begins afresh from its own
    initial schedule; its final "result" is one marker). Events without a finite objective are left
    out; a log axis when the objective spans more than LOG_SPAN (a poor start far above the rest would
    flatten every other line). The held-out metric on the right axis, named by the events' `heldout_name`; the early-stopping
    point the optimizer reported as a dashed vertical line, the best held-out iteration so far (while
    it runs) as a dotted one."""
    obj = [h for h in history if h["objective"] is not None and np.isfinite(h["objective"])]
    groups = list(dict.fromkeys(_group(h) for h in history if not h.get("placeholder")))
    fig = go.Figure()
    for j, g in enumerate(groups):
        pts = [(h["iteration"], h["objective"]) for h in obj if _group(h) == g]
        if not pts:
            continue
        name = "objective" if len(groups) == 1 else f"objective, {g}"
        fig.add_trace(go.Scatter(x=[a for a, _ in pts], y=[b for _, b in pts], name=name,
                                 mode="markers" if g == "result" else "lines+markers",
                                 line=dict(color=color(j)), marker=dict(size=9 if g == "result" else 6)))
    vals = np.array([h["objective"] for h in obj])
    log_y = vals.size > 1 and vals.min() > 0 and vals.max() / vals.min() > LOG_SPAN   # a start far above the rest
    held = [(h["iteration"], h["heldout"]) for h in history if h.get("heldout") is not None]
    if held:
        metric = next((h["heldout_name"] for h in reversed(history) if h.get("heldout_name")), None)
        label = f"held-out {metric}" if metric else "held-out"
        fig.add_trace(go.Scatter(x=[a for a, _ in held], y=[b for _, b in held], mode="lines+markers",
                                 name=label, yaxis="y2", line=dict(color="#333333", dash="dot")))
        fig.update_layout(yaxis2=dict(title=f"{label} (lower is better)", overlaying="y", side="right"))
    if early_stopped_at is not None:
        fig.add_vline(x=early_stopped_at, line_dash="dash", line_color="green",
                      annotation_text="early-stopping point", annotation_position="top left")
    elif best_so_far is not None:
        fig.add_vline(x=best_so_far, line_dash="dot", line_color="gray",
                      annotation_text="best held-out so far", annotation_position="top left")
    fig.update_xaxes(title="iteration")
    # (update_layout, not update_yaxes: that would also retitle the right axis)
    fig.update_layout(yaxis=dict(title=objective_name, type="log" if log_y else "linear"))
    return _legend_below(_layout(fig, title))


def stein_density_fig(density: dict, sigmas=None,
                      title: str = "Stein density and the score-optimal levels") -> go.Figure:
    """Score-optimal's Stein density on its grid: density_log = sqrt(delta) sigma = dLambda / dlog sigma
    over a log-sigma axis (so an area under the curve is an increment of Lambda), from the engine's
    {grid_sigma, density_log} (the levels estimated so far while it runs).

    sigmas: the schedule (its positive levels are drawn as points on the curve, and each interval
    between two levels as a filled band "equal-area intervals": the constant-speed schedule gives
    every band the same area Lambda_total / (n - 1)). A band's edges meet the curve where the grid's
    polyline does (linear in log sigma between grid levels)."""
    g = np.asarray(density["grid_sigma"], dtype=np.float64)
    f = np.asarray(density["density_log"], dtype=np.float64)
    fig = go.Figure([go.Scatter(x=g, y=f, mode="lines", name="Stein density", line=dict(color=color(0)))])
    if sigmas is not None and g.size >= 2:
        lev = np.sort(_positive(sigmas))
        at = np.interp(np.log(lev), np.log(g), f)                 # where each level meets the drawn curve
        for i in range(lev.size - 1):
            inside = (g > lev[i]) & (g < lev[i + 1])
            fig.add_trace(go.Scatter(x=np.concatenate([[lev[i]], g[inside], [lev[i + 1]]]),
                                     y=np.concatenate([[at[i]], f[inside], [at[i + 1]]]),
                                     mode="none", fill="tozeroy", fillcolor=BANDS[i % 2], hoverinfo="skip",
                                     name="equal-area intervals", legendgroup="bands", showlegend=i == 0))
        fig.add_trace(go.Scatter(x=lev, y=at, mode="markers", name="schedule levels",
                                 marker=dict(size=8, color=color(1))))
    fig.update_xaxes(type="log", title="sigma", **sigma_ticks([g]))
    fig.update_yaxes(title="dLambda / dlog sigma", rangemode="tozero")
    return _legend_below(_layout(fig, title))
