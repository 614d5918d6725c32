"""Plotly figure builders. They arrange arrays the engine computed into traces; they compute
nothing (no statistics, no model calls). Trace names are stable so tests can find them."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#7f7f7f", "#bcbd22")


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _layout(fig: go.Figure, title: str, height: int = 380, **kw) -> go.Figure:
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", y=-0.15), **kw)
    return fig


def _positive(sigmas) -> np.ndarray:
    """The positive levels of a schedule (the final 0 has no place on a log axis)."""
    s = np.asarray(sigmas, dtype=np.float64)
    return s[s > 0]


def sigma_ticks(values, max_ticks: int = 10) -> dict:
    """Tick marks for a log-sigma axis at 1-2-5 x 10^k only (decades alone when that gives more than
    `max_ticks`), over the positive `values` the axis shows; plotly's defaults crowd such axes with
    every digit. Returns dict(tickvals, ticktext) for update_xaxes / update_yaxes ({} when fewer than
    two such ticks fall in the range: plotly's own ticks then)."""
    v = _positive(np.concatenate([np.ravel(np.asarray(a, dtype=np.float64)) for a in values]) if len(values) else [])
    if v.size == 0:
        return {}
    lo, hi = float(v.min()) / 1.001, float(v.max()) * 1.001
    ks = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
    for mant in ((1, 2, 5), (1,)):
        ticks = [m * 10.0 ** k for k in ks for m in mant if lo <= m * 10.0 ** k <= hi]
        if len(ticks) <= max_ticks:
            break
    if len(ticks) < 2:                                                 # a narrow range: plotly's own ticks
        return {}
    return {"tickvals": ticks, "ticktext": [f"{t:g}" for t in ticks]}


# ---------------------------------------------------------------- toys
def density_trace(grid: dict) -> go.Heatmap:
    """The exact log-density as a heatmap (clipped 12 nats below its peak so the modes show)."""
    z = np.asarray(grid["log_density"])
    return go.Heatmap(x=grid["x"], y=grid["y"], z=z, zmin=float(z.max()) - 12, zmax=float(z.max()),
                      colorscale="Blues", showscale=False, name="density", hoverinfo="skip")


def samples_fig(grid: dict, x: np.ndarray, title: str, max_points: int = 3000) -> go.Figure:
    """Samples [n, 2] (the first max_points) over the true density."""
    x = np.asarray(x)[:max_points]
    fig = go.Figure([density_trace(grid),
                     go.Scattergl(x=x[:, 0], y=x[:, 1], mode="markers", name="samples",
                                  marker=dict(size=3, color="#d62728", opacity=0.6))])
    lo, hi = grid["extent"]
    fig.update_xaxes(range=[lo, hi], constrain="domain")
    fig.update_yaxes(range=[lo, hi], scaleanchor="x")
    return _layout(fig, title, height=420, showlegend=False)


def _paths_and_now(traj: np.ndarray, step: int) -> tuple:
    """(paths [m, 2] up to `step`, split per sample by NaN rows; positions [k, 2] at `step`)."""
    path = traj[: step + 1]                                          # [step + 1, k, 2]
    k = path.shape[1]
    sep = np.full((1, k, 2), np.nan)
    return np.concatenate([path, sep]).transpose(1, 0, 2).reshape(-1, 2), traj[step]


def trajectory_fig(grid: dict, traj: np.ndarray, step: int, sigmas, title: str, animate: bool = False) -> go.Figure:
    """Paths [steps + 1, k, 2] of k samples up to `step`, with their positions at that step.

    animate: also one plotly frame per step (0 .. steps) and Play / Pause buttons that run them in
    the browser (no rerun); the figure shows `step` until Play is pressed."""
    traj = np.asarray(traj)
    step = int(min(max(step, 0), traj.shape[0] - 1))
    lines, now = _paths_and_now(traj, step)
    fig = go.Figure([density_trace(grid),
                     go.Scatter(x=lines[:, 0], y=lines[:, 1], mode="lines", name="paths",
                                line=dict(width=1, color="rgba(80,80,80,0.5)"), connectgaps=False),
                     go.Scatter(x=now[:, 0], y=now[:, 1], mode="markers", name="current",
                                marker=dict(size=6, color="#d62728"))])
    lo, hi = grid["extent"]
    fig.update_xaxes(range=[lo, hi], constrain="domain")
    fig.update_yaxes(range=[lo, hi], scaleanchor="x")
    head = lambda k: f"{title}: step {k}, sigma = {float(sigmas[k]):.4g}"   # noqa: E731
    if animate:
        frames = []
        for k in range(traj.shape[0]):
            ln, nw = _paths_and_now(traj, k)
            frames.append(go.Frame(name=str(k), traces=[1, 2], layout=dict(title=dict(text=head(k))),
                                   data=[go.Scatter(x=ln[:, 0], y=ln[:, 1]), go.Scatter(x=nw[:, 0], y=nw[:, 1])]))
        fig.frames = frames
        play = dict(frame=dict(duration=500, redraw=False), transition=dict(duration=0), fromcurrent=False,
                    mode="immediate")
        pause = dict(frame=dict(duration=0, redraw=False), transition=dict(duration=0), mode="immediate")
        fig.update_layout(updatemenus=[dict(type="buttons", direction="left", x=0.0, y=-0.02, xanchor="left",
                                            yanchor="top", showactive=False,
                                            buttons=[dict(label="▶ Play", method="animate", args=[None, play]),
                                                     dict(label="❚❚ Pause", method="animate",
                                                          args=[[None], pause])])])
    return _layout(fig, head(step), height=420 + (40 if animate else 0), showlegend=False)


# ---------------------------------------------------------------- schedules
def schedule_points_fig(schedules: dict, title: str = "Schedule points on a log-sigma axis") -> go.Figure:
    """One row of markers per schedule at its positive sigmas (log axis)."""
    fig = go.Figure()
    for i, (label, s) in enumerate(schedules.items()):
        pos = _positive(s.sigmas)
        fig.add_trace(go.Scatter(x=pos, y=[label] * len(pos), mode="markers+lines", name=label,
                                 marker=dict(size=9, color=color(i)), line=dict(width=1, color=color(i)),
                                 hovertemplate="sigma = %{x:.4g}<extra>" + label + "</extra>"))
    fig.update_xaxes(type="log", title="sigma (log scale; the final step jumps to 0)",
                     **sigma_ticks([s.sigmas for s in schedules.values()]))
    return _layout(fig, title, height=140 + 40 * len(schedules), showlegend=False)


def schedules_fig(schedules: dict, title: str = "Schedules") -> go.Figure:
    """sigma (log axis) against the fraction of steps taken, one line per schedule."""
    fig = go.Figure()
    for i, (label, s) in enumerate(schedules.items()):
        pos = _positive(s.sigmas)
        frac = np.arange(len(pos)) / max(s.steps, 1)
        fig.add_trace(go.Scatter(x=frac, y=pos, mode="lines+markers", name=label,
                                 marker=dict(color=color(i), size=6), line=dict(color=color(i))))
    fig.update_yaxes(type="log", title="sigma", **sigma_ticks([s.sigmas for s in schedules.values()]))
    fig.update_xaxes(title="step / steps")
    return _layout(fig, title, height=460)


def editor_fig(original, edited, selected=None, title: str = "Levels (click a point to pick it)") -> go.Figure:
    """The editor's chart: positive levels (log y) against their row, the edited levels first
    (trace 0, "edited": the one plotly selection events pick from), the original dotted, and
    the picked row ringed ("picked")."""
    lo, ed = _positive(original), np.asarray(edited, dtype=np.float64)
    fig = go.Figure([go.Scatter(x=np.arange(len(ed)), y=ed, mode="lines+markers", name="edited",
                                marker=dict(size=10, color=color(1)), line=dict(color=color(1)),
                                hovertemplate="row %{x}: sigma = %{y:.5g}<extra>edited</extra>"),
                     go.Scatter(x=np.arange(len(lo)), y=lo, mode="lines+markers", name="original",
                                marker=dict(size=6, color="gray"), line=dict(color="gray", dash="dot"),
                                hoverinfo="skip")])
    if selected is not None and 0 <= int(selected) < len(ed):
        fig.add_trace(go.Scatter(x=[int(selected)], y=[ed[int(selected)]], mode="markers", name="picked",
                                 marker=dict(size=18, color="rgba(0,0,0,0)", line=dict(width=2, color="black")),
                                 hoverinfo="skip"))
    fig.update_yaxes(type="log", title="sigma", **sigma_ticks([lo, ed]))
    fig.update_xaxes(title="row (0 = sigma_max)", dtick=1)
    return _layout(fig, title, height=360)        # (Streamlit's on_select sets clickmode and dragmode)


# ---------------------------------------------------------------- per-interval curves
def interval_bars_fig(curves: dict, cost_key: str, title: str, ytitle: str, err_key=None,
                      log_y: bool = False) -> go.Figure:
    """Per-interval cost as bars: one group per schedule, x = interval index from sigma_max;
    whiskers from `err_key` (e.g. a standard error) when given; a log y axis with `log_y`."""
    fig = go.Figure()
    for i, (label, c) in enumerate(curves.items()):
        v = np.asarray(c[cost_key], dtype=np.float64)
        text = [f"[{lo:.3g}, {hi:.3g}]" for lo, hi in zip(c["sigma_lo"], c["sigma_hi"])]
        err = dict(type="data", array=np.asarray(c[err_key], dtype=np.float64)) if err_key else None
        fig.add_trace(go.Bar(x=np.arange(1, len(v) + 1), y=v, name=label, marker_color=color(i),
                             error_y=err, hovertext=text, hovertemplate="interval %{x} %{hovertext}: %{y:.4g}"))
    fig.update_layout(barmode="group")
    fig.update_xaxes(title="interval (1 = noisiest)", dtick=1)
    fig.update_yaxes(title=ytitle + (" (log scale)" if log_y else ""), type="log" if log_y else "linear")
    return _layout(fig, title)


def density_fig(curves: dict, xkey: str, ykey: str, title: str, ytitle: str, log_y: bool = False) -> go.Figure:
    """A cost density over sigma (log axis), one line per schedule; a log y axis with `log_y`."""
    fig = go.Figure()
    for i, (label, c) in enumerate(curves.items()):
        fig.add_trace(go.Scatter(x=c[xkey], y=c[ykey], mode="lines", name=label, line=dict(color=color(i))))
    fig.update_xaxes(type="log", title="sigma", **sigma_ticks([c[xkey] for c in curves.values()]))
    fig.update_yaxes(title=ytitle + (" (log scale)" if log_y else ""), type="log" if log_y else "linear")
    return _layout(fig, title)


def cumulative_fig(cums: dict, title: str) -> go.Figure:
    """Cumulative share from sigma_max down (engine's core.viz_data.cumulative_share)."""
    fig = go.Figure()
    for i, (label, c) in enumerate(cums.items()):
        fig.add_trace(go.Scatter(x=c["sigma"], y=c["cumulative"], mode="lines+markers", name=label,
                                 line=dict(color=color(i), shape="hv")))
    fig.update_xaxes(type="log", autorange="reversed", title="sigma (from sigma_max down)",
                     **sigma_ticks([c["sigma"] for c in cums.values()]))
    fig.update_yaxes(title="share of the total", range=[0, 1.05])
    return _layout(fig, title)


# ---------------------------------------------------------------- images
def image_grid_fig(images, title: str, cols: int = 4, zrange=(-1.0, 1.0), tile_px: int = 90) -> go.Figure:
    """A grid of images [n, C, H, W] (C = 1 grey or 3 RGB, values in zrange, the engine's
    layout) or [n, H, W]; drawn with plotly's facet columns, every axis hidden (no ticks, grid or
    zero line); `tile_px`: the height of a row of tiles (an enlarged view passes more)."""
    import plotly.express as px
    imgs = np.asarray(images, dtype=np.float64)
    if imgs.ndim == 4 and imgs.shape[1] == 1:
        imgs = imgs[:, 0]
    elif imgs.ndim == 4:
        imgs = imgs.transpose(0, 2, 3, 1)                            # [n, H, W, C] for RGB
    n = imgs.shape[0]
    kw = dict(facet_col=0, facet_col_wrap=min(cols, n), facet_col_spacing=0.01, facet_row_spacing=0.02)
    if imgs.ndim == 3:
        fig = px.imshow(imgs, zmin=zrange[0], zmax=zrange[1], color_continuous_scale="gray", **kw)
        fig.update_layout(coloraxis_showscale=False)
    else:
        c = imgs.shape[-1]
        fig = px.imshow(imgs, zmin=[zrange[0]] * c, zmax=[zrange[1]] * c, **kw)
    fig.for_each_annotation(lambda a: a.update(text=""))
    fig.update_xaxes(visible=False, showticklabels=False, ticks="", showgrid=False, zeroline=False)
    fig.update_yaxes(visible=False, showticklabels=False, ticks="", showgrid=False, zeroline=False)
    rows = -(-n // min(cols, n))
    return _layout(fig, title, height=60 + int(tile_px) * rows)


def error_vs_nfe_fig(res: dict, title: str = "Distance to the many-step reference") -> go.Figure:
    """RMSE (log y) against NFE per schedule, with 95 % error bars (core.compare.error_vs_nfe)."""
    fig = go.Figure()
    for i, (label, v) in enumerate(res["rmse"].items()):
        ci = [0.0 if (c is None or not np.isfinite(c)) else c for c in res["rmse_ci"][label]]
        fig.add_trace(go.Scatter(x=res["nfe"], y=v, error_y=dict(type="data", array=ci), mode="lines+markers",
                                 name=label, line=dict(color=color(i))))
    fig.update_yaxes(type="log", title="RMSE to reference")
    fig.update_xaxes(title="NFE (model calls)")
    return _layout(fig, title)
