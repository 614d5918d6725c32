"""Labelled toys: a Gaussian mixture whose components carry class labels (methods.md section 9).

    p(x) = sum_k w_k N(x; mu_k, S_k),   p(x | c) = sum_{k: label_k = c} w_k N(x; mu_k, S_k) / pi_c,
    pi_c = sum_{k: label_k = c} w_k.

Both the unconditional and every conditional denoiser E[x0 | x, c] are exact at every sigma
(the class's components with their weights renormalised), so a guided denoiser
D_w = D_uncond + w (D_cond - D_uncond) built on them is exact too, and the discretization error
of a schedule under guidance is measurable against a many-step solution of the guided ODE.

The guided ODE's endpoint is not p(x) p(c | x)^w (normalised) in general: its score at each
sigma is that of p_sigma(x) p_sigma(c | x)^w, but those are not the noised versions of one
density (Chidambaram et al. 2024). Measure guided sampling against the many-step solution, not
against a sharpened target.
"""
from __future__ import annotations

import torch

from core.errors import ScheduleLabError, unknown_name
from toy_data.mixture import GaussianMixture


class LabelledMixture:
    """A GaussianMixture with an integer class label per component.

    Args:
        mixture: the (unconditional) GaussianMixture.
        labels: [K] ints in 0..C-1, every class used at least once.
    """

    def __init__(self, mixture: GaussianMixture, labels, name: str | None = None):
        lab = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if lab.numel() != mixture.n_components:
            raise ScheduleLabError(f"{lab.numel()} labels for {mixture.n_components} components; give one per component")
        if lab.min() < 0 or set(lab.tolist()) != set(range(int(lab.max()) + 1)):
            raise ScheduleLabError("labels must be 0..C-1 with every class used by some component")
        self.mixture, self.labels = mixture, lab
        self.name = name or f"{mixture.name}-labelled"
        self.num_classes = int(lab.max()) + 1
        onehot = torch.nn.functional.one_hot(lab, self.num_classes).T.to(torch.float64)   # [C, K]
        self.class_weights = onehot @ mixture.weights                                   # pi_c
        # per class: log w_k / pi_c for its components, -inf elsewhere
        self.class_log_weights = torch.where(onehot > 0, mixture.log_weights - self.class_weights.log()[:, None],
                                             torch.tensor(-float("inf"), dtype=torch.float64))

    @property
    def dim(self) -> int:
        return self.mixture.dim

    def conditional(self, c: int) -> GaussianMixture:
        """p(x | c) as its own GaussianMixture."""
        self._check(torch.as_tensor([c]))
        keep = self.labels == c
        m = self.mixture
        return GaussianMixture(m.weights[keep] / m.weights[keep].sum(), m.means[keep], m.covariances[keep],
                               name=f"{self.name}|{c}")

    def _lw(self, labels, batch: int):
        if labels is None:
            return None
        lab = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        self._check(lab)
        if lab.numel() == 1:
            lab = lab.expand(batch)
        return self.class_log_weights.to(self.mixture.device)[lab.to(self.mixture.device)]

    def _check(self, lab):
        if lab.numel() and (lab.min() < 0 or lab.max() >= self.num_classes):
            raise ScheduleLabError(f"label out of range; {self.name} has classes 0..{self.num_classes - 1}")

    def denoise(self, x: torch.Tensor, sigma, labels=None) -> torch.Tensor:
        """E[x0 | x, c] [B, d] float64; labels: None (unconditional), an int or [B] ints."""
        return self.mixture.denoise(x, sigma, self._lw(labels, x.shape[0]))

    def log_prob(self, x: torch.Tensor, sigma=0.0, labels=None) -> torch.Tensor:
        """log p_sigma(x | c) (labels None: log p_sigma(x)), [B] float64."""
        return self.mixture.log_prob(x, sigma, self._lw(labels, x.shape[0]))

    def sample(self, n: int, generator: torch.Generator | None = None, labels=None) -> torch.Tensor:
        """n samples [n, d] of p(x) (labels None) or of p(x | labels[i % len]) for sample i."""
        if labels is None:
            return self.mixture.sample(n, generator)
        lab = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        self._check(lab)
        lab = lab[torch.arange(n) % lab.numel()]
        out = torch.empty(n, self.dim, dtype=torch.float64, device=self.mixture.device)
        for c in lab.unique().tolist():
            idx = torch.nonzero(lab == c).flatten()
            out[idx] = self.conditional(c).to(self.mixture.device).sample(len(idx), generator)
        return out


def grid_quadrant_labels(n_side: int = 8) -> list:
    """grid8x8: class = quadrant (0: x<0,y<0; 1: x<0,y>0; 2: x>0,y<0; 3: x>0,y>0), 16 components each."""
    h = n_side // 2
    return [2 * (i >= h) + (j >= h) for i in range(n_side) for j in range(n_side)]


LABELLED_TOYS = {"grid8x8": grid_quadrant_labels, "ring8": lambda: list(range(8))}


def get_labelled_toy(name: str) -> LabelledMixture:
    """grid8x8 (4 classes: quadrants) or ring8 (8 classes: one per component)."""
    from toy_data import get_toy
    if name not in LABELLED_TOYS:
        raise unknown_name("labelled toy", name, tuple(LABELLED_TOYS))
    return LabelledMixture(get_toy(name), LABELLED_TOYS[name](), name=name)
