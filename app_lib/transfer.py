"""The transfer view's data and figure (Schedules page): schedules optimized for one solver or guidance
scale, evaluated under the others. The numbers come from core.transfer: read from the benchmark's
JSON on disk (with its provenance), or computed on demand for the sidebar's toy model.

    bench_guidance()                          -> {"files": [...], "cases": {name: record + provenance}}
    solver_matrix(toy, kind, device, rows, solvers, n, seed)   (cached)
    transfer_fig(record, title)               -> plotly heatmap (colour: ratio to the column's best)
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from app_lib.state import toy_model
from app_lib.store import read_json
from core.schedules import Schedule
from core.transfer import guidance_transfer, solver_transfer

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
GUIDANCE_FILES = ("guidance_toy.json", "guidance_digits.json")
TRANSFER_SOLVERS = ("euler", "heun", "dpmpp_2m", "dpmpp_3m_lagrange", "ipndm")   # deterministic, common


def _mtimes(files) -> tuple:
    return tuple((f, (RESULTS / f).stat().st_mtime if (RESULTS / f).is_file() else None) for f in files)


@st.cache_data(show_spinner=False, max_entries=4)
def _bench_guidance(mtimes: tuple) -> dict:
    cases, missing = {}, []
    for name, mtime in mtimes:
        if mtime is None:
            missing.append(name)
            continue
        d = read_json(RESULTS / name, f"benchmark result {name}", 16 << 20)
        prov = {"file": f"bench/results/{name}", "when": d.get("when"), "machine": d.get("machine") or {}}
        for case, c in (d.get("cases") or {}).items():
            if isinstance(c, dict) and "ws" not in c and "error" not in c:
                continue                          # not a transfer case (e.g. the w = 3 comparison)
            cases[case] = {**guidance_transfer(c), "provenance": {**prov, "budget": c.get("budget") or {},
                                                                   "wall_seconds": c.get("wall_seconds")}}
    return {"cases": cases, "missing": missing}


def bench_guidance() -> dict:
    """Every case of bench/results/guidance_*.json as a core.transfer record with its provenance
    (file, date, machine, the benchmark's budget); re-read when a file changes."""
    return _bench_guidance(_mtimes(GUIDANCE_FILES))


@st.cache_data(show_spinner="Sampling every schedule with every solver ...", max_entries=16)
def solver_matrix(toy: str, kind: str, device: str, rows: tuple, solvers: tuple, n: int, seed: int,
                  ref_steps: int = 200) -> dict:
    """core.transfer.solver_transfer on the sidebar's toy model; rows = ((label, sigmas, solver), ...)."""
    import torch
    schedules = {label: Schedule(tuple(sig), name=label, solver=solver) for label, sig, solver in rows}
    with torch.no_grad():
        return solver_transfer(toy_model(toy, kind, device), schedules, solvers, n=n, seed=seed, ref_steps=ref_steps)


def transfer_fig(rec: dict, title: str, xtitle: str) -> go.Figure:
    """Heatmap of a core.transfer record: colour = value / the best value of its column (log colour
    scale: 1 = best under that condition), text = the value; the row's own condition is boxed."""
    ratio = np.array([[np.nan if v is None else v for v in r] for r in rec["ratio"]], dtype=np.float64)
    value = rec["value"]
    text = [[("n/a" if v is None else f"{v:.3g}") + (" ●" if own else "") for v, own in zip(vr, orow)]
            for vr, orow in zip(value, rec["own"])]
    z = np.log10(ratio)
    top = float(np.nanmax(z)) if np.isfinite(z).any() else 1.0
    ticks = [t for t in (1, 1.5, 2, 3, 5, 10, 20, 50, 100) if math.log10(t) <= max(top, 0.2) + 1e-9]
    fig = go.Figure(go.Heatmap(z=z, x=rec["cols"], y=rec["rows"], text=text, texttemplate="%{text}",
                               customdata=ratio, colorscale="RdYlGn_r", zmin=0.0, zmax=max(top, 0.2),
                               hovertemplate="%{y} with %{x}: %{text}, x%{customdata:.3g} the best<extra></extra>",
                               colorbar=dict(title="x best", tickvals=[math.log10(t) for t in ticks],
                                             ticktext=[f"{t:g}" for t in ticks]), name="transfer"))
    fig.update_yaxes(autorange="reversed", title="schedule (optimized for)")
    fig.update_xaxes(title=xtitle, side="top")
    fig.update_layout(title=title, height=120 + 34 * len(rec["rows"]), margin=dict(l=10, r=10, t=70, b=10))
    return fig



def toy_optimized_rows(toy: str, kind: str, device: str, steps: int, seed: int) -> list:
    """This toy model's two cheap optimized schedules as transfer rows (label, sigmas, solver):
    DM-NonUniform (data-free, made for dpmpp_3m_lagrange) and score-optimal (its Stein density on
    100 levels x 256 samples, made for heun)."""
    from app_lib import engine
    from core.objectives.stein import SOLVER as STEIN_SOLVER
    from core.objectives.stein import constant_speed_schedule
    from core.objectives.truncation import SOLVER as NONUNIFORM_SOLVER
    model = toy_model(toy, kind, device)
    lo, hi = float(model.sigma_min), float(model.sigma_max)
    nu = engine.nonuniform_sigmas(int(steps), lo, hi)
    grid, delta = engine.stein_grid_density(toy, kind, device, lo, hi, 100, 256, 1.0, int(seed))
    so = constant_speed_schedule(grid, delta, int(steps), lo, hi)
    return [(f"DM-NonUniform ({NONUNIFORM_SOLVER})", tuple(nu), NONUNIFORM_SOLVER),
            (f"score-optimal ({STEIN_SOLVER})", tuple(so.sigmas), STEIN_SOLVER)]
