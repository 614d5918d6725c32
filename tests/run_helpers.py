"""Helpers for tests of the app's optimizer runs (app_lib.runner in its worker thread).

`Gate` wraps app_lib.engine.optimizer_factory so that the worker, after publishing the first event
that matches `when`, blocks inside its next optimizer step until the test releases it: a test can
then press Stop while the worker is mid-step, deterministically (the optimizer's numbers are not
changed; it only waits)."""
from __future__ import annotations

import threading
import time


class _Gated:
    """An optimizer whose events() waits at the gate; everything else is the wrapped optimizer's."""

    def __init__(self, opt, gate):
        self._opt, self._gate = opt, gate

    def __getattr__(self, name):
        return getattr(self._opt, name)

    def events(self):
        for ev in self._opt.events():
            yield ev
            g = self._gate
            if not g.reached.is_set() and g.when(ev):
                g.reached.set()
                g.go.wait(60)


class Gate:
    """Gate(monkeypatch, when) patches the page's factory; Gate(None, when).wrap(make) wraps one."""

    def __init__(self, monkeypatch, when):
        self.when, self.reached, self.go = when, threading.Event(), threading.Event()
        if monkeypatch is None:
            return
        from app_lib import engine
        real = engine.optimizer_factory

        def factory(*a, **k):
            make = real(*a, **k)
            return lambda: _Gated(make(), self)
        monkeypatch.setattr(engine, "optimizer_factory", factory)

    def wrap(self, make):
        return lambda: _Gated(make(), self)

    def wait(self, timeout=60):
        assert self.reached.wait(timeout), "the run never reached the gate"

    def release(self):
        self.go.set()


def rerun_until(at, cond, timeout=60.0, pause=0.05):
    """Rerun the AppTest page until cond() holds (the worker runs on its own meanwhile)."""
    t0 = time.monotonic()
    while True:
        at.run()
        if cond():
            return
        assert time.monotonic() - t0 < timeout, "timed out waiting"
        time.sleep(pause)


def start_and_stop(at, gate):
    """Press Start on the Optimizer page, Stop while `gate` holds the worker inside a step, then wait
    until the run has stopped; returns the run."""
    at.button(key="opt_start").click().run()
    run = at.session_state["opt_run"]
    gate.wait()
    at.button(key="opt_stop").click().run()
    gate.release()
    rerun_until(at, lambda: run.status == "stopped")
    return run
