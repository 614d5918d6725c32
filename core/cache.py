"""The on-disk result caches (.cache/schedule_lab/): keys, safe writes, listing and clearing.

Two caches hold results that are expensive to recompute:
    reference/  many-step reference samples of an image model (core.metrics.images.reference_samples)
    samples/    an image model's own many-step samples, used as data when none is given
                (core.models.user_model.image_sampler_from)

A key covers everything that defines the result: the weights, the wrapper's options (process and
its noise table, parametrization, time input, input scaling, data range, sigma range, event
shape), CODE_VERSION, and the caller's solver / steps / n / seed. Nothing non-finite is ever
written, and a cached file that is unreadable or non-finite is deleted and recomputed.

    python -m core cache list         what is cached, with sizes
    python -m core cache clear        delete it all (or --kind reference | samples)
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from core.errors import ScheduleLabError

ROOT = Path(__file__).resolve().parents[1]
CACHE_ROOT = ROOT / ".cache" / "schedule_lab"
KINDS = ("reference", "samples")
# bump when a change to the solvers, schedules or wrappers changes what a cached result holds
CODE_VERSION = 2


def _plain(v, depth: int = 0):
    """A JSON-able stand-in for one attribute: arrays and tensors by content hash, objects by their
    own plain attributes (a noise process and its table), callables by qualified name."""
    if depth > 4:
        return "object:" + type(v).__qualname__
    if isinstance(v, (str, int, bool)) or v is None:
        return v
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x, depth + 1) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x, depth + 1) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
    if isinstance(v, (np.ndarray, torch.Tensor)):
        a = torch.as_tensor(v).detach().to("cpu", torch.float64).contiguous().numpy()
        return "array:" + str(a.shape) + ":" + hashlib.sha256(a.tobytes()).hexdigest()[:16]
    if isinstance(v, torch.nn.Module):
        return "module:" + type(v).__qualname__
    if inspect.isroutine(v) or isinstance(v, type):
        return "callable:" + getattr(v, "__module__", "") + "." + getattr(v, "__qualname__", "?")
    if hasattr(v, "__dict__"):
        return {"type": type(v).__qualname__,
                **{k: _plain(x, depth + 1) for k, x in sorted(vars(v).items()) if not k.startswith("_")}}
    return "object:" + type(v).__qualname__


def model_fingerprint(model) -> str:
    """SHA-256 (16 hex) of a Denoiser's weights AND everything its wrapper adds: describe() without
    device / dtype, its public plain attributes (process, parametrization, time scale ...)."""
    h = hashlib.sha256(str(CODE_VERSION).encode())
    info = {k: v for k, v in model.describe().items() if k not in ("device", "dtype")} \
        if hasattr(model, "describe") else {}
    attrs = {k: _plain(v) for k, v in sorted(vars(model).items())
             if not k.startswith("_") and k != "training"}
    h.update(json.dumps({"type": type(model).__qualname__, "describe": info, "attrs": attrs},
                        sort_keys=True, default=str).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        t = v.detach().cpu().contiguous()
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def cache_dir(kind: str, root=None) -> Path:
    if kind not in KINDS:
        raise ScheduleLabError(f"unknown cache kind {kind!r}; choose one of: {', '.join(KINDS)}")
    return Path(root or CACHE_ROOT) / kind


def require_finite(x: torch.Tensor, what: str) -> torch.Tensor:
    """x unchanged, or ScheduleLabError saying how many entries of `what` are NaN / inf."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        rows = int(bad.reshape(bad.shape[0], -1).any(1).sum()) if x.ndim else 1
        raise ScheduleLabError(f"{what}: {rows} of {x.shape[0] if x.ndim else 1} samples contain NaN or inf; "
                               "the model is broken for these inputs (nothing was cached)")
    return x


def entries(root=None) -> list:
    """Every cached file: {kind, name, bytes, modified (ISO time)}."""
    out = []
    for kind in KINDS:
        d = cache_dir(kind, root)
        for f in sorted(d.glob("*")) if d.is_dir() else []:
            if f.is_file():
                st = f.stat()
                out.append({"kind": kind, "name": f.name, "path": str(f), "bytes": st.st_size,
                            "modified": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(st.st_mtime))})
    return out


def clear(kind: str | None = None, root=None) -> int:
    """Delete the cached files of one kind (or all); returns how many were removed."""
    n = 0
    for k in (KINDS if kind in (None, "all") else (kind,)):
        d = cache_dir(k, root)
        if d.is_dir():
            n += sum(1 for f in d.glob("*") if f.is_file())
            shutil.rmtree(d)
    return n


def human_bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def key_number(v: float) -> str:
    """A float as a file-name-safe exact token (repr, '.' kept)."""
    if not math.isfinite(float(v)):
        raise ScheduleLabError(f"a cache key needs finite numbers; got {v}")
    return repr(float(v)).replace("-", "m")
