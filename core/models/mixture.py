"""Exact denoiser of a Gaussian-mixture toy (methods.md s.1; toy_data.mixture)."""
from __future__ import annotations

import torch

from core.models.base import Denoiser
from core.models.guidance import ConditionalDenoiser


class MixtureDenoiser(Denoiser):
    """D(x, sigma) = E[x0 | x] in closed form, computed in float64 and returned in x's dtype.

    Args:
        mixture: a toy_data GaussianMixture.
        sigma_min, sigma_max: the schedule range used by default (EDM's 0.002 .. 80).
    """

    def __init__(self, mixture, sigma_min: float = 0.002, sigma_max: float = 80.0):
        super().__init__()
        self.mixture = mixture
        self.name = f"exact:{mixture.name}"
        self.event_shape = (mixture.dim,)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.sigma_data = mixture.std()
        self.register_buffer("_anchor", torch.zeros((), dtype=torch.float64))  # carries device

    def _apply(self, fn, *a, **k):
        out = super()._apply(fn, *a, **k)
        self.mixture = self.mixture.to(self._anchor.device)
        return out

    @property
    def dtype(self):
        return torch.float64

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.mixture.denoise(x, sigma).to(x.dtype)

    def log_prob(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        return self.mixture.log_prob(x, sigma)


class LabelledMixtureDenoiser(ConditionalDenoiser):
    """Exact D(x, sigma | c) = E[x0 | x, c] of a labelled toy (toy_data.labelled.LabelledMixture);
    `denoise` (no label) is the exact unconditional denoiser. Guide it with
    core.models.guidance.GuidedDenoiser: the guided denoiser is then exact at every sigma."""

    def __init__(self, labelled, sigma_min: float = 0.002, sigma_max: float = 80.0):
        super().__init__()
        self.labelled = labelled
        self.num_classes = labelled.num_classes
        self.name = f"exact:{labelled.name} (labelled)"
        self.event_shape = (labelled.dim,)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.sigma_data = labelled.mixture.std()

    @property
    def dtype(self):
        return torch.float64

    def denoise_cond(self, x, sigma, cond):
        return self.labelled.denoise(x, sigma, cond).to(x.dtype)
