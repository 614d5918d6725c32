"""Optimizer page through AppTest on the real optimizers (small budgets): Start runs the optimizer
in its own thread and the plots follow it, Stop during stage 2 of a 3-stage AYS run stops it
within one step, Resume continues from the saved state to the same result as an uninterrupted
run, the run goes on while another page is shown, and the result lands in the schedule library."""
import gc
import json
import time

import numpy as np
import pytest

from app_helpers import arr, assert_clean, figures, open_page, trace
from app_lib import store
from app_lib.runner import OptimizerRun
from run_helpers import Gate, rerun_until, start_and_stop
from core.errors import ScheduleLabError
from core.models import load_toy_model
from core.optimizers.ays import AYSOptimizer
from core.optimizers.nonuniform import optimize_nonuniform
from core.optimizers.score_optimal import score_optimal_schedule
from toy_data import get_toy

AYS = {"opt_method": "ays", "opt_steps": 5, "opt_stages": 3, "opt_n_samples": 128, "opt_n_candidates": 4,
       "opt_max_iters": 4, "opt_heldout": "nll", "opt_heldout_n": 256, "opt_patience": 2,
       "opt_heldout_solver": "dpmpp_2m"}

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread for this module


def _sampler(toy):
    mix = get_toy(toy)
    return lambda n, g: mix.sample(n, g)


def _ays(toy, stages=(5, 10, 20), **kw):
    kw = {"heldout": "nll", **kw}
    return AYSOptimizer(load_toy_model(toy, "exact"), _sampler(toy), steps=5, stages=stages, n_samples=128,
                        n_candidates=4, c=0.5, max_iters=4, patience=2, heldout_solver="dpmpp_2m",
                        heldout_n=256, mixture=get_toy(toy), seed=0, **kw)


def _finish(at, run):
    rerun_until(at, lambda: not run.active)
    at.run()
    assert_clean(at)
    assert run.status == "done", run.message


def _status_text(at) -> str:
    return " ".join(c.value for c in at.caption if "iteration" in c.value)


def test_ays_stop_in_stage_2_of_3_then_resume_matches_an_uninterrupted_run(monkeypatch):
    gate = Gate(monkeypatch, lambda ev: ev.stage == 1)          # hold the worker inside stage 2's 2nd sweep
    at = open_page("optimizer", toy="grid8x8", **AYS)
    assert at.button(key="opt_resume").disabled and at.button(key="opt_stop").disabled
    at.button(key="opt_start").click().run()
    assert_clean(at)
    run = at.session_state["opt_run"]
    assert run.knobs["steps"] == 5 and run.knobs["n_samples"] == 128 and "p" not in run.knobs
    gate.wait()
    at.run()
    held = run.iteration
    assert run.history[-1]["stage"] == 1 and run.status == "running"
    assert run.progress["stage"] == 2 and run.progress["stages"] == 3 and 0 < run.progress["fraction"] < 1
    assert "stage 2/3" in at.get("progress")[0].proto.text
    at.button(key="opt_stop").click().run()                     # Stop while the worker is mid-step
    assert run.status == "stopping" and at.button(key="opt_start").disabled
    gate.release()
    rerun_until(at, lambda: run.status == "stopped")
    assert_clean(at)
    assert run.iteration == held + 1 and run.state["iteration"] == held + 1   # within one step
    assert run.state["stage"] == 1                               # stopped in stage 2 (index 1)
    time.sleep(0.5)
    at.run()
    assert run.iteration == held + 1 and run.status == "stopped"  # nothing moves while stopped
    assert f"iteration {held + 1}" in _status_text(at)
    assert not at.button(key="opt_resume").disabled
    at.button(key="opt_resume").click().run()
    assert_clean(at)
    _finish(at, run)
    straight = _ays("grid8x8")
    evs = list(straight.events())
    assert [h["iteration"] for h in run.history] == [e.iteration for e in evs]
    assert [h["stage"] for h in run.history] == [e.stage for e in evs] and evs[-1].stage == 2
    np.testing.assert_allclose([h["objective"] for h in run.history], [e.objective for e in evs], rtol=1e-12)
    np.testing.assert_allclose([h["heldout"] for h in run.history], [e.heldout for e in evs], rtol=1e-12)
    lib = at.session_state["library"]
    assert run.saved_label in lib and lib[run.saved_label].sigmas == straight.result().sigmas
    assert any("saved to the schedule library" in s.value for s in at.success)
    assert run.progress["fraction"] == 1.0 and run.progress["done"]
    # the curves are the events' numbers, and the early-stopping point AYS reports is marked
    fig = figures(at)["opt_fig_curves"]
    for k in range(3):                                          # one objective line per stage (its own step count)
        line = trace(fig, f"objective, stage {k}")
        assert list(arr(line["x"])) == [e.iteration for e in evs if e.stage == k]
        np.testing.assert_allclose(arr(line["y"]), [e.objective for e in evs if e.stage == k], rtol=1e-12)
    metric = evs[-1].extra["heldout_name"]                      # the right axis names the held-out metric
    np.testing.assert_allclose(arr(trace(fig, f"held-out {metric}")["y"]), [e.heldout for e in evs], rtol=1e-12)
    assert fig["layout"]["yaxis2"]["title"]["text"] == f"held-out {metric} (lower is better)"
    assert fig["layout"]["yaxis"]["title"]["text"] == "total KLUB"
    stop = evs[-1].extra["early_stopped_at"]
    assert stop is not None and [s["x0"] for s in fig["layout"]["shapes"]] == [stop]
    points = figures(at)["opt_fig_points"]
    assert [t["name"] for t in points["data"]] == ["stage 0", "stage 1", "stage 2"]
    assert set(arr(trace(points, "stage 0")["x"])) == {e.iteration for e in evs if e.stage == 0}
    # the finished run is on disk with its result's label
    rec = store.load_run()
    assert rec["status"] == "done" and rec["saved_label"] == run.saved_label and rec["run_id"] == run.run_id


