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


THREADS_ENV = "SCHEDULE_LAB_THREADS"


def set_threads(n, flag: str = "--threads") -> None:
    """torch.set_num_threads(n) for a CLI's `flag`; None leaves torch's default; n < 1 is an error."""
    if n is None:
        return
    if int(n) != n or n < 1:
        raise ScheduleLabError(f"{flag} must be a whole number >= 1; got {n}")
    torch.set_num_threads(int(n))


def app_threads(environ=None) -> int:
    """Torch CPU threads for the app: $SCHEDULE_LAB_THREADS, default 1.

    Why 1: the app's models are small (a 16x16 UNet, 2-D MLPs), a page's work runs beside the
    optimizer's worker thread and the Streamlit server, and on a 2-core machine with any other load
    torch's 2 OpenMP threads wait on each other: the Images page's 8-image, 40-step reference took
    41.8 s with 2 threads and 1.4 s with 1 (one other process on the machine; bench/app.py)."""
    import os
    raw = (os.environ if environ is None else environ).get(THREADS_ENV, "").strip()
    if not raw:
        return 1
    if not raw.isdigit() or int(raw) < 1:
        raise ScheduleLabError(f"{THREADS_ENV}={raw!r}: give a whole number of CPU threads >= 1 (e.g. 1 or 2), "
                               "or unset it for the default 1")
    return int(raw)
