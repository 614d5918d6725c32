"""Optimizer: run AYS, DM-NonUniform or the score-optimal search live on the chosen toy model,
with every knob; Start / Stop / Resume (the run is app_lib.runs': it goes on in its own thread
while the user visits other pages, and survives a reload); the schedule's points, the objective
and the held-out metric update while it runs; the result goes to the schedule library."""
import streamlit as st

from app_lib import engine, plots, runs
from app_lib.state import devices, init_widgets, settings, solver_options
from core.errors import ScheduleLabError
from core.optimizers.heldout import HELDOUT
from core.optimizers.nonuniform import STARTS

MSG = "opt_message"
# knob -> (label, help)
KNOBS = {
    "steps": ("Steps", "steps of the final schedule (AYS: of the first stage)"),
    "stages": ("Stages", "AYS hierarchy (Sec. 3.3): optimize at `steps`, then at 2 x and 4 x steps (10 -> 20 -> 40 "
                         "as in the paper), each stage starting from a log-linear resampling of the previous one"),
    "n_samples": ("Samples", "AYS: Monte Carlo samples per sweep; score-optimal: data samples per noise level"),
    "n_candidates": ("Candidates", "AYS: values tried per point and sweep besides the current one, log-spaced "
                                   "between its neighbours (paper: 10)"),
    "c": ("c", "AYS: data scale of KLUB's importance sampler (Eq. 15)"),
    "max_iters": ("Iterations", "AYS: sweep cap per stage"),
    "maxiter": ("Solver iterations", "DM-NonUniform: trust-constr iteration cap per start"),
    "heldout": ("Early-stopping metric", "AYS: held-out quality metric, lower is better (kde_nll: held-out data "
                                         "under a KDE of the samples, which a collapsed sample cannot win; nll: exact "
                                         "density of the toy at the samples, which rewards collapse onto the modes; swd: "
                                         "sliced W2 to data; ref_error: distance to a many-step solution); "
                                         "'none' disables early stopping"),
    "patience": ("Patience", "AYS: first-stage sweeps without a held-out improvement before stopping early"),
    "heldout_solver": ("Solver", "AYS: the solver the held-out metric samples with (the solver the schedule is "
                                 "tuned for). DM-NonUniform always optimizes for dpmpp_3m_lagrange."),
    "heldout_n": ("Held-out samples", "AYS: samples per held-out evaluation"),
    "p": ("p", "DM-NonUniform model-error exponent: 1 for pixel models, 2 for latent ones"),
    "v": ("v", "score-optimal speed v(sigma) = sigma^v (the paper's transcription uses v = 1)"),
    "levels": ("Levels", "score-optimal: log-spaced noise levels of the Stein density grid"),
    "starts": ("Starts", "DM-NonUniform: initial schedules; the lowest converged bound wins"),
}

st.title("Optimizer")
st.caption("Run a schedule optimizer on the sidebar's toy model and watch it work: the points move, "
           "the objective falls, and the held-out metric tells when to stop (the bound's optimum is not "
           "the true optimum, AYS Sec. 3.3).")

cfg = settings()
init_widgets({"opt_method": "ays", "opt_steps": 10, "opt_stages": 1, "opt_n_samples": 1024,
              "opt_n_candidates": 10, "opt_c": 0.5, "opt_max_iters": 30, "opt_heldout": "kde_nll",
              "opt_patience": 3, "opt_heldout_solver": "dpmpp_2m", "opt_heldout_n": 2048, "opt_p": 1.0,
              "opt_v": 1.0, "opt_levels": 100, "opt_starts": list(STARTS), "opt_maxiter": 1000})
STARTED_HERE = "opt_started_here"


def _adopt_restored_run():
    """A stopped run restored from disk (a reload, a new session) shows its own knobs in the widgets, so
    that a knob changed before Resume is seen and refused like in the session that started it (issue 13)."""
    run, ss = runs.current_run(), st.session_state
    if run is None or run.active or ss.get(STARTED_HERE) == id(run) or not isinstance(getattr(run, "spec", None), dict):
        return
    ss.opt_method = run.spec.get("method", ss.opt_method)
    for k, v in (run.spec.get("knobs") or {}).items():
        if k != "seed" and f"opt_{k}" in ss:
            ss[f"opt_{k}"] = "none" if (k == "heldout" and v is None) else (list(v) if k == "starts" else v)
    ss[STARTED_HERE] = ss[ADOPTED] = id(run)


ADOPTED = "opt_adopted_run"          # a restored run resumes on its own toy and model, whatever the sidebar shows
_adopt_restored_run()
st.selectbox("Method", list(engine.OPTIMIZERS), key="opt_method", format_func=engine.OPTIMIZERS.get)
method = st.session_state.opt_method
uses = engine.METHOD_KNOBS[method]
if method == "nonuniform":
    st.info("DM-NonUniform minimises an error bound of the **dpmpp_3m_lagrange** solver: the schedule it returns is "
            "meant for dpmpp_3m_lagrange (it is saved with solver = dpmpp_3m_lagrange). It needs no data and no model.")


