"""The Schedules page's editor: pick a library schedule, edit its levels in a table or pick a point
on the chart and nudge it, watch the per-interval KLUB / Stein / truncation bars of the sidebar's
model follow, save the result as a new library schedule.

State: se_pick (library label), se_levels (levels the table starts from; replaced on a pick or a
nudge, which also bumps se_version so the table, keyed se_table_<version>, starts afresh),
se_current (the last valid levels: the table's when valid), se_point (the picked row).
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from app_lib import engine, plots
from app_lib.state import add_to_library, init_widgets, library, settings, toy_model
from core.errors import ScheduleLabError
from core.schedules.edit import check_levels, edited_schedule, nudge_level

FACTORS = {"se_down": 0.9, "se_up": 1.1}


def _table_key() -> str:
    return f"se_table_{st.session_state.get('se_version', 0)}"


def _restart(levels) -> None:
    ss = st.session_state
    ss.se_levels = ss.se_current = tuple(levels)
    ss.se_version = ss.get("se_version", 0) + 1


def _nudge(which: str) -> None:
    ss = st.session_state
    try:
        _restart(nudge_level(ss.se_current, int(ss.se_point), FACTORS[which]))
        ss.se_msg_edit = None
    except ScheduleLabError as e:
        ss.se_msg_edit = str(e)


def _on_select() -> None:
    """Plotly selection event: the first picked point of the "edited" trace (curve 0) becomes se_point."""
    ss = st.session_state
    pts = ((ss.get("se_fig") or {}).get("selection") or {}).get("points") or []
    rows = [p["point_index"] for p in pts if p.get("curve_number", 0) == 0 and "point_index" in p]
    if rows:
        ss.se_point = int(rows[0])


def _save(base_label: str) -> None:
    ss = st.session_state
    try:
        s = edited_schedule(ss.se_current, base=library()[base_label], name=(ss.get("se_name") or "").strip() or None)
        ss.se_msg_save = ("success", f"saved {add_to_library(s)!r}")
    except ScheduleLabError as e:
        ss.se_msg_save = ("error", str(e))


def schedule_editor() -> None:
    ss = st.session_state
    lib = library()
    st.subheader("Edit a schedule")
    st.caption("Change levels in the table, or click a point on the chart and nudge it by x0.9 / x1.1 "
               "(a nudge stops halfway to a neighbour, so the levels stay strictly descending). The bars "
               "below follow for the sidebar's model; save the result as a new library schedule.")
    if not lib:
        st.info("The library is empty: add or import a schedule to edit it.")
        return
    labels = list(lib)
    if ss.get("se_pick") not in labels:
        ss.se_pick = labels[0]
    st.selectbox("Schedule to edit", labels, key="se_pick")
    orig = lib[ss.se_pick]
    if ss.get("se_for") != ss.se_pick or "se_current" not in ss:
        _restart(orig.sigmas[:-1])
        ss.se_for, ss.se_point, ss.se_msg_edit, ss.se_msg_save = ss.se_pick, 0, None, None
    left, right = st.columns([1, 2])
    with left:
        df = st.data_editor(pd.DataFrame({"row": range(len(ss.se_levels)), "sigma": list(ss.se_levels)}),
                            key=_table_key(), hide_index=True, num_rows="fixed", disabled=["row"],
                            column_config={"sigma": st.column_config.NumberColumn("sigma", format="%.5g")})
        st.caption("Row 0 is sigma_max; the final 0 is implicit.")
        try:
            ss.se_current = check_levels(df["sigma"].tolist())
        except ScheduleLabError as e:
            st.error(f"Not a valid schedule: {e}. The chart and bars keep the last valid levels.")
        if ss.get("se_msg_edit"):
            st.error(ss.se_msg_edit)
    with right:
        n = len(ss.se_current)
        ss.se_point = min(int(ss.get("se_point", 0)), n - 1)
        st.plotly_chart(plots.editor_fig(orig.sigmas, ss.se_current, ss.se_point), key="se_fig",
                        on_select=_on_select, selection_mode="points")
        b = st.columns([2, 1, 1])
        b[0].selectbox("Picked row", list(range(n)), key="se_point",
                       help="the row the x0.9 / x1.1 buttons move (or click a point on the chart); ringed on the chart")
        b[1].button("x0.9", key="se_down", on_click=_nudge, args=("se_down",), help="sigma of the picked row x 0.9")
        b[2].button("x1.1", key="se_up", on_click=_nudge, args=("se_up",), help="sigma of the picked row x 1.1")

    cfg = settings()
    model = toy_model(cfg["toy"], cfg["model_kind"], cfg["device"])
    init_widgets({"se_n": 512})
    st.selectbox("Samples per interval (KLUB, Stein)", [256, 512, 1024, 2048], key="se_n")
    edited = edited_schedule(ss.se_current, base=orig)
    scheds = {"original": orig, "edited": edited}
    key_args, n_mc, seed = (cfg["toy"], cfg["model_kind"], cfg["device"]), int(ss.se_n), cfg["seed"]
    rng = (min(model.sigma_min, orig.sigma_min, edited.sigma_min), max(model.sigma_max, orig.sigma_max,
                                                                       edited.sigma_max))
    objectives = {  # slug -> (title, compute, cost key, y title)
        "klub": ("KLUB", lambda s: engine.klub(*key_args, s.sigmas, n_mc, 0.5, seed), "klub", "KLUB"),
        "stein": ("Stein cost", lambda s: engine.stein(*key_args, s.sigmas, rng, 100, n_mc, 1.0, seed), "cost",
                  "Delta Lambda squared"),
        "truncation": ("Truncation bound (dpmpp_3m_lagrange)", lambda s: engine.truncation(s.sigmas, 1.0),
                       "contribution", "bound contribution"),
    }
    cols, shown = st.columns(3), {}
    for col, (slug, (title, compute, cost, ytitle)) in zip(cols, objectives.items()):
        with col:
            try:
                shown[slug] = curves = {k: compute(s) for k, s in scheds.items()}
            except ScheduleLabError as e:
                st.warning(f"{title}: {e}")
                continue
            st.plotly_chart(plots.interval_bars_fig(curves, cost, f"{title} per interval", ytitle),
                            key=f"se_fig_{slug}")
    ss["se_curves"] = shown
    st.caption(f"On {cfg['toy']} ({cfg['model_kind']}): in each pair the first (blue) bar is the schedule as picked, the second (red) the edited one. KLUB "
               "(c = 0.5) and Stein (v = 1) are Monte Carlo estimates from the same noise for both; the "
               "truncation bound uses no model. Lower and more even bars are better.")
    s = st.columns([2, 1])
    s[0].text_input("Name of the new schedule", key="se_name", placeholder=edited.name)
    s[1].button("Save to library", key="se_save", on_click=_save, args=(ss.se_pick,))
    if ss.get("se_msg_save"):
        kind, text = ss.se_msg_save
        (st.error if kind == "error" else st.success)(text)
