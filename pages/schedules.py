"""Schedules: the session's schedule library in one log-sigma plot and a table; add heuristics, import
what other tools print under an explicit convention (or a whole library file), export to every tool with
copy and download. The library is saved on disk (app_lib.store) and comes back after a reload."""
import re

import streamlit as st

from app_lib import plots
from app_lib.schedule_editor import schedule_editor
from app_lib.state import (LIB_PREFIX, SCHEDULE_PARAMS, add_to_library, build_schedule, init_widgets, kind_label,
                           library, library_json, merge_library, remove_from_library, settings, toy_model)
from app_lib.transfer import TRANSFER_SOLVERS, bench_guidance, solver_matrix, toy_optimized_rows, transfer_fig
from app_lib.store import is_library_json
from core.errors import ScheduleLabError
from core.schedules import (TABLES, export, make_schedule, parse, range_mismatch, schedule_names,
                            table_schedule_names)
from core.schedules.io import provenance
from core.viz_data import schedule_table

EXPORTS = {  # format -> (tab title, file suffix, mime, how to use it)
    "json": ("Schedule Lab JSON", ".json", "application/json",
             "Load it back here, or with `Schedule.load(path)` / `--schedule FILE.json` on the command line."),
    "comfyui": ("ComfyUI", "_comfyui.txt", "text/plain",
                "Paste into a **ManualSigmas** node (all n + 1 levels, the final 0 included; plain decimals, "
                "never exponents, which ManualSigmas cannot read) and feed its SIGMAS to SamplerCustom."),
    "comfyui_tensor": ("ComfyUI SIGMAS tensor", "_comfyui_sigmas.py", "text/x-python",
                       "The same n + 1 levels as the float32 SIGMAS tensor, for a script or custom node."),
    "diffusers": ("diffusers sigmas=", "_diffusers.py", "text/x-python",
                  "`pipe(..., sigmas=sigmas)` or `EulerDiscreteScheduler.set_timesteps(sigmas=sigmas)`: the list "
                  "keeps its final 0 (diffusers runs len(sigmas) - 1 steps). The model must be the one whose "
                  "table the sigmas are in (EDM sigma = sqrt((1 - abar) / abar))."),
    "diffusers_edm": ("diffusers EDMEuler", "_diffusers_edm.py", "text/x-python",
                      "For EDMEulerScheduler, which maps `sigmas=` through its Karras ramp: a float64 ramp tensor "
                      "that lands on these levels for a scheduler built with `scheduler_kwargs`."),
    "diffusers_timesteps": ("diffusers timesteps=", "_diffusers_timesteps.py", "text/x-python",
                            "For schedulers that refuse custom sigmas but take `timesteps=` (DPMSolverMultistep, "
                            "Heun): each level moved to its nearest training timestep of the table chosen above; "
                            "the comment says how far. DDIM and EulerAncestral take neither."),
    "kdiffusion": ("k-diffusion", "_kdiffusion.py", "text/x-python",
                   "Self-contained: `K.sampling.sample_dpmpp_2m(model, x * sigmas[0], sigmas)`."),
    "list": ("List", "_list.json", "application/json",
             "The n + 1 levels as a JSON list. A1111 / Forge have no custom-schedule input of their own (only "
             "sigma min / max / rho overrides); the webUI_ExtraSchedulers extension's 'custom' scheduler reads "
             "this list (a list starting at exactly 1.0 is rescaled there)."),
}
CONVENTIONS = {"auto": "auto: sigmas, refuse anything ambiguous", "sigmas": "EDM sigmas",
               "timesteps": "training timesteps (+ table)", "flow": "flow-matching t (sigma = t / (1 - t))"}
MSG = {"add": "sc_msg_add", "import": "sc_msg_import", "remove": "sc_msg_remove"}


def _say(where: str, kind: str, text: str):
    st.session_state[MSG[where]] = (kind, text)


def _show(where: str):
    if MSG[where] in st.session_state:
        kind, text = st.session_state[MSG[where]]
        {"error": st.error, "warning": st.warning}.get(kind, st.success)(text)


def _add_heuristic():
    ss = st.session_state
    name = ss.sc_add_name
    params = {SCHEDULE_PARAMS[name][0]: float(ss.sc_add_param)} if name in SCHEDULE_PARAMS else {}
    try:
        if name in table_schedule_names():
            s = make_schedule(name, int(ss.sc_add_steps), table=ss.sc_add_table)
        else:
            s = make_schedule(name, int(ss.sc_add_steps), sigma_min=float(ss.sc_add_smin),
                              sigma_max=float(ss.sc_add_smax), **params)
        _say("add", "success", f"added {add_to_library(s)!r}")
    except ScheduleLabError as e:
        _say("add", "error", str(e))


