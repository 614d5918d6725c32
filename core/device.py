"""The one device setting that flows from the UI / CLI to every tensor."""
import torch


def default_device() -> torch.device:
    """`cuda` when a GPU is present, else `cpu`."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device=None) -> torch.device:
    """`None` or "auto" -> default_device(); anything else -> torch.device(device)."""
    if device is None or device == "auto":
        return default_device()
    return torch.device(device)
