"""Optimizer: run AYS, DM-NonUniform or the score-optimal search live on the chosen toy model,
with every knob; Start / Stop / Resume; the schedule's points, the objective and the held-out
metric update while it runs; the result goes to the session's schedule library."""
import streamlit as st

from app_lib import engine, plots
from app_lib.optional import NOT_AVAILABLE
from app_lib.runner import OptimizerRun
from app_lib.state import add_to_library, init_widgets, settings, solver_options, toy_model, toy_sampler
from core.errors import ScheduleLabError

RUN = "opt_run"
# knob -> (label, help); shown for every method, disabled when the method's class does not take it
KNOBS = {
    "steps": ("Steps", "steps of the final schedule"),
    "stages": ("Stages (AYS)", "hierarchical step counts: optimize at the first, subdivide (geometric means) "
                               "and optimize the new points at the next ones (AYS Sec. 3.3)"),
    "n_samples": ("Samples", "data samples per objective estimate (AYS: per interval; score-optimal: per level)"),
    "n_candidates": ("Candidates", "candidate positions per point and sweep, log-spaced between its neighbours"),
    "c": ("c", "data scale of KLUB's importance sampler (AYS Eq. 15)"),
    "max_iters": ("Max iterations", "cap on sweeps / solver iterations"),
    "heldout": ("Early-stopping metric", "held-out quality metric (lower is better); 'none' disables early stopping"),
    "patience": ("Patience", "stop after this many evaluations without a held-out improvement"),
    "heldout_solver": ("Held-out solver", "solver used to sample for the held-out metric"),
    "solver": ("Solver", "the solver the schedule is optimized for (DM-NonUniform: its multistep order)"),
    "p": ("p", "DM-NonUniform model-error exponent: 1 for pixel models, 2 for latent ones"),
    "v": ("v", "score-optimal speed: v(sigma) = sigma^v (the paper's transcription uses v = 1)"),
}

st.title("Optimizer")
st.caption("Run a schedule optimizer on the sidebar's toy model and watch it work: the points move, "
           "the objective falls, and the held-out metric tells when to stop (the bound's optimum is not "
           "the true optimum, AYS Sec. 3.3).")

cfg = settings()
methods = list(engine.OPTIMIZERS)
init_widgets({"opt_method": "ays", "opt_steps": 10, "opt_stages": [10, 20], "opt_n_samples": 1024,
              "opt_n_candidates": 11, "opt_c": 0.5, "opt_max_iters": 30, "opt_heldout": "nll",
              "opt_patience": 3, "opt_heldout_solver": "dpmpp_2m", "opt_solver": "dpmpp_3m", "opt_p": 1.0,
              "opt_v": 1.0, "opt_events_per_rerun": 2})
st.selectbox("Method", methods, key="opt_method", format_func=lambda m: engine.OPTIMIZERS[m][2])
method = st.session_state.opt_method
cls = engine.optimizer_class(method)
if cls is None:
    st.info(NOT_AVAILABLE.format(engine.OPTIMIZERS[method][0]))
accepts = (lambda k: k in engine.accepted_kwargs(cls, {k: None})) if cls is not None else (lambda k: False)

with st.expander("Knobs", expanded=True):
    k = st.columns(4)
    k[0].number_input(KNOBS["steps"][0], 2, 200, step=1, key="opt_steps", help=KNOBS["steps"][1],
                      disabled=not accepts("steps"))
    k[1].multiselect(KNOBS["stages"][0], [5, 10, 20, 40, 80], key="opt_stages", help=KNOBS["stages"][1],
                     disabled=not accepts("stages"))
    k[2].selectbox(KNOBS["n_samples"][0], [128, 256, 512, 1024, 2048, 4096, 8192], key="opt_n_samples",
                   help=KNOBS["n_samples"][1], disabled=not accepts("n_samples"))
    k[3].number_input(KNOBS["n_candidates"][0], 2, 101, step=1, key="opt_n_candidates",
                      help=KNOBS["n_candidates"][1], disabled=not accepts("n_candidates"))
    k = st.columns(4)
    k[0].number_input(KNOBS["c"][0], 0.01, 10.0, format="%.3g", key="opt_c", help=KNOBS["c"][1],
                      disabled=not accepts("c"))
    k[1].number_input(KNOBS["max_iters"][0], 1, 1000, step=1, key="opt_max_iters", help=KNOBS["max_iters"][1],
                      disabled=not accepts("max_iters"))
    k[2].selectbox(KNOBS["heldout"][0], ["nll", "swd", "mmd", "none"], key="opt_heldout",
                   help=KNOBS["heldout"][1], disabled=not accepts("heldout"))
    k[3].number_input(KNOBS["patience"][0], 1, 100, step=1, key="opt_patience", help=KNOBS["patience"][1],
                      disabled=not accepts("patience"))
    k = st.columns(4)
    k[0].selectbox(KNOBS["heldout_solver"][0], solver_options(), key="opt_heldout_solver",
                   help=KNOBS["heldout_solver"][1], disabled=not accepts("heldout_solver"))
    k[1].selectbox(KNOBS["solver"][0], solver_options(), key="opt_solver", help=KNOBS["solver"][1],
                   disabled=not accepts("solver"))
    k[2].number_input(KNOBS["p"][0], 0.5, 4.0, step=0.5, key="opt_p", help=KNOBS["p"][1], disabled=not accepts("p"))
    k[3].number_input(KNOBS["v"][0], 0.0, 4.0, step=0.5, key="opt_v", help=KNOBS["v"][1], disabled=not accepts("v"))
    st.slider("Events per rerun", 1, 20, key="opt_events_per_rerun",
              help="how many optimizer events each refresh pulls (fewer: more responsive page)")


