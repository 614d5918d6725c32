"""Drive an Optimizer (core.optimizers.base) a few events at a time, so a page stays responsive:
Start builds it, each fragment rerun pulls a few events, Stop keeps only its state_dict, Resume
rebuilds it from that state. No Streamlit here: the page keeps an OptimizerRun in session state.
"""
from __future__ import annotations

import time
from typing import Callable

from core.errors import ScheduleLabError


class OptimizerRun:
    """One optimizer run of a page.

    Args:
        method: "ays" | "nonuniform" | "score_optimal".
        factory: () -> a fresh Optimizer built from the page's knobs (same knobs on resume).
        knobs: the knobs as plain data (shown with the result).
    Attributes:
        status: "running" | "stopped" | "done" | "failed".
        history: one dict per event: ProgressEvent.to_dict() plus "early_stopped_at" (AYS:
            extra["early_stopped_at"], the sweep kept when the first stage stopped), "group"
            (the plot series: "stage K", or DM-NonUniform's "start NAME" and its final "result") and "placeholder"
            (True for events whose schedule is not a result yet: score-optimal's density chunks).
        state: the optimizer's state_dict() after the last pulled batch (what Resume loads).
        message: the last event's message, or the error of a failed run.
    """

    def __init__(self, method: str, factory: Callable, knobs: dict):
        self.method, self.factory, self.knobs = method, factory, dict(knobs)
        self.history, self.state, self.status, self.message = [], None, "stopped", ""
        self.saved_label, self.saved_solver = None, None
        self._opt, self._gen = None, None

    # ---- control
    def start(self) -> "OptimizerRun":
        self.history, self.state, self.saved_label, self.saved_solver = [], None, None, None
        self._opt = self.factory()
        self._gen = self._opt.events()
        self.status, self.message = "running", "started"
        return self

    def stop(self) -> None:
        if self.status != "running":
            return
        self.state = self._opt.state_dict()
        self._opt, self._gen = None, None
        self.status, self.message = "stopped", f"stopped after iteration {self.iteration}"

    def resume(self) -> None:
        if self.status != "stopped" or self.state is None:
            raise ScheduleLabError("nothing to resume: start a run first")
        self._opt = self.factory()
        self._opt.load_state_dict(self.state)
        # events after the state's iteration are recomputed on resume (DM-NonUniform restarts an
        # unfinished start): drop them so the history matches an uninterrupted run
        it = self.state.get("iteration")
        if isinstance(it, int):
            self.history = [h for h in self.history if h["iteration"] <= it]
        self._gen = self._opt.events()
        self.status, self.message = "running", f"resumed from iteration {self.iteration}"

    def pull(self, max_events: int = 3, max_seconds: float = 1.0) -> list:
        """Take up to max_events events (stopping early after max_seconds); returns them."""
        if self.status != "running":
            return []
        new, t0 = [], time.perf_counter()
        try:
            while len(new) < max_events and time.perf_counter() - t0 < max_seconds:
                ev = next(self._gen, None)
                if ev is None:
                    self.status = "done"
                    break
                rec, extra = ev.to_dict(), ev.extra or {}
                rec["early_stopped_at"] = extra.get("early_stopped_at")
                rec["group"] = (f"start {extra['start']}" if "start" in extra else
                                "result" if "best_start" in extra else f"stage {ev.stage}")
                rec["placeholder"] = self.method == "score_optimal" and not ev.done
                self.history.append(rec)
                new.append(rec)
                self.message = ev.message or self.message
                if ev.done:
                    self.status = "done"
                    break
            self.state = self._opt.state_dict()
        except ScheduleLabError as e:
            self.status, self.message = "failed", str(e)
            self._gen = None
        if self.status == "done":
            self.message = self.message or "done"
        return new

    # ---- results
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
        """The optimizer's result() (final or best so far); rebuilt from the state when stopped."""
        if self._opt is None:
            if self.state is None:
                raise ScheduleLabError("no result yet: start a run first")
            self._opt = self.factory()
            self._opt.load_state_dict(self.state)
        return self._opt.result()
