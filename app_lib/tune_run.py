"""The Tune page's run: a core.tune.Tuner driven a few units at a time from the page's fragment.

Why not a worker thread (app_lib.runner, the Optimizer's design): a tune run is a short list of
coarse units (score one heuristic, run one optimizer, score it), each of which already saves the
whole state to disk (core.tune.tuner), so the page can own the run and advance it between
reruns: Stop takes effect after the unit in flight, Resume rebuilds the Tuner from its state file,
and nothing runs behind the user's back (no thread to cancel when the session ends, no second run
per session to arbitrate with the Optimizer's). The cost: the run advances only while the Tune
page is open (it pauses on other pages and continues on return), and a widget change waits for
the unit in flight (seconds on toys, up to a minute or two for an optimizer on digits).

Files (app_lib.store.home()): tune_state_RUNID.json, the Tuner's own state (what Resume loads; the
Tuner refuses a state made with other settings; one file per run, so two tabs never write one
file), and tune_run.json, the last started run's record: its id, the page's settings (spec),
status, message, the last unit messages and the "steps to match" result. Start removes the state
file of the run recorded before it.
Threads: Streamlit may run a button's callback (Stop) while an earlier script run's fragment is
still inside a unit (the old run is only interrupted at its next Streamlit call), so the job is
advanced under a lock that no second caller waits for, and Stop only asks: the thread that holds
the lock stops after its unit ("stopping"), or Stop stops at once when no unit is in flight.
No Streamlit here.
"""
from __future__ import annotations

import json
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Callable

from app_lib import store
from core.errors import ScheduleLabError

RUN_FILE = "tune_run.json"
RUN_FORMAT = "schedule-lab/app-tune/1"
STATUSES = ("running", "stopping", "stopped", "done", "failed")
ACTIVE = ("running", "stopping")
MAX_LOG = 200