def knob_values() -> dict:
    ss = st.session_state
    return {"steps": int(ss.opt_steps), "stages": tuple(sorted(int(s) for s in ss.opt_stages)),
            "n_samples": int(ss.opt_n_samples), "n_candidates": int(ss.opt_n_candidates), "c": float(ss.opt_c),
            "max_iters": int(ss.opt_max_iters), "heldout": None if ss.opt_heldout == "none" else ss.opt_heldout,
            "patience": int(ss.opt_patience), "heldout_solver": ss.opt_heldout_solver, "solver": ss.opt_solver,
            "p": float(ss.opt_p), "v": float(ss.opt_v), "seed": cfg["seed"]}


def _start():
    ss = st.session_state
    cls_ = engine.optimizer_class(ss.opt_method)
    model = toy_model(cfg["toy"], cfg["model_kind"], cfg["device"])
    pool = {"model": model, "sampler": toy_sampler(cfg["toy"]), "sigma_min": model.sigma_min,
            "sigma_max": model.sigma_max, **knob_values()}
    kwargs = engine.accepted_kwargs(cls_, pool)
    knobs = {k: v for k, v in kwargs.items() if k not in ("model", "sampler")}
    run = OptimizerRun(ss.opt_method, lambda: cls_(**kwargs), {**knobs, "toy": cfg["toy"],
                                                               "model": cfg["model_kind"]})
    try:
        ss[RUN] = run.start()
    except ScheduleLabError as e:
        ss[RUN] = run
        run.status, run.message = "failed", str(e)


def _stop():
    st.session_state[RUN].stop()


def _resume():
    try:
        st.session_state[RUN].resume()
    except ScheduleLabError as e:
        st.session_state[RUN].message = str(e)


def _save():
    run = st.session_state[RUN]
    s = run.result()
    run.saved_label = add_to_library(s, f"{run.method} {run.knobs.get('toy', '')} ({s.steps} steps)")


run = st.session_state.get(RUN)
status = run.status if run is not None else "idle"
b = st.columns(5)
b[0].button("Start", key="opt_start", on_click=_start, disabled=cls is None or status == "running", type="primary")
b[1].button("Stop", key="opt_stop", on_click=_stop, disabled=status != "running")
b[2].button("Resume", key="opt_resume", on_click=_resume, disabled=status != "stopped")
b[3].button("Save result to library", key="opt_save", on_click=_save,
            disabled=run is None or run.state is None or status == "running")


@st.fragment(run_every=0.5 if status == "running" else None)
def live():
    run = st.session_state.get(RUN)
    if run is None:
        st.info("Set the knobs and press Start. The optimizer runs a few iterations per refresh; Stop "
                "keeps its state and Resume continues from it.")
        return
    was = run.status
    run.pull(max_events=int(st.session_state.opt_events_per_rerun))
    if run.status == "done" and run.saved_label is None:
        _save()
    if run.status != was:
        st.rerun(scope="app")    # buttons and the refresh timer follow the new status
    (st.error if run.status == "failed" else st.caption)(f"**{run.status}** — {run.message}")
    if run.history:
        it = run.iteration
        total = max(int(run.knobs.get("max_iters") or 1), 1)
        st.progress(min(1.0, (it + 1) / total) if run.status != "done" else 1.0,
                    text=f"iteration {it}, stage {run.history[-1]['stage']}, objective {run.history[-1]['objective']:.5g}")
        c = st.columns(2)
        c[0].plotly_chart(plots.optimizer_points_fig(run.history), key="opt_fig_points")
        c[0].caption("Each column of points is the schedule after one iteration: watch the interior points "
                     "move while sigma_max and sigma_min stay fixed. Colours mark the hierarchical stages.")
        c[1].plotly_chart(plots.optimizer_curves_fig(run.history, run.best_iteration), key="opt_fig_curves")
        c[1].caption("The objective the method minimises (left axis) and the held-out metric (right axis, "
                     "lower is better). The dashed line marks the early-stopping point the optimizer chose.")
    if run.saved_label:
        st.success(f"saved to the schedule library as {run.saved_label!r}")


live()
