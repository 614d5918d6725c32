"""Schedules: the session's schedule library in one log-sigma plot and a table; add heuristics,
import (our JSON, a ComfyUI ManualSigmas string, a list of numbers, a library file), export with
downloads. The library is saved on disk (app_lib.store) and comes back after a reload."""
import re

import streamlit as st

from app_lib import plots
from app_lib.state import (SCHEDULE_PARAMS, add_to_library, init_widgets, library, library_json, merge_library,
                           remove_from_library)
from app_lib.store import is_library_json
from core.errors import ScheduleLabError
from core.schedules import export, make_schedule, parse, schedule_names
from core.viz_data import schedule_table

EXPORTS = {  # format -> (tab title, file suffix, mime, how to use it)
    "json": ("Schedule Lab JSON", ".json", "application/json",
             "Load it back here, or with `Schedule.load(path)` / `--schedule FILE.json` on the command line."),
    "comfyui": ("ComfyUI", "_comfyui.txt", "text/plain",
                "Paste into a **ManualSigmas** node (all levels, including the final 0) and feed its SIGMAS "
                "to SamplerCustom."),
    "diffusers": ("diffusers", "_diffusers.py", "text/x-python",
                  "Pass as `pipe(..., sigmas=sigmas)` or `scheduler.set_timesteps(sigmas=sigmas)` with a "
                  "scheduler that accepts custom sigmas (e.g. EulerDiscreteScheduler); diffusers appends the "
                  "final 0 itself. The model must use the same sigma parametrisation (EDM sigma = "
                  "sqrt((1 - abar) / abar))."),
    "kdiffusion": ("k-diffusion", "_kdiffusion.py", "text/x-python",
                   "Use as `k_diffusion.sampling.sample_dpmpp_2m(model, x * sigmas[0], sigmas)`."),
}
MSG = "sc_message"


def _add_heuristic():
    ss = st.session_state
    name = ss.sc_add_name
    params = {SCHEDULE_PARAMS[name][0]: float(ss.sc_add_param)} if name in SCHEDULE_PARAMS else {}
    try:
        s = make_schedule(name, int(ss.sc_add_steps), sigma_min=float(ss.sc_add_smin),
                          sigma_max=float(ss.sc_add_smax), **params)
        ss[MSG] = ("success", f"added {add_to_library(s)!r}")
    except ScheduleLabError as e:
        ss[MSG] = ("error", str(e))


def _import():
    ss = st.session_state
    text = ss.get("sc_import_text") or ""
    up = ss.get("sc_import_file")
    if up is not None and not text.strip():
        text = up.getvalue().decode("utf-8", errors="replace")
    name = (ss.get("sc_import_name") or "").strip() or "imported"
    try:
        if is_library_json(text):                    # a whole library file (Download library below)
            added = merge_library(text)
            ss[MSG] = ("success", f"loaded {len(added)} schedule(s) from the library file")
            return
        s = parse(text, name=name)
        if text.strip().startswith("{") and ss.get("sc_import_name"):
            s = s.with_name(name)
        ss[MSG] = ("success", f"imported {s.steps}-step schedule as {add_to_library(s)!r}")
    except ScheduleLabError as e:
        ss[MSG] = ("error", f"import failed: {e}")


def _remove():
    remove_from_library(st.session_state.get("sc_remove_pick") or [])
    st.session_state[MSG] = ("success", "removed")


st.title("Schedules")
st.caption("Every schedule of the library: heuristics, AYS presets, optimized and imported ones. "
           "Pick them on the other pages as 'library: ...'; export them to the tools you use. The library "
           "is saved on disk (folder named in the sidebar) and comes back after a reload.")
lib = library()
if MSG in st.session_state:
    kind, text = st.session_state[MSG]
    (st.error if kind == "error" else st.success)(text)

if lib:
    st.plotly_chart(plots.schedules_fig(lib, "Session schedules (log sigma against the fraction of steps)"),
                    key="sc_fig_library")
    st.caption("Lower curves spend more of their steps at low noise (fine detail); higher curves "
               "spend them at high noise (global structure). The final jump to sigma = 0 is not drawn.")
    st.dataframe(schedule_table(lib), hide_index=True, key="sc_table")
else:
    st.info("The library is empty: add a heuristic or import a schedule below.")

left, right = st.columns(2)
with left:
    st.subheader("Add a heuristic or preset")
    init_widgets({"sc_add_name": "karras", "sc_add_steps": 10, "sc_add_smin": 0.002, "sc_add_smax": 80.0})
    st.selectbox("Schedule", schedule_names(), key="sc_add_name")
    a = st.columns(3)
    a[0].number_input("Steps", min_value=1, max_value=1000, step=1, key="sc_add_steps")
    a[1].number_input("sigma_min", min_value=1e-6, format="%.4g", key="sc_add_smin")
    a[2].number_input("sigma_max", min_value=1e-5, format="%.4g", key="sc_add_smax")
    pname = SCHEDULE_PARAMS.get(st.session_state.sc_add_name)
    if pname:
        if st.session_state.get("sc_add_param_for") != st.session_state.sc_add_name or \
                "sc_add_param" not in st.session_state:          # (state of an unrendered widget is dropped)
            st.session_state.sc_add_param = pname[1]
            st.session_state.sc_add_param_for = st.session_state.sc_add_name
        st.number_input(pname[0], min_value=1e-3, format="%.4g", key="sc_add_param")
    if st.session_state.sc_add_name.startswith("ays_"):
        st.caption("AYS presets keep their published sigma range; other step counts are log-linearly "
                   "interpolated as ComfyUI does.")
    st.button("Add to library", key="sc_add_btn", on_click=_add_heuristic)

with right:
    st.subheader("Import")
    st.text_area("Paste a schedule", key="sc_import_text", height=110,
                 placeholder="14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0",
                 help="Our JSON, a ComfyUI ManualSigmas string, a diffusers `sigmas=[...]` snippet "
                      "(the final 0 is appended), a k-diffusion tensor, a list of numbers ending in 0, "
                      "or a whole library file (its schedules are added).")
    st.file_uploader("... or a JSON / text file", type=["json", "txt"], key="sc_import_file")
    st.text_input("Name", key="sc_import_name", placeholder="imported")
    st.button("Import", key="sc_import_btn", on_click=_import)

st.subheader("Export")
if lib:
    labels = list(lib)
    if st.session_state.get("sc_export_pick") not in labels:
        st.session_state.sc_export_pick = labels[-1]
    st.selectbox("Schedule to export", labels, key="sc_export_pick")
    chosen = lib[st.session_state.sc_export_pick]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", st.session_state.sc_export_pick).strip("_") or "schedule"
    texts = {fmt: export(chosen, fmt) for fmt in EXPORTS}
    st.session_state["sc_export"] = texts
    for tab, (fmt, (title, suffix, mime, how)) in zip(st.tabs([v[0] for v in EXPORTS.values()]), EXPORTS.items()):
        with tab:
            st.code(texts[fmt], language="json" if fmt == "json" else "python", wrap_lines=True)
            st.caption(how)
            st.download_button(f"Download {title}", texts[fmt], file_name=stem + suffix, mime=mime,
                               key=f"sc_dl_{fmt}")

    st.download_button("Download the whole library (JSON)", library_json(), file_name="schedule_library.json",
                       mime="application/json", key="sc_dl_library",
                       help="Every schedule above in one file; load it back with Import (here or in a new session).")

    st.subheader("Remove")
    st.multiselect("Schedules to remove", labels, key="sc_remove_pick")
    st.button("Remove", key="sc_remove_btn", on_click=_remove)
