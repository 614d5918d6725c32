"""Train `digits-flow`: a class-conditional rectified-flow UNet (SD3's recipe, Esser et al. 2024).

    x_t = (1 - t) x0 + t eps,   loss = || u(x_t, t, c) - (eps - x0) ||^2     (conditional flow matching)

- t density: SD3's logit-normal, logit(t) ~ N(logit_mean, logit_std^2) (their section 3.1, "lognorm(0, 1)"),
  mixed with a fraction `uniform_frac` of uniform t so that the ends t -> 0 and t -> 1, where
  few-step samplers take their first and last steps, are trained too (logit-normal(0, 1) alone puts
  5e-5 of its mass above t = 0.98).
- label dropout: a fraction `label_dropout` of the labels is replaced by the null label (class
  `num_classes`), which trains the unconditional model of classifier-free guidance (Ho & Salimans 2022).
- optimiser, EMA, clipping, checkpoints: `core.train.images.fit` (the digits UNet's loop).
Entry point: `python -m core train-images digits-flow [--steps K | --minutes M] [--seed 0]`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from core.errors import ScheduleLabError
from core.models.digits_flow import FLOW_CHECKPOINT, FlowUNetDenoiser
from core.models.unet import UNet
from core.train.images import fit, random_shift

FLOW_DEFAULTS = {"channels": (32, 64, 128), "blocks": 1, "emb": 128, "attention": True, "dropout": 0.0,
                 "batch": 128, "lr": 1e-3, "warmup": 200, "ema": 0.999, "steps": 4000, "shift_prob": 0.0,
                 "label_dropout": 0.2, "logit_mean": 0.0, "logit_std": 1.0, "uniform_frac": 0.2}


def sample_t(b: int, cfg: dict, generator: torch.Generator) -> torch.Tensor:
    """[b] flow times: logit-normal(logit_mean, logit_std) with a `uniform_frac` share of U(0, 1)."""
    t = torch.sigmoid(cfg["logit_mean"] + cfg["logit_std"] * torch.randn(b, generator=generator))
    uni = torch.rand(b, generator=generator)
    pick = torch.rand(b, generator=generator) < cfg["uniform_frac"]
    return torch.where(pick, uni, t)


def flow_loss(model: FlowUNetDenoiser, x0: torch.Tensor, labels: torch.Tensor, cfg: dict,
              generator: torch.Generator) -> torch.Tensor:
    """Mean conditional flow-matching loss per pixel over x0 [B, C, H, W] with labels [B]."""
    b = x0.shape[0]
    t = sample_t(b, cfg, generator).to(x0)
    eps = torch.randn(x0.shape, generator=generator).to(x0)
    drop = torch.rand(b, generator=generator) < cfg["label_dropout"]
    labels = torch.where(drop, torch.full_like(labels, model.num_classes), labels)
    tb = t.reshape(-1, 1, 1, 1)
    x_t = (1 - tb) * x0 + tb * eps
    return (model.velocity(x_t, t, labels) - (eps - x0)).square().mean()


def train_digits_flow(out: str | Path = FLOW_CHECKPOINT, steps: int | None = None,
                      minutes: float | None = None, seed: int = 0, size: int = 16,
                      progress: Callable[[dict], None] | None = None, log_every: int = 100,
                      save_every_s: float = 300.0, **overrides) -> dict:
    """Train digits-flow on the digits' train split; write EMA weights + config to `out`.

    steps (default 4000) / minutes: as `core.train.images.train_digits`; overrides: keys of FLOW_DEFAULTS."""
    from core.data.digits import load_digits_split
    bad = set(overrides) - set(FLOW_DEFAULTS)
    if bad:
        raise ScheduleLabError(f"unknown training option {sorted(bad)[0]!r}; options: {', '.join(FLOW_DEFAULTS)}")
    cfg = {**FLOW_DEFAULTS, **overrides}
    if steps is None and minutes is None:
        steps = cfg["steps"]
    if (steps is not None and steps < 1) or (minutes is not None and minutes <= 0):
        raise ScheduleLabError(f"--steps must be >= 1 and --minutes > 0; got {steps}, {minutes}")
    if not 0 <= cfg["label_dropout"] < 1 or not 0 <= cfg["uniform_frac"] <= 1:
        raise ScheduleLabError("label_dropout must be in [0, 1) and uniform_frac in [0, 1]")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    d = load_digits_split(size)
    net = UNet(in_ch=1, channels=cfg["channels"], blocks=cfg["blocks"], emb=cfg["emb"],
               attention=cfg["attention"], dropout=cfg["dropout"], num_classes=10)
    model = FlowUNetDenoiser(net, size=size)

    def batch_loss(step):
        idx = torch.randint(0, d.train_x.shape[0], (cfg["batch"],), generator=g)
        x0 = random_shift(d.train_x[idx], cfg["shift_prob"], g)
        return flow_loss(model, x0, d.train_y[idx], cfg, g)
    return fit(model, batch_loss, Path(out), cfg, steps, minutes, seed, progress, log_every, save_every_s)
