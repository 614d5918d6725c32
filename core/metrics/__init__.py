"""How good a schedule is: toy metrics here, image metrics in core.metrics.images."""
from core.metrics.toy import mean_ci, mmd_rbf, nll, sliced_wasserstein  # noqa: F401
