"""The Optimizer interface (DESIGN.md): a generator of progress events that can be stopped
after any event and resumed from its last state.

    opt = SomeOptimizer(model, ..., seed=0)
    for ev in opt.events():          # the app pulls a few per rerun; the CLI wraps it in tqdm
        ...
    opt.state_dict()                  # JSON-serialisable, valid after every event
    opt2 = SomeOptimizer(model, ...); opt2.load_state_dict(state)   # resume
    opt.result()                      # the final (or best-so-far) Schedule
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from core.errors import ScheduleLabError
from core.schedules import Schedule


@dataclass
class ProgressEvent:
    """One step of an optimizer's progress.

    Attributes:
        method: "ays" | "nonuniform" | "score_optimal".
        iteration: global iteration counter (sweeps for AYS, solver iterations otherwise).
        schedule: the current Schedule.
        objective: the method's own objective for `schedule` (total KLUB, error bound, Stein cost).
        heldout: held-out quality metric (lower is better) or None when not computed this event.
        stage: hierarchical stage index (AYS: 0 for 10 steps, 1 for 20, ...), else 0.
        done: True on the last event.
        message: a short human-readable line (what happened).
        extra: method-specific data for plots (per-interval costs, early-stopping point, ...).
    """

    method: str
    iteration: int
    schedule: Schedule
    objective: float
    heldout: float | None = None
    stage: int = 0
    done: bool = False
    message: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"method": self.method, "iteration": self.iteration, "stage": self.stage,
                "sigmas": list(self.schedule.sigmas), "objective": self.objective,
                "heldout": self.heldout, "done": self.done, "message": self.message}


class Optimizer:
    """Base class: subclasses implement events(), state_dict(), load_state_dict(), result()."""

    method = "base"

    def events(self) -> Iterator[ProgressEvent]:  # pragma: no cover - interface
        raise NotImplementedError

    def state_dict(self) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def result(self) -> Schedule:  # pragma: no cover - interface
        raise NotImplementedError

    def save_state(self, path) -> None:
        """Write the state as JSON atomically (tmp file + rename), so a kill never corrupts it."""
        p = Path(path)
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(json.dumps(self.state_dict()))
        tmp.replace(p)

    @staticmethod
    def read_state(path) -> dict:
        """A state file through core.readers (size, encoding, depth, digit limits); a JSON object."""
        from core import readers as rd
        p = Path(path)
        if not p.is_file():
            raise ScheduleLabError(f"optimizer state {str(p)!r} not found; start a run without --resume")
        try:
            d = rd.read_json(p, "optimizer state")
        except ScheduleLabError as e:
            raise ScheduleLabError(f"{e}; the state is corrupt: delete it and start again") from None
        if not isinstance(d, dict):
            raise ScheduleLabError(f"optimizer state {str(p)!r} is not a JSON object; delete it and start again")
        return d


def run_to_end(opt: Optimizer, on_event=None, state_path=None) -> Schedule:
    """Drive an optimizer to completion; call on_event(ev) and save the state after each event."""
    for ev in opt.events():
        if state_path is not None:
            opt.save_state(state_path)
        if on_event is not None:
            on_event(ev)
    return opt.result()
