"""A user's own network and data: `module.py:ClassName` + weights -> Denoiser, and image data for
the optimizers (a PNG folder, an .npz, or the model's own many-step samples, cached on disk).

The conversion itself lives in `core.models.wrap`; this module reads files and command-line
`--param key=value` pairs.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.errors import ScheduleLabError
from core.models.checkpoints import state_dict_mismatch
from core.models.wrap import WrappedDenoiser, wrap_module

# ---- user modules: "module.py:ClassName" + a weights file ------------------------------------

WRAP_KEYS = ("parametrization", "process", "time_input", "time_scale", "input_scaling", "event_shape",
             "shape", "sigma_data", "data_range", "display", "name", "sigma_min", "sigma_max",
             "num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "beta_min", "beta_max",
             "t_eps", "alphas_cumprod", "betas")


def import_class(spec: str):
    """"path/to/module.py:ClassName" or "package.module:ClassName" -> the class (runs that file:
    it is the user's own code, given explicitly)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ScheduleLabError(f"model spec {spec!r} must look like module.py:ClassName")
    mod_name, cls_name = spec.rsplit(":", 1)
    path = Path(mod_name)
    if mod_name.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ScheduleLabError(f"module file {mod_name!r} not found")
        uniq = f"_schedule_lab_user_{abs(hash(str(path.resolve())))}"
        ispec = importlib.util.spec_from_file_location(uniq, path)
        mod = importlib.util.module_from_spec(ispec)
        sys.modules[uniq] = mod
        try:
            ispec.loader.exec_module(mod)
        except Exception as e:
            sys.modules.pop(uniq, None)
            raise ScheduleLabError(f"importing {mod_name!r} failed: {type(e).__name__}: {e}") from None
    else:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise ScheduleLabError(f"cannot import module {mod_name!r}: {e}") from None
    cls = getattr(mod, cls_name, None)
    if cls is None:
        raise ScheduleLabError(f"{mod_name!r} has no attribute {cls_name!r}")
    return cls


def load_module_spec(spec: str, weights=None, params=None, device="cpu", cls=None) -> torch.nn.Module:
    """Import `module.py:ClassName`, instantiate it with `params`, load `weights` (a state dict:
    .safetensors, or .pt/.pth/.bin through torch.load(weights_only=True)); eval mode on device.
    `cls` skips the import when the class is already at hand."""
    from core.models.checkpoints import load_state_dict
    cls = cls if cls is not None else import_class(spec)
    try:
        net = cls(**(params or {}))
    except TypeError as e:
        try:
            sig = str(inspect.signature(cls))
        except (TypeError, ValueError):
            sig = "(?)"
        raise ScheduleLabError(f"cannot build {spec} with {params or {}}: {e}; it takes {sig}") from None
    if not isinstance(net, torch.nn.Module):
        raise ScheduleLabError(f"{spec} built a {type(net).__name__}, not a torch.nn.Module")
    if weights is not None:
        sd = load_state_dict(weights)
        if sd and all(k.startswith("module.") for k in sd):          # saved from DataParallel
            sd = {k[len("module."):]: v for k, v in sd.items()}
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ScheduleLabError(f"weights {str(weights)!r} do not fit {spec}: {state_dict_mismatch(e)} "
                                   "(check --param values)") from None
    return net.to(device).eval()


def split_params(params: dict) -> tuple:
    """CLI params -> (constructor kwargs, wrap kwargs). Wrap keys are WRAP_KEYS; prefix "net." sends
    a clashing name to the constructor instead."""
    ctor, wrap = {}, {}
    for k, v in (params or {}).items():
        if k.startswith("net."):
            ctor[k[4:]] = v
        elif k in WRAP_KEYS:
            wrap[k] = v
        else:
            ctor[k] = v
    return ctor, wrap


def wrap_options(opts: dict) -> dict:
    """Flat string-friendly options (CLI) -> wrap_module kwargs with a process spec."""
    o = dict(opts)
    if "shape" in o:
        o["event_shape"] = o.pop("shape")
    proc = o.pop("process", "discrete")
    proc = {"kind": proc} if isinstance(proc, str) else dict(proc)
    kind = proc.get("kind", "discrete")
    for k in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "alphas_cumprod", "betas"):
        if k in o:
            if kind != "discrete":
                raise ScheduleLabError(f"{k} applies to the discrete process, not {kind!r}")
            v = o.pop(k)
            proc[k] = _array_file(v) if k in ("alphas_cumprod", "betas") and isinstance(v, str) else v
    for k, pk in (("beta_min", "beta_min"), ("beta_max", "beta_max"), ("t_eps", "eps")):
        if k in o:
            proc[pk] = o.pop(k)
    if kind == "edm":
        for k in ("sigma_min", "sigma_max"):
            if k in o:
                proc[k] = o[k]
    if "data_range" in o and not isinstance(o["data_range"], (str, list, tuple)):
        raise ScheduleLabError(f"bad data_range {o['data_range']!r}; give lo,hi like -1,1")
    if isinstance(o.get("data_range"), str):
        try:
            o["data_range"] = tuple(float(v) for v in o["data_range"].split(","))
        except ValueError:
            raise ScheduleLabError(f"bad data_range {o['data_range']!r}; give lo,hi like -1,1") from None
    o["process"] = proc
    return o


