"""Sample quality on 2D toys where the truth is known (methods.md s.7).

nll: mean -log p(x) under the exact density; swd: sliced Wasserstein-2; mmd: RBF MMD^2 with
the median-heuristic bandwidth; mean_ci: mean and 95 % t-interval over seeds.

NLL alone rewards collapse: samples piled on the densest mode score better than faithful ones
(spiral, dpmpp_2m_sde, 2 steps). Two metrics that a collapsed set cannot win:
kde_nll: mean -log q(y) of HELD-OUT DATA y under a Gaussian KDE q of the samples (a proper
    cross-entropy, lowest when the samples are distributed as the data);
mode_coverage: share of the mixture's components that receive at least `threshold` times their
    weight's share of the samples.
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


def _kde_logpdf(y: torch.Tensor, x: torch.Tensor, h: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """log q(y) [m, H] of points y [m, d] under isotropic Gaussian KDEs of centres x [n, d], one per
    bandwidth h [H]:  q(y) = (1/n) sum_i N(y; x_i, h^2 I)."""
    n, d = x.shape
    inv = (-0.5 / (h * h)).reshape(-1, 1, 1)                                  # [H, 1, 1]
    out = []
    for yc in y.split(chunk):
        d2 = torch.cdist(yc, x).pow(2)                                        # [c, n]
        out.append(torch.logsumexp(d2 * inv, dim=-1).T)                       # [c, H]
    return torch.cat(out) - math.log(n) - d * torch.log(h) - 0.5 * d * math.log(2 * math.pi)


def kde_bandwidth(samples: torch.Tensor, data: torch.Tensor, max_n: int = 2000, seed: int = 0,
                  factors=tuple(2.0 ** -k for k in range(9))) -> float:
    """The KDE bandwidth chosen on a split of the SAMPLES (likelihood cross-validation).

    Candidates h = f * h_scott, f in `factors` (1 ... 1/256), with Scott's rule on the DATA,
    h_scott = m^(-1/(d + 4)) * sqrt(mean per-axis variance of data [m, d]) (so the candidates do not
    depend on the sample set, and a set collapsed to one point still gets positive ones). A KDE of one
    half of the samples (seeded shuffle, at most max_n points) scores the other half; the h of the
    highest mean log-likelihood is returned. Scott's rule alone oversmooths the toys' narrow modes
    (grid8x8: component std 0.02 against h_scott ~ 0.14 at m = 2000), hence the split."""
    x, y = _finite(samples).double(), _finite(data, "data points").double()
    g = torch.Generator().manual_seed(int(seed))
    x = x[torch.randperm(len(x), generator=g)[:max_n].to(x.device)]
    if len(x) < 4:
        raise ScheduleLabError(f"a KDE bandwidth needs at least 4 samples; got {len(x)}")
    m, d = y.shape
    h_scott = m ** (-1.0 / (d + 4)) * float(y.var(0).mean().sqrt())
    h = torch.tensor([f * h_scott for f in factors], dtype=torch.float64, device=x.device)
    half = len(x) // 2
    ll = _kde_logpdf(x[half:], x[:half], h).mean(0)                            # [H]
    return float(h[int(torch.argmax(ll))])


def kde_nll(samples: torch.Tensor, data: torch.Tensor, max_n: int = 2000, seed: int = 0,
            bandwidth: float | None = None) -> float:
    """Mean -log q(y) (nats) of held-out data y [m, d] under an isotropic Gaussian KDE q of samples [n, d].

    -E_p log q is the cross-entropy of the data under the samples' density estimate: it is lowest
    when the samples follow the data, and a collapsed set leaves most data points far from every
    kernel (large values), unlike NLL, which only asks whether the samples sit where p is high.
    Bandwidth: `kde_bandwidth` (chosen on a split of the samples) unless given. At most max_n
    samples (seeded shuffle) are kernel centres and max_n data points are scored."""
    x, y = _finite(samples).double(), _finite(data, "data points").double().to(samples.device)
    h = kde_bandwidth(x, y, max_n, seed) if bandwidth is None else float(bandwidth)
    if not (math.isfinite(h) and h > 0):
        raise ScheduleLabError(f"the KDE bandwidth must be a finite number > 0; got {bandwidth!r}")
    g = torch.Generator().manual_seed(int(seed) + 1)
    x = x[torch.randperm(len(x), generator=g)[:max_n].to(x.device)]
    y = y[torch.randperm(len(y), generator=g)[:max_n].to(y.device)]
    return float(-_kde_logpdf(y, x, torch.tensor([h], dtype=torch.float64, device=x.device)).mean())


def component_counts(samples: torch.Tensor, mixture) -> torch.Tensor:
    """[K] number of samples whose most probable component (posterior argmax under the exact
    mixture, log w_k + log N(x; mu_k, Sigma_k)) is k."""
    x = _finite(samples).double().to(mixture.device)
    mu, cov = mixture.means.double(), mixture.covariances.double()
    prec = torch.linalg.inv(cov)                                              # [K, d, d]
    const = mixture.weights.double().log() - 0.5 * torch.logdet(cov)          # [K] (2 pi terms cancel)
    counts = torch.zeros(mixture.n_components, dtype=torch.long, device=mixture.device)
    for xc in x.split(4096):
        diff = xc.unsqueeze(1) - mu                                           # [B, K, d]
        quad = torch.einsum("bki,kij,bkj->bk", diff, prec, diff)
        counts += torch.bincount((const - 0.5 * quad).argmax(1), minlength=mixture.n_components)
    return counts.cpu()


def mode_coverage(samples: torch.Tensor, mixture, threshold: float = 0.5) -> float:
    """Share of the K components that receive at least `threshold` x their weight's share of the
    samples (assignment by `component_counts`): 1 when every mode is populated, 1/K for a set
    collapsed onto one mode. Higher is better; in [0, 1]."""
    if not (isinstance(threshold, (int, float)) and 0 < threshold <= 1):
        raise ScheduleLabError(f"coverage threshold must be in (0, 1]; got {threshold!r}")
    counts = component_counts(samples, mixture).double()
    share = counts / counts.sum()
    return float((share >= threshold * mixture.weights.double().cpu()).double().mean())


def mean_ci(values, level: float = 0.95) -> tuple:
    """(mean, half-width) of a Student-t interval over seeds; half-width nan for one value."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()), math.nan
    se = v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean()), float(se * stats.t.ppf(0.5 + level / 2, len(v) - 1))
