"""Gaussian mixtures with exact noisy densities, denoisers and scores.

Every toy is a mixture  p(x0) = sum_k w_k N(x0; mu_k, Sigma_k), so the noisy marginal
p_sigma = p * N(0, sigma^2 I) is the mixture with covariances Sigma_k + sigma^2 I, and

    D(x, sigma) = E[x0 | x] = sum_k r_k(x) (mu_k + Sigma_k (Sigma_k + sigma^2 I)^-1 (x - mu_k))

with responsibilities r_k from a log-sum-exp. Each Sigma_k = U_k diag(l_k) U_k^T is
eigendecomposed once, so every per-sample sigma costs O(K d^2) with no solves; all maths
runs in float64.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from core.errors import ScheduleLabError


class GaussianMixture:
    """A validated Gaussian mixture in d dimensions.

    Args:
        weights: [K] positive, summing to 1 (within 1e-6).
        means: [K, d].
        covariances: [K, d, d] symmetric positive-definite.
        name: registry name.
    """

    def __init__(self, weights, means, covariances, name: str = "mixture"):
        w = torch.as_tensor(weights, dtype=torch.float64)
        mu = torch.as_tensor(means, dtype=torch.float64)
        cov = torch.as_tensor(covariances, dtype=torch.float64)
        _validate(w, mu, cov, name)
        self.name = name
        self.weights, self.means, self.covariances = w, mu, cov
        self.evals, self.evecs = torch.linalg.eigh(cov)            # [K, d], [K, d, d]
        self.log_weights = w.log()
        eye = torch.eye(mu.shape[1], dtype=torch.float64)
        iso = cov[:, 0, 0]
        # isotropic components (grid, ring, gaussian) take a fast path with no [B, K, d] tensors
        self.isotropic = bool(torch.allclose(cov, iso[:, None, None] * eye, rtol=0, atol=1e-15))

    # ---- basic properties -------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def device(self) -> torch.device:
        return self.means.device

    def mean(self) -> torch.Tensor:
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """Total covariance [d, d] (law of total variance)."""
        m = self.mean()
        within = torch.einsum("k,kij->ij", self.weights, self.covariances)
        dm = self.means - m
        return within + torch.einsum("k,ki,kj->ij", self.weights, dm, dm)

    def std(self) -> float:
        """Root-mean per-coordinate standard deviation, sqrt(trace(Cov) / d)."""
        return math.sqrt(float(torch.trace(self.covariance())) / self.dim)

    def to(self, device) -> "GaussianMixture":
        out = GaussianMixture.__new__(GaussianMixture)
        out.name = self.name
        for k in ("weights", "means", "covariances", "evals", "evecs", "log_weights"):
            setattr(out, k, getattr(self, k).to(device))
        out._u_cat_cache = None
        out.isotropic = self.isotropic
        return out

    # ---- sampling -----------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None,
               sigma: float = 0.0) -> torch.Tensor:
        """n samples [n, d] float64 of p_sigma (sigma = 0: the data)."""
        dev = self.device
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=torch.float64, device=dev, generator=generator)
        scale = self.evecs[k] * self.evals[k].clamp_min(0).sqrt().unsqueeze(1)   # U sqrt(L)
        x = self.means[k] + torch.einsum("nij,nj->ni", scale, z)
        if sigma > 0:
            x = x + sigma * torch.randn(n, self.dim, dtype=torch.float64, device=dev,
                                        generator=generator)
        return x

    # ---- exact noisy density, denoiser, score ---------------------------------------------
    def _component_terms(self, x: torch.Tensor, sigma: torch.Tensor):
        """y = U^T (x - mu) [B, K, d], var = l + sigma^2 [B, K, d], log N terms [B, K].

        U^T x for every component is one GEMM against the stacked eigenvectors [d, K d]."""
        x = x.to(torch.float64)
        K, d = self.means.shape
        s2 = _sigma_b(sigma, x).pow(2).reshape(-1, 1, 1)
        y = (x @ self._u_cat).reshape(-1, K, d) - self._mu_rot                 # [B, K, d]
        var = self.evals.unsqueeze(0) + s2
        logn = -0.5 * ((y * y / var).sum(-1) + var.log().sum(-1) + d * math.log(2 * math.pi))
        return y, var, logn

    @property
    def _u_cat(self) -> torch.Tensor:
        """[d, K d]: column block k is U_k, so x @ U_cat = [U_1^T x, ..., U_K^T x]."""
        if getattr(self, "_u_cat_cache", None) is None or self._u_cat_cache.device != self.device:
            K, d = self.means.shape
            self._u_cat_cache = self.evecs.permute(1, 0, 2).reshape(d, K * d).contiguous()
            self._mu_rot_cache = torch.einsum("kji,kj->ki", self.evecs, self.means)
        return self._u_cat_cache

    @property
    def _mu_rot(self) -> torch.Tensor:
        self._u_cat  # noqa: B018 - fills the cache
        return self._mu_rot_cache

    def _iso_terms(self, x: torch.Tensor, sigma):
        """Isotropic Sigma_k = v_k I: var [B|1, K], log N terms [B, K] from one GEMM (|x - mu|^2)."""
        x = x.to(torch.float64)
        d = self.dim
        s2 = _sigma_b(sigma, x).pow(2).reshape(-1, 1)
        var = self.evals[:, 0].unsqueeze(0) + s2
        dist2 = ((x * x).sum(1, keepdim=True) - 2 * x @ self.means.T + (self.means ** 2).sum(1)).clamp_min(0)
        logn = -0.5 * (dist2 / var + d * var.log() + d * math.log(2 * math.pi))
        return var, logn

    def log_prob(self, x: torch.Tensor, sigma=0.0, log_weights=None) -> torch.Tensor:
        """log p_sigma(x), [B] float64. x: [B, d]; sigma: float or [B]; log_weights: optional
        per-sample component log weights [B, K] (-inf drops a component; e.g. one class's)."""
        if self.isotropic:
            _, logn = self._iso_terms(x, sigma)
        else:
            _, _, logn = self._component_terms(x, sigma)
        return torch.logsumexp(logn + (self.log_weights if log_weights is None else log_weights), dim=1)

    def denoise(self, x: torch.Tensor, sigma, log_weights=None) -> torch.Tensor:
        """Exact posterior mean E[x0 | x0 + sigma eps = x], [B, d] float64 (log_weights: as log_prob).

        sum_k r_k (mu_k + U_k diag(l_k / (l_k + sigma^2)) y_k) = r @ mu + [r_k shrunk_k]_k @ U_cat^T."""
        lw = self.log_weights if log_weights is None else log_weights
        if self.isotropic:      # sum_k r_k (a_k x + (1 - a_k) mu_k),  a_k = v_k / (v_k + sigma^2)
            var, logn = self._iso_terms(x, sigma)
            r = torch.softmax(logn + lw, dim=1)
            a = self.evals[:, 0] / var
            return x.to(torch.float64) * (r * a).sum(1, keepdim=True) + (r * (1 - a)) @ self.means
        y, var, logn = self._component_terms(x, sigma)
        r = torch.softmax(logn + lw, dim=1)                                     # [B, K]
        shrunk = y * (self.evals.unsqueeze(0) / var) * r.unsqueeze(-1)          # [B, K, d]
        return r @ self.means + shrunk.reshape(x.shape[0], -1) @ self._u_cat.T

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """grad_x log p_sigma(x) = (D - x) / sigma^2, [B, d] float64 (sigma > 0)."""
        s = _sigma_b(sigma, x.to(torch.float64)).unsqueeze(1)
        return (self.denoise(x, sigma) - x.to(torch.float64)) / s ** 2

    # ---- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"name": self.name, "weights": self.weights.tolist(), "means": self.means.tolist(),
                "covariances": self.covariances.tolist()}

    @classmethod
    def from_dict(cls, d: dict, name: str | None = None) -> "GaussianMixture":
        """{"weights" [K], "means" [K][d], "covariances" [K][d][d], "name"?} -> GaussianMixture;
        every entry is type- and range-checked (core.readers) before any tensor is built."""
        from core import readers as rd
        rd.mapping(d, "a mixture")
        missing = [k for k in ("weights", "means", "covariances") if k not in d]
        if missing:
            raise ScheduleLabError(
                f"mixture file lacks {missing}; expected keys weights [K], means [K][d], "
                "covariances [K][d][d]")
        name = rd.string(name if name is not None else d.get("name", "custom"), "mixture 'name'", 200)
        w = rd.number_list(d["weights"], "mixture 'weights'", 1, MAX_COMPONENTS)
        K = len(w)
        mu = _matrix(d["means"], "mixture 'means'", K, None)
        dim = len(mu[0])
        cov = [_matrix(c, f"mixture 'covariances'[{k}]", dim, dim)
               for k, c in enumerate(_rows(d["covariances"], "mixture 'covariances'", K))]
        return cls(w, mu, cov, name=name)

    @classmethod
    def from_json(cls, path) -> "GaussianMixture":
        """A mixture JSON file (read by core.readers: size, encoding, depth and digit limits)."""
        from core import readers as rd
        p = Path(path)
        d = rd.read_json(p, "mixture file")
        if not isinstance(d, dict):
            raise ScheduleLabError(f"mixture file {str(p)!r} must hold a JSON object")
        try:
            return cls.from_dict(d, name=d.get("name", p.stem))
        except ScheduleLabError as e:
            raise ScheduleLabError(f"mixture file {str(p)!r}: {e}") from None


