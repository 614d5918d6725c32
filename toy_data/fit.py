"""Fit the shape toys as Gaussian mixtures once, and freeze the parameters in params/.

    python -m toy_data.fit [--components 24] [--samples 40000] [--seed 0]

Dense samples of each shape are drawn (scikit-learn generators where they exist), scaled
to per-coordinate std 0.5, and fitted with `sklearn.mixture.GaussianMixture` (full
covariances). The frozen mixture *is* the toy: its density, denoiser and score are exact.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
from sklearn.datasets import make_moons, make_swiss_roll
from sklearn.mixture import GaussianMixture as SkGMM

from toy_data import FITTED, PARAMS, SIGMA_DATA


def _spiral(n, rng):
    t = np.sqrt(rng.uniform(0, 1, n)) * 3 * np.pi
    x = np.stack([t * np.cos(t), t * np.sin(t)], 1)
    return x + rng.normal(0, 0.25, x.shape)


def _checkerboard(n, rng):
    x1 = rng.uniform(-2, 2, n)
    x2 = rng.uniform(0, 1, n) + rng.integers(0, 2, n) * 2 - 2 + (np.floor(x1) % 2)
    return np.stack([x1, x2], 1)


def _pinwheel(n, rng, arms=5, rate=0.25):
    k = rng.integers(0, arms, n)
    f = rng.normal(0, 1, (n, 2)) * np.array([0.3, 0.05]) + np.array([1.0, 0.0])
    ang = 2 * np.pi * k / arms + rate * np.exp(f[:, 0])
    c, s = np.cos(ang), np.sin(ang)
    return np.stack([c * f[:, 0] - s * f[:, 1], s * f[:, 0] + c * f[:, 1]], 1)


def shape_samples(name: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if name == "moons":
        x = make_moons(n, noise=0.06, random_state=seed)[0]
    elif name == "swissroll":
        x = make_swiss_roll(n, noise=0.4, random_state=seed)[0][:, [0, 2]]
    elif name == "spiral":
        x = _spiral(n, rng)
    elif name == "checkerboard":
        x = _checkerboard(n, rng)
    elif name == "pinwheel":
        x = _pinwheel(n, rng)
    else:
        raise ValueError(name)
    x = x - x.mean(0)
    return x * (SIGMA_DATA / np.sqrt((x ** 2).mean()))


def fit(name: str, components: int, n: int, seed: int) -> dict:
    x = shape_samples(name, n, seed)
    g = SkGMM(components, covariance_type="full", reg_covar=1e-5, random_state=seed, max_iter=500).fit(x)
    w = g.weights_ / g.weights_.sum()
    return {"name": name, "source": f"sklearn GaussianMixture(K={components}, full) fitted to "
            f"{n} samples, seed {seed}, scaled to std {SIGMA_DATA}",
            "weights": w.tolist(), "means": g.means_.tolist(), "covariances": g.covariances_.tolist()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--components", type=int, default=24)
    ap.add_argument("--samples", type=int, default=40000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    PARAMS.mkdir(exist_ok=True)
    for name in FITTED:
        (PARAMS / f"{name}.json").write_text(json.dumps(fit(name, a.components, a.samples, a.seed)))
        print("fitted", name)


if __name__ == "__main__":
    main()
