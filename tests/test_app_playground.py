"""Playground page through AppTest: the plotted samples, trajectories, schedule points and
metrics are exactly the engine's numbers for the chosen widgets, and both schedules start from
the same noise."""
import re

import numpy as np
import pytest
import torch

from app_helpers import arr, assert_clean, figures, open_page, trace
from core.evaluate import evaluate_toy
from core.models import load_toy_model
from core.sampling import generate
from core.schedules import make_schedule
from core.viz_data import density_grid
from toy_data import get_toy

SMALL = {"pg_steps": 6, "pg_n": 500, "pg_seeds": 2, "pg_paths": 8}

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread for this module


@pytest.fixture(scope="module")
def page():
    return open_page("playground", toy="gaussian", **SMALL)


def test_samples_are_the_engines_on_the_same_noise(page):
    f = figures(page)
    model = load_toy_model("gaussian", "exact")
    for side, name in (("A", "karras"), ("B", "kl_optimal")):
        s = make_schedule(name, 6, model.sigma_min, model.sigma_max, **({"c": 0.5} if name == "kl_optimal" else {}))
        assert page.session_state["pg_schedules"][f"{side}: {name}"] == s.sigmas
        x = generate(model, s, 500, solver="dpmpp_2m", seed=0).x.numpy()
        got = trace(f[f"pg_fig_samples_{side}"], "samples")
        np.testing.assert_allclose(arr(got["x"]), x[:, 0], rtol=1e-12)
        np.testing.assert_allclose(arr(got["y"]), x[:, 1], rtol=1e-12)
        # the schedule's positive levels, on the log-sigma axis
        np.testing.assert_allclose(arr(trace(f["pg_fig_points"], f"{side}: {name}")["x"]), s.sigmas[:-1])
    # same noise: at step 0 both trajectories sit at sigma_max * z with the same z
    page.slider(key="pg_traj_step").set_value(0).run()
    f0 = figures(page)
    a = arr(trace(f0["pg_fig_traj_A"], "current")["x"])
    b = arr(trace(f0["pg_fig_traj_B"], "current")["x"])
    np.testing.assert_array_equal(a, b)
    z = torch.randn((500, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)[:8, 0]
    np.testing.assert_allclose(a, 80.0 * z.numpy(), rtol=1e-12)


def test_density_is_the_exact_log_density(page):
    heat = trace(figures(page)["pg_fig_samples_A"], "density")
    ref = density_grid(get_toy("gaussian"), n=160)
    np.testing.assert_allclose(arr(heat["z"]).reshape(160, 160), ref["log_density"], rtol=1e-12)


def test_step_slider_moves_the_trajectory_to_that_level(page):
    page.slider(key="pg_traj_step").set_value(3).run()
    assert_clean(page)
    f = figures(page)
    model = load_toy_model("gaussian", "exact")
    s = make_schedule("karras", 6, model.sigma_min, model.sigma_max)
    r = generate(model, s, 500, solver="dpmpp_2m", seed=0, keep_trajectory=8)
    cur = trace(f["pg_fig_traj_A"], "current")
    np.testing.assert_allclose(arr(cur["x"]), r.trajectory[3, :, 0].numpy(), rtol=1e-12)
    assert f"sigma = {s.sigmas[3]:.4g}" in f["pg_fig_traj_A"]["layout"]["title"]["text"]


def test_changing_schedule_b_and_solver_changes_the_plotted_schedule_and_metrics(page):
    page.selectbox(key="pg_sched_b").set_value("loglinear")
    page.selectbox(key="pg_solver").set_value("euler").run()
    assert_clean(page)
    model = load_toy_model("gaussian", "exact")
    s = make_schedule("loglinear", 6, model.sigma_min, model.sigma_max)
    assert page.session_state["pg_schedules"]["B: loglinear"] == s.sigmas
    np.testing.assert_allclose(arr(trace(figures(page)["pg_fig_points"], "B: loglinear")["x"]), s.sigmas[:-1])
    m = page.session_state["pg_metrics"]["B: loglinear"]
    ref = evaluate_toy(model, get_toy("gaussian"), s, solver="euler", n=500, seeds=(0, 1), mmd_n=500)
    for k in ("nll", "nll_ci", "swd", "mmd", "kde_nll", "kde_nll_ci", "coverage"):
        assert m[k] == pytest.approx(ref[k], rel=1e-9), k
    assert m["nfe"] == 6
    # the table shows mean +- interval for both schedules
    table = page.dataframe[0].value
    assert list(table["schedule"]) == ["A: karras", "B: loglinear"]
    assert "±" in table["NLL (nats)"][1]


def test_metrics_table_shows_collapse_proof_metrics_and_highlights_each_winner(page):
    table = page.dataframe[0].value
    assert {"held-out NLL under a KDE", "mode coverage"} <= set(table.columns)
    ms = page.session_state["pg_metrics"]
    best = page.session_state["pg_metric_winners"]
    labels = list(table["schedule"])
    for col, key, sign in (("NLL (nats)", "nll", 1), ("held-out NLL under a KDE", "kde_nll", 1),
                           ("mode coverage", "coverage", -1), ("MMD²", "mmd", 1)):
        vals = {lab: sign * ms[lab][key] for lab in labels}
        assert best[col] == min(vals, key=vals.get), col          # coverage: the highest wins
    css = page.dataframe[0].proto.arrow_data.styler.styles      # "#T_id_rowR_colC, ... { ... }"
    marked = {(int(r), int(c)) for r, c in re.findall(r"_row(\d+)_col(\d+)", css.split("{")[0])}
    cols = list(table.columns)
    assert marked == {(labels.index(lab), cols.index(col)) for col, lab in best.items()}
    assert any("unbiased estimator" in c.value and "negative" in c.value for c in page.caption)


def test_trajectories_animate_with_one_frame_per_step(page):
    fig = figures(page)["pg_fig_traj_A"]
    model = load_toy_model("gaussian", "exact")
    steps = page.session_state["pg_steps"]
    s = make_schedule("karras", steps, model.sigma_min, model.sigma_max)
    r = generate(model, s, 500, solver=page.session_state["pg_solver"], seed=0, keep_trajectory=8)
    assert [f["name"] for f in fig["frames"]] == [str(k) for k in range(steps + 1)]
    for k in (0, steps // 2, steps):
        fr = fig["frames"][k]
        assert fr["traces"] == [1, 2]                                # paths and current move, the density stays
        np.testing.assert_allclose(arr(fr["data"][1]["x"]), r.trajectory[k, :, 0].numpy(), rtol=1e-12)
        assert f"sigma = {s.sigmas[k]:.4g}" in fr["layout"]["title"]["text"]
    buttons = fig["layout"]["updatemenus"][0]["buttons"]
    assert [b["method"] for b in buttons] == ["animate", "animate"] and "Play" in buttons[0]["label"]
