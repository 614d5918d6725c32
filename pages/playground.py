"""Playground: a 2D toy's true density, samples from a model + schedule + solver over it, two
schedules side by side on the same noise, trajectories, and metrics with intervals."""
import streamlit as st

from app_lib import plots
from app_lib.state import (build_schedule, fit_warnings, init_widgets, kind_label, option_label, picked_label,
                           schedule_options, settings, solver_options, toy_density, toy_metrics, toy_model,
                           toy_samples)
from core.errors import ScheduleLabError

st.title("Playground")
st.caption("A toy distribution whose density, denoiser and score are known exactly. Pick two "
           "schedules: both start from the same noise, use the same solver and the same number "
           "of steps, so every difference you see comes from where the schedule puts its steps.")

cfg = settings()
model = toy_model(cfg["toy"], cfg["model_kind"], cfg["device"])
opts = schedule_options()
init_widgets({"pg_sched_a": "karras", "pg_sched_b": "kl_optimal", "pg_steps": 10, "pg_solver": "dpmpp_2m",
              "pg_n": 2000, "pg_seeds": 3, "pg_paths": 48})
for k in ("pg_sched_a", "pg_sched_b"):
    if st.session_state[k] not in opts:
        st.session_state[k] = "karras"

c = st.columns(3)                  # two rows: at 1024 px six columns cut the values ("dpı", "200")
c[0].selectbox("Schedule A", opts, key="pg_sched_a", format_func=option_label)
c[1].selectbox("Schedule B", opts, key="pg_sched_b", format_func=option_label)
c[2].selectbox("Solver", solver_options(), key="pg_solver")
c = st.columns([1, 1, 1, 1])
c[0].number_input("Steps", min_value=2, max_value=100, step=1, key="pg_steps")
c[1].selectbox("Samples", [500, 1000, 2000, 5000, 20000], key="pg_n")
c[2].number_input("Seeds", min_value=1, max_value=8, step=1, key="pg_seeds",
                  help="independent runs of the same schedule; the metrics' intervals come from them")

steps, solver, n, seed = int(st.session_state.pg_steps), st.session_state.pg_solver, int(st.session_state.pg_n), cfg["seed"]
try:
    scheds = {f"{'AB'[i]}: {picked_label(st.session_state[k], steps)}":
              build_schedule(st.session_state[k], steps, model.sigma_min, model.sigma_max)
              for i, k in enumerate(("pg_sched_a", "pg_sched_b"))}
except ScheduleLabError as e:
    st.error(str(e))
    st.stop()
st.session_state["pg_schedules"] = {k: s.sigmas for k, s in scheds.items()}
st.session_state["pg_warnings"] = fit_warnings(scheds, model, solver)
for w in st.session_state["pg_warnings"]:            # next to the pickers that caused them
    st.warning(w, icon="⚠️")

grid = toy_density(cfg["toy"])
keep = int(st.session_state.pg_paths)
samples = {}
cols = st.columns(2)
for col, (label, s) in zip(cols, scheds.items()):
    samples[label] = toy_samples(cfg["toy"], cfg["model_kind"], cfg["device"], s.sigmas, solver, n, seed, keep)
    col.plotly_chart(plots.samples_fig(grid, samples[label]["x"], f"{label} — {n} samples, NFE {samples[label]['nfe']}"),
                     key=f"pg_fig_samples_{label[0]}")
st.caption(f"Blue: the exact log-density of **{cfg['toy']}**; red: samples from the "
           f"**{kind_label(cfg['model_kind'])}** denoiser with **{solver}**, seed {seed} (the same initial noise for "
           "both schedules). Points off the blue modes are errors of the schedule, the solver or the model.")

if "|" in cfg["model_kind"]:
    st.caption("Guided: the samples follow the guided ODE towards the class (sharper as w grows), so the "
               "metrics below, which compare to the whole toy, get worse by design; compare schedules with "
               "each other, not with the unguided numbers.")
st.plotly_chart(plots.schedule_points_fig(scheds), key="pg_fig_points")
st.caption("Where each schedule spends its steps: dense points mean small steps at that noise level. "
           "The last step jumps from the smallest sigma to 0.")

