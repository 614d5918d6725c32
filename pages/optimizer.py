"""Optimizer: run AYS, DM-NonUniform or the score-optimal search live on the sidebar's toy or an
image model (digits, digits-flow, a diffusers folder), with its class label and guidance scale and
every knob; Start / Stop / Resume (the run is app_lib.runs': it goes on in its own thread
while the user visits other pages, and survives a reload); the schedule's points, the objective
and the held-out metric update while it runs; the result goes to the schedule library."""
from pathlib import Path

import streamlit as st

from app_lib import engine, optimizer_models, runs
from app_lib import optimizer_plots as oplots
from app_lib.optional import optional
from app_lib.state import devices, guided_kind, init_widgets, kind_label, settings, solver_options
from core.errors import ScheduleLabError
from core.optimizers.heldout import HELDOUT
from core.optimizers.nonuniform import STARTS
from toy_data.labelled import LABELLED_TOYS

MSG = "opt_message"
TOY, FOLDER = optimizer_models.TOY, "diffusers folder ..."
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
    "heldout": ("Early stopping", "AYS: held-out quality metric, lower is better (kde_nll: held-out data "
                                         "under a KDE of the samples, which a collapsed sample cannot win; nll: exact "
                                         "density of the toy at the samples, which rewards collapse onto the modes; swd: "
                                         "sliced W2 to data; ref_error: distance to a many-step solution; fd, digits "
                                         "models: the classifier's Frechet distance to the training split); "
                                         "'none' disables early stopping"),
    "patience": ("Patience", "AYS: first-stage sweeps without a held-out improvement before stopping early"),
    "heldout_solver": ("Solver", "AYS: the solver the held-out metric samples with (the solver the schedule is "
                                 "tuned for). DM-NonUniform always optimizes for dpmpp_3m_lagrange."),
    "heldout_n": ("Held-out size", "AYS: samples per held-out evaluation"),
    "p": ("p", "DM-NonUniform model-error exponent: 1 for pixel models, 2 for latent ones"),
    "v": ("v", "score-optimal speed v(sigma) = sigma^v (the paper's transcription uses v = 1)"),
    "levels": ("Levels", "score-optimal: log-spaced noise levels of the Stein density grid"),
    "starts": ("Starts", "DM-NonUniform: initial schedules; the lowest converged bound wins"),
}

st.title("Optimizer")
st.caption("Run a schedule optimizer on the sidebar's toy or an image model and watch it work: the points move, "
           "the objective falls, and the held-out metric tells when to stop (the bound's optimum is not "
           "the true optimum, AYS Sec. 3.3).")

cfg = settings()
DEFAULTS = {"opt_method": "ays", "opt_steps": 10, "opt_stages": 1, "opt_n_samples": 1024,
            "opt_n_candidates": 10, "opt_c": 0.5, "opt_max_iters": 30, "opt_heldout": "kde_nll",
            "opt_patience": 3, "opt_heldout_solver": "dpmpp_2m", "opt_heldout_n": 2048, "opt_p": 1.0,
            "opt_v": 1.0, "opt_levels": 100, "opt_starts": list(STARTS), "opt_maxiter": 1000,
            "opt_model": TOY, "opt_path": "", "opt_label": "none", "opt_cfg": 1.0}
init_widgets(DEFAULTS)
STARTED_HERE = "opt_started_here"
SEEN = "_opt_sidebar_guidance"        # the sidebar's (label, w) the page's widgets last followed (toys)


def _sidebar_guidance() -> tuple:
    ss = st.session_state
    return ss.get("sb_label", "none"), float(ss.get("sb_cfg", 1.0))


def _follow_sidebar():
    """Toys: the page's label / w widgets show the sidebar's (one setting, two places), until it changes."""
    ss = st.session_state
    if "sb_label" in ss and ss.get(SEEN) != _sidebar_guidance():
        ss[SEEN] = _sidebar_guidance()
        ss.opt_label, ss.opt_cfg = ss[SEEN]


