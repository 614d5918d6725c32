"""Images: a shipped image model (or a diffusers folder) sampled with several schedules side by
side from the same noise with the same solver and NFE; their difference to a many-step
reference; and the reference distance against NFE for every schedule."""
import streamlit as st

from app_lib import engine, plots
from app_lib.optional import NOT_AVAILABLE, optional
from app_lib.state import build_schedule, init_widgets, option_label, schedule_options, settings
from core.errors import ScheduleLabError
from core.solvers import get_solver, solver_names

FOLDER = "diffusers folder ..."

st.title("Images")
st.caption("The same comparison on images: every schedule starts from the same noise and uses the same "
           "solver and number of model calls (NFE). The reference is the same ODE solved with many "
           "Heun steps; the difference images show where each schedule's discretization error lands.")

cfg = settings()
if optional(engine.REGISTRY) is None:
    st.info(NOT_AVAILABLE.format(engine.REGISTRY) + " (image models: the digits model or a diffusers folder)")
    st.stop()

names = engine.image_model_names()
det_solvers = [s for s in solver_names() if not get_solver(s).stochastic]
init_widgets({"im_model": names[0] if names else FOLDER, "im_path": "", "im_scheds": ["karras", "loglinear",
              "kl_optimal"], "im_solver": "dpmpp_2m", "im_nfe": 10, "im_n": 16, "im_ref_steps": 100,
              "im_nfes": [4, 6, 8, 10, 16], "im_sweep": False, "im_opt": [],
              "im_quality": False, "im_q_n": 500, "im_label": "none", "im_cfg": 3.0})
opts = schedule_options()
st.session_state.im_scheds = [o for o in st.session_state.im_scheds if o in opts]

c = st.columns([2, 3, 2, 1, 1, 1])
c[0].selectbox("Model", names + [FOLDER], key="im_model")
if st.session_state.im_model == FOLDER:
    c[0].text_input("Folder path", key="im_path", placeholder="/path/to/diffusers/model",
                    help="a local diffusers model folder (nothing is downloaded)")
c[1].multiselect("Schedules", opts, key="im_scheds", format_func=option_label)
c[2].selectbox("Solver", det_solvers, key="im_solver",
               help="deterministic solvers only: the reference is an ODE solution from the same noise")
c[3].number_input("NFE", 1, 200, step=1, key="im_nfe")
c[4].selectbox("Images", [4, 8, 16, 32], key="im_n")
c[5].number_input("Reference steps", 20, 1000, step=10, key="im_ref_steps")

st.multiselect("Optimized for this model", list(engine.IMAGE_OPTIMIZED), key="im_opt",
               format_func=engine.IMAGE_OPTIMIZED.get,
               help="DM-NonUniform needs only the model's noise range; score-optimal estimates this model's "
                    "Stein density once (from its training data when it ships with some, else from its own "
                    "many-step samples, generated once and cached on disk)")

model_id = st.session_state.im_path.strip() if st.session_state.im_model == FOLDER else st.session_state.im_model
if not model_id:
    st.info("Enter the path of a local diffusers model folder.")
    st.stop()
try:
    n_classes = engine.image_num_classes(model_id, cfg["device"])
except ScheduleLabError as e:
    st.error(str(e))
    st.stop()
if n_classes:
    g = st.columns([2, 2, 4])
    labels = ["none", "all"] + [str(c) for c in range(n_classes)]
    if st.session_state.im_label not in labels:
        st.session_state.im_label = "none"
    g[0].selectbox("Class label", labels, key="im_label",
                   help="none: the unconditional model; all: labels 0, 1, 2, ... cycled over the images")
    g[1].number_input("Guidance scale w", 0.0, 20.0, step=0.5, key="im_cfg", disabled=st.session_state.im_label == "none",
                      help="classifier-free guidance D = D_uncond + w (D_cond - D_uncond): 2 model calls per "
                           "evaluation (NFE counts both) unless w = 1")
    model_id = engine.guided_model_id(model_id, st.session_state.im_label, st.session_state.im_cfg)
if not st.session_state.im_scheds and not st.session_state.im_opt:
    st.info("Pick at least one schedule.")
    st.stop()
try:
    model = engine.image_model(model_id, cfg["device"])
    solver, nfe = st.session_state.im_solver, int(st.session_state.im_nfe)
    steps = get_solver(solver).steps_for_nfe(nfe)
    scheds = {option_label(o): build_schedule(o, steps, model.sigma_min, model.sigma_max)
              for o in st.session_state.im_scheds}
    if "opt:score_optimal" in st.session_state.im_opt:
        with st.status("Estimating this model's Stein density (once per model) ...", expanded=False) as box:
            dens = engine.image_stein_density(model_id, cfg["device"])
            box.update(label=f"Stein density from {dens['source']}", state="complete")
        if dens["generated"]:
            st.caption(f"score-optimal: no data ships with this model, so its density comes from the model's own "
                       f"many-step samples ({dens['source']}): the schedule fits the model, not the data.")
    for o in st.session_state.im_opt:
        scheds[engine.IMAGE_OPTIMIZED_SHORT[o]] = engine.image_optimized_schedule(
            o, steps, model_id, cfg["device"], model.sigma_min, model.sigma_max)
    res = engine.image_compare(model_id, cfg["device"], {k: s.sigmas for k, s in scheds.items()}, solver,
                               int(st.session_state.im_n), cfg["seed"], int(st.session_state.im_ref_steps))