def off(k):
    return k not in uses


with st.expander("Knobs", expanded=True):
    k = st.columns(4)
    k[0].number_input(KNOBS["steps"][0], 3, 200, step=1, key="opt_steps", help=KNOBS["steps"][1])
    k[1].number_input(KNOBS["stages"][0], 1, 3, step=1, key="opt_stages", help=KNOBS["stages"][1],
                      disabled=off("stages"))
    k[2].selectbox(KNOBS["n_samples"][0], [64, 128, 256, 512, 1024, 2048, 4096, 8192], key="opt_n_samples",
                   help=KNOBS["n_samples"][1], disabled=off("n_samples"))
    k[3].number_input(KNOBS["n_candidates"][0], 1, 100, step=1, key="opt_n_candidates",
                      help=KNOBS["n_candidates"][1], disabled=off("n_candidates"))
    k = st.columns(4)
    k[0].number_input(KNOBS["c"][0], 0.01, 10.0, format="%.3g", key="opt_c", help=KNOBS["c"][1],
                      disabled=off("c"))
    k[1].number_input(KNOBS["max_iters"][0], 1, 1000, step=1, key="opt_max_iters", help=KNOBS["max_iters"][1],
                      disabled=off("max_iters"))
    k[2].selectbox(KNOBS["heldout"][0], list(HELDOUT) + ["none"], key="opt_heldout",
                   help=KNOBS["heldout"][1], disabled=off("heldout"))
    k[3].number_input(KNOBS["patience"][0], 1, 100, step=1, key="opt_patience", help=KNOBS["patience"][1],
                      disabled=off("patience"))
    k = st.columns(4)
    k[0].selectbox(KNOBS["heldout_solver"][0], solver_options(), key="opt_heldout_solver",
                   help=KNOBS["heldout_solver"][1], disabled=off("heldout_solver"))
    k[1].selectbox(KNOBS["heldout_n"][0], [256, 512, 1024, 2048, 4096, 8192], key="opt_heldout_n",
                   help=KNOBS["heldout_n"][1], disabled=off("heldout_n"))
    k[2].number_input(KNOBS["p"][0], 0.0, 4.0, step=0.5, key="opt_p", help=KNOBS["p"][1], disabled=off("p"))
    k[3].number_input(KNOBS["v"][0], 0.0, 4.0, step=0.5, key="opt_v", help=KNOBS["v"][1], disabled=off("v"))
    k = st.columns([1, 1, 2])
    k[0].selectbox(KNOBS["levels"][0], [50, 100, 200, 400], key="opt_levels", help=KNOBS["levels"][1],
                   disabled=off("levels"))
    k[1].number_input(KNOBS["maxiter"][0], 10, 5000, step=10, key="opt_maxiter", help=KNOBS["maxiter"][1],
                      disabled=off("maxiter"))
    k[2].multiselect(KNOBS["starts"][0], list(STARTS), key="opt_starts", help=KNOBS["starts"][1],
                     disabled=off("starts"))
    st.caption("Seed: the sidebar's.")


def knob_values() -> dict:
    ss = st.session_state
    return {"steps": int(ss.opt_steps), "stages": int(ss.opt_stages), "n_samples": int(ss.opt_n_samples),
            "n_candidates": int(ss.opt_n_candidates), "c": float(ss.opt_c), "max_iters": int(ss.opt_max_iters),
            "heldout": None if ss.opt_heldout == "none" else ss.opt_heldout, "patience": int(ss.opt_patience),
            "heldout_solver": ss.opt_heldout_solver, "heldout_n": int(ss.opt_heldout_n), "p": float(ss.opt_p),
            "v": float(ss.opt_v), "levels": int(ss.opt_levels), "maxiter": int(ss.opt_maxiter), "starts": tuple(ss.opt_starts),
            "seed": cfg["seed"]}


def _spec() -> dict:
    """Plain data the run is rebuilt from (a new session resumes a saved run with it)."""
    knobs = {**knob_values(), "starts": list(st.session_state.opt_starts)}
    return {"method": st.session_state.opt_method, "knobs": knobs,
            "toy": cfg["toy"], "model_kind": cfg["model_kind"], "device": cfg["device"]}


def _factory(spec: dict):
    device = spec["device"] if spec["device"] in devices() else "cpu"
    try:
        return engine.optimizer_factory(spec["method"], spec["knobs"], spec["toy"], spec["model_kind"], device)
    except KeyError as e:
        raise ScheduleLabError(f"the saved run lacks {e} (or names an unknown method); start a new run") from None