def test_run_goes_on_while_another_page_is_shown(monkeypatch):
    gate = Gate(monkeypatch, lambda ev: ev.iteration == 1)     # hold it until the user has left the page
    at = open_page("optimizer", toy="grid8x8", **AYS)
    at.button(key="opt_start").click().run()
    run = at.session_state["opt_run"]
    gate.wait()
    at.switch_page("pages/schedules.py").run()
    assert_clean(at)
    seen = len(run.history)
    gate.release()
    rerun_until(at, lambda: len(run.history) > seen + 3 or not run.active)   # only the Schedules page renders
    assert len(run.history) > seen + 3 or (run.status == "done" and len(run.history) > seen)
    assert_clean(at)
    run.join(60)
    # (AppTest runs a switched-to page without app.py, so the sidebar's indicator, which saves a result
    # on any page, is checked in tests/test_browser.py; the Optimizer page saves it too)
    at.switch_page("pages/optimizer.py").run()
    assert_clean(at)
    assert run.status == "done" and run.saved_label in at.session_state["library"]
    at.switch_page("pages/schedules.py").run()
    assert run.saved_label in [t["name"] for t in figures(at)["sc_fig_library"]["data"]]


def _stop_in_stage_2_and_end_the_session(monkeypatch) -> int:
    """Start a 3-stage AYS run on grid8x8, Stop it inside stage 2, end the session; its iteration."""
    gate = Gate(monkeypatch, lambda ev: ev.stage == 1)
    at = open_page("optimizer", toy="grid8x8", **AYS)
    run = start_and_stop(at, gate)
    stopped_at = run.iteration
    del at, run                                                   # the session ends
    gc.collect()
    return stopped_at


def test_a_stopped_run_comes_back_in_a_new_session_and_resumes_to_the_same_result(monkeypatch):
    stopped_at = _stop_in_stage_2_and_end_the_session(monkeypatch)
    rec = store.load_run()
    assert rec["status"] == "stopped" and rec["state"]["iteration"] == stopped_at
    at = open_page("optimizer", toy="gaussian")                   # a new session (another sidebar toy)
    run = at.session_state["opt_run"]
    assert run.status == "stopped" and run.iteration == stopped_at and not at.button(key="opt_resume").disabled
    assert f"iteration {stopped_at}" in _status_text(at)
    assert set(figures(at)) == {"opt_fig_points", "opt_fig_curves"}     # its plots come back too
    at.button(key="opt_resume").click().run()
    _finish(at, run)
    straight = _ays("grid8x8")
    evs = list(straight.events())
    np.testing.assert_allclose([h["objective"] for h in run.history], [e.objective for e in evs], rtol=1e-12)
    assert at.session_state["library"][run.saved_label].sigmas == straight.result().sigmas


def test_a_restored_run_shows_its_knobs_and_refuses_a_changed_one_on_resume(monkeypatch):
    """After a reload the widgets show the stopped run's own knobs; changing one before Resume is refused
    with a message naming it (issue 13), and setting it back resumes."""
    stopped_at = _stop_in_stage_2_and_end_the_session(monkeypatch)
    at = open_page("optimizer", toy="grid8x8")                    # a new session with the default widgets
    run = at.session_state["opt_run"]
    assert at.session_state["opt_n_samples"] == AYS["opt_n_samples"] and at.session_state["opt_steps"] == 5
    at.selectbox(key="opt_n_samples").set_value(256).run()
    at.button(key="opt_resume").click().run()
    assert run.status == "stopped" and run.iteration == stopped_at
    assert any("not resumed: n_samples changed from 128 to 256" in e.value for e in at.error), \
        [e.value for e in at.error]
    at.selectbox(key="opt_n_samples").set_value(128).run()
    at.button(key="opt_resume").click().run()
    _finish(at, run)


