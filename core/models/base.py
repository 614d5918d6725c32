"""The Denoiser interface every model meets (DESIGN.md; methods.md section 1).

    D(x, sigma) ~= E[x0 | x = x0 + sigma * eps],   eps ~ N(0, I)

score `(D - x) / sigma**2`, probability-flow ODE `dx/dsigma = (x - D) / sigma`.
"""
from __future__ import annotations

import torch

from core.errors import ScheduleLabError


class Denoiser(torch.nn.Module):
    """EDM-form denoiser. Subclasses implement `denoise(x, sigma)`.

    Attributes:
        sigma_min, sigma_max: the noise range the model is trained / valid on.
        sigma_data: data standard deviation (EDM's sigma_data).
        name: a short human-readable name.
        event_shape: shape of one sample, e.g. (2,) for toys, (1, 16, 16) for digits.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    name: str = "denoiser"
    event_shape: tuple = (2,)

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """x: [B, *event_shape]; sigma: float, 0-d or [B] tensor (> 0). Returns x0_hat [B, ...]."""
        sigma = as_sigma_batch(sigma, x)
        return self.denoise(x, sigma)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """grad_x log p_sigma(x) = (D(x, sigma) - x) / sigma^2, shape of x."""
        s = as_sigma_batch(sigma, x)
        return (self(x, s) - x) / bcast(s, x) ** 2

    @property
    def device(self) -> torch.device:
        for t in list(self.parameters()) + list(self.buffers()):
            return t.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for t in list(self.parameters()) + list(self.buffers()):
            return t.dtype
        return torch.float32

    def describe(self) -> dict:
        return {"name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "sigma_data": self.sigma_data, "event_shape": list(self.event_shape),
                "device": str(self.device), "dtype": str(self.dtype).replace("torch.", "")}


def as_sigma_batch(sigma, x: torch.Tensor) -> torch.Tensor:
    """Any scalar / 0-d / [B] sigma -> [B] tensor on x's device and dtype, checked > 0."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    s = s.reshape(-1)
    if s.shape[0] != x.shape[0]:
        raise ScheduleLabError(f"sigma has {s.shape[0]} entries for a batch of {x.shape[0]}")
    return s


def bcast(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, ..., 1] broadcastable against x."""
    return s.reshape(-1, *([1] * (x.ndim - 1)))


class EDMPrecond(torch.nn.Module):
    """EDM preconditioning (Karras et al. 2022, Table 1) around a raw network F(c_in x, c_noise).

        c_skip = sd^2 / (s^2 + sd^2)       c_out = s sd / sqrt(s^2 + sd^2)
        c_in   = 1 / sqrt(s^2 + sd^2)      c_noise = ln(s) / 4
        D(x, s) = c_skip x + c_out F(c_in x, c_noise)
    """

    def __init__(self, net: torch.nn.Module, sigma_data: float = 0.5):
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sd = self.sigma_data
        s = bcast(sigma, x)
        c_skip = sd ** 2 / (s ** 2 + sd ** 2)
        c_out = s * sd / (s ** 2 + sd ** 2).sqrt()
        c_in = 1 / (s ** 2 + sd ** 2).sqrt()
        c_noise = sigma.log() / 4
        F = self.net((c_in * x).to(self._net_dtype()), c_noise.to(self._net_dtype()))
        return c_skip * x + c_out * F.to(x.dtype)

    def _net_dtype(self):
        for p in self.net.parameters():
            return p.dtype
        return torch.float32

    @staticmethod
    def loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
        """EDM loss weight lambda(sigma) = (s^2 + sd^2) / (s sd)^2."""
        return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2
