"""The session's optimizer run as every page sees it: start / stop / resume (app_lib.runner does
the work in its own thread), the small "running: AYS, stage 2/3, 41 %" indicator in the shared
sidebar, the result saved to the library when the run ends (on whatever page the user is), and
the run restored in a new session or after a reload: taken over from the session before when it
is still in this process (it goes on), else read back from disk (app_lib.store) as stopped.

One run per session (runner.SessionRuns); a run whose session has ended is cancelled (stopped
after its current iteration, its state saved, so the next session can resume it). A run belongs
to the last session that opened it.
"""
from __future__ import annotations

import weakref

import streamlit as st

from app_lib import store
from app_lib.runner import OptimizerRun, SessionRuns
from app_lib.state import USER_KIND, add_to_library, kind_label
from core.errors import ScheduleLabError
from core.optimizers.progress import Progress

RUN = "opt_run"
TOKEN = "_run_session_token"
SHORT = {"ays": "AYS", "nonuniform": "DM-NonUniform", "score_optimal": "score-optimal"}
RUNS = SessionRuns()                  # one per server process


class _SessionToken:
    """Lives in session state, so it is released with the session (a weakref tells the watcher)."""


def _session_id() -> str:
    from streamlit.runtime.scriptrunner import get_script_run_ctx
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "no-session"


def _alive_check():
    """() -> whether this session is still there; called from the watcher thread, so it reads
    only a weakref and the runtime's session table (never session state)."""
    from streamlit.runtime import Runtime
    ss = st.session_state
    if TOKEN not in ss:
        ss[TOKEN] = _SessionToken()
    ref, sid = weakref.ref(ss[TOKEN]), _session_id()
    rt = Runtime.instance() if Runtime.exists() else None      # None under AppTest
    return lambda: ref() is not None and (rt is None or rt.is_active_session(sid))


def _persist(record: dict) -> None:
    store.save_run(record)


def current_run() -> OptimizerRun | None:
    """The session's run; on a session's first call, the saved one (a stopped run to resume, or a
    run still going whose session ended, e.g. before a reload: it is adopted and goes on)."""
    ss = st.session_state
    if RUN not in ss:
        ss[RUN] = _restore()
    return ss[RUN]


def _restore() -> OptimizerRun | None:
    try:
        rec = store.load_run()
    except ScheduleLabError:
        rec = None
    if rec is None:
        return None
    owner = RUNS.owner(rec["run_id"])
    run = RUNS.get(owner[0]) if owner is not None else None
    if run is not None:              # still held in this process (another tab, or the session before a
        RUNS.set(_session_id(), run, _alive_check())     # reload): this session takes it over
        return run
    return OptimizerRun.from_record(rec, persist=_persist)


def start_run(method: str, factory, knobs: dict, spec: dict) -> OptimizerRun:
    """A new run of the session (refused while the session's run is going)."""
    old = current_run()
    if old is not None and old.active:
        raise ScheduleLabError("a run is already going in this session: stop it first (one run per session)")
    run = OptimizerRun(method, factory, knobs, spec, persist=_persist)
    RUNS.set(_session_id(), run, _alive_check())
    st.session_state[RUN] = run
    return run.start()


def resume_run(make_factory) -> None:
    """Resume the session's stopped run; make_factory(spec) rebuilds a restored run's factory."""
    run = current_run()
    if run is None:
        raise ScheduleLabError("nothing to resume: start a run first")
    if run.factory is None:
        run.attach(make_factory(run.spec))
    RUNS.set(_session_id(), run, _alive_check())
    run.resume()


def result(run: OptimizerRun, make_factory):
    if run.factory is None and run.spec:
        run.attach(make_factory(run.spec))
    return run.result()


def save_result(run: OptimizerRun, make_factory=None) -> str:
    """Put the run's result into the library (once); returns its label."""
    s = result(run, make_factory)
    run.saved_label = add_to_library(s, f"{run.method} {model_line(run, short=True)} ({s.steps} steps)")
    run.saved_solver = s.solver
    try:
        store.save_run(run.to_record())
    except (OSError, ScheduleLabError):
        pass
    return run.saved_label


def model_line(run: OptimizerRun, short: bool = False) -> str:
    """The model a run optimizes, from its knobs: 'grid8x8 (exact), label 2, w = 4', 'digits-flow, label
    all, w = 3' (short: 'grid8x8 label 2 w=4')."""
    k = run.knobs
    toy, model, label, w = k.get("toy"), str(k.get("model") or ""), k.get("label"), k.get("cfg")
    base = kind_label(model if model.startswith(USER_KIND) else model.split("|")[0])
    where = (toy if short else f"{toy} ({base})") if toy else model
    if label is None:
        return where
    return f"{where} label {label} w={w:g}" if short else f"{where}, label {label}, w = {w:g}"


def sync(run: OptimizerRun | None) -> None:
    """Page-thread follow-up of a run that has finished: its result goes to the library (once)."""
    if run is not None and run.status == "done" and run.saved_label is None and run.factory is not None:
        try:
            save_result(run)
        except ScheduleLabError as e:
            run.message = str(e)


def progress_line(run: OptimizerRun, long: bool = False) -> str:
    """'running: AYS, stage 2/3, 41 %' (long: the full Progress.text())."""
    v = run.view()
    p = v["progress"]
    where = "" if not p else ", " + (Progress(**p).text() if long else Progress(**p).short())
    return f"{v['status']}: {SHORT.get(run.method, run.method)}{where}"


def run_indicator() -> None:
    """The sidebar's run line on every page; it refreshes itself while the run goes, and reruns
    the page once the run ends (buttons follow, the result is saved)."""
    run = current_run()
    sync(run)                        # a run that ended between two reruns
    active = run is not None and run.active

    def body():
        r = st.session_state.get(RUN)
        if r is None:
            return
        with st.container(key="run_indicator"):
            st.caption(progress_line(r))
        if active and not r.active:
            sync(r)
            st.rerun(scope="app")

    with st.sidebar:
        st.fragment(body, run_every=1.0 if active else None)()
