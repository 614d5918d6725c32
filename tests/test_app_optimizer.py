"""Optimizer page through AppTest: Start pulls a few events per rerun and the plots follow them,
Stop stops pulling, Resume continues from the saved state to the same result as an
uninterrupted run, and the result lands in the schedule library.

The wiring tests use tests/fake_engine.FakeOptimizer (the documented Optimizer contract); the
last test drives the real AYS optimizer and is xfail only while core.optimizers.ays is missing."""
import numpy as np
import pytest

import fake_engine
from app_helpers import arr, assert_clean, figures, missing_ok, open_page, require, trace
from app_helpers import one_thread  # noqa: F401  (autouse: one torch thread)
from app_lib.runner import OptimizerRun
from core.models import load_toy_model


@pytest.fixture()
def fake(monkeypatch):
    fake_engine.install(monkeypatch, "core.optimizers.ays")
    yield
    fake_engine.install(monkeypatch)           # clear caches that may hold fake results


def _points(at):
    fig = figures(at)["opt_fig_points"]
    return arr(trace(fig, "stage 0")["x"]), arr(trace(fig, "stage 0")["y"])


def test_missing_optimizer_module_is_reported_not_crashing(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "core.optimizers.nonuniform", None)   # import -> ModuleNotFoundError
    at = open_page("optimizer", opt_method="nonuniform")
    assert any("not available in this build" in i.value for i in at.info)
    assert at.button(key="opt_start").disabled


def test_start_stop_resume_matches_an_uninterrupted_run(fake):
    at = open_page("optimizer", opt_max_iters=6, opt_events_per_rerun=2, opt_steps=8)
    assert not at.button(key="opt_start").disabled
    assert at.button(key="opt_resume").disabled
    at.button(key="opt_start").click().run()
    assert_clean(at)
    run = at.session_state["opt_run"]
    assert run.status == "running" and [h["iteration"] for h in run.history] == [0, 1]
    # knobs reach the optimizer: only the ones its constructor takes, with the widgets' values
    assert run.knobs["steps"] == 8 and run.knobs["max_iters"] == 6 and "c" not in run.knobs
    x0, y0 = _points(at)
    at.run()                                           # one refresh = a few more events
    assert [h["iteration"] for h in run.history] == [0, 1, 2, 3]
    x1, y1 = _points(at)
    assert len(x1) > len(x0) and set(x1) == {0, 1, 2, 3}  # the plot follows the new events
    at.button(key="opt_stop").click().run()
    assert_clean(at)
    assert run.status == "stopped" and run.state["iteration"] == 3
    at.run()
    assert len(run.history) == 4                       # stopped: nothing pulled
    assert not at.button(key="opt_resume").disabled
    at.button(key="opt_resume").click().run()
    assert_clean(at)
    # resumed from the state: iterations continue 4, 5 and the run completes
    while run.status == "running":
        at.run()
    assert [h["iteration"] for h in run.history] == [0, 1, 2, 3, 4, 5]
    assert run.status == "done"
    # the same knobs run straight through give the same objective sequence and result
    model = load_toy_model("gaussian", "exact")
    straight = fake_engine.FakeOptimizer(model, None, steps=8, max_iters=6, seed=0)
    evs = list(straight.events())
    np.testing.assert_allclose([h["objective"] for h in run.history], [e.objective for e in evs], rtol=1e-12)
    lib = at.session_state["library"]
    assert run.saved_label in lib and lib[run.saved_label].sigmas == straight.result().sigmas
    assert any("saved to the schedule library" in s.value for s in at.success)
    # objective / held-out curves are the events' numbers, and the early-stopping point is marked
    fig = figures(at)["opt_fig_curves"]
    np.testing.assert_allclose(arr(trace(fig, "objective")["y"]), [e.objective for e in evs])
    np.testing.assert_allclose(arr(trace(fig, "held-out")["y"]), [e.heldout for e in evs])
    assert [s["x0"] for s in fig["layout"]["shapes"]] == [evs[-1].extra["best_iteration"]]


def test_runner_stop_resume_state_round_trip():
    """OptimizerRun without Streamlit: a stop after any event and a resume reproduce the run."""
    model = load_toy_model("gaussian", "exact")
    make = lambda: fake_engine.FakeOptimizer(model, None, steps=6, max_iters=5)   # noqa: E731
    whole = OptimizerRun("ays", make, {}).start()
    while whole.status == "running":
        whole.pull(max_events=100)
    for cut in range(1, 5):
        r = OptimizerRun("ays", make, {}).start()
        r.pull(max_events=cut)
        r.stop()
        assert r.status == "stopped" and r.result().sigmas == make_at(model, cut).result().sigmas
        r.resume()
        while r.status == "running":
            r.pull(max_events=1)
        assert [h["objective"] for h in r.history] == [h["objective"] for h in whole.history]
        assert r.result().sigmas == whole.result().sigmas


def make_at(model, n_events):
    opt = fake_engine.FakeOptimizer(model, None, steps=6, max_iters=5)
    g = opt.events()
    for _ in range(n_events):
        next(g)
    return opt


@missing_ok
def test_real_ays_runs_stops_and_resumes_in_the_page():
    require("core.optimizers.ays")
    at = open_page("optimizer", opt_method="ays", opt_steps=6, opt_stages=[6], opt_n_samples=128,
                   opt_n_candidates=5, opt_max_iters=4, opt_patience=2, opt_events_per_rerun=1)
    at.button(key="opt_start").click().run()
    assert_clean(at)
    run = at.session_state["opt_run"]
    assert run.status in ("running", "done") and len(run.history) >= 1
    first = figures(at)["opt_fig_points"]
    if run.status == "running":
        at.button(key="opt_stop").click().run()
        n = len(run.history)
        at.run()
        assert len(run.history) == n
        at.button(key="opt_resume").click().run()
        assert_clean(at)
        for _ in range(50):
            if run.status != "running":
                break
            at.run()
    assert run.status == "done", run.message
    assert figures(at)["opt_fig_points"] != first
    s = at.session_state["library"][run.saved_label]
    assert s.sigmas[0] == pytest.approx(run.history[0]["sigmas"][0]) and s.sigmas[-1] == 0
