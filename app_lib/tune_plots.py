"""Plotly figures of the Tune page. They arrange what core.tune computed; they compute nothing.
Trace names are stable so tests can find them: one trace per candidate (its name) in the levels
figure; "heuristics", "optimizers" and "winner" in the leaderboard figure."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from app_lib.plots import _layout, _positive, color, sigma_ticks

WINNER, BEST_H = "#2ca02c", "#ff7f0e"


def leaderboard_fig(rows: list, metric: str, winner: str, best_heuristic: str) -> go.Figure:
    """Each scored candidate's held-out mean with its 95 % interval (error bars), best at the top;
    heuristics and optimizers in two series, the winner as a star, the best heuristic's mean as a
    dashed vertical line. rows: core.tune TuneResult.table."""
    scored = [r for r in rows if r.get(metric) is not None]
    scored.sort(key=lambda r: r[metric], reverse=True)              # plotly draws the first row at the bottom
    fig = go.Figure()
    for label, kind, col in (("heuristics", "heuristic", "#7f7f7f"), ("optimizers", "optimizer", color(0))):
        rs = [r for r in scored if r["kind"] == kind and r["name"] != winner]
        fig.add_trace(go.Scatter(x=[r[metric] for r in rs], y=[r["name"] for r in rs], mode="markers", name=label,
                                 marker=dict(size=9, color=col),
                                 error_x=dict(type="data", array=[r.get(metric + "_ci") or 0.0 for r in rs])))
    w = [r for r in scored if r["name"] == winner]
    fig.add_trace(go.Scatter(x=[r[metric] for r in w], y=[r["name"] for r in w], mode="markers", name="winner",
                             marker=dict(size=16, symbol="star", color=WINNER),
                             error_x=dict(type="data", array=[r.get(metric + "_ci") or 0.0 for r in w])))
    bh = next((r for r in scored if r["name"] == best_heuristic), None)
    if bh is not None:
        fig.add_vline(x=bh[metric], line_dash="dash", line_color=BEST_H,
                      annotation_text=f"best heuristic: {best_heuristic}", annotation_position="top")
    fig.update_xaxes(title=f"held-out {metric}: mean ± 95 % (lower is better)")
    fig.update_yaxes(categoryorder="array", categoryarray=[r["name"] for r in scored])
    return _layout(fig, f"Leaderboard on held-out noise ({metric})", height=120 + 28 * max(1, len(scored)))


def levels_fig(candidates: dict, winner: str, best_heuristic: str,
               title: str = "Every candidate's levels") -> go.Figure:
    """One row of markers per candidate at its positive sigmas on one log-sigma axis (1-2-5 ticks);
    the winner green and the best heuristic orange. candidates: {name: sigmas}."""
    fig = go.Figure()
    for i, (name, sig) in enumerate(candidates.items()):
        pos = _positive(sig)
        c = WINNER if name == winner else BEST_H if name == best_heuristic else "#9a9a9a"
        fig.add_trace(go.Scatter(x=pos, y=[name] * len(pos), mode="markers+lines", name=name,
                                 marker=dict(size=11 if name == winner else 7, color=c),
                                 line=dict(width=2 if name == winner else 1, color=c),
                                 hovertemplate="sigma = %{x:.4g}<extra>" + name + "</extra>"))
    fig.update_xaxes(type="log", title="sigma (log scale; the final step jumps to 0)",
                     **sigma_ticks([np.asarray(s) for s in candidates.values()]))
    fig.update_yaxes(categoryorder="array", categoryarray=list(candidates)[::-1])
    return _layout(fig, title, height=140 + 26 * len(candidates), showlegend=False)