except ScheduleLabError as e:
    st.error(str(e))
    st.stop()
st.session_state["im_result"] = {"rmse": res["rmse"], "rmse_ci": res["rmse_ci"], "nfe": res["nfe"],
                                 "sigmas": {k: s.sigmas for k, s in scheds.items()}}

ref = next(iter(res["reference"].values()))
st.plotly_chart(plots.image_grid_fig(ref, f"Reference ({st.session_state.im_ref_steps} "
                                     "Heun steps)", cols=8), key="im_fig_ref")
cols = st.columns(min(len(scheds), 3))
for i, label in enumerate(scheds):
    with cols[i % len(cols)]:
        st.plotly_chart(plots.image_grid_fig(res["samples"][label],
                                             f"{label}: NFE {res['nfe'][label]}"), key=f"im_fig_s{i}")
        st.plotly_chart(plots.image_grid_fig(res["difference"][label],
                                             f"{label}: minus reference", zrange=(-0.5, 0.5)),
                        key=f"im_fig_d{i}")
st.caption("Top: samples; bottom: sample minus reference (grey = no difference, the colour range is "
           "+-0.5). Structure in the difference images is discretization error of the schedule.")
st.dataframe([{"schedule": k, "NFE": res["nfe"][k], "RMSE to reference": f"{res['rmse'][k]:.4f} ± "
               f"{res['rmse_ci'][k]:.4f}"} for k in scheds], hide_index=True, key="im_table")

if engine.image_metric_kind(model_id) == "digits":
    st.subheader("Sample quality against held-out digits")
    q = st.columns([1, 3])
    q[0].selectbox("Images per schedule", [200, 500, 1000, 2000], key="im_q_n")
    q[1].toggle("Measure FD / KID", key="im_quality",
                help="Frechet distance and KID on the digit classifier's features (lower is better), and its "
                     "mean confidence; the same noise for every schedule")
    if st.session_state.im_quality:
        n_q = int(st.session_state.im_q_n)
        bar = st.progress(0.0, text="sampling and classifying ...")
        quality = {}
        for i, (label, s) in enumerate(scheds.items()):
            quality.update(engine.image_quality(model_id, cfg["device"], {label: s.sigmas}, solver, n_q, cfg["seed"]))
            bar.progress((i + 1) / len(scheds), text=f"{label} done")
        bar.empty()
        st.session_state["im_quality_result"] = quality
        st.dataframe([{"schedule": k, "NFE": v["nfe"], "FD": round(v["fd"], 4), "KID": round(v["kid"], 5),
                       "confidence": round(v["confidence"], 4), "largest class deviation": round(v["balance_max_dev"], 4)}
                      for k, v in quality.items()], hide_index=True, key="im_quality_table")
        st.caption(f"{n_q} images per schedule, one seed: FD moves by a few hundredths between seeds at this size "
                   "(`python bench/images.py` reports intervals over seeds). FD between the real training and "
                   "held-out digits is 0.157.")

st.subheader("Distance to the reference against NFE")
st.multiselect("NFE values", [2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 32, 50], key="im_nfes")
st.toggle("Compute the NFE sweep", key="im_sweep",
          help="samples every schedule at every NFE (cached once computed)")
if st.session_state.im_sweep and st.session_state.im_nfes:
    nfes = sorted(int(v) for v in st.session_state.im_nfes)
    spec = get_solver(solver)
    try:
        fams = {option_label(o): {spec.steps_for_nfe(v): build_schedule(o, spec.steps_for_nfe(v), model.sigma_min,
                                                                     model.sigma_max).sigmas for v in nfes}
                for o in st.session_state.im_scheds}
        for o in st.session_state.im_opt:
            fams[engine.IMAGE_OPTIMIZED_SHORT[o]] = {
                spec.steps_for_nfe(v): engine.image_optimized_schedule(o, spec.steps_for_nfe(v), model_id, cfg["device"],
                                                                       model.sigma_min, model.sigma_max).sigmas
                for v in nfes}
        sweep = engine.image_error_vs_nfe(model_id, cfg["device"], fams, tuple(nfes), solver,
                                          int(st.session_state.im_n), cfg["seed"], int(st.session_state.im_ref_steps))
    except ScheduleLabError as e:
        st.error(str(e))
        st.stop()
    st.session_state["im_sweep_result"] = sweep
    st.plotly_chart(plots.error_vs_nfe_fig(sweep), key="im_fig_nfe")
    st.caption("Root-mean-square pixel distance of each schedule's images to the many-step reference from "
               "the same noise (mean over images, 95 % interval). Lower is better; a schedule that stays "
               "lower at small NFE gives the same picture with fewer model calls.")
