"""Schedule Lab engine: denoisers, schedules, solvers, objectives, optimizers, metrics.

Nothing in core/ imports streamlit or draws; the app and the CLI call into it.
"""
from core.errors import ScheduleLabError  # noqa: F401
