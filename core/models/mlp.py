"""A small MLP denoiser for 2D toys with EDM preconditioning (Karras et al. 2022, Table 1)."""
from __future__ import annotations

import math

import torch
from torch import nn

from core.models.base import Denoiser, EDMPrecond


class FourierEmbedding(nn.Module):
    """c_noise -> [cos(2 pi f c), sin(2 pi f c)] with fixed random frequencies f (EDM's FourierFeatures)."""

    def __init__(self, dim: int = 32, scale: float = 4.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(dim // 2, generator=torch.Generator().manual_seed(0)) * scale)

    def forward(self, c):
        a = 2 * math.pi * c.reshape(-1, 1) * self.freqs
        return torch.cat([a.cos(), a.sin()], dim=1)


class ToyMLP(nn.Module):
    """F(c_in x, c_noise): [B, d] x [B] -> [B, d]; residual SiLU MLP with a noise embedding.

    xfeat > 0 adds random Fourier features of the input, [cos(2 pi x B), sin(2 pi x B)] with
    B ~ N(0, xscale^2) [d, xfeat / 2] fixed (Tancik et al. 2020), so the MLP can resolve
    narrow mixture components (grid8x8: std 0.02) at small sigma."""

    def __init__(self, dim: int = 2, width: int = 256, depth: int = 4, emb: int = 32,
                 xfeat: int = 0, xscale: float = 1.0):
        super().__init__()
        self.embed = FourierEmbedding(emb)
        self.register_buffer("xfreqs", xscale * torch.randn(
            dim, xfeat // 2, generator=torch.Generator().manual_seed(1)) if xfeat else None)
        self.inp = nn.Linear(dim + 2 * (xfeat // 2) + emb, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(width, width)) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(width, dim))
        self.config = {"dim": dim, "width": width, "depth": depth, "emb": emb}
        if xfeat:
            self.config.update(xfeat=xfeat, xscale=xscale)

    def forward(self, x, c_noise):
        feats = [x, self.embed(c_noise)]
        if self.xfreqs is not None:
            a = 2 * math.pi * x @ self.xfreqs
            feats += [a.cos(), a.sin()]
        h = self.inp(torch.cat(feats, dim=1))
        for b in self.blocks:
            h = h + b(h)
        return self.out(h)


class MLPDenoiser(Denoiser):
    """EDM-preconditioned ToyMLP as a Denoiser (float32 network, any input dtype)."""

    def __init__(self, net: ToyMLP, sigma_data: float = 0.5, name: str = "mlp",
                 sigma_min: float = 0.002, sigma_max: float = 80.0):
        super().__init__()
        self.precond = EDMPrecond(net, sigma_data)
        self.sigma_data, self.sigma_min, self.sigma_max = sigma_data, sigma_min, sigma_max
        self.name = name
        self.event_shape = (net.config["dim"],)

    @property
    def net(self) -> ToyMLP:
        return self.precond.net

    def denoise(self, x, sigma):
        return self.precond(x, sigma)
