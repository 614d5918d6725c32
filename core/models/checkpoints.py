"""Safe weight loading: safetensors, or torch.load(weights_only=True); clear errors otherwise."""
from __future__ import annotations

import json
import warnings
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


def rebuild(path, build, what: str, train: str, device="cpu") -> torch.nn.Module:
    """The module `build(header)` makes from `path`'s safetensors header, with `path`'s weights, in
    eval mode without gradients on `device`.  A header/weights mismatch names the keys, what the file
    claims to be (`what`) and the command that re-trains it (`train`)."""
    try:
        m = build(read_metadata(path))
        m.load_state_dict(load_state_dict(path))
    except (RuntimeError, TypeError, KeyError) as e:
        raise ScheduleLabError(f"checkpoint {path} does not match the {what} it describes: "
                               f"{state_dict_mismatch(e)}; re-train it with `{train}`") from None
    return m.to(device).eval().requires_grad_(False)


def _check_file(path) -> Path:
    p = Path(path)
    if p.is_file() and p.stat().st_size == 0:
        raise ScheduleLabError(f"checkpoint {str(p)!r} is empty (0 bytes); re-save the weights or restore the file")
    if not p.is_file():
        raise ScheduleLabError(f"checkpoint {str(p)!r} not found; train it (python -m core train-toy / "
                               "train-images) or put the file there")
    return p


def fit_state_dict(net: torch.nn.Module, sd: dict, strip_prefix=None, strict=True, what="weights",
                   spec="the module") -> dict:
    """The checkpoint's tensors under the module's own key names, checked.

    strip_prefix: removed from every key that starts with it ("network.", "gt.", "model.ema.").  None:
        stripped automatically when unambiguous - every key shares one dotted prefix and, without it,
        the keys are exactly the module's (or, with strict=False, include all of the module's);
        DataParallel's "module." is the common case.
    strict: True (default): the keys must be exactly the module's.  False: checkpoint keys the module
        lacks are ignored and module keys the checkpoint lacks keep their initial values (a warning lists
        both).  A shape mismatch is always an error.
    Errors list every missing, unexpected and mismatched key, and a prefix to strip when there is one."""
    strict = _as_bool(strict, "strict")
    own = net.state_dict()
    raw = sd
    if strip_prefix:
        p = str(strip_prefix)
        new = [k[len(p):] if k.startswith(p) else k for k in raw]
    else:
        new = _auto_strip(list(raw), set(own), strict)
    if len(set(new)) != len(new):
        dup = sorted({k for k in new if new.count(k) > 1})
        raise ScheduleLabError(f"stripping {strip_prefix!r} from the keys of {what} makes them collide: {', '.join(dup)}")
    sd = dict(zip(new, raw.values()))
    original = dict(zip(new, raw))                      # messages name the checkpoint's own keys
    missing = [k for k in own if k not in sd]
    unexpected = [original[k] for k in sd if k not in own]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs module {tuple(own[k].shape)}"
              for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if shapes or (strict and (missing or unexpected)):
        parts = [f"missing keys ({len(missing)}): {', '.join(missing)}" if missing else "",
                 f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}" if unexpected else "",
                 f"shape mismatches ({len(shapes)}): {'; '.join(shapes)}" if shapes else ""]
        hint = []
        pre = _shared_prefix(list(raw))
        if pre and not strip_prefix:
            hint.append(f"every checkpoint key starts with {pre!r}: try --param strip_prefix={pre}")
        if not shapes and strict:
            hint.append("--param strict=false loads the keys that match and leaves the rest")
        if shapes:
            hint.append("check the constructor --param values")
        raise ScheduleLabError(f"{what} do not fit {spec}: " + "; ".join(x for x in parts if x)
                               + (" (" + "; ".join(hint) + ")" if hint else ""))
    if missing or unexpected:
        warnings.warn(f"{what} loaded non-strictly into {spec}: "
                      + "; ".join(x for x in (f"missing keys left at their initial values ({len(missing)}): "
                                              f"{', '.join(missing)}" if missing else "",
                                              f"unexpected keys ignored ({len(unexpected)}): "
                                              f"{', '.join(unexpected)}" if unexpected else "") if x),
                      stacklevel=2)
    return {k: v for k, v in sd.items() if k in own}


def _shared_prefix(keys) -> str:
    """The dotted first segment every key shares ("network."), or ""."""
    heads = {k.split(".", 1)[0] for k in keys if "." in k}
    if len(heads) != 1 or not all("." in k for k in keys):
        return ""
    return heads.pop() + "."


def _auto_strip(keys: list, own: set, strict: bool) -> list:
    """The keys with shared dotted prefixes stripped (one segment at a time) as far as that makes them fit
    (see fit_state_dict); unchanged when no prefix does."""
    if not keys or set(keys) == own:
        return keys
    prefix = ""
    while True:
        pre = _shared_prefix([k[len(prefix):] for k in keys])
        if not pre:
            return keys
        prefix += pre
        stripped = [k[len(prefix):] for k in keys]
        if set(stripped) == own or (not strict and own <= set(stripped)):
            return stripped


def _as_bool(v, what: str) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false", "1", "0", "yes", "no"):
        return v.lower() in ("true", "1", "yes")
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    raise ScheduleLabError(f"{what} must be true or false; got {v!r}")
