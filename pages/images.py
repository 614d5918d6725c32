"""Images: a shipped image model (or a diffusers folder) sampled with its best known optimized
schedules and the best heuristics side by side, from the same noise with the same solver and NFE;
their difference to a many-step reference (computed once, kept on disk); and the reference
distance against NFE for every schedule."""
import streamlit as st

from app_lib import engine, plots
from app_lib.optional import NOT_AVAILABLE, optional
from app_lib.state import build_schedule, guidance_widgets, init_widgets, option_label, schedule_options, settings
from app_lib.tables import metric_table
from core.errors import ScheduleLabError
from core.solvers import get_solver, solver_names

FOLDER = "diffusers folder ..."
# the best heuristics per model (bench/results/images.json: log-linear, then EDM, on digits at NFE 10;
# bench/results/guidance_digits.json: uniform t, and SD3's shift 3 as the flow models' common choice)
HEURISTICS = {"digits-flow": ["flow_uniform", "flow_shift"]}
HEURISTICS_ANY = ["loglinear", "karras"]
DEFAULT_N, DEFAULT_REF = 8, 40         # 40 Heun steps: 0.0017 (digits) / 0.0048 (digits-flow) RMS from a
#                                        200-step reference, 60x / 12x below the best NFE-9 schedule's error

st.title("Images")
st.caption("The model's best known optimized schedules next to the best heuristics: every schedule starts from "
           "the same noise and uses the same solver and number of model calls (NFE). The reference is the same "
           "ODE solved with many Heun steps (computed once, kept on disk); the difference images show where each "
           "schedule's discretization error lands.")

cfg = settings()
if optional(engine.REGISTRY) is None:
    st.info(NOT_AVAILABLE.format(engine.REGISTRY) + " (image models: the digits model or a diffusers folder)")
    st.stop()
ss = st.session_state
names = engine.image_model_names()
det_solvers = [s for s in solver_names() if not get_solver(s).stochastic]
init_widgets({"im_model": names[0] if names else FOLDER})
init_widgets({"im_path": "", "im_scheds": HEURISTICS.get(ss.im_model, HEURISTICS_ANY), "im_solver": "dpmpp_2m",
              "im_nfe": 10, "im_n": DEFAULT_N, "im_ref_steps": DEFAULT_REF, "im_nfes": [4, 6, 8, 10, 16],
              "im_sweep": False, "im_quality": False, "im_q_n": 500, "im_label": "none", "im_cfg": 3.0})
opts = schedule_options()
ss.im_scheds = [o for o in ss.im_scheds if o in opts]


def _model_changed():
    """A new model gets its own defaults: its best heuristics, and (below) its best known optimized schedules."""
    ss.im_scheds = HEURISTICS.get(ss.im_model, HEURISTICS_ANY)
    for k in ("im_opt", "_keep_im_opt"):
        ss.pop(k, None)


top = st.columns([3, 3, 2])
top[0].selectbox("Model", names + [FOLDER], key="im_model", on_change=_model_changed)
if ss.im_model == FOLDER:
    top[0].text_input("Folder path", key="im_path", placeholder="/path/to/diffusers/model",
                      help="a local diffusers model folder (nothing is downloaded)")
top[1].selectbox("Solver", det_solvers, key="im_solver",
                 help="deterministic solvers only: the reference is an ODE solution from the same noise")
solver_msgs = top[1].container()
top[2].number_input("NFE", 1, 200, step=1, key="im_nfe")
sub = st.columns(4)
sub[0].selectbox("Images", [4, 8, 16, 32], key="im_n")
sub[1].number_input("Reference steps", 20, 1000, step=10, key="im_ref_steps",
                    help="Heun steps of the reference; 40 is 0.002 (digits) / 0.005 (digits-flow) RMS from a "
                         "200-step one, far below any schedule's error at NFE <= 16; raise it for NFE >= 32")

model_id = ss.im_path.strip() if ss.im_model == FOLDER else ss.im_model
if not model_id:
    top[0].info("Enter the path of a local diffusers model folder.")
    st.stop()
