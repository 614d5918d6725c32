"""Tune: the best schedule for one model and solver (core.tune), proven on held-out noise: every
heuristic and the chosen optimizers, a leaderboard with 95 % intervals, every candidate's levels,
the winner next to the best heuristic from the same noise, "steps to match", and the winner's
exports with provenance. The run advances a few units per rerun of its fragment (app_lib.tune_run);
Stop / Resume, also after a reload (its state is saved under the app's folder)."""
import pandas as pd
import streamlit as st

from app_lib import plots, tune_plots
from app_lib import tune_view as tv
from app_lib.state import add_to_library, guidance_widgets, init_widgets, settings, toy_density
from core.errors import ScheduleLabError
from core.schedules import TABLES
from core.schedules.io import provenance
from core.solvers import solver_names
from core.tune.methods import default_table

MSG = "tp_message"
TABLE = default_table()
OPTIMIZERS = [n for n, m in TABLE.items() if m.kind == "optimizer"]

st.title("Tune")
st.caption("Give a model and a solver: every heuristic and the optimizers you pick are scored on held-out "
           "noise (seeds no optimizer saw). An optimizer wins only when it is significantly better than the best "
           "heuristic; otherwise the heuristic comes back and the page says so.")

cfg = settings()
ss = st.session_state
init_widgets({"tp_source": "toy", "tp_path": "", "tp_weights": "", "tp_params": "", "tp_label": "none",
              "tp_cfg": 2.0, "tp_solver": "dpmpp_2m", "tp_steps": 10, "tp_budget": 0,
              "tp_methods_toy": tv.DEFAULT_METHODS["toy"], "tp_methods_image": tv.DEFAULT_METHODS["image"],
              "tp_n_toy": tv.EVAL_DEFAULTS["toy"]["n"], "tp_batches_toy": tv.EVAL_DEFAULTS["toy"]["batches"],
              "tp_n_image": tv.EVAL_DEFAULTS["image"]["n"], "tp_batches_image": tv.EVAL_DEFAULTS["image"]["batches"]})


def _adopt_restored_run():
    """A run restored from disk (reload, new session) shows its own settings in the widgets, so that a
    setting changed before Resume is seen and refused (the sidebar's toy and model are the user's to set)."""
    job = tv.current_job()
    if job is None or ss.get("tp_adopted") == job.run_id:
        return
    ss.tp_adopted = job.run_id
    s, img = job.spec, job.spec.get("source") in tv.IMAGE_SOURCES
    for k in ("source", "path", "weights", "params", "label", "cfg", "solver", "steps"):
        if k in s:
            ss[f"tp_{k}"] = s[k]
    ss.tp_budget = s.get("budget_s") or 0
    kind = "image" if img else "toy"
    for k, src in ((f"tp_methods_{kind}", "methods"), (f"tp_n_{kind}", "n"), (f"tp_batches_{kind}", "batches")):
        if src in s:
            ss[k] = s[src]


_adopt_restored_run()
c = st.columns([2, 3])
c[0].selectbox("Model", list(tv.SOURCES), key="tp_source", format_func=tv.SOURCES.get)
src = ss.tp_source
image = src in tv.IMAGE_SOURCES
if src == "folder":
    c[1].text_input("Folder path", key="tp_path", placeholder="/path/to/diffusers/model",
                    help="a local diffusers folder saved with save_pretrained (nothing is downloaded)")
elif src == "module":
    c[1].text_input("module.py:ClassName", key="tp_path", placeholder="/path/to/net.py:Net")
    m = st.columns([2, 3])
    m[0].text_input("Weights file", key="tp_weights", placeholder="/path/to/weights.safetensors")
    m[1].text_area("Parameters (key=value, one a line)", key="tp_params", height=68,
                   help="constructor and wrapper parameters, e.g. parametrization=eps, process=vp-linear, "
                        "time_shape=N,1, strict_prefix=network. (docs/models.md)")
else:
    c[1].caption(f"Toy: **{cfg['toy']}**, model **{cfg['model_kind']}** (the sidebar's; a labelled toy's class "
                 "and guidance scale are set there too)." if src == "toy" else tv.SOURCES[src])

ms = {"source": src, "toy": cfg["toy"], "kind": cfg["model_kind"], "path": ss.tp_path if src in ("folder", "module")
      else "", "weights": ss.tp_weights if src == "module" else "", "params": ss.tp_params if src == "module" else "",
      "label": "none", "cfg": 1.0, "device": cfg["device"]}
problem = tv.model_spec_problem(ms)
if problem:
    (st.info if problem[0] == "info" else st.error)(problem[1])
    st.stop()
try:
    n_cls = tv.num_classes(ms)
    if n_cls:
        guidance_widgets(st.columns([2, 2, 3]), n_cls, "tp_label", "tp_cfg")
        ms.update(label=ss.tp_label, cfg=float(ss.tp_cfg) if ss.tp_label != "none" else 1.0)
    tm = tv.tune_model(ms)
except ScheduleLabError as e:
    st.error(str(e))
    st.stop()
