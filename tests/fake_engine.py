"""Stand-in for the image-model registry (core.models.registry), written to its contract
(model_names, load_model, model_data).  The Images page tests install it with
`install(monkeypatch, "core.models.registry")`: its model is an exact Gaussian denoiser, so the
tests can recompute every number they assert on, including closed-form score-optimal schedules.
The digits-model test uses the real registry."""
from __future__ import annotations

import sys
import types

import torch

from core.models.base import Denoiser


# ---------------------------------------------------------------- an image model
class GaussianImages(Denoiser):
    """Exact denoiser of N(0, c^2 I) images [1, 8, 8]: D(x, s) = c^2 / (c^2 + s^2) x."""

    def __init__(self, c: float = 0.5):
        super().__init__()
        self.c, self.name, self.event_shape = c, "gauss8", (1, 8, 8)
        self.sigma_min, self.sigma_max, self.sigma_data = 0.002, 80.0, c
        self.register_buffer("_anchor", torch.zeros(()))

    def denoise(self, x, sigma):
        s2 = sigma.reshape(-1, 1, 1, 1) ** 2
        return self.c ** 2 / (self.c ** 2 + s2) * x


def _module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    return m


def _gauss_data(name, model, data=None, **kw):
    """Training images of the Gaussian model: 4000 draws of N(0, c^2 I) (the registry's model_data)."""
    from core.models.user_model import ImageData
    x = model.c * torch.randn(4000, *model.event_shape, generator=torch.Generator().manual_seed(0))
    return ImageData(x, "gauss8 training images (4000)", False)


MODULES = {
    "core.models.registry": lambda: _module("core.models.registry", model_names=lambda: ["gauss8"],
                                            load_model=lambda name, device="cpu": GaussianImages().to(device),
                                            model_data=_gauss_data, model_entry=lambda name: None,
                                            shipped_schedule=lambda name, steps: None),
}


def install(monkeypatch, *names):
    """Put the named fake modules into sys.modules for one test (and clear the app's caches)."""
    import streamlit as st
    st.cache_data.clear()
    st.cache_resource.clear()
    for n in names:
        monkeypatch.setitem(sys.modules, n, MODULES[n]())
