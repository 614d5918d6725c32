"""Schedule optimizers: AYS (KLUB, hierarchical), DM-NonUniform, score-optimal."""
from core.optimizers.base import Optimizer, ProgressEvent, run_to_end  # noqa: F401