def test_a_run_is_cancelled_when_its_session_ends(monkeypatch):
    gate = Gate(monkeypatch, lambda ev: ev.iteration == 2)
    at = open_page("optimizer", toy="grid8x8", **AYS)
    at.button(key="opt_start").click().run()
    run = at.session_state["opt_run"]
    gate.wait()
    del at                                                        # the session's state is released
    gc.collect()
    t0 = time.monotonic()
    while run.status != "stopping" and time.monotonic() - t0 < 10:   # the watcher notices (2 s grace)
        time.sleep(0.1)
    gate.release()
    assert run.join(timeout=20) and run.status == "stopped", run.message
    assert "session ended" in run.message and run.iteration == 3
    assert store.load_run()["status"] == "stopped"


def test_nonuniform_knobs_stop_resume_and_solver_note(monkeypatch):
    gate = Gate(monkeypatch, lambda ev: ev.iteration == 5)
    at = open_page("optimizer")
    at.selectbox(key="opt_method").set_value("nonuniform").run()
    assert any("dpmpp_3m_lagrange" in i.value for i in at.info)
    assert at.number_input(key="opt_c").disabled and not at.number_input(key="opt_p").disabled
    at.number_input(key="opt_steps").set_value(6)
    at.number_input(key="opt_p").set_value(2.0)
    at.number_input(key="opt_maxiter").set_value(200)
    at.multiselect(key="opt_starts").set_value(["uniform_lambda", "edm"]).run()
    run = start_and_stop(at, gate)
    assert run.iteration == 6
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
    assert run.progress["stages"] == 2 and run.progress["done"]


def test_score_optimal_runs_to_the_engines_schedule():
    at = open_page("optimizer", opt_method="score_optimal", opt_steps=5, opt_n_samples=64, opt_levels=50,
                   opt_v=1.0)
    assert at.number_input(key="opt_patience").disabled
    at.button(key="opt_start").click().run()
    run = at.session_state["opt_run"]
    _finish(at, run)
    model = load_toy_model("gaussian", "exact")
    want, info = score_optimal_schedule(model, _sampler("gaussian"), 5, levels=50, n=64, seed=0)
    s = at.session_state["library"][run.saved_label]
    np.testing.assert_allclose(s.sigmas, want.sigmas, rtol=1e-12)
    assert run.history[-1]["objective"] == pytest.approx(info["total_cost"], rel=1e-12)
    # its chart is the Stein density (no iteration axis: its events are density chunks), with the schedule's levels
    figs = figures(at)
    assert set(figs) == {"opt_fig_density"}
    np.testing.assert_allclose(arr(trace(figs["opt_fig_density"], "schedule levels")["x"]),
                               sorted(want.sigmas[:-1]), rtol=1e-12)
    assert run.progress["step"] == 50 and run.progress["cap"] == 50 and run.progress["done"]


def test_runner_stop_after_any_event_and_resume_reproduces_ays():
    """OptimizerRun without Streamlit on the real 3-stage AYS: stop after k events, resume, same run."""
    def make():
        return _ays("gaussian", heldout=None)
    whole = OptimizerRun("ays", make, {}).start()
    assert whole.join(60) and whole.status == "done"
    for cut in (1, 3, 6):
        r = OptimizerRun("ays", make, {}).start(stop_after=cut)
        assert r.join(60) and r.status == "stopped" and r.state["iteration"] == cut - 1
        r.resume()
        assert r.join(60) and r.status == "done"
        assert [h["objective"] for h in r.history] == [h["objective"] for h in whole.history]
        assert r.result().sigmas == whole.result().sigmas


def test_run_record_round_trips_through_the_store():
    spec = {"method": "ays", "knobs": {}, "toy": "gaussian", "model_kind": "exact", "device": "cpu"}
    r = OptimizerRun("ays", lambda: _ays("gaussian", heldout=None), {"steps": 5}, spec,
                     persist=store.save_run).start(stop_after=2)
    assert r.join(60)
    rec = store.load_run()
    back = OptimizerRun.from_record(rec)
    assert back.status == "stopped" and back.history == json.loads(json.dumps(r.history))
    assert back.state == json.loads(json.dumps(r.state)) and back.factory is None
    assert back.progress == r.progress and back.progress["stage"] == 1 and back.progress["step"] == 1
    with pytest.raises(Exception, match="factory is missing"):
        back.resume()
    back.attach(lambda: _ays("gaussian", heldout=None))
    back.resume()
    assert back.join(60) and back.status == "done"


def test_control_while_running_is_refused_and_never_reenters_the_generator():
    gate = Gate(None, lambda ev: ev.iteration == 1)
    r = OptimizerRun("ays", gate.wrap(lambda: _ays("gaussian", heldout=None)), {}).start()
    gate.wait()                                                  # the worker is inside a step
    for call in (r.start, r.resume, r.result):
        with pytest.raises(ScheduleLabError, match="still|nothing to resume"):
            call()
    r.stop()
    r.stop()                                                     # a second Stop is harmless
    with pytest.raises(ScheduleLabError):
        r.resume()                                               # not until the step has ended
    gate.release()
    assert r.join(30) and r.status == "stopped" and r.iteration == 2
    r.resume()
    assert r.join(60) and r.status == "done" and r.result().steps == 5
