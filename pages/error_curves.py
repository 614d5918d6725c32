"""Error curves: per-interval KLUB, Stein cost and truncation error of chosen schedules on the
chosen toy model, as bars per interval, as densities over log sigma, and as cumulative shares."""
import pandas as pd
import streamlit as st

from app_lib import engine, plots
from app_lib.state import (build_schedule, fit_warnings, init_widgets, option_label, picked_label, schedule_options,
                           settings, toy_model)
from core.errors import ScheduleLabError
from core.viz_data import cumulative_share, objective_totals

st.title("Error curves")
st.caption("Why one schedule beats another: how much error each interval between two noise "
           "levels contributes. A good schedule spreads the error evenly; a bad one lets a few "
           "intervals dominate.")

cfg = settings()
model = toy_model(cfg["toy"], cfg["model_kind"], cfg["device"])
opts = schedule_options()
init_widgets({"ec_scheds": ["karras", "loglinear", "kl_optimal"], "ec_steps": 10, "ec_n": 1024,
              "ec_c": 0.5, "ec_p": 1.0, "ec_v": 1.0, "ec_levels": 100, "ec_log": True})
st.session_state.ec_scheds = [o for o in st.session_state.ec_scheds if o in opts]
c = st.columns([4, 1, 1])          # two rows: at 1024 px seven columns broke the labels letter by letter
c[0].multiselect("Schedules", opts, key="ec_scheds", format_func=option_label)
c[1].number_input("Steps", min_value=2, max_value=80, step=1, key="ec_steps")
c[2].selectbox("Samples", [256, 512, 1024, 2048, 4096, 8192], key="ec_n",
               help="data samples per interval for the Monte Carlo estimates (KLUB, Stein)")
c = st.columns(4)
c[0].number_input("KLUB c", min_value=0.01, max_value=10.0, format="%.3g", key="ec_c",
                  help="the data scale of KLUB's importance sampler (AYS Eq. 15), 0.5 for our data")
c[1].number_input("Bound p", min_value=0.5, max_value=3.0, step=0.5, key="ec_p",
                  help="model-error exponent of DM-NonUniform's truncation bound: 1 for pixel models, 2 for "
                       "latent ones")
c[2].number_input("Stein v", min_value=0.0, max_value=4.0, step=0.5, key="ec_v",
                  help="speed of the score-optimal cost, v(sigma) = sigma^v (the paper: v = 1)")
c[3].selectbox("Stein levels", [50, 100, 200, 400], key="ec_levels",
               help="log-spaced noise levels on which the Stein density is estimated")
st.toggle("Log scale for bars and densities", key="ec_log",
          help="one long interval (kl_optimal's first KLUB bar) can flatten every other bar on a linear axis")

if not st.session_state.ec_scheds:
    st.info("Pick at least one schedule.")
    st.stop()
try:
    scheds = {picked_label(o, int(st.session_state.ec_steps)):
              build_schedule(o, int(st.session_state.ec_steps), model.sigma_min, model.sigma_max)
              for o in st.session_state.ec_scheds}
except ScheduleLabError as e:
    st.error(str(e))
    st.stop()
st.session_state["ec_warnings"] = fit_warnings(scheds, model)       # (the bound alone models a solver)
for w in st.session_state["ec_warnings"]:
    st.warning(w, icon="⚠️")
st.plotly_chart(plots.schedule_points_fig(scheds), key="ec_fig_points")
totals_box = st.container()                                   # filled once every objective is computed
log_y = bool(st.session_state.ec_log)
key_args = (cfg["toy"], cfg["model_kind"], cfg["device"])
n, seed = int(st.session_state.ec_n), cfg["seed"]
shown = {}


def section(title, compute, cost, ytitle, how_bars, how_density, how_cum, err_key=None, density=None):
    """One objective: bars per interval, density over sigma (density = (x key, y key)), cumulative share."""
    st.subheader(title)
    try:
        curves = {label: compute(s) for label, s in scheds.items()}
    except ScheduleLabError as e:
        st.error(str(e))
        return
    shown[title] = curves
    slug = title.split()[0].lower()
    cols = st.columns(2 if density else 1)
    with cols[0]:
        st.plotly_chart(plots.interval_bars_fig(curves, cost, f"{title} per interval", ytitle, err_key=err_key,
                                                 log_y=log_y),
                        key=f"ec_fig_{slug}_bars")
        st.caption(how_bars)
    if density:
        with cols[1]:
            st.plotly_chart(plots.density_fig(curves, density[0], density[1], f"{title} density over sigma",
                                              "cost per unit log sigma", log_y=log_y), key=f"ec_fig_{slug}_density")
            st.caption(how_density)
    cums = {label: cumulative_share(cv["sigma_lo"], cv["sigma_hi"], cv["share"]) for label, cv in curves.items()}
    st.plotly_chart(plots.cumulative_fig(cums, f"{title}: cumulative share from sigma_max down"),
                    key=f"ec_fig_{slug}_cum")
    st.caption(how_cum)