def _import():
    ss = st.session_state
    text = ss.get("sc_import_text") or ""
    up = ss.get("sc_import_file")
    if up is not None and not text.strip():
        text = up.getvalue()                       # bytes: a non-UTF-8 file is refused by the parser
    name = (ss.get("sc_import_name") or "").strip() or "imported"
    conv = ss.get("sc_import_conv") or "auto"
    try:
        if is_library_json(text):                    # a whole library file (Download library below)
            added = merge_library(text)
            _say("import", "success", f"loaded {len(added)} schedule(s) from the library file")
            return
        s = parse(text, name=name, convention=conv, table=ss.get("sc_import_table") if conv != "flow" else None)
        if ss.get("sc_import_name"):
            s = s.with_name(name)
        label = add_to_library(s)
        cfg = settings()
        model = toy_model(cfg["toy"], cfg["model_kind"], cfg["device"])
        warn = range_mismatch(s, model.sigma_min, model.sigma_max, f"the sidebar's model ({cfg['toy']})")
        _say("import", "warning" if warn else "success",
             f"imported {s.steps}-step schedule ({s.params.get('convention')}) as {label!r}"
             + (f". Note: {warn} Use it with the model it was made for." if warn else ""))
    except ScheduleLabError as e:
        _say("import", "error", f"import failed: {_app_words(str(e))}")


def _app_words(message: str) -> str:
    """The parser's command-line flags as this page's choices."""
    for flag, choice in (("--from timesteps --table NAME", f"'{CONVENTIONS['timesteps']}' with the model's table"),
                         ("--from sigmas", f"'{CONVENTIONS['sigmas']}'"),
                         ("--from timesteps", f"'{CONVENTIONS['timesteps']}'"),
                         ("--from flow", f"'{CONVENTIONS['flow'].split(' (')[0]}'")):
        message = message.replace(flag, choice)
    return message.replace("choose the convention:", "choose under 'The numbers are':")


def _remove():
    remove_from_library(st.session_state.get("sc_remove_pick") or [])
    _say("remove", "success", "removed")


st.title("Schedules")
st.caption("Every schedule of the library: heuristics, AYS presets, optimized and imported ones. "
           "Pick them on the other pages as 'library: ...'; export them to the tools you use. The library "
           "is saved on disk (folder named in the sidebar) and comes back after a reload.")
lib = library()

if lib:
    st.plotly_chart(plots.schedules_fig(lib, "Session schedules (log sigma against the fraction of steps)"),
                    key="sc_fig_library")
    st.caption("Lower curves spend more of their steps at low noise (fine detail); higher curves "
               "spend them at high noise (global structure). The final jump to sigma = 0 is not drawn.")
    st.dataframe(schedule_table(lib), hide_index=True, key="sc_table")
else:
    st.info("The library is empty: add a heuristic or import a schedule below.")

schedule_editor()

left, right = st.columns(2)
with left:
    st.subheader("Add a heuristic or preset")
    init_widgets({"sc_add_name": "karras", "sc_add_steps": 10, "sc_add_smin": 0.002, "sc_add_smax": 80.0})
    st.selectbox("Schedule", schedule_names() + table_schedule_names(), key="sc_add_name",
                 help="The last ones are ComfyUI's and diffusers' schedulers on a model's noise table.")
    a = st.columns(3)
    a[0].number_input("Steps", min_value=1, max_value=1000, step=1, key="sc_add_steps")
    if st.session_state.sc_add_name in table_schedule_names():
        init_widgets({"sc_add_table": "sd15"})
        a[1].selectbox("Noise table", list(TABLES), key="sc_add_table",
                       help="The model table the scheduler picks its levels from (its range comes with it).")
    else:
        a[1].number_input("sigma_min", min_value=1e-6, format="%.4g", key="sc_add_smin")
        a[2].number_input("sigma_max", min_value=1e-5, format="%.4g", key="sc_add_smax")
    pname = SCHEDULE_PARAMS.get(st.session_state.sc_add_name)
    if pname:
        if st.session_state.get("sc_add_param_for") != st.session_state.sc_add_name or \
                "sc_add_param" not in st.session_state:          # (state of an unrendered widget is dropped)
            st.session_state.sc_add_param = pname[1]
            st.session_state.sc_add_param_for = st.session_state.sc_add_name
        st.number_input(pname[0], min_value=1e-3, format="%.4g", key="sc_add_param")
        if st.session_state.sc_add_name == "kl_optimal":
            st.caption("c = 1 is ComfyUI's and A1111's kl_optimal; the default here, 0.5, is the toys' data "
                       "std (AYS Theorem 3.1's c).")
    if st.session_state.sc_add_name.startswith("ays_"):
        st.caption("AYS presets keep their model's range (SD 1.5 / SDXL: the table's sigmas at the AYS "
                   "timesteps, as ComfyUI); other step counts are log-linearly interpolated as ComfyUI does.")
    st.button("Add to library", key="sc_add_btn", on_click=_add_heuristic)
    _show("add")