def _to_sidebar():
    """Toys: a label / w set on this page is the sidebar's too (the Playground then shows the same model)."""
    ss = st.session_state
    if ss.opt_model == TOY and "sb_label" in ss:
        ss.sb_label, ss.sb_cfg = ss.opt_label, float(ss.opt_cfg)
        ss[SEEN] = _sidebar_guidance()


def _model_changed():
    """Between a toy and an image model the sample-size knobs jump to the other's defaults (an image's
    KLUB sweep with a toy's 1024 samples takes minutes; the command line's image defaults)."""
    ss = st.session_state
    image = ss.opt_model != TOY
    for k, v in optimizer_models.IMAGE_KNOBS.items():
        ss[f"opt_{k}"] = v if image else DEFAULTS[f"opt_{k}"]
    if image:
        ss.opt_cfg = optimizer_models.IMAGE_CFG
    else:
        ss.pop(SEEN, None)                     # a toy shows the sidebar's label and w again


def _adopt_restored_run():
    """A stopped run restored from disk (a reload, a new session) shows its own knobs in the widgets, so
    that a knob changed before Resume is seen and refused like in the session that started it (issue 13)."""
    run, ss = runs.current_run(), st.session_state
    if run is None or run.active or ss.get(STARTED_HERE) == id(run) or not isinstance(getattr(run, "spec", None), dict):
        return
    ss.opt_method = run.spec.get("method", ss.opt_method)
    source = run.spec.get("source", TOY)
    names = engine.image_model_names()
    ss.opt_model = source if source in [TOY] + names else FOLDER
    ss.opt_path = "" if source in [TOY] + names else source
    ss.opt_label = run.spec.get("label", "none")
    if run.spec.get("cfg") is not None:
        ss.opt_cfg = float(run.spec["cfg"])
    ss[SEEN] = _sidebar_guidance()                # the run's own label, not the sidebar's
    for k, v in (run.spec.get("knobs") or {}).items():
        if k != "seed" and f"opt_{k}" in ss:
            ss[f"opt_{k}"] = "none" if (k == "heldout" and v is None) else (list(v) if k == "starts" else v)
    ss[STARTED_HERE] = ss[ADOPTED] = id(run)


ADOPTED = "opt_adopted_run"          # a restored run resumes on its own toy and model, whatever the sidebar shows
_adopt_restored_run()
ss = st.session_state
image_names = engine.image_model_names() if optional(engine.REGISTRY) is not None else []
if ss.opt_model not in [TOY] + image_names + [FOLDER]:
    ss.opt_model = TOY
toy_base = ss.get("sb_model_kind") or "exact"
m = st.columns([3, 2, 2])
m[0].selectbox("Model", [TOY] + image_names + [FOLDER], key="opt_model", on_change=_model_changed,
               format_func=lambda o: f"toy: {cfg['toy']} ({kind_label(toy_base)})" if o == TOY else o,
               help="the sidebar's 2-D toy, or an image model (loaded as on the Images page; its data: the "
                    "training split it ships with, else its own many-step samples, generated once and cached)")
model_id, n_classes, model_ok = None, 0, True
if ss.opt_model == FOLDER:
    m[0].text_input("Folder path", key="opt_path", placeholder="/path/to/diffusers/model",
                    help="a local diffusers model folder (nothing is downloaded)")
    m[0].caption("No data ships with a folder: AYS and score-optimal fit the model's own many-step samples "
                 "(generated once when the run starts, then cached on disk), not data.")
if ss.opt_model == TOY:
    if cfg["toy"] in LABELLED_TOYS and toy_base == "exact":
        n_classes = len(set(LABELLED_TOYS[cfg["toy"]]()))
        _follow_sidebar()
