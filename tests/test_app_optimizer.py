"""Optimizer page through AppTest on the real optimizers (small budgets): Start pulls a few
events per rerun and the plots follow them, Stop stops pulling, Resume continues from the saved
state to the same result as an uninterrupted run, and the result lands in the schedule library."""
import numpy as np
import pytest

from app_helpers import arr, assert_clean, figures, open_page, trace
from app_lib.runner import OptimizerRun
from core.models import load_toy_model
from core.optimizers.ays import AYSOptimizer
from core.optimizers.nonuniform import optimize_nonuniform
from core.optimizers.score_optimal import score_optimal_schedule
from toy_data import get_toy

AYS = {"opt_method": "ays", "opt_steps": 5, "opt_stages": 1, "opt_n_samples": 128, "opt_n_candidates": 4,
       "opt_max_iters": 4, "opt_heldout": "nll", "opt_heldout_n": 256, "opt_patience": 2,
       "opt_heldout_solver": "dpmpp_2m", "opt_events_per_rerun": 1}

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread for this module


def _sampler(toy):
    mix = get_toy(toy)
    return lambda n, g: mix.sample(n, g)


def _ays(toy, **kw):
    kw = {"heldout": "nll", **kw}
    return AYSOptimizer(load_toy_model(toy, "exact"), _sampler(toy), steps=5, stages=(5,), n_samples=128,
                        n_candidates=4, c=0.5, max_iters=4, patience=2, heldout_solver="dpmpp_2m",
                        heldout_n=256, mixture=get_toy(toy), seed=0, **kw)


def _finish(at, run, limit=80):
    for _ in range(limit):
        if run.status != "running":
            break
        at.run()
    assert_clean(at)
    assert run.status == "done", run.message


def test_ays_start_stop_resume_matches_an_uninterrupted_run():
    at = open_page("optimizer", toy="grid8x8", **AYS)
    assert at.button(key="opt_resume").disabled and at.button(key="opt_stop").disabled
    at.button(key="opt_start").click().run()
    assert_clean(at)
    run = at.session_state["opt_run"]
    assert run.status == "running" and [h["iteration"] for h in run.history] == [0]
    assert run.knobs["steps"] == 5 and run.knobs["n_samples"] == 128 and "p" not in run.knobs
    at.run()                                                     # one refresh = one more sweep
    assert [h["iteration"] for h in run.history] == [0, 1]
    x1, _ = (arr(v) for v in (trace(figures(at)["opt_fig_points"], "stage 0")[k] for k in ("x", "y")))
    assert set(x1) == {0, 1} and len(x1) == 2 * 5               # two schedules of 5 positive levels plotted
    at.button(key="opt_stop").click().run()
    assert_clean(at)
    assert run.status == "stopped" and run.state["iteration"] == 1
    at.run()
    assert len(run.history) == 2                                 # stopped: nothing pulled
    at.button(key="opt_resume").click().run()
    assert_clean(at)
    _finish(at, run)
    straight = _ays("grid8x8")
    evs = list(straight.events())
    assert [h["iteration"] for h in run.history] == [e.iteration for e in evs]
    np.testing.assert_allclose([h["objective"] for h in run.history], [e.objective for e in evs], rtol=1e-12)
    np.testing.assert_allclose([h["heldout"] for h in run.history], [e.heldout for e in evs], rtol=1e-12)
    lib = at.session_state["library"]
    assert run.saved_label in lib and lib[run.saved_label].sigmas == straight.result().sigmas
    assert any("saved to the schedule library" in s.value for s in at.success)
    # the curves are the events' numbers, and the early-stopping point AYS reports is marked
    fig = figures(at)["opt_fig_curves"]
    np.testing.assert_allclose(arr(trace(fig, "objective")["y"]), [e.objective for e in evs], rtol=1e-12)
    np.testing.assert_allclose(arr(trace(fig, "held-out")["y"]), [e.heldout for e in evs], rtol=1e-12)
    stop = evs[-1].extra["early_stopped_at"]
    assert stop is not None and [s["x0"] for s in fig["layout"]["shapes"]] == [stop]
    points = trace(figures(at)["opt_fig_points"], "stage 0")
    assert set(arr(points["x"])) == {e.iteration for e in evs}