with right:
    st.subheader("Import")
    st.text_area("Paste a schedule", key="sc_import_text", height=110,
                 placeholder="14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0",
                 help="Our JSON, a ComfyUI ManualSigmas string, any export of this page, a printed tensor "
                      "(`tensor([...], device='cuda:0')`, `scheduler.sigmas`, `scheduler.timesteps`), a numpy "
                      "print, a list of numbers, or a whole library file (its schedules are added); # comments and "
                      "several lines are fine.")
    st.file_uploader("... or a JSON / text file", type=["json", "txt", "py"], key="sc_import_file")
    init_widgets({"sc_import_conv": "auto", "sc_import_table": "sd15"})
    st.radio("The numbers are", list(CONVENTIONS), format_func=CONVENTIONS.get, key="sc_import_conv",
             horizontal=True, help="Nothing is guessed: 'auto' takes sigmas only when nothing suggests "
                                   "timesteps or flow t, and says which to choose otherwise.")
    if st.session_state.sc_import_conv in ("timesteps", "auto"):
        st.selectbox("Model noise table (for timesteps)", list(TABLES), key="sc_import_table")
    st.text_input("Name", key="sc_import_name", placeholder="imported")
    st.button("Import", key="sc_import_btn", on_click=_import)
    _show("import")

st.subheader("Export")
if lib:
    labels = list(lib)
    if st.session_state.get("sc_export_pick") not in labels:
        st.session_state.sc_export_pick = labels[-1]
    st.selectbox("Schedule to export", labels, key="sc_export_pick")
    chosen = lib[st.session_state.sc_export_pick]
    cfg = settings()
    model = toy_model(cfg["toy"], cfg["model_kind"], cfg["device"])
    warn = range_mismatch(chosen, model.sigma_min, model.sigma_max,
                          f"the sidebar's model ({cfg['toy']}, {cfg['model_kind']})")
    if warn:
        st.warning(warn + " Rebuild it over the model's range, or use it with the model it was made for.",
                   icon="⚠️")
    init_widgets({"sc_export_table": "sd15"})
    st.selectbox("Model noise table for diffusers timesteps=", list(TABLES), key="sc_export_table")
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", st.session_state.sc_export_pick).strip("_") or "schedule"
    texts, problems = {}, {}
    for fmt in EXPORTS:
        try:
            texts[fmt] = export(chosen, fmt, table=st.session_state.sc_export_table
                                if fmt == "diffusers_timesteps" else None)
        except ScheduleLabError as e:
            problems[fmt] = str(e)
    st.session_state["sc_export"] = texts
    for tab, (fmt, (title, suffix, mime, how)) in zip(st.tabs([v[0] for v in EXPORTS.values()]), EXPORTS.items()):
        with tab:
            if fmt in problems:
                st.warning(f"No {title} export for this schedule: {problems[fmt]}")
                continue
            st.code(texts[fmt], language={"json": "json", "comfyui": None, "list": "json"}.get(fmt, "python"),
                    wrap_lines=True)
            st.caption(how)
            if fmt in ("comfyui", "list"):
                st.caption("Provenance (this field holds numbers only): " + provenance(chosen))
            st.download_button(f"Download {title}", texts[fmt], file_name=stem + suffix, mime=mime,
                               key=f"sc_dl_{fmt}")

    st.download_button("Download the whole library (JSON)", library_json(), file_name="schedule_library.json",
                       mime="application/json", key="sc_dl_library",
                       help="Every schedule above in one file; load it back with Import (here or in a new session).")

    st.subheader("Remove")
    st.multiselect("Schedules to remove", labels, key="sc_remove_pick")
    st.button("Remove", key="sc_remove_btn", on_click=_remove)
    _show("remove")

st.subheader("Does a schedule transfer?")
st.caption("A schedule is optimized for one solver (or one guidance scale): how does it do with the others? "
           "Rows: schedules and what they were optimized for; columns: the condition they are sampled under. "
           "Colour: the error divided by the best row's error in that column (green = the best there); text: "
           "the error itself; ● marks the condition the row was optimized for. A schedule whose own column "
           "is its only green cell does not transfer: sample it with what it was made for.")