else:
    model_id = ss.opt_path.strip() if ss.opt_model == FOLDER else ss.opt_model
    try:
        if ss.opt_model == FOLDER and model_id and not Path(model_id).expanduser().is_dir():
            raise ScheduleLabError(f"no folder at {model_id!r}: give the path of a local diffusers model folder "
                                   "(one saved with save_pretrained: a UNet2DModel and its scheduler config)")
        if model_id:
            n_classes = engine.image_num_classes(model_id, cfg["device"])
        else:
            m[0].info("Enter the path of a local diffusers model folder.")
            model_ok = False
    except ScheduleLabError as e:
        m[0].error(str(e))                  # next to the control that caused it
        model_ok = False
if n_classes:
    labels = ["none"] + (["all"] if model_id else []) + [str(c) for c in range(n_classes)]
    if ss.opt_label not in labels:
        ss.opt_label = "none"
    m[1].selectbox("Class label", labels, key="opt_label", on_change=_to_sidebar,
                   help="none: the unconditional model" + ("; all: labels 0, 1, 2, ... cycled over the batch"
                                                           if model_id else "; the sidebar's label on a toy"))
    m[2].number_input("Guidance scale w", 0.0, 20.0, step=0.5, key="opt_cfg", on_change=_to_sidebar,
                      disabled=ss.opt_label == "none",
                      help="classifier-free guidance D = D_uncond + w (D_cond - D_uncond), passed to the optimizer "
                           "as part of the model: 2 model calls per evaluation unless w = 1. The guided ODE does not "
                           "sample p(x) p(c|x)^w: score-optimal and AYS fit the class's data.")
st.selectbox("Method", list(engine.OPTIMIZERS), key="opt_method", format_func=engine.OPTIMIZERS.get)
method = st.session_state.opt_method
uses = engine.METHOD_KNOBS[method]
if method == "nonuniform":
    st.info("DM-NonUniform minimises an error bound of the **dpmpp_3m_lagrange** solver: the schedule it returns is "
            "meant for dpmpp_3m_lagrange (it is saved with solver = dpmpp_3m_lagrange). It needs no data and no model "
            "calls: only the model's noise range (and, for an image model, its noise process).")


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
    heldout_opts = list(HELDOUT) + ["none"] if model_id is None else optimizer_models.image_heldout_options(model_id)
    if ss.opt_heldout not in heldout_opts:
        ss.opt_heldout = heldout_opts[0]
    k[2].selectbox(KNOBS["heldout"][0], heldout_opts, key="opt_heldout",
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
            "seed": settings()["seed"]}


def model_choice(toy: str | None = None, base: str | None = None) -> dict:
    """The run's model from the widgets (read afresh: callbacks run before the page): source (TOY or the
    image model's name / folder), toy and model_kind (toys: the sidebar's toy and kind, or `toy` and
    `base`, guided by the page's label and w on a labelled toy), label ("none" | "all" | a class) and
    cfg (w; None unguided)."""
    ss, now = st.session_state, settings()
    base = base or ss.get("sb_model_kind") or "exact"
    if ss.opt_model == TOY:
        toy = toy or now["toy"]
        labelled = toy in LABELLED_TOYS and base == "exact"
        lab = ss.opt_label if labelled else "none"
        kind = base if lab == "none" else guided_kind(int(lab), float(ss.opt_cfg))
        return {"source": TOY, "toy": toy, "model_kind": kind, "label": lab,
                "cfg": None if lab == "none" else float(ss.opt_cfg)}
    source = ss.opt_path.strip() if ss.opt_model == FOLDER else ss.opt_model
    if not source:
        raise ScheduleLabError("enter the path of a local diffusers model folder first")
    lab = ss.opt_label if engine.image_num_classes(source, now["device"]) else "none"
    return {"source": source, "toy": None, "model_kind": None, "label": lab,
            "cfg": None if lab == "none" else float(ss.opt_cfg)}


def model_knobs(choice: dict) -> dict:
    """The model part of a run's knobs (what Resume checks besides the method's knobs)."""
    toy_kind = "exact" if choice["label"] != "none" else choice["model_kind"]    # (the guided kind: label and cfg)
    return {"toy": choice["toy"], "model": toy_kind if choice["source"] == TOY else choice["source"],
            "label": None if choice["label"] == "none" else choice["label"], "cfg": choice["cfg"]}


