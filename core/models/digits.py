"""The shipped digits model: an EDM-preconditioned UNet (`core.models.unet`) as a Denoiser.

checkpoints/digits/unet.safetensors holds the EMA weights under `precond.net.*` and a JSON
config in its header (`net`: UNet kwargs, `sigma_data`, `sigma_min`, `sigma_max`, `size`,
`training`: steps, seconds, loss curve). Trained by `python -m core train-images digits`.
"""
from __future__ import annotations

from pathlib import Path

from core.errors import ScheduleLabError
from core.models.base import Denoiser, EDMPrecond
from core.models.checkpoints import CHECKPOINTS, read_metadata, rebuild
from core.models.unet import UNet

DIGITS_DIR = CHECKPOINTS / "digits"
DIGITS_CHECKPOINT = DIGITS_DIR / "unet.safetensors"
CLASSIFIER_CHECKPOINT = DIGITS_DIR / "classifier.safetensors"


class UNetDenoiser(Denoiser):
    """D(x, sigma) = EDMPrecond(UNet)(x, sigma) on [B, C, H, W] images in [-1, 1]."""

    def __init__(self, net: UNet, size: int = 16, sigma_data: float = 0.5, name: str = "digits",
                 sigma_min: float = 0.002, sigma_max: float = 80.0):
        super().__init__()
        self.precond = EDMPrecond(net, sigma_data)
        self.sigma_data, self.sigma_min, self.sigma_max = float(sigma_data), float(sigma_min), float(sigma_max)
        self.name = name
        self.event_shape = (net.config["in_ch"], int(size), int(size))

    @property
    def net(self) -> UNet:
        return self.precond.net

    def denoise(self, x, sigma):
        return self.precond(x, sigma)

    def config(self) -> dict:
        """What `load_unet_checkpoint` needs to rebuild this model."""
        return {"net": self.net.config, "size": self.event_shape[-1], "sigma_data": self.sigma_data,
                "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "name": self.name}


def load_unet_checkpoint(path, device="cpu", name: str | None = None) -> UNetDenoiser:
    """Rebuild a UNetDenoiser from a safetensors file written by `core.train.images`."""
    path = Path(path)
    cfg = read_metadata(path)
    if "net" not in cfg:
        raise ScheduleLabError(f"{path} has no UNet config in its header; it was not written by "
                               "`python -m core train-images`")
    return rebuild(path, lambda c: UNetDenoiser(
        UNet(**c["net"]), size=c.get("size", 16), sigma_data=c.get("sigma_data", 0.5),
        name=name or c.get("name", path.stem), sigma_min=c.get("sigma_min", 0.002),
        sigma_max=c.get("sigma_max", 80.0)), "UNet", "python -m core train-images digits", device)


def load_digits_model(device="cpu") -> UNetDenoiser:
    """The shipped digits UNet (checkpoints/digits/unet.safetensors) on `device`."""
    if not DIGITS_CHECKPOINT.is_file():
        raise ScheduleLabError(f"the digits checkpoint is missing at {DIGITS_CHECKPOINT}; restore it "
                               "from git or train it with `python -m core train-images digits`")
    return load_unet_checkpoint(DIGITS_CHECKPOINT, device, name="digits")
