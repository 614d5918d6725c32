"""Images as files: tensors in the data range [-1, 1] -> uint8 -> a PNG grid (Pillow).

The engine never draws; this only converts and writes pixels.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from core.errors import ScheduleLabError

NORMALISE = ("clamp", "minmax")


def to_uint8(x: torch.Tensor, normalise: str = "clamp", lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """[n, C, H, W] (or [C, H, W]) floats -> uint8 array [n, H, W, C].

    normalise="clamp": map the data range [lo, hi] to [0, 255], clamping outside values;
    "minmax": stretch each image's own min..max to 0..255 (for models whose samples drift
    in brightness). NaN / inf pixels raise a ScheduleLabError (the sampler diverged)."""
    if normalise not in NORMALISE:
        raise ScheduleLabError(f"unknown normalisation {normalise!r}; choose one of {', '.join(NORMALISE)}")
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ScheduleLabError(f"images must be [n, C, H, W] or [C, H, W]; got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ScheduleLabError("images contain NaN or inf: the sampler diverged (check the schedule and model)")
    if normalise == "clamp":
        u = (x - lo) / (hi - lo)
    else:
        mn = x.amin(dim=(1, 2, 3), keepdim=True)
        mx = x.amax(dim=(1, 2, 3), keepdim=True)
        u = (x - mn) / (mx - mn).clamp_min(1e-12)
    u = (u.clamp(0, 1) * 255).round().to(torch.uint8)
    return u.permute(0, 2, 3, 1).numpy()


def grid(x: torch.Tensor, nrow: int | None = None, pad: int = 1, scale: int = 1,
         normalise: str = "clamp", lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """Tile [n, C, H, W] into one uint8 image [rows*(H+pad)+pad, cols*(W+pad)+pad, C]
    (nrow = images per row, default ceil(sqrt(n)); padding is mid-grey; `scale` repeats pixels;
    [lo, hi] is the value range mapped to black .. white by normalise="clamp")."""
    u = to_uint8(x, normalise, lo, hi)
    n, h, w, c = u.shape
    cols = int(nrow or math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 128, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + k * (w + pad):pad + k * (w + pad) + w] = u[i]
    if scale > 1:
        out = out.repeat(scale, axis=0).repeat(scale, axis=1)
    return out


def grid_png(x, nrow: int | None = None, scale: int = 4, lo: float = -1.0, hi: float = 1.0,
             normalise: str = "clamp") -> bytes:
    """The images [n, C, H, W] (tensor or array) as one PNG grid, in memory (a download's bytes)."""
    import io

    from PIL import Image
    g = grid(torch.as_tensor(np.asarray(x)), nrow=nrow, scale=scale, normalise=normalise, lo=lo, hi=hi)
    buf = io.BytesIO()
    Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g).save(buf, format="PNG")
    return buf.getvalue()


def save_grid(x: torch.Tensor, path, nrow: int | None = None, scale: int = 4,
              normalise: str = "clamp") -> Path:
    """Write the images [n, C, H, W] as one PNG grid; returns the path."""
    from PIL import Image
    g = grid(x, nrow=nrow, scale=scale, normalise=normalise)
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise ScheduleLabError(f"folder {str(path.parent)!r} does not exist; create it first")
    img = Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g)
    img.save(path, format="PNG")
    return path