if tm.data_note and image:
    st.caption(f"Data for the optimizers: {tm.data_note}.")
for w in tm.warnings:
    st.warning(w)

kind = "image" if image else "toy"
k = st.columns([2, 1, 3, 1])
k[0].selectbox("Solver", solver_names(), key="tp_solver")
k[1].number_input("Steps", 2, 100, step=1, key="tp_steps")
k[2].multiselect("Optimizers", OPTIMIZERS, key=f"tp_methods_{kind}",
                 help="every heuristic always runs; " + "; ".join(f"{n}: {TABLE[n].note}" for n in OPTIMIZERS))
k[3].number_input("Budget s", 0, 36000, step=30, key="tp_budget",
                  help="wall-clock budget of the whole run in seconds (0: none); optimizers whose share is too "
                       "small are skipped, with the reason in the table")
with st.expander("Held-out evaluation"):
    e = st.columns(2)
    e[0].selectbox("Samples per batch", [64, 100, 128, 250, 256, 512, 1024, 2048, 4096], key=f"tp_n_{kind}")
    e[1].selectbox("Noise batches", [2, 3, 4, 5, 8], key=f"tp_batches_{kind}",
                   help="the 95 % intervals are over these batches (Student t)")
    st.caption("Metric: exact NLL for toys (guarded by sliced W2 against collapse), FD to the held-out digits for "
               "the digits models, else the distance to a many-step reference from the same noise. Seeds: the "
               "sidebar's seed for the optimizers, 1,000,000 + 1000 seed + b for the held-out batches.")


def page_spec() -> dict:
    """The page's settings (what a run is made with and what Resume compares)."""
    return {**ms, "solver": ss.tp_solver, "steps": int(ss.tp_steps), "methods": list(ss[f"tp_methods_{kind}"]),
            "budget_s": float(ss.tp_budget) or None, "n": int(ss[f"tp_n_{kind}"]),
            "batches": int(ss[f"tp_batches_{kind}"]), "seed": cfg["seed"]}


def _start():
    ss.pop("tp_saved", None)
    try:
        tv.start(page_spec(), tm)
    except ScheduleLabError as e:
        ss[MSG] = tv.app_message(e)


def _stop():
    job = tv.current_job()
    if job is not None:
        job.stop()


def _resume():
    try:
        tv.resume(page_spec(), tm)
    except ScheduleLabError as e:
        ss[MSG] = tv.app_message(e)


job = tv.current_job()
active = job is not None and job.active
b = st.columns([1, 1, 1, 4])
b[0].button("Start", key="tp_start", on_click=_start, disabled=active, type="primary")
b[1].button("Stop", key="tp_stop", on_click=_stop, disabled=job is None or job.status != "running",
            help="stops after the unit in flight")
b[2].button("Resume", key="tp_resume", on_click=_resume, disabled=job is None or job.status != "stopped")
if ss.get(MSG):
    st.error(ss.pop(MSG))


@st.fragment(run_every=0.2 if active else None)
def live():
    job = tv.current_job()
    if job is None:
        st.info("Pick the model, solver, steps and optimizers, then press Start. The run advances while this page "
                "is open; Stop keeps its state and Resume continues it, also after a reload.")
        return
    if job.active:
        job.advance(tv.SLICE_S)
    with st.container(key="tp_status"):
        (st.error if job.status == "failed" else st.caption)(
            f"**{job.status}** — {job.done_units} of {job.total_units or '?'} units — {job.message}")
        if job.total_units:
            st.progress(min(1.0, job.done_units / job.total_units), text=(job.log or [job.message])[-1][:120])
    if job.log:
        with st.expander("Units done"):
            st.text("\n".join(job.log[-40:]))
    if active and not job.active:
        st.rerun(scope="app")                 # the buttons and the results follow the new status


live()

job = tv.current_job()
if job is None or job.status != "done":
    st.stop()
try:
    jtm = tv.tune_model(job.spec)                    # the run's own model (the page may show another by now)
    if job.make_tuner is None:
        tv.attach(job, job.spec, jtm)
    res = job.ensure_result()
except ScheduleLabError as e:
    st.error(f"The finished run cannot be shown: {tv.app_message(e)}")
    st.stop()
rows = tv.leaderboard_rows(res)
ss["tp_result"] = {"winner": res.winner, "best_heuristic": res.best_heuristic, "metric": res.metric,
                   "from_heuristic": res.from_heuristic, "reason": res.reason, "rows": rows}

st.subheader("Result")
st.caption(f"Run: {jtm.name}, {job.spec['solver']}, {job.spec['steps']} steps, seed {job.spec['seed']}"
           + ("" if not tv.settings_changes(job, page_spec()) else " (the settings above have changed since)")
           + (" · saved for the Images page" if job.saved_to else ""))
if res.from_heuristic:
    st.warning(f"**No optimizer won.** {res.reason[0].upper() + res.reason[1:]}. The schedule to use is the heuristic "
               f"**{res.winner}**; the table says why each optimizer lost.", icon="⚖️")