if ss.im_model == FOLDER:
    problem = engine.folder_problem(model_id)
    if problem:
        top[0].error(problem)
        st.stop()
try:
    n_classes = engine.image_num_classes(model_id, cfg["device"])
except ScheduleLabError as e:
    top[0].error(str(e))
    st.stop()
if n_classes:
    guidance_widgets(sub[2:], n_classes, "im_label", "im_cfg", over="images",
                     cfg_help="classifier-free guidance D = D_uncond + w (D_cond - D_uncond): 2 model calls per "
                              "evaluation (NFE counts both) unless w = 1")
    model_id = engine.guided_model_id(model_id, ss.im_label, ss.im_cfg)

try:
    model = engine.image_model(model_id, cfg["device"])
    solver, nfe = ss.im_solver, int(ss.im_nfe)
    steps = get_solver(solver).steps_for_nfe(nfe)
    known = engine.best_known_schedules(model_id, solver, nfe, getattr(model, "name", None))
except ScheduleLabError as e:
    top[0].error(str(e))
    st.stop()
opt_labels = {k: v.label for k, v in known["options"].items()}
opt_labels.update({k: v for k, v in engine.IMAGE_OPTIMIZED.items() if k != "opt:ays"})
if "opt:ays" in known["options"]:
    opt_labels["opt:ays"] = engine.IMAGE_OPTIMIZED["opt:ays"]
# nothing known for this model: DM-NonUniform needs only its noise range (instant); the Tune page finds better
init_widgets({"im_opt": known["default"] or ["opt:nonuniform"]})
ss.im_opt = [o for o in ss.im_opt if o in opt_labels]

pick = st.columns(2)
pick[0].multiselect("Heuristics and library schedules", opts, key="im_scheds", format_func=option_label)
heur_msgs = pick[0].container()
pick[1].multiselect("Optimized for this model", list(opt_labels), key="im_opt", format_func=opt_labels.get,
                    help="best known first: a `tune` result for this model (saved by the Tune page, or shipped "
                         "in checkpoints/MODEL/schedules/) and the AYS schedule shipped with it; DM-NonUniform needs "
                         "only the model's noise range; score-optimal estimates this model's Stein density once")
opt_msgs = pick[1].container()
for p in known["problems"]:
    opt_msgs.caption(f"skipped a saved result: {p}")
if not known["options"]:
    opt_msgs.caption("No optimized schedule is known for this model yet: the Tune page finds one (its result "
                     "appears here), DM-NonUniform is shown meanwhile.")
if not ss.im_scheds and not ss.im_opt:
    st.info("Pick at least one schedule.")
    st.stop()

try:
    scheds, kinds = {}, {}
    for o in ss.im_scheds:
        scheds[option_label(o)] = build_schedule(o, steps, model.sigma_min, model.sigma_max)
        kinds[option_label(o)] = "library" if o.startswith("lib:") else "heuristic"
    if "opt:score_optimal" in ss.im_opt:
        with st.status("Estimating this model's Stein density (once per model) ...", expanded=False) as box:
            dens = engine.image_stein_density(model_id, cfg["device"])
            box.update(label=f"Stein density from {dens['source']}", state="complete")
        if dens["generated"]:
            opt_msgs.caption(f"score-optimal: no data ships with this model, so its density comes from the model's "
                             f"own many-step samples ({dens['source']}): the schedule fits the model, not the data.")
    for o in ss.im_opt:
        label = engine.IMAGE_OPTIMIZED_SHORT.get(o) or known["options"][o].label
        scheds[label] = engine.image_optimized_schedule(o, steps, model_id, cfg["device"], model.sigma_min,
                                                        model.sigma_max, solver)
        kinds[label] = "optimized"
        if o in known["options"]:
            opt_msgs.caption(known["options"][o].detail)
except ScheduleLabError as e:
    st.error(str(e))
    st.stop()