st.subheader("Trajectories")
tc = st.columns([1, 3])
tc[0].number_input("Paths shown", min_value=4, max_value=256, step=4, key="pg_paths")
init_widgets({"pg_traj_step": steps})
if st.session_state.pg_traj_step > steps:
    st.session_state.pg_traj_step = steps
tc[1].slider("Step", min_value=0, max_value=steps, key="pg_traj_step")
step = int(st.session_state.pg_traj_step)
cols = st.columns(2)
for col, (label, s) in zip(cols, scheds.items()):
    col.plotly_chart(plots.trajectory_fig(grid, samples[label]["trajectory"], step, s.sigmas, label,
                                          animate=True), key=f"pg_fig_traj_{label[0]}")
st.caption("Grey: the paths of the first samples from the initial noise (far outside the window at "
           "sigma_max) to step k; red: where they are at step k. Slide to watch them settle, or press "
           "▶ Play under a chart to run all steps in the browser.")

st.subheader("Metrics")
seeds = tuple(range(seed, seed + int(st.session_state.pg_seeds)))
rows, metrics = [], {}
METRICS = {"nll": "NLL (nats)", "kde_nll": "held-out NLL under a KDE", "coverage": "mode coverage",
           "swd": "sliced W2", "mmd": "MMD²"}
try:
    for label, s in scheds.items():
        m = toy_metrics(cfg["toy"], cfg["model_kind"], cfg["device"], s.sigmas, solver, n, seeds)
        metrics[label] = m
        rows.append({"schedule": label, "NFE": m["nfe"],
                     **{name: f"{m[k]:.4f} ± {m[k + '_ci']:.4f}" if len(seeds) > 1 else f"{m[k]:.4f}"
                        for k, name in METRICS.items()}})
except ScheduleLabError as e:
    st.error(str(e))
st.session_state["pg_metrics"] = metrics
if rows:
    import pandas as pd
    from core.viz_data import metric_winners
    best = {METRICS[k]: lab for k, lab in metric_winners(metrics, METRICS, higher_is_better={"coverage"}).items()}
    st.session_state["pg_metric_winners"] = best
    mark = "background-color: #c8f7c5; font-weight: bold"
    df = pd.DataFrame(rows)
    st.dataframe(df.style.apply(lambda col: [mark if best.get(col.name) == lab else "" for lab in df["schedule"]]),
                 hide_index=True, key="pg_metrics_table")
    csv = pd.DataFrame([{"schedule": lab, "toy": cfg["toy"], "model": cfg["model_kind"], "solver": solver,
                         "steps": steps, "NFE": m["nfe"], "samples": n, "seeds": len(seeds),
                         **{k: m[k] for k in METRICS}, **{k + "_ci95": m[k + "_ci"] for k in METRICS}}
                        for lab, m in metrics.items()])
    st.download_button("Download the table (CSV)", csv.to_csv(index=False), mime="text/csv", key="pg_dl_metrics",
                       file_name=f"playground_metrics_{cfg['toy']}_{solver}_{steps}steps.csv",
                       help="full-precision means and 95 % half-widths (columns *_ci95), with the settings")
    st.caption(f"Mean over seeds {seeds[0]}..{seeds[-1]} of {n} samples each, ± the 95 % t-interval; the best "
               "of each column is highlighted. NLL: negative log-likelihood of the samples under the exact "
               "density; it rewards samples piled on the densest modes, so a collapsed sampler can win it. "
               "Held-out NLL under a KDE: fresh data scored by a Gaussian kernel density of the samples "
               "(bandwidth chosen on a split of the samples), which a collapse loses. Mode coverage: share of "
               "the mixture's components that get at least half their weight's share of the samples (higher "
               "is better). Sliced W2 and MMD² (RBF, median bandwidth): distances to fresh data. Lower is "
               "better for all but coverage.")
    st.caption("MMD² (and KID on the Images page) use the unbiased estimator, which leaves out each "
               "point's kernel with itself: its expectation is exactly the true value, so when the true value "
               "is about 0 (the samples match the data) estimates scatter around 0 and can be negative. A "
               "negative value means 'indistinguishable from the data at this sample size', not an error.")