sig_range = (min(s.sigma_min for s in scheds.values()), max(s.sigma_max for s in scheds.values()))
section("KLUB (Align Your Steps)",
        lambda s: engine.klub(*key_args, s.sigmas, n, float(st.session_state.ec_c), seed),
        "klub", "KLUB (up to constants)",
        "Each bar is the KL-divergence upper bound of one interval (AYS Eq. 8, estimated with importance "
        "sampling; the whiskers are one standard error). The AYS optimizer moves the points to lower the "
        "sum of the bars; an interval with a tall bar is a step that is too long for the data there.",
        "The same cost spread over sigma: where along the noise axis the error is made. Peaks that a "
        "schedule covers with many small steps are harmless; uncovered peaks are where it loses quality.",
        "Share of the total KLUB spent from sigma_max down to each level. A straight diagonal-like staircase "
        "means the error is spread evenly; a jump means one interval dominates.", err_key="klub_se",
        density=("density_sigma", "density"))
section("Stein cost (score-optimal)",
        lambda s: engine.stein(*key_args, s.sigmas, sig_range, int(st.session_state.ec_levels), n,
                               float(st.session_state.ec_v), seed),
        "cost", "Stein cost (Delta Lambda squared)",
        "Each bar is the cost of moving the score from one level to the next (how much the score changes "
        "across the interval, weighted by the speed v(sigma)). The score-optimal schedule makes all bars equal.",
        "sqrt(delta(sigma)) sigma = dLambda / dlog sigma, how fast the score changes per unit log sigma (the "
        "same curve for every schedule: it belongs to the model). The optimal schedule places its points at "
        "equal steps of the area under it.",
        "Share of the total Stein cost from sigma_max down. For the score-optimal schedule this is a straight "
        "staircase of equal steps.", density=("grid_sigma", "density_log"))
section("Truncation error bound (DM-NonUniform)",
        lambda s: engine.truncation(s.sigmas, float(st.session_state.ec_p)),
        "contribution", "error-bound contribution",
        "Each bar is one step's contribution to the accumulated error bound of the dpmpp_3m_lagrange solver "
        "(third-order exact-Lagrange multistep; the last bar is the final jump to sigma = 0; model error "
        "modelled as sigma_vp^p / alpha_vp). It uses no data and no model: only the schedule and the "
        "solver's coefficients, so it judges a schedule meant for dpmpp_3m_lagrange.",
        "",
        "Share of the error bound accumulated from sigma_max down; DM-NonUniform minimises the total.")
st.session_state["ec_curves"] = shown

TOTAL_COLS = {"KLUB": "KLUB (Align Your Steps)", "Stein": "Stein cost (score-optimal)",
              "bound": "Truncation error bound (DM-NonUniform)"}
totals = objective_totals(*(shown.get(t, {}) for t in TOTAL_COLS.values()))
st.session_state["ec_totals"] = totals
with totals_box:
    st.subheader("Totals per schedule")
    best = totals["best"]
    df = pd.DataFrame(totals["rows"])
    num = [c for c in df.columns if c != "schedule"]
    mark = "background-color: #c8f7c5; font-weight: bold"
    st.dataframe(df.style.apply(lambda col: [mark if best.get(col.name) == lab else "" for lab in df["schedule"]])
                 .format("{:.4g}", subset=num, na_rep="n/a"), hide_index=True, key="ec_totals_table")
    csv = df.assign(toy=cfg["toy"], model=cfg["model_kind"], steps=int(st.session_state.ec_steps), samples=n,
                    c=float(st.session_state.ec_c), p=float(st.session_state.ec_p), v=float(st.session_state.ec_v))
    st.download_button("Download the totals (CSV)", csv.to_csv(index=False), mime="text/csv", key="ec_dl_totals",
                       file_name=f"error_curve_totals_{cfg['toy']}_{int(st.session_state.ec_steps)}steps.csv",
                       help="full-precision totals with the settings that made them")
    st.caption("Sum of each objective over the intervals (lower is better; highlighted: the lowest of each "
               "column, i.e. " + "; ".join(f"{c}: {lab}" for c, lab in best.items()) + "). KLUB s.e. is the "
               "standard error of the KLUB total; the three objectives measure different things and need not "
               "agree (the bound judges a schedule for dpmpp_3m_lagrange and uses no model).")