MAX_COMPONENTS, MAX_DIM = 100_000, 1024


def _matrix(v, what: str, rows: int, cols: int | None) -> list:
    """A [rows][cols] list of lists of finite numbers (cols = the first row's length when None)."""
    from core import readers as rd
    out = [rd.number_list(r, f"{what}[{i}]", 1, MAX_DIM) for i, r in enumerate(_rows(v, what, rows))]
    want = len(out[0]) if cols is None else cols
    for i, r in enumerate(out):
        if len(r) != want:
            raise ScheduleLabError(f"mixture arrays are malformed: {what}[{i}] has {len(r)} entries, expected "
                                   f"{want}; the shapes do not agree (want weights [K], means [K][d], "
                                   "covariances [K][d][d])")
    return out


def _rows(v, what: str, rows: int) -> list:
    if not isinstance(v, list) or len(v) != rows:
        got = f"{len(v)} rows" if isinstance(v, list) else type(v).__name__
        raise ScheduleLabError(f"mixture arrays are malformed: {what} must be a list of {rows} rows (one per "
                               f"weight), got {got}; the shapes do not agree (want weights [K], means [K][d], "
                               "covariances [K][d][d])")
    return v


def _sigma_b(sigma, x: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
    return s.expand(x.shape[0]) if s.ndim == 0 else s.reshape(-1)


def _validate(w, mu, cov, name):
    if w.ndim != 1 or mu.ndim != 2 or cov.ndim != 3:
        raise ScheduleLabError(f"mixture {name!r}: need weights [K], means [K][d], covariances "
                               f"[K][d][d]; got shapes {list(w.shape)}, {list(mu.shape)}, {list(cov.shape)}")
    K, d = mu.shape
    if w.shape[0] != K or cov.shape != (K, d, d):
        raise ScheduleLabError(f"mixture {name!r}: {w.shape[0]} weights, {K} means and covariances "
                               f"of shape {list(cov.shape)} do not agree (want [K], [K][d], [K][d][d])")
    for label, t in (("weights", w), ("means", mu), ("covariances", cov)):
        if not torch.isfinite(t).all():
            raise ScheduleLabError(f"mixture {name!r}: {label} contain NaN or inf")
    if (w <= 0).any():
        raise ScheduleLabError(f"mixture {name!r}: weights must be positive; got min {float(w.min()):.3g}")
    if abs(float(w.sum()) - 1) > 1e-6:
        raise ScheduleLabError(f"mixture {name!r}: weights sum to {float(w.sum()):.9g}, not 1 (within 1e-6)")
    if not torch.allclose(cov, cov.transpose(1, 2), atol=1e-9, rtol=1e-7):
        raise ScheduleLabError(f"mixture {name!r}: covariances must be symmetric")
    ev = torch.linalg.eigvalsh(cov)
    if (ev <= 0).any():
        k = int((ev <= 0).any(1).nonzero()[0])
        raise ScheduleLabError(f"mixture {name!r}: covariance {k} is not positive-definite "
                               f"(smallest eigenvalue {float(ev[k].min()):.3g})")
