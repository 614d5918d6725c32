"""`tune`: the best schedule for one model and solver, proven on held-out noise (core.tune.tuner)."""
from core.tune.methods import Deadline, Method, OverBudget, TuneContext, default_table  # noqa: F401
from core.tune.scoring import HeldoutScorer, decide, interval, paired  # noqa: F401
from core.tune.tuner import TuneEvent, TuneResult, Tuner, tune  # noqa: F401
