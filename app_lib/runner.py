"""An optimizer run that owns its optimizer outside the page's reruns.

Start builds the optimizer (core.optimizers.base) in a worker thread that iterates its events;
the page only reads the run's published snapshot (history, state, progress, status) and sends
start / stop / resume. Stop sets a flag the worker checks after every event, so it takes effect
within one optimizer step; only the worker ever touches the generator, under a lock, so it is
never re-entered. Resume builds a fresh optimizer from the last state_dict(): the same events as
an uninterrupted run (the optimizers are deterministic for a seed).

No Streamlit here: the worker calls only the engine and an optional `persist(record)` callback
(plain file IO, app_lib.store). `SessionRuns` keeps at most one run per session and cancels a
run whose session has ended.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from typing import Callable

from core.errors import ScheduleLabError
from core.optimizers.progress import progress_of

LOG = logging.getLogger(__name__)
ACTIVE = ("running", "stopping")
PERSIST_EVERY_S = 1.0


class OptimizerRun:
    """One optimizer run.

    Args:
        method: "ays" | "nonuniform" | "score_optimal".
        factory: () -> a fresh Optimizer built from the page's knobs (same knobs on resume); it is
            called in the worker thread, so it must not call Streamlit. May be None for a run
            restored from disk until the page attaches one (`attach`).
        knobs: the knobs the method uses, as plain data (shown with the result).
        spec: plain data the page rebuilds the factory from (method, every knob, toy, model, device).
        persist: record -> None, called by the worker after events (at most every PERSIST_EVERY_S)
            and when it ends; e.g. app_lib.store.save_run.
    Attributes (a snapshot, read under the run's lock by `view()` or one by one):
        status: "running" | "stopping" | "stopped" | "done" | "failed".
        history: one dict per event: ProgressEvent.to_dict() plus "early_stopped_at" (AYS:
            extra["early_stopped_at"]), "group" (the plot series: "stage K", or DM-NonUniform's
            "start NAME" and its final "result") and "placeholder" (True for events whose schedule
            is not a result yet: score-optimal's density chunks), and for score-optimal "density"
            ({grid_sigma, density_log}: its Stein density on the levels estimated so far, all of them
            on the last event).
        state: the optimizer's state_dict() after the last event (what Resume loads).
        progress: core.optimizers.progress.Progress.to_dict() after the last event.
        message: the last event's message, or why the run stopped or failed.
    """

    def __init__(self, method: str, factory: Callable | None, knobs: dict, spec: dict | None = None,
                 persist: Callable | None = None, run_id: str | None = None):
        self.method, self.factory, self.knobs = method, factory, dict(knobs)
        self.spec, self.persist, self.run_id = dict(spec or {}), persist, run_id or uuid.uuid4().hex
        self.history, self.state, self.progress, self.status, self.message = [], None, None, "stopped", ""
        self.saved_label, self.saved_solver = None, None
        self._lock = threading.RLock()          # the published snapshot
        self._gen_lock = threading.Lock()       # the optimizer and its generator: one user at a time
        self._stop = threading.Event()
        self._thread, self._opt, self._last_persist, self._stop_reason = None, None, 0.0, ""

    # ---- control (page thread) ---------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def start(self, stop_after: int | None = None) -> "OptimizerRun":
        """Start from scratch in a worker thread (stop_after: stop by itself after that many events)."""
        with self._lock:
            if self.active:
                raise ScheduleLabError("this run is still running; stop it before starting again")
            self.history, self.state, self.progress = [], None, None
            self.saved_label, self.saved_solver = None, None
            self._launch(None, stop_after, "started")
        return self

    def resume(self, stop_after: int | None = None) -> None:
        """Continue from the last state in a fresh optimizer (same events as an uninterrupted run)."""
        with self._lock:
            if self.status != "stopped" or self.state is None:
                raise ScheduleLabError("nothing to resume: start a run first")
            # events after the state's iteration are recomputed on resume (DM-NonUniform restarts an
            # unfinished start): drop them so the history matches an uninterrupted run
            it = self.state.get("iteration")
            if isinstance(it, int):
                self.history = [h for h in self.history if h["iteration"] <= it]
            self._launch(self.state, stop_after, f"resumed from iteration {self.iteration}")

    def stop(self, reason: str = "") -> None:
        """Ask the worker to stop after the event it is computing (a no-op unless running)."""
        with self._lock:
            if self.status != "running":
                return
            self._stop.set()
            self._stop_reason = reason
            self.status, self.message = "stopping", "stopping after the current iteration"

    def cancel(self, reason: str = "session ended") -> None:
        self.stop(reason)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker to end; True when no worker is running."""
        t = self._thread
        if t is not None:
            t.join(timeout)
        return t is None or not t.is_alive()

    def attach(self, factory: Callable) -> None:
        """Give a restored run its factory (before Resume or result())."""
        self.factory = factory

    def _launch(self, state, stop_after, message):
        if self.factory is None:
            raise ScheduleLabError("this run cannot be continued here (its optimizer factory is missing)")
        self._stop.clear()
        self._stop_reason = ""
        self.status, self.message = "running", message
        self._thread = threading.Thread(target=self._work, args=(state, stop_after), daemon=True,
                                        name=f"optimizer-run-{self.run_id[:8]}")
        self._thread.start()

    # ---- the worker thread --------------------------------------------------------------------
    def _work(self, state, stop_after):
        final, msg, n = "stopped", "", 0
        elapsed0 = float((self.progress or {}).get("elapsed_s") or 0.0) if state is not None else 0.0
        t0 = time.perf_counter()
        try:
            with self._gen_lock:
                opt = self.factory()
                if state is not None:
                    opt.load_state_dict(state)
                self._opt = opt
                gen = opt.events()
                try:
                    while not self._stop.is_set():
                        ev = next(gen, None)
                        if ev is None:
                            final = "done"
                            break
                        n += 1
                        self._publish(opt, ev, elapsed0 + time.perf_counter() - t0)
                        if ev.done:
                            final = "done"
                            break
                        if stop_after is not None and n >= stop_after:
                            break
                finally:
                    gen.close()
        except ScheduleLabError as e:
            final, msg = "failed", str(e)
        except Exception as e:                       # noqa: BLE001 - shown to the user, logged in full
            LOG.error("optimizer run %s failed:\n%s", self.run_id, traceback.format_exc())
            final, msg = "failed", f"{type(e).__name__}: {e}"
        with self._lock:
            self.status = final
            if final == "stopped":
                why = f" ({self._stop_reason})" if self._stop_reason else ""
                self.message = f"stopped after iteration {self.iteration}{why}"
            elif final == "failed":
                self.message = msg
            else:
                self.message = self.message or "done"
        self._persist(force=True)

    def _publish(self, opt, ev, elapsed):
        rec, extra = ev.to_dict(), ev.extra or {}
        rec["early_stopped_at"] = extra.get("early_stopped_at")
        rec["heldout_name"] = extra.get("heldout_name")
        rec["group"] = (f"start {extra['start']}" if "start" in extra else
                        "result" if "best_start" in extra else f"stage {ev.stage}")
        rec["placeholder"] = self.method == "score_optimal" and not ev.done
        if "density_log" in extra:                   # score-optimal: its Stein density on its grid (so far)
            rec["density"] = {"grid_sigma": list(extra["grid_sigma"]), "density_log": list(extra["density_log"])}
        state = opt.state_dict()
        prog = progress_of(opt, elapsed, finished=ev.done)
        with self._lock:
            self.history.append(rec)
            self.state = state
            self.progress = None if prog is None else prog.to_dict()
            self.message = ev.message or self.message
        self._persist()

    def _persist(self, force: bool = False):
        if self.persist is None or (not force and time.monotonic() - self._last_persist < PERSIST_EVERY_S):
            return
        self._last_persist = time.monotonic()
        try:
            self.persist(self.to_record())
        except Exception:                            # noqa: BLE001 - a full disk must not kill the run
            LOG.warning("could not save run %s:\n%s", self.run_id, traceback.format_exc())

    # ---- the snapshot and results -------------------------------------------------------------
    def to_record(self) -> dict:
        """Plain data for app_lib.store.save_run (status, history, state, progress, knobs, spec)."""
        with self._lock:
            return {"run_id": self.run_id, "method": self.method, "knobs": self.knobs, "spec": self.spec,
                    "status": self.status, "message": self.message, "history": list(self.history),
                    "state": self.state, "progress": self.progress, "saved_label": self.saved_label,
                    "saved_solver": self.saved_solver}

    @classmethod
    def from_record(cls, rec: dict, persist: Callable | None = None) -> "OptimizerRun":
        """A run restored from disk (no factory yet: `attach` one). A record saved while running
        (the app stopped or the page was reloaded) comes back stopped at its last event."""
        run = cls(rec["method"], None, rec["knobs"], rec["spec"], persist, rec["run_id"])
        run.history, run.state, run.progress = list(rec["history"]), rec.get("state"), rec.get("progress")
        run.saved_label, run.saved_solver = rec.get("saved_label"), rec.get("saved_solver")
        run.status, run.message = rec["status"], rec["message"]
        if run.status in ACTIVE:
            run.status = "stopped" if run.state is not None else "failed"
            run.message = (f"interrupted after iteration {run.iteration} (the page was reloaded or the app "
                           "restarted); Resume continues from there")
        return run

    def view(self) -> dict:
        """A consistent copy of the snapshot: status, message, history, state, progress."""
        with self._lock:
            return {"status": self.status, "message": self.message, "history": list(self.history),
                    "state": self.state, "progress": self.progress}

    @property
    def iteration(self):
        return self.history[-1]["iteration"] if self.history else None

    @property
    def early_stopped_at(self):
        """The early-stopping point the optimizer reported last (AYS: the first-stage sweep kept;
        None while the first stage runs and for methods without early stopping)."""
        for h in reversed(self.history):
            if h.get("early_stopped_at") is not None:
                return h["early_stopped_at"]
        return None

    @property
    def best_so_far(self):
        """AYS: the iteration with the best held-out metric so far (from the optimizer's state)."""
        best = (self.state or {}).get("best")
        return best.get("iteration") if isinstance(best, dict) else None

    def result(self):
        """The optimizer's result() (final or best so far); rebuilt from the state when restored."""
        if self.active:
            raise ScheduleLabError("the run is still going: stop it or wait for it to finish")
        with self._gen_lock:
            if self._opt is None:
                if self.state is None:
                    raise ScheduleLabError("no result yet: start a run first")
                if self.factory is None:
                    raise ScheduleLabError("this run cannot be rebuilt here (its optimizer factory is missing)")
                self._opt = self.factory()
                self._opt.load_state_dict(self.state)
            return self._opt.result()


class SessionRuns:
    """At most one run per session, and a watcher thread that cancels the run of a session that has
    ended. alive(key) -> bool is called from the watcher (it must be cheap and thread-safe); a
    session counts as ended after `grace_s` seconds of not being alive (a reconnect is not an end).
    """

    def __init__(self, period_s: float = 0.5, grace_s: float = 2.0):
        self.period_s, self.grace_s = period_s, grace_s
        self._runs: dict = {}                   # key -> (run, alive)
        self._dead_since: dict = {}
        self._lock = threading.Lock()
        self._thread = None

    def get(self, key):
        with self._lock:
            hit = self._runs.get(key)
        return hit[0] if hit else None

    def owner(self, run_id: str):
        """(key, alive) of the session that holds the run with this id, or None."""
        with self._lock:
            for key, (run, alive) in self._runs.items():
                if run.run_id == run_id:
                    return key, alive
        return None

    def set(self, key, run: OptimizerRun, alive: Callable[[], bool]) -> None:
        """Make `run` the session's run; refused while the session's other run is going."""
        with self._lock:
            old = self._runs.get(key)
            if old and old[0] is not run and old[0].active:
                raise ScheduleLabError("a run is already going in this session: stop it first "
                                       "(one optimizer run per session)")
            for k in [k for k, (r, _) in self._runs.items() if r is run and k != key]:
                del self._runs[k]                # adopted from an ended session
            self._runs[key] = (run, alive)
            self._dead_since.pop(key, None)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._watch, daemon=True, name="optimizer-run-watcher")
                self._thread.start()

    def _watch(self):
        while True:
            time.sleep(self.period_s)
            with self._lock:
                items = list(self._runs.items())
            if not items:
                with self._lock:
                    if not self._runs:
                        self._thread = None
                        return
                continue
            now = time.monotonic()
            for key, (run, alive) in items:
                try:
                    ok = bool(alive())
                except Exception:                    # noqa: BLE001
                    ok = False
                if ok:
                    self._dead_since.pop(key, None)
                    continue
                first = self._dead_since.setdefault(key, now)
                if now - first >= self.grace_s:
                    run.cancel("its session ended")
                    with self._lock:
                        if self._runs.get(key, (None,))[0] is run:
                            del self._runs[key]
                    self._dead_since.pop(key, None)