tr_solver, tr_guidance = st.tabs(["Other solvers (the sidebar's toy, computed)",
                                  "Other guidance scales (benchmark results)"])
with tr_solver:
    cfg = settings()
    model = toy_model(cfg["toy"], cfg["model_kind"], cfg["device"])
    labels = list(lib)
    init_widgets({"sc_tr_rows": [k for k in labels if lib[k].solver][:4] or labels[:2],
                  "sc_tr_solvers": ["euler", "heun", "dpmpp_2m", "dpmpp_3m_lagrange"], "sc_tr_steps": 8,
                  "sc_tr_n": 512, "sc_tr_toyopt": True})
    st.session_state.sc_tr_rows = [k for k in st.session_state.sc_tr_rows if k in labels]
    r = st.columns([3, 3])
    r[0].multiselect("Library schedules", labels, key="sc_tr_rows")
    r[1].multiselect("Solvers", list(dict.fromkeys([*TRANSFER_SOLVERS, *st.session_state.sc_tr_solvers])),
                     key="sc_tr_solvers", help="deterministic solvers: the reference is an ODE solution")
    r = st.columns([1, 1, 2])
    r[0].number_input("Steps", min_value=2, max_value=50, step=1, key="sc_tr_steps",
                      help="every schedule is resampled log-linearly to this many steps")
    r[1].selectbox("Samples", [256, 512, 1024, 2048], key="sc_tr_n")
    r[2].checkbox("Add this toy's DM-NonUniform and score-optimal", key="sc_tr_toyopt",
                  help="made here for the sidebar's model: DM-NonUniform for dpmpp_3m_lagrange, score-optimal for heun")
    st.button("Compute the matrix", key="sc_tr_btn", on_click=lambda: st.session_state.update(sc_tr_on=True))
    if st.session_state.get("sc_tr_on"):
        steps, seed = int(st.session_state.sc_tr_steps), cfg["seed"]
        try:
            rows = [(lab, build_schedule(LIB_PREFIX + lab, steps, model.sigma_min, model.sigma_max))
                    for lab in st.session_state.sc_tr_rows]
            for lab, s in rows:
                w = range_mismatch(s, model.sigma_min, model.sigma_max, "the sidebar's model")
                if w:
                    st.warning(w, icon="⚠️")
            short = [re.sub(r" [(][0-9]+ steps[)]$", "", lab) for lab, _ in rows]   # (the title names the steps)
            short = [b if short.count(b) == 1 else lab for b, (lab, _) in zip(short, rows)]
            rows = [(f"{b} ({s.solver or 'heuristic'})", s.sigmas, s.solver) for b, (_, s) in zip(short, rows)]
            if st.session_state.sc_tr_toyopt:
                rows += toy_optimized_rows(cfg["toy"], cfg["model_kind"], cfg["device"], steps, seed)
            rec = solver_matrix(cfg["toy"], cfg["model_kind"], cfg["device"], tuple(rows),
                                tuple(st.session_state.sc_tr_solvers), int(st.session_state.sc_tr_n), seed)
        except ScheduleLabError as e:
            st.error(str(e))
        else:
            st.session_state["sc_transfer_solver"] = rec
            st.plotly_chart(transfer_fig(rec, f"{cfg['toy']} ({kind_label(cfg['model_kind'])}), {steps} steps",
                                         "solver"), key="sc_fig_transfer_solver")
            st.caption(f"{rec['metric']}: {rec['n']} samples, seed {rec['seed']}, reference {rec['ref_steps']} "
                       "Karras steps of heun. A row keeps its steps in every column, so heun (2 calls a step) "
                       "spends about twice the model calls of the others.")
with tr_guidance:
    bench = bench_guidance()
    st.session_state["sc_transfer_guidance"] = bench
    if not bench["cases"]:
        st.info("No guidance benchmark results on disk: run `python bench/guidance.py` to make "
                "bench/results/guidance_toy.json and guidance_digits.json.")
    for i, (case, rec) in enumerate(bench["cases"].items()):
        p = rec["provenance"]
        st.plotly_chart(transfer_fig(rec, f"{case}: {rec['solver']}, {rec['steps']} steps", "evaluated at"),
                        key=f"sc_fig_transfer_guidance_{i}")
        mach = ", ".join(f"{k} {v}" for k, v in p["machine"].items())
        st.caption(f"From `{p['file']}` (bench/guidance.py, {p['when']}; {mach}; budget "
                   + ", ".join(f"{k}={v}" for k, v in p["budget"].items()) + f"; {rec['n']} samples). "
                   f"{rec['metric']}. Rows 'METHOD @ w=W' were optimized on the guided denoiser at scale W; "
                   "the last rows are heuristics.")