def _start():
    spec = _spec()
    m = spec["method"]
    knobs = {k: v for k, v in knob_values().items() if k in engine.METHOD_KNOBS[m]}
    try:
        runs.start_run(m, _factory(spec), {**knobs, "toy": cfg["toy"], "model": cfg["model_kind"]}, spec)
        st.session_state[STARTED_HERE] = id(runs.current_run())   # Resume compares this run's knobs
    except ScheduleLabError as e:
        st.session_state[MSG] = str(e)


def _stop():
    run = runs.current_run()
    if run is not None:
        run.stop()


def _resume():
    from core.optimizers.resume import knob_changes     # issue 13: a changed knob is not silently ignored
    run = runs.current_run()
    if run is not None and st.session_state.get(STARTED_HERE) == id(run):   # started in this session
        now = {k: v for k, v in knob_values().items() if k in engine.METHOD_KNOBS[run.method]}
        where = ({"toy": run.knobs.get("toy"), "model": run.knobs.get("model")}
                 if st.session_state.get(ADOPTED) == id(run) else {"toy": cfg["toy"], "model": cfg["model_kind"]})
        changed = knob_changes(run.knobs, {**now, **where})
        if changed:
            st.session_state[MSG] = ("not resumed: " + ", ".join(f"{k} changed from {a!r} to {b!r}"
                                                                 for k, a, b in changed)
                                     + " since Stop. Set them back to resume this run, or press Start for a "
                                     "new run with them")
            return
    try:
        runs.resume_run(_factory)
    except ScheduleLabError as e:
        st.session_state[MSG] = str(e)


def _save():
    try:
        runs.save_result(runs.current_run(), _factory)
    except ScheduleLabError as e:
        st.session_state[MSG] = str(e)


run = runs.current_run()
runs.sync(run)                          # a run that ended since the last rerun: result to the library
status = run.status if run is not None else "idle"
active = run is not None and run.active
b = st.columns(5)
b[0].button("Start", key="opt_start", on_click=_start, disabled=active, type="primary")
b[1].button("Stop", key="opt_stop", on_click=_stop, disabled=status != "running")   # after the current iteration
b[2].button("Resume", key="opt_resume", on_click=_resume, disabled=status != "stopped")
b[3].button("Save result to library", key="opt_save", on_click=_save,
            disabled=run is None or run.state is None or active)
if st.session_state.get(MSG):
    st.error(st.session_state.pop(MSG))


@st.fragment(run_every=0.5 if active else None)
def live():
    run = runs.current_run()
    if run is None:
        st.info("Set the knobs and press Start. The optimizer runs on its own while you watch, or while "
                "you visit other pages (the sidebar shows its progress); Stop keeps its state and Resume "
                "continues from it, also after a reload.")
        return
    v = run.view()                      # one consistent snapshot of the worker's progress
    if active and v["status"] not in ("running", "stopping"):
        runs.sync(run)
        st.rerun(scope="app")           # buttons and the refresh timer follow the new status
    with st.container(key="opt_status"):
        (st.error if v["status"] == "failed" else st.caption)(
            f"**{v['status']}** — iteration {run.iteration if v['history'] else '-'} — {v['message']}")
        if v["progress"]:
            p = v["progress"]
            st.progress(min(1.0, max(0.0, float(p["fraction"]))), text=runs.progress_line(run, long=True))
    history = v["history"]
    if history:
        c = st.columns(2)
        c[0].plotly_chart(plots.optimizer_points_fig(history), key="opt_fig_points")
        c[0].caption("Each column of points is the schedule after one iteration: watch the interior points "
                     "move while sigma_max and sigma_min stay fixed. Colours mark the AYS stages (or the "
                     "DM-NonUniform starts); score-optimal shows its schedule once the density is complete.")
        objective = {"ays": "total KLUB", "nonuniform": "error bound", "score_optimal": "Stein cost"}
        c[1].plotly_chart(plots.optimizer_curves_fig(history, run.early_stopped_at, run.best_so_far,
                                                     objective_name=objective.get(run.method, "objective")),
                          key="opt_fig_curves")
        c[1].caption("The objective the method minimises (left axis: total KLUB, error bound or Stein cost) and "
                     "the held-out metric (right axis, lower is better). The dashed green line marks the "
                     "early-stopping point (the first-stage sweep AYS kept); the dotted line the best held-out "
                     "sweep so far.")
    if run.saved_label:
        why = ("the paper evaluates its schedules with EDM's Heun sampler" if run.method == "score_optimal"
               else "the bound it minimises models that solver")
        meant = (f" It is meant for the **{run.saved_solver}** solver ({why}): sample it with that solver."
                 if getattr(run, "saved_solver", None) else "")
        st.success(f"saved to the schedule library as {run.saved_label!r}.{meant}")


live()