# ---- where a schedule was made for another model or solver: next to the control that chose it
names_here = [engine.base_model_id(model_id), getattr(model, "name", None)]
warned = {}
for label, s in scheds.items():
    w = engine.schedule_warnings(s, names_here, solver, label)
    warned[label] = w
    if w["model"]:
        (opt_msgs if kinds[label] == "optimized" else heur_msgs).warning(w["model"], icon=":material/warning:")
    if w["solver"]:
        solver_msgs.warning(w["solver"], icon=":material/warning:")
ss["im_warnings"] = warned

# ---- the reference: once per (model, n, seed, steps, sigma_max), on disk
n_img, ref_steps = int(ss.im_n), int(ss.im_ref_steps)
try:
    todo = [m for m in sorted({s.sigma_max for s in scheds.values()})
            if not engine.image_reference_cached(model_id, cfg["device"], n_img, cfg["seed"], ref_steps, m)]
    if todo:
        with st.status(f"Computing the {ref_steps}-step Heun reference ({n_img} images) once; it is kept on disk "
                       "for every later visit ...", expanded=False) as box:
            for m in todo:
                engine.image_reference(model_id, cfg["device"], n_img, cfg["seed"], ref_steps, m)
            box.update(label=f"Reference computed ({ref_steps} Heun steps) and cached on disk "
                             "(`python -m core cache list`)", state="complete")
    res = engine.image_compare(model_id, cfg["device"], {k: s.sigmas for k, s in scheds.items()}, solver,
                               n_img, cfg["seed"], ref_steps)
except ScheduleLabError as e:
    st.error(str(e))
    st.stop()
ss["im_result"] = {"rmse": res["rmse"], "rmse_ci": res["rmse_ci"], "nfe": res["nfe"], "kinds": kinds,
                   "sigmas": {k: s.sigmas for k, s in scheds.items()}}


@st.dialog("Enlarged", width="large")
def _enlarge(title: str, images, zrange, png_name: str) -> None:
    st.plotly_chart(plots.image_grid_fig(images, title, cols=4, zrange=zrange, tile_px=220), key="im_fig_big")
    st.download_button("Download PNG", engine.grid_png(images, *zrange), file_name=png_name, mime="image/png",
                       key="im_png_big")


def _grid(images, title: str, key: str, zrange=(-1.0, 1.0), cols: int = 4) -> None:
    """A grid of tiles, with Enlarge (a dialog) and a PNG download of the same grid."""
    st.plotly_chart(plots.image_grid_fig(images, title, cols=cols, zrange=zrange), key=f"im_fig_{key}")
    b = st.columns(2 if cols <= 4 else [1, 1, 5])                  # the buttons stay together under a wide grid
    if b[0].button("Enlarge", key=f"im_big_{key}", icon=":material/zoom_in:"):
        _enlarge(title, images, zrange, f"{key}.png")
    b[1].download_button("PNG", engine.grid_png(images, *zrange), file_name=f"{key}.png", mime="image/png",
                         key=f"im_png_{key}", icon=":material/download:")


ref = next(iter(res["reference"].values()))
_grid(ref, f"Reference ({ref_steps} Heun steps)", "ref", cols=8)
cols = st.columns(min(len(scheds), 3))
for i, label in enumerate(scheds):
    with cols[i % len(cols)]:
        _grid(res["samples"][label], f"{label}: NFE {res['nfe'][label]}", f"s{i}")
        _grid(res["difference"][label], f"{label}: minus reference", f"d{i}", zrange=(-0.5, 0.5))
st.caption("Top: samples; bottom: sample minus reference (grey = no difference, the colour range is "
           "+-0.5). Structure in the difference images is discretization error of the schedule.")
rows = [{"schedule": k, "kind": kinds[k], "NFE": res["nfe"][k], "RMSE to reference": res["rmse"][k],
         "± (95 %)": res["rmse_ci"][k]} for k in scheds]
styler, win, csv = metric_table(rows, {"RMSE to reference": True})
ss["im_winners"] = win
st.dataframe(styler, hide_index=True, key="im_table")
st.download_button("Download table (CSV)", csv, file_name="images_rmse.csv", mime="text/csv", key="im_csv")
st.caption(f"Highlighted: the lowest RMSE ({win['RMSE to reference']}). {n_img} images from one seed; the "
           "interval is over images.")