def _array_file(path: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise ScheduleLabError(f"table file {path!r} not found (.npy or text, one value per line)")
    try:
        return np.load(p, allow_pickle=False) if p.suffix == ".npy" else np.loadtxt(p, dtype=np.float64)
    except (ValueError, OSError) as e:
        raise ScheduleLabError(f"cannot read the table {path!r}: {e}") from None


def load_user_model(spec: str, weights=None, params=None, device="cpu", **wrap_kw) -> WrappedDenoiser:
    """`python -m core images --model module.py:ClassName --weights FILE --param k=v ...`.

    params (from --param) are split by `split_params`: WRAP_KEYS configure the wrapper, the rest go to
    the class constructor. A class attribute `schedule_lab = {...}` gives defaults for the wrap keys;
    explicit `wrap_kw` win over both. Example: --param parametrization=eps --param process=discrete
    --param beta_schedule=linear --param time_input=index --param shape=1,28,28 --param ch=64.
    """
    ctor, flat = split_params(params)
    cls = import_class(spec)
    defaults = dict(getattr(cls, "schedule_lab", {}) or {})
    opts = wrap_options({**defaults, **flat})
    opts.update(wrap_kw)
    opts.setdefault("name", Path(spec.rsplit(":", 1)[0]).stem + ":" + spec.rsplit(":", 1)[1])
    net = load_module_spec(spec, weights, ctor, device, cls=cls)
    kw = {k: opts.pop(k) for k in ("parametrization", "process", "time_input") if k in opts}
    return wrap_module(net, event_shape=opts.pop("event_shape", None), **kw, **opts).to(device)


# ---- image data for the optimizers -----------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class ImageData:
    """A fixed set of images in the model's data units; calling it draws a batch with replacement.

    `generated` is True when the images are the model's own many-step samples (no data was
    given): the UI and CLI must say so, since an optimizer then fits the model, not the data.
    """

    images: torch.Tensor          # [N, *event_shape] float32, CPU, data units
    source: str                   # where they came from (a path, or a description)
    generated: bool
    cache_path: Path | None = None

    def __call__(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images [n, *event_shape] drawn uniformly with replacement (seeded by generator)."""
        dev = generator.device if generator is not None else torch.device("cpu")
        idx = torch.randint(self.images.shape[0], (int(n),), generator=generator, device=dev)
        return self.images[idx.cpu()]

    def __len__(self) -> int:
        return int(self.images.shape[0])


def image_sampler_from(path_or_none, model, cache_dir, n: int = 512, steps: int = 50, seed: int = 0,
                       batch: int = 64, progress=None) -> ImageData:
    """Data samples x0 for optimizers that need them (AYS' KLUB, score-optimal).

    path: a folder of PNG/JPEG files or an .npz (key "images", "x", "arr_0" or its only array).
    8-bit pixels map linearly onto `model.data_range` (default [-1, 1]); float arrays are taken
    as already in data units. Files are converted to the model's channels (1: grey, 3: RGB) and
    resized (bilinear) to its height x width; arrays must match its shape (NHWC is transposed).
    None: the model's own samples, Heun with `steps` steps on a Karras (rho = 7) schedule over
    [model.sigma_min, model.sigma_max], n images, generated once and cached in cache_dir as .npz
    (keyed by model name, a hash of its weights, n, steps and seed); `progress(done, n)` per batch.
    """
    shape = tuple(model.event_shape)
    lo, hi = getattr(model, "data_range", (-1.0, 1.0))
    if path_or_none is not None:
        p = Path(path_or_none).expanduser()
        if p.is_dir():
            x = _read_folder(p, shape, lo, hi)
        elif p.is_file() and p.suffix == ".npz":
            x = _read_npz(p, shape, lo, hi)
        else:
            raise ScheduleLabError(f"image data {str(p)!r} not found; give a folder of PNGs or an .npz file")
        return ImageData(x, str(p), False)
    from core import cache as kc
    cache = Path(cache_dir).expanduser() / (f"{_slug(model.name)}-{kc.model_fingerprint(model)}-n{n}-heun{steps}"
                                            f"-s{seed}-v{kc.CODE_VERSION}.npz")
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                x = torch.from_numpy(z["images"]).float()
            if tuple(x.shape[1:]) == shape and x.shape[0] == n and bool(torch.isfinite(x).all()):
                return ImageData(x, f"model samples (cached {cache})", True, cache)
        except (OSError, ValueError, KeyError):          # unreadable: recomputed below
            pass
        cache.unlink(missing_ok=True)
    x = kc.require_finite(_generate(model, n, steps, seed, batch, progress),
                          f"the {steps}-step Heun samples of {model.name}")
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, images=x.numpy(), info=np.array(json.dumps(
            {"model": model.name, "n": n, "solver": "heun", "schedule": "karras", "steps": steps, "seed": seed,
             "code_version": kc.CODE_VERSION})))
    tmp.replace(cache)
    return ImageData(x, f"model samples (generated, cached {cache})", True, cache)


def _generate(model, n, steps, seed, batch, progress) -> torch.Tensor:
    from core.sampling import generate
    from core.schedules import make_schedule
    sched = make_schedule("karras", int(steps), sigma_min=float(model.sigma_min), sigma_max=float(model.sigma_max))
    out = []
    for k, start in enumerate(range(0, n, batch)):
        b = min(batch, n - start)
        out.append(generate(model, sched, b, "heun", seed=seed * 100003 + k).x.detach().float().cpu())
        if progress is not None:
            progress(start + b, n)
    return torch.cat(out)


def _to_units(u: np.ndarray, lo: float, hi: float) -> torch.Tensor:
    return torch.from_numpy(lo + (hi - lo) * u.astype(np.float32))


def _read_folder(p: Path, shape, lo, hi) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ScheduleLabError(f"no PNG/JPEG images in {str(p)!r}")
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise ScheduleLabError(f"image files need a model with 1 or 3 channels; its shape is {shape}")
    mode = "L" if shape[0] == 1 else "RGB"
    arrs = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert(mode)
                if im.size != (shape[2], shape[1]):
                    im = im.resize((shape[2], shape[1]), Image.BILINEAR)
                a = np.asarray(im, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError) as e:
            raise ScheduleLabError(f"cannot read image {str(f)!r}: {e}") from None
        arrs.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return _to_units(np.stack(arrs), lo, hi)


def _read_npz(p: Path, shape, lo, hi) -> torch.Tensor:
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = list(z.keys())
            key = next((k for k in ("images", "x", "arr_0") if k in keys), keys[0] if len(keys) == 1 else None)
            if key is None:
                raise ScheduleLabError(f"{str(p)!r} holds {keys}; name the image array 'images'")
            a = z[key]
    except (ValueError, OSError) as e:
        raise ScheduleLabError(f"cannot read {str(p)!r} as .npz (no pickles): {e}") from None
    shape = tuple(shape)
    if shape[0] == 1 and a.ndim == len(shape) and a.shape[1:] == shape[1:]:
        a = a[:, None]                                             # [N, H, W] grey
    elif a.ndim == len(shape) + 1 and a.shape[1:] != shape and a.shape[1:] == shape[1:] + shape[:1]:
        a = np.moveaxis(a, -1, 1)                                  # NHWC -> NCHW
    if a.ndim != len(shape) + 1 or tuple(a.shape[1:]) != tuple(shape):
        raise ScheduleLabError(f"images in {str(p)!r} have shape {a.shape[1:]}; the model wants {tuple(shape)}")
    if a.dtype == np.uint8:
        return _to_units(a / 255.0, lo, hi)
    if not np.issubdtype(a.dtype, np.floating):
        raise ScheduleLabError(f"images in {str(p)!r} are {a.dtype}; give uint8 pixels or floats in data units")
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))[:60] or "model"
