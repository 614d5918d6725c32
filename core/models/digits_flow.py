"""The shipped `digits-flow` model: a class-conditional rectified-flow UNet as an EDM denoiser.

Rectified flow (Liu et al. 2023; Lipman et al. 2023; SD3, Esser et al. 2024):

    x_t = (1 - t) x0 + t eps,   the network predicts the velocity u = eps - x0.

In EDM form (methods.md sections 1 and 9): sigma = t / (1 - t), x = x_t / (1 - t), so

    t = sigma / (1 + sigma),   x_t = x / (1 + sigma),   D(x, sigma) = x_t - t u(x_t, t, c).

The network is the digits UNet (`core.models.unet.UNet`, c_noise = t) with a class embedding
(10 digits + the null label 10), trained with label dropout so that classifier-free guidance
(`core.models.guidance`) works. checkpoints/digits-flow/unet.safetensors holds the EMA weights
under `net.*` and a JSON config (`net`, `size`, `t_min`, `t_max`, `training`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from core.errors import ScheduleLabError
from core.models.base import bcast
from core.models.checkpoints import CHECKPOINTS, read_metadata, rebuild
from core.models.guidance import ConditionalDenoiser
from core.models.unet import UNet
from core.processes import FlowMatching

FLOW_DIR = CHECKPOINTS / "digits-flow"
FLOW_CHECKPOINT = FLOW_DIR / "unet.safetensors"


class FlowUNetDenoiser(ConditionalDenoiser):
    """D(x, sigma | label) from a velocity UNet u(x_t, t, label) on [B, 1, H, W] images in [-1, 1].

    Valid range t in [t_min, t_max] (sigma = t / (1 - t)): the flow model itself is defined up
    to t = 1 (pure noise, sigma = inf); EDM-form samplers start at the finite sigma_max.
    """

    def __init__(self, net: UNet, size: int = 16, name: str = "digits-flow", t_min: float = 1e-3,
                 t_max: float = 0.999):
        super().__init__()
        if not net.num_classes:
            raise ScheduleLabError("FlowUNetDenoiser needs a class-conditional UNet (num_classes > 0)")
        self.net = net
        self.num_classes = net.num_classes
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.sigma_min, self.sigma_max = self.t_min / (1 - self.t_min), self.t_max / (1 - self.t_max)
        self.process = FlowMatching(self.t_min, self.t_max)   # DM-NonUniform's uniform_t start is uniform in flow t
        self.sigma_data = 0.5
        self.name = name
        self.event_shape = (net.config["in_ch"], int(size), int(size))

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """u(x_t, t, labels): x_t [B, C, H, W], t [B] in [0, 1], labels [B] int64 or None (null)."""
        if labels is None:
            labels = torch.full((x_t.shape[0],), self.num_classes, dtype=torch.long, device=x_t.device)
        return self.net(x_t, t, labels)

    def denoise_cond(self, x, sigma, cond):
        t = sigma / (1 + sigma)
        x_t = x / bcast(1 + sigma, x)
        return x_t - bcast(t, x) * self.velocity(x_t, t, cond)

    def denoise_pair(self, x, sigma, cond):
        """Both guidance branches in one batched network call (2 NFE, one forward of 2B images)."""
        null = torch.full_like(cond, self.num_classes)
        d = self.denoise_cond(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([cond, null]))
        return d.chunk(2)

    def config(self) -> dict:
        return {"net": self.net.config, "size": self.event_shape[-1], "t_min": self.t_min,
                "t_max": self.t_max, "name": self.name, "kind": "flow-velocity"}


def load_flow_checkpoint(path, device="cpu", name: str | None = None) -> FlowUNetDenoiser:
    """Rebuild a FlowUNetDenoiser from a safetensors file written by `train-images digits-flow`."""
    path = Path(path)
    cfg = read_metadata(path)
    if cfg.get("kind") != "flow-velocity" or "net" not in cfg:
        raise ScheduleLabError(f"{path} is not a flow checkpoint written by `python -m core train-images "
                               "digits-flow`")
    return rebuild(path, lambda c: FlowUNetDenoiser(
        UNet(**c["net"]), size=c.get("size", 16), name=name or c.get("name", path.stem),
        t_min=c.get("t_min", 1e-3), t_max=c.get("t_max", 0.999)),
        "flow UNet", "python -m core train-images digits-flow", device)


def load_digits_flow_model(device="cpu") -> FlowUNetDenoiser:
    """The shipped digits-flow model (checkpoints/digits-flow/unet.safetensors) on `device`."""
    if not FLOW_CHECKPOINT.is_file():
        raise ScheduleLabError(f"the digits-flow checkpoint is missing at {FLOW_CHECKPOINT}; restore it from "
                               "git or train it with `python -m core train-images digits-flow`")
    return load_flow_checkpoint(FLOW_CHECKPOINT, device, name="digits-flow")