class TuneJob:
    """One tune run of the page.

    Args:
        spec: the page's settings (plain data): what Resume compares and a restored run shows.
        make_tuner: (state_path) -> a core.tune.Tuner built from `spec` (it loads the state file
            when there is one); called on Start, Resume and when a restored run's result is asked.
        home: the folder of the state and record files (default app_lib.store.home()).
        match: (tuner, result) -> the "steps to match" dict (core.tune.match.steps_to_match), or None.
    Attributes: status ("running" | "stopped" | "done" | "failed"), message, log (unit messages),
    done_units / total_units, result (TuneResult once done), match (dict once computed).
    """

    def __init__(self, spec: dict, make_tuner: Callable | None = None, home: Path | None = None,
                 match: Callable | None = None, run_id: str | None = None):
        self.spec, self.make_tuner, self.match_fn = dict(spec), make_tuner, match
        self.home = Path(home) if home is not None else store.home()
        self.run_id = run_id or uuid.uuid4().hex
        self.status, self.message, self.log = "stopped", "", []
        self.done_units, self.total_units = 0, 0
        self.tuner, self.result, self.match = None, None, None
        self.saved_to: str | None = None             # the result's file in home/tune once done
        self._gen, self._lock, self._stop = None, threading.Lock(), threading.Event()

    @property
    def state_path(self) -> Path:
        return self.home / f"tune_state_{self.run_id[:16]}.json"

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    # ---- control -------------------------------------------------------------------------------
    def start(self) -> "TuneJob":
        """A fresh run (the state file of the run recorded before it is removed)."""
        old = TuneJob.restore(self.home)
        if old is not None and old.run_id != self.run_id:
            old.state_path.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)
        self.log, self.result, self.match = [], None, None
        self._open("started")
        return self

    def stop(self) -> None:
        """Stop after the unit in flight (the state on disk is complete up to it): at once when no
        unit is running, else "stopping" until the thread running it has finished it."""
        if self.status != "running":
            return
        self._stop.set()
        if self._lock.acquire(blocking=False):
            try:
                self._finish_stop()
            finally:
                self._lock.release()
        else:
            self.status, self.message = "stopping", "stopping after the unit in flight"

    def _finish_stop(self) -> None:
        if self.status in ACTIVE:
            self._close()
            self.status, self.message = "stopped", f"stopped after {self.done_units} of {self.total_units} units"
            self.save()

    def resume(self) -> None:
        if self.status != "stopped":
            raise ScheduleLabError("nothing to resume: start a run first")
        if not self.state_path.is_file():
            raise ScheduleLabError(f"the tune state {str(self.state_path)!r} is gone; press Start for a new run")
        self._open(f"resumed after {self.done_units} units")

    def _open(self, message: str) -> None:
        if self.make_tuner is None:
            raise ScheduleLabError("this run cannot be continued here (its model is not loaded); press Start")
        self.tuner = self.make_tuner(self.state_path)           # Tuner.load_state refuses other settings
        self.total_units = len(self.tuner.units()) + 1          # + steps to match
        self.done_units = self._units_done()
        self._gen = self.tuner.events()
        self._stop.clear()
        self.status, self.message = "running", message
        self.save()

    def _close(self) -> None:
        if self._gen is not None:
            self._gen.close()
        self._gen = None

    def _units_done(self) -> int:
        t = self.tuner
        return sum(1 for kind, name in t.units() if t._unit_done(kind, name))

    # ---- the work (called from the page's fragment) --------------------------------------------
    def advance(self, slice_s: float = 1.0) -> None:
        """Run units until `slice_s` seconds have passed (at least one), then return; returns at
        once when another thread is running a unit of this job."""
        if not self._lock.acquire(blocking=False):
            return
        t0 = time.perf_counter()
        try:
            while self.status in ACTIVE:
                if self._stop.is_set():
                    self._finish_stop()
                    break
                self._step()
                if time.perf_counter() - t0 >= slice_s and not self._stop.is_set():
                    break
        except ScheduleLabError as e:
            self._fail(str(e))
        except Exception as e:                       # noqa: BLE001 - shown to the user with its type
            traceback.print_exc()
            self._fail(f"{type(e).__name__}: {e}")
        finally:
            self._lock.release()

    def _step(self) -> None:
        if self.result is None:
            ev = next(self._gen, None)
            if ev is None:
                raise ScheduleLabError("the tune run ended without a result")
            self.done_units, self.message = ev.done_units, ev.message
            self.log = (self.log + [ev.message])[-MAX_LOG:]
            if ev.done:
                self.result = ev.extra["result"]
                self._close()
                self._publish()
            self.save()
            return
        try:                                          # the result stands even if this extra scoring fails
            self.match = self.match_fn(self.tuner, self.result) if self.match_fn is not None else None
        except ScheduleLabError as e:
            self.match = {"error": str(e)}
        self.done_units = self.total_units
        self.status, self.message = "done", self.result.reason
        self.save()

    def _publish(self) -> None:
        """Write the finished result where the Images page looks for a model's optimized schedules
        (store.save_tune_result: home/tune/MODEL_SOLVER_STEPS.json, core.tune.known)."""
        try:
            self.saved_to = str(store.save_tune_result(self.result, root=self.home))
        except (OSError, ScheduleLabError) as e:     # the run's result stands; say why it was not shared
            self.saved_to, self.log = None, (self.log + [f"result not saved for the Images page: {e}"])[-MAX_LOG:]

    def _fail(self, msg: str) -> None:
        self._close()
        self.status, self.message = "failed", msg
        self.save()

    # ---- the result of a restored run ----------------------------------------------------------
    def ensure_result(self):
        """The TuneResult of a finished run restored from disk (rebuilt from its state file)."""
        if self.result is None and self.status == "done":
            if self.make_tuner is None:
                raise ScheduleLabError("the finished run's model is not loaded")
            self.tuner = self.make_tuner(self.state_path)
            self.result = self.tuner.result()
        return self.result

    # ---- the record on disk ----------------------------------------------------------------------
    def to_record(self) -> dict:
        return {"format": RUN_FORMAT, "run_id": self.run_id, "spec": self.spec, "status": self.status,
                "message": self.message, "log": self.log, "done_units": self.done_units,
                "total_units": self.total_units, "match": self.match}

    def save(self) -> None:
        from core.readers import strict_json
        try:
            store.write_atomic(self.home / RUN_FILE, json.dumps(strict_json(self.to_record())))
        except OSError:                              # a full disk must not stop the run; the state file matters
            pass

    @classmethod
    def restore(cls, home: Path | None = None) -> "TuneJob | None":
        """The last run's record (None: none, or a corrupt one, moved aside to tune_run.json.bad). A
        record saved while running (reload, restart) comes back stopped: Resume continues it."""
        home = Path(home) if home is not None else store.home()
        p = home / RUN_FILE
        if not p.is_file():
            return None
        try:
            d = store.read_json(p, f"tune run file {str(p)!r}", store.MAX_RUN_BYTES)
            rid = d.get("run_id")               # it names the state file: letters and digits only
            if (d.get("format") != RUN_FORMAT or d.get("status") not in STATUSES or not _valid_spec(d.get("spec"))
                    or not (isinstance(rid, str) and rid.isalnum())
                    or not all(isinstance(d.get(k, 0), int) for k in ("done_units", "total_units"))
                    or not isinstance(d.get("log", []), list)):
                raise ScheduleLabError("not a tune run record")
        except ScheduleLabError:
            p.replace(p.with_name(p.name + ".bad"))
            return None
        job = cls(d["spec"], home=home, run_id=d["run_id"])
        job.status, job.message = d["status"], str(d.get("message") or "")
        job.log = [str(m) for m in d.get("log") or []][-MAX_LOG:]
        job.done_units, job.total_units = int(d.get("done_units") or 0), int(d.get("total_units") or 0)
        job.match = d.get("match") if isinstance(d.get("match"), dict) else None
        if job.status in ACTIVE:
            job.status = "stopped"
            job.message = (f"interrupted after {job.done_units} of {job.total_units} units (the page was reloaded "
                           "or the app restarted); Resume continues from there")
        if job.status == "stopped" and not job.state_path.is_file():
            job.status, job.message = "failed", "the run's state file is gone; press Start for a new run"
        return job


SPEC_TYPES = {"source": str, "toy": str, "kind": str, "path": str, "weights": str, "params": str, "label": str,
              "cfg": (int, float), "device": str, "solver": str, "steps": int, "methods": list,
              "budget_s": (int, float, type(None)), "n": int, "batches": int, "seed": int}


def _valid_spec(spec) -> bool:
    """A saved run's settings have the page's fields with the page's types (they go back into widgets)."""
    return (isinstance(spec, dict) and all(isinstance(spec.get(k), t) and not isinstance(spec.get(k), bool)
                                           for k, t in SPEC_TYPES.items())
            and all(isinstance(m, str) for m in spec["methods"]))
