"""Sample quality on 2D toys where the truth is known (methods.md s.7).

nll: mean -log p(x) under the exact density; swd: sliced Wasserstein-2; mmd: RBF MMD^2 with
the median-heuristic bandwidth; mean_ci: mean and 95 % t-interval over seeds.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats

from core.errors import ScheduleLabError


def _finite(x: torch.Tensor, what: str = "samples") -> torch.Tensor:
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(dim=-1).sum())
        raise ScheduleLabError(f"{bad} {what} are NaN or inf: the sampler diverged (check the schedule "
                               "and the model)")
    return x


def nll(samples: torch.Tensor, mixture) -> float:
    """Mean negative log-likelihood of samples [n, d] under the exact data density (nats)."""
    return float(-mixture.log_prob(_finite(samples)).mean())


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_proj: int = 256, seed: int = 0) -> float:
    """Sliced W2 between sample sets [n, d] and [m, d]: sqrt of the mean over random unit
    directions of the squared W2 of the 1D projections (quantile matching on a common grid)."""
    x, y = _finite(x).double(), _finite(y).double().to(x.device)
    g = torch.Generator().manual_seed(seed)
    th = torch.randn(x.shape[1], n_proj, generator=g, dtype=torch.float64).to(x.device)
    th = th / th.norm(dim=0, keepdim=True)
    px, py = (x @ th).sort(0).values, (y @ th).sort(0).values
    if px.shape[0] != py.shape[0]:
        m = min(px.shape[0], py.shape[0])
        px, py = _quantiles(px, m), _quantiles(py, m)
    return float(((px - py) ** 2).mean().sqrt())


def _quantiles(sorted_vals: torch.Tensor, m: int) -> torch.Tensor:
    """Linear-interpolated quantiles at linspace(0, 1, m) of column-sorted values [n, P] -> [m, P]."""
    n = sorted_vals.shape[0]
    pos = torch.linspace(0, n - 1, m, dtype=torch.float64, device=sorted_vals.device)
    lo = pos.floor().long().clamp(max=n - 2) if n > 1 else pos.long()
    frac = (pos - lo).unsqueeze(1)
    if n == 1:
        return sorted_vals.expand(m, -1)
    return sorted_vals[lo] * (1 - frac) + sorted_vals[lo + 1] * frac


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, max_n: int = 2000, seed: int = 0,
            bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 with an RBF kernel, bandwidth = median pairwise distance of the pooled
    sample (median heuristic). At most max_n points of each set are used (first max_n after a
    seeded shuffle) to keep the n^2 kernel small."""
    x, y = _finite(x).double(), _finite(y).double().to(x.device)
    g = torch.Generator().manual_seed(seed)
    x = x[torch.randperm(x.shape[0], generator=g)[:max_n].to(x.device)]
    y = y[torch.randperm(y.shape[0], generator=g)[:max_n].to(y.device)]
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z).pow(2)
    if bandwidth is None:
        bandwidth = float(d2[torch.triu_indices(len(z), len(z), 1, device=z.device).unbind()].median().sqrt())
    k = torch.exp(-d2 / (2 * bandwidth ** 2))
    n, m = len(x), len(y)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    return float((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
                 + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * kxy.mean())


def mean_ci(values, level: float = 0.95) -> tuple:
    """(mean, half-width) of a Student-t interval over seeds; half-width nan for one value."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()), math.nan
    se = v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean()), float(se * stats.t.ppf(0.5 + level / 2, len(v) - 1))