def test_nonuniform_knobs_stop_resume_and_solver_note():
    at = open_page("optimizer", opt_events_per_rerun=1)
    at.selectbox(key="opt_method").set_value("nonuniform").run()
    assert any("dpmpp_3m_lagrange" in i.value for i in at.info)
    assert at.number_input(key="opt_c").disabled and not at.number_input(key="opt_p").disabled
    at.number_input(key="opt_steps").set_value(6)
    at.number_input(key="opt_p").set_value(2.0)
    at.number_input(key="opt_maxiter").set_value(200)
    at.multiselect(key="opt_starts").set_value(["uniform_lambda", "edm"]).run()
    at.button(key="opt_start").click().run()
    run = at.session_state["opt_run"]
    assert run.status == "running" and len(run.history) == 20     # 20 trust-constr iterations per refresh
    at.button(key="opt_stop").click().run()
    at.button(key="opt_resume").click().run()
    assert_clean(at)
    _finish(at, run)
    sched, info = optimize_nonuniform(6, 0.002, 80.0, p=2.0, starts=("uniform_lambda", "edm"), strict=False,
                                      maxiter=200)
    assert [h["iteration"] for h in run.history] == list(range(1, len(run.history) + 1))   # no repeats after resume
    assert run.history[-1]["objective"] == pytest.approx(info["objective"], rel=1e-12)
    s = at.session_state["library"][run.saved_label]
    assert s.sigmas == sched.sigmas and s.solver == "dpmpp_3m_lagrange"
    assert any("meant for the **dpmpp_3m_lagrange** solver" in m.value for m in at.success)
    names = [t["name"] for t in figures(at)["opt_fig_points"]["data"]]
    assert names == ["start uniform_lambda", "start edm", "result"]


def test_score_optimal_runs_to_the_engines_schedule():
    at = open_page("optimizer", opt_method="score_optimal", opt_steps=5, opt_n_samples=64, opt_levels=50,
                   opt_v=1.0, opt_events_per_rerun=3)
    assert at.number_input(key="opt_patience").disabled
    at.button(key="opt_start").click().run()
    run = at.session_state["opt_run"]
    _finish(at, run)
    model = load_toy_model("gaussian", "exact")
    want, info = score_optimal_schedule(model, _sampler("gaussian"), 5, levels=50, n=64, seed=0)
    s = at.session_state["library"][run.saved_label]
    np.testing.assert_allclose(s.sigmas, want.sigmas, rtol=1e-12)
    assert run.history[-1]["objective"] == pytest.approx(info["total_cost"], rel=1e-12)
    # density chunks are placeholders: only the final schedule is plotted
    assert set(arr(trace(figures(at)["opt_fig_points"], "stage 0")["x"])) == {run.history[-1]["iteration"]}


def test_runner_stop_after_any_event_and_resume_reproduces_ays():
    """OptimizerRun without Streamlit on the real AYS: stop after k events, resume, same run."""
    whole = OptimizerRun("ays", lambda: _ays("gaussian", heldout=None), {}).start()
    while whole.status == "running":
        whole.pull(max_events=100)
    for cut in (1, 2):
        r = OptimizerRun("ays", lambda: _ays("gaussian", heldout=None), {}).start()
        r.pull(max_events=cut)
        r.stop()
        assert r.status == "stopped" and r.state["iteration"] == cut - 1
        r.resume()
        while r.status == "running":
            r.pull(max_events=1)
        assert [h["objective"] for h in r.history] == [h["objective"] for h in whole.history]
        assert r.result().sigmas == whole.result().sigmas
