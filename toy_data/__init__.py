"""2D toy distributions with exact truth: every toy is a Gaussian mixture.

`get_toy(name)` returns a `GaussianMixture`; `name` may be a registry name or a path to a
JSON mixture file ({"weights", "means", "covariances"}). Data are scaled to a per-coordinate
standard deviation near 0.5 (EDM's sigma_data).
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import torch

from core.errors import ScheduleLabError, unknown_name
from toy_data.mixture import GaussianMixture

PARAMS = Path(__file__).parent / "params"
SIGMA_DATA = 0.5
FITTED = ("moons", "spiral", "checkerboard", "swissroll", "pinwheel")


def grid8x8(component_std: float = 0.02) -> GaussianMixture:
    """8x8 grid of equal isotropic Gaussians (AYS App. C.2), per-coordinate std 0.5."""
    u = torch.linspace(-1, 1, 8, dtype=torch.float64)
    a = math.sqrt((SIGMA_DATA ** 2 - component_std ** 2) / float((u ** 2).mean()))
    g = torch.cartesian_prod(u, u) * a
    cov = torch.eye(2, dtype=torch.float64).expand(64, 2, 2) * component_std ** 2
    return GaussianMixture(torch.full((64,), 1 / 64, dtype=torch.float64), g, cov, name="grid8x8")


def ring8(component_std: float = 0.03) -> GaussianMixture:
    """8 equal Gaussians on a circle, per-coordinate std 0.5."""
    ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    r = math.sqrt(2 * (SIGMA_DATA ** 2 - component_std ** 2))
    mu = torch.stack([ang.cos(), ang.sin()], 1) * r
    cov = torch.eye(2, dtype=torch.float64).expand(8, 2, 2) * component_std ** 2
    return GaussianMixture(torch.full((8,), 1 / 8, dtype=torch.float64), mu, cov, name="ring8")


def gaussian(c: float = SIGMA_DATA, dim: int = 2) -> GaussianMixture:
    """A single Gaussian N(0, c^2 I_d): the closed-form reference for every method."""
    if c <= 0 or dim < 1:
        raise ScheduleLabError(f"gaussian toy needs c > 0 and dim >= 1; got c={c}, dim={dim}")
    return GaussianMixture([1.0], torch.zeros(1, dim, dtype=torch.float64),
                           torch.eye(dim, dtype=torch.float64).unsqueeze(0) * c ** 2, name="gaussian")


def _fitted(name: str) -> GaussianMixture:
    path = PARAMS / f"{name}.json"
    if not path.is_file():
        raise ScheduleLabError(f"frozen parameters {path} are missing; regenerate them with "
                               "`python -m toy_data.fit`")
    return GaussianMixture.from_dict(json.loads(path.read_text()), name=name)


_BUILTIN = {"grid8x8": grid8x8, "ring8": ring8, "gaussian": gaussian}
TOYS = ("grid8x8", "ring8", "gaussian") + FITTED


def toy_names() -> tuple:
    return TOYS


@lru_cache(maxsize=32)
def get_toy(name: str) -> GaussianMixture:
    """A toy by registry name, or a mixture JSON file path (validated)."""
    if name in _BUILTIN:
        return _BUILTIN[name]()
    if name in FITTED:
        return _fitted(name)
    if name.endswith(".json") or Path(name).is_file():
        return GaussianMixture.from_json(name)
    raise unknown_name("toy", name, TOYS + ("FILE.json",))