def _spec(choice: dict) -> dict:
    """Plain data the run is rebuilt from (a new session resumes a saved run with it)."""
    knobs = {**knob_values(), "starts": list(st.session_state.opt_starts)}
    return {"method": st.session_state.opt_method, "knobs": knobs, "device": settings()["device"], **choice}


def _factory(spec: dict):
    device = spec["device"] if spec["device"] in devices() else "cpu"
    try:
        return optimizer_models.factory_from_spec(spec, device)
    except KeyError as e:
        raise ScheduleLabError(f"the saved run lacks {e} (or names an unknown method); start a new run") from None


def _start():
    try:
        choice = model_choice()
        spec = _spec(choice)
        m = spec["method"]
        knobs = {k: v for k, v in knob_values().items() if k in engine.METHOD_KNOBS[m]}
        runs.start_run(m, _factory(spec), {**knobs, **model_knobs(choice)}, spec)
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
        own = {}
        if st.session_state.get(ADOPTED) == id(run) and run.spec.get("source", TOY) == TOY:
            # a restored toy run keeps its own toy and model kind, whatever the sidebar shows
            own = {"toy": run.knobs.get("toy"),
                   "base": "exact" if run.knobs.get("label") is not None else run.knobs.get("model")}
        try:
            where = model_knobs(model_choice(**own))
        except ScheduleLabError as e:
            st.session_state[MSG] = str(e)
            return
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
b = st.columns([1, 1, 1, 2])
b[0].button("Start", key="opt_start", on_click=_start, disabled=active or not model_ok, type="primary")
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
        st.caption(f"on {runs.model_line(run)}")
        if v["progress"]:
            p = v["progress"]
            st.progress(min(1.0, max(0.0, float(p["fraction"]))), text=runs.progress_line(run, long=True))
    history = v["history"]
    if history and run.method == "score_optimal":
        dens = next((h["density"] for h in reversed(history) if h.get("density")), None)
        last = history[-1]
        if dens is not None:
            st.plotly_chart(oplots.stein_density_fig(dens, None if last.get("placeholder") else last["sigmas"]),
                            key="opt_fig_density")
            st.caption("The Stein cost density over log sigma (dLambda / dlog sigma: an area under the curve is "
                       "an increment of Lambda), filled in as its levels are estimated. The score-optimal "
                       "levels walk at constant speed in Lambda, so they cut it into bands of equal area"
                       + (f": total Stein cost {last['objective']:.4g}." if last["done"] else "."))
    elif history:
        c = st.columns(2)
        c[0].plotly_chart(oplots.optimizer_points_fig(history), key="opt_fig_points")
        c[0].caption("Each column of points is the schedule after one iteration: watch the interior points "
                     "move while sigma_max and sigma_min stay fixed. Colours mark the AYS stages (or the "
                     "DM-NonUniform starts).")
        objective = {"ays": "total KLUB", "nonuniform": "error bound"}
        c[1].plotly_chart(oplots.optimizer_curves_fig(history, run.early_stopped_at, run.best_so_far,
                                                      objective_name=objective.get(run.method, "objective")),
                          key="opt_fig_curves")
        c[1].caption("The objective the method minimises (left axis: total KLUB or error bound; one line per AYS "
                     "stage or DM-NonUniform start, each starting afresh) and the held-out metric (right axis, "
                     "lower is better). The dashed green line marks the early-stopping point (the first-stage "
                     "sweep AYS kept); the dotted line the best held-out sweep so far.")
    if run.saved_label:
        why = ("the paper evaluates its schedules with EDM's Heun sampler" if run.method == "score_optimal"
               else "the bound it minimises models that solver")
        meant = (f" It is meant for the **{run.saved_solver}** solver ({why}): sample it with that solver."
                 if getattr(run, "saved_solver", None) else "")
        st.success(f"saved to the schedule library as {run.saved_label!r}.{meant}")


live()