else:
    st.success(f"**{res.winner}** wins: {res.reason}.")
df = pd.DataFrame(rows)
st.dataframe(df.style.apply(lambda r: ["background-color: #d9f2d9" if "winner" in r["role"] else
                                       "background-color: #ffe9cc" if r["role"] == "best heuristic" else ""
                                       for _ in r], axis=1)
             .format({c: "{:.2f}" if c == "optimize s" else "{:.4g}" for c in df.columns if df[c].dtype.kind == "f"},
                     na_rep="–"),
             hide_index=True, key="tp_table")
st.caption(f"Held-out {res.metric}: mean over {len(res.seeds['heldout'])} noise batches ± the 95 % Student-t "
           f"half-width; 'vs {res.best_heuristic}' is the paired difference on the same noise (negative is better). "
           "Green: the winner; orange: the best heuristic.")
c = st.columns(2)
c[0].plotly_chart(tune_plots.leaderboard_fig(res.table, res.metric, res.winner, res.best_heuristic),
                  key="tp_fig_board")
c[1].plotly_chart(tune_plots.levels_fig(tv.candidate_sigmas(res), res.winner, res.best_heuristic), key="tp_fig_levels")

st.subheader("Steps to match")
mt = job.match
if mt is None or mt.get("winner_value", {}).get("mean") is None or mt.get("heuristic_value", {}).get("mean") is None:
    st.caption("Not available for this run: " + ((mt or {}).get("error") or "a held-out value diverged") + ".")
else:
    fmt = lambda v: f"{v['mean']:.4g}" + ("" if v["ci"] is None else f" ± {v['ci']:.2g}")   # noqa: E731
    m = st.columns(3)
    m[0].metric(f"{mt['winner']} at {mt['steps']} steps", fmt(mt["winner_value"]))
    m[1].metric(f"{mt['heuristic']} at {mt['heuristic_steps']} steps", fmt(mt["heuristic_value"]))
    m[2].metric("paired difference", fmt(mt["diff"]))
    verdict = ("matches" if mt["matches"] else "does not match")
    st.caption(f"The winner at {mt['steps']} steps {verdict} the best heuristic at {mt['heuristic_steps']} steps "
               f"(1.5 x) on the same held-out noise ({mt['metric']}, lower is better)."
               + (" The winner is that heuristic itself, so this only shows what 1.5 x the steps buys."
                  if res.from_heuristic else ""))

st.subheader("Samples from the same noise")
try:
    sm = tv.samples(job, 1000 if jtm.toy else 16)
except ScheduleLabError as e:
    st.error(tv.app_message(e))
    sm = None
if sm is not None:
    ss["tp_samples"] = sm
    c = st.columns(2)
    for col, key, who in ((c[0], "winner", f"winner: {res.winner}"), (c[1], "heuristic",
                                                                     f"best heuristic: {res.best_heuristic}")):
        title = f"{who} ({job.spec['steps']} steps)"
        fig = (plots.samples_fig(toy_density(job.spec["toy"]), sm[key].numpy(), title) if jtm.toy else
               plots.image_grid_fig(sm[key].numpy(), title))
        col.plotly_chart(fig, key=f"tp_fig_{key}")
    st.caption(f"Both start from the same initial noise (seed {sm['seed']}, the first held-out batch) and use "
               f"{job.spec['solver']}." + (" The winner is the best heuristic: both panels are the same." if
                                           res.from_heuristic else ""))

st.subheader("Export the winner")
sched = tv.winner_schedule(res, job.spec, jtm)
init_widgets({"tp_export_table": "sd15"})
st.selectbox("Model noise table for diffusers timesteps=", list(TABLES), key="tp_export_table")
texts, problems = tv.exports(sched, jtm.name, jtm.flow, ss.tp_export_table)
ss["tp_exports"] = texts
st.caption("Provenance: " + provenance(sched, jtm.name))
titles = {**tv.EXPORTS, **tv.FLOW_EXPORTS}
fmts = [f for f in titles if f in texts or f in problems]
stem = f"tune_{res.winner}_{job.spec['solver']}_{job.spec['steps']}"
for tab, fmt in zip(st.tabs([titles[f][0] for f in fmts]), fmts):
    with tab:
        if fmt in problems:
            st.warning(f"No {titles[fmt][0]} export: {problems[fmt]}")
            continue
        st.code(texts[fmt], language="json" if titles[fmt][1].endswith(".json") else
                None if titles[fmt][1].endswith(".txt") else "python", wrap_lines=True)
        st.download_button(f"Download {titles[fmt][0]}", texts[fmt], file_name=stem + titles[fmt][1],
                           mime=titles[fmt][2], key=f"tp_dl_{fmt}")


def _save():
    ss["tp_saved"] = add_to_library(sched, f"tune {res.winner} {jtm.name} {job.spec['solver']}")


st.button("Add the winner to the schedule library", key="tp_save", on_click=_save)
if ss.get("tp_saved"):
    st.success(f"saved to the schedule library as {ss.tp_saved!r} (other pages list it as 'library: ...').")