if engine.image_metric_kind(model_id) == "digits":
    st.subheader("Sample quality against held-out digits")
    q = st.columns([1, 3])
    q[0].selectbox("Images per schedule", [200, 500, 1000, 2000], key="im_q_n")
    q[1].toggle("Measure FD / KID", key="im_quality",
                help="Frechet distance and KID on the digit classifier's features (lower is better), and its "
                     "mean confidence; the same noise for every schedule")
    if ss.im_quality:
        n_q = int(ss.im_q_n)
        bar = st.progress(0.0, text="sampling and classifying ...")
        quality = {}
        for i, (label, s) in enumerate(scheds.items()):
            quality.update(engine.image_quality(model_id, cfg["device"], {label: s.sigmas}, solver, n_q, cfg["seed"]))
            bar.progress((i + 1) / len(scheds), text=f"{label} done")
        bar.empty()
        ss["im_quality_result"] = quality
        qrows = [{"schedule": k, "NFE": v["nfe"], "FD": v["fd"], "KID": v["kid"], "confidence": v["confidence"],
                  "largest class deviation": v["balance_max_dev"]} for k, v in quality.items()]
        styler, qwin, qcsv = metric_table(qrows, {"FD": True, "KID": True, "confidence": False,
                                                  "largest class deviation": True})
        ss["im_quality_winners"] = qwin
        st.dataframe(styler, hide_index=True, key="im_quality_table")
        st.download_button("Download table (CSV)", qcsv, file_name="images_quality.csv", mime="text/csv",
                           key="im_quality_csv")
        st.caption(f"Highlighted: the best value of each column. {n_q} images per schedule, one seed: FD moves by a "
                   "few hundredths between seeds at this size (`python bench/images.py` reports intervals over "
                   "seeds). FD between the real training and held-out digits is 0.157.")
        st.caption("KID is an unbiased estimate of a squared distance (MMD², Binkowski et al. 2018): when the "
                   "samples are as close to the held-out digits as the sample size can tell, the estimate scatters "
                   "around 0 and can come out slightly negative. A negative KID means no measurable difference, "
                   "not better than perfect; compare schedules by their order, not the sign.")

st.subheader("Distance to the reference against NFE")
st.multiselect("NFE values", [2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 32, 50], key="im_nfes")
st.toggle("Compute the NFE sweep", key="im_sweep",
          help="samples every schedule at every NFE (cached once computed)")
if ss.im_sweep and ss.im_nfes:
    nfes = sorted(int(v) for v in ss.im_nfes)
    spec = get_solver(solver)
    try:
        fams = {option_label(o): {spec.steps_for_nfe(v): build_schedule(o, spec.steps_for_nfe(v), model.sigma_min,
                                                                     model.sigma_max).sigmas for v in nfes}
                for o in ss.im_scheds}
        for o in ss.im_opt:
            fams[engine.IMAGE_OPTIMIZED_SHORT.get(o) or known["options"][o].label] = {
                spec.steps_for_nfe(v): engine.image_optimized_schedule(o, spec.steps_for_nfe(v), model_id, cfg["device"],
                                                                       model.sigma_min, model.sigma_max, solver).sigmas
                for v in nfes}
        sweep = engine.image_error_vs_nfe(model_id, cfg["device"], fams, tuple(nfes), solver, n_img, cfg["seed"],
                                          ref_steps)
    except ScheduleLabError as e:
        st.error(str(e))
        st.stop()
    ss["im_sweep_result"] = sweep
    st.plotly_chart(plots.error_vs_nfe_fig(sweep), key="im_fig_nfe")
    st.caption("Root-mean-square pixel distance of each schedule's images to the many-step reference from "
               "the same noise (mean over images, 95 % interval). Lower is better; a schedule that stays "
               "lower at small NFE gives the same picture with fewer model calls.")
