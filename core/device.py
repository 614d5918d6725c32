"""The one device setting that flows from the UI / CLI to every tensor."""
import torch

from core.errors import ScheduleLabError


def default_device() -> torch.device:
    """`cuda` when a GPU is present, else `cpu`."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device=None) -> torch.device:
    """`None` or "auto" -> default_device(); anything else -> torch.device(device), checked to exist
    here (a bad name or a missing GPU is a ScheduleLabError naming the devices that are available)."""
    if device is None or device == "auto":
        return default_device()
    if isinstance(device, torch.device):
        dev = device
    else:
        try:
            dev = torch.device(str(device))
        except (RuntimeError, ValueError, TypeError):
            raise ScheduleLabError(f"unknown device {device!r}; use {available_text()}") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ScheduleLabError(f"device {device!r} needs CUDA, which this machine does not have; "
                                   f"use {available_text()}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ScheduleLabError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA "
                                   f"device(s) (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
        return dev
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ScheduleLabError(f"device {device!r} (Apple MPS) is not available here; use {available_text()}")
        return dev
    raise ScheduleLabError(f"device {device!r} is not supported; use {available_text()}")


def available_text() -> str:
    """'cpu', 'cpu or cuda (2 GPUs)', ... for messages."""
    opts = ["cpu", "auto"]
    if torch.cuda.is_available():
        opts.append(f"cuda ({torch.cuda.device_count()} GPU(s))")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        opts.append("mps")
    return " or ".join(opts)
