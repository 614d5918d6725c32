"""Safe weight loading: safetensors, or torch.load(weights_only=True); clear errors otherwise."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from core.errors import ScheduleLabError

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = ROOT / "checkpoints"


def save_weights(module: torch.nn.Module, path, metadata: dict) -> None:
    """Save a state dict as safetensors with a JSON `config` entry in the header."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(sd, str(path), metadata={"config": json.dumps(metadata)})


def read_metadata(path) -> dict:
    path = _check_file(path)
    try:
        with safe_open(str(path), "pt") as f:
            return json.loads((f.metadata() or {}).get("config", "{}"))
    except (SafetensorError, OSError, ValueError) as e:
        raise ScheduleLabError(f"checkpoint {str(path)!r} is corrupt or not safetensors ({e}); "
                               "re-train it or restore it from git") from None


def load_state_dict(path) -> dict:
    """Tensors from a .safetensors file, or a .pt/.pth/.bin via torch.load(weights_only=True).

    A pickle that needs arbitrary code is refused: convert it to safetensors first."""
    path = _check_file(path)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ScheduleLabError(f"checkpoint {str(path)!r} is corrupt or not safetensors ({e}); "
                                   "re-train it or restore it from git") from None
    if path.stat().st_size == 0:
        raise ScheduleLabError(f"checkpoint {str(path)!r} is empty (0 bytes); re-save the weights or restore the file")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError, RuntimeError, EOFError ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ScheduleLabError(
            f"cannot load {str(path)!r} safely with torch.load(weights_only=True): {first}. "
            "Schedule Lab refuses pickles that run code; save a plain state dict "
            "(torch.save(model.state_dict(), ...)) or a .safetensors file") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ScheduleLabError(f"{str(path)!r} does not hold a state dict of tensors")
    return obj


def state_dict_mismatch(e: Exception, limit: int = 1200) -> str:
    """torch's load_state_dict error in one line, with the key names (missing / unexpected / shape)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]                      # the key names follow torch's header line
    text = " ".join(lines)
    return text if len(text) <= limit else text[:limit] + f" ... ({len(text) - limit} more characters)"


def _check_file(path) -> Path:
    p = Path(path)
    if p.is_file() and p.stat().st_size == 0:
        raise ScheduleLabError(f"checkpoint {str(p)!r} is empty (0 bytes); re-save the weights or restore the file")
    if not p.is_file():
        raise ScheduleLabError(f"checkpoint {str(p)!r} not found; train it (python -m core train-toy / "
                               "train-images) or put the file there")
    return p
