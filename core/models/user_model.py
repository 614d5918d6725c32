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
import warnings
from dataclasses import dataclass, field
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
             "t_eps", "alphas_cumprod", "betas", "time_dtype", "time_shape")
LOAD_KEYS = ("strip_prefix", "strict")       # how the state dict is read (see fit_state_dict)


def import_class(spec: str):
    """"path/to/module.py:ClassName" or "package.module:ClassName" -> the class (runs that file:
    it is the user's own code, given explicitly).  The file's own folder is first on sys.path while it
    runs, so its sibling imports (`from layers import Block`) work as they do in its repository."""
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
        folder = str(path.resolve().parent)
        sys.path.insert(0, folder)
        try:
            ispec.loader.exec_module(mod)
        except Exception as e:
            sys.modules.pop(uniq, None)
            raise ScheduleLabError(f"importing {mod_name!r} failed: {type(e).__name__}: {e}") from None
        finally:
            if folder in sys.path:
                sys.path.remove(folder)
    else:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise ScheduleLabError(f"cannot import module {mod_name!r}: {e}") from None
    cls = getattr(mod, cls_name, None)
    if cls is None:
        raise ScheduleLabError(f"{mod_name!r} has no attribute {cls_name!r}")
    return cls


def load_module_spec(spec: str, weights=None, params=None, device="cpu", cls=None, strip_prefix=None,
                     strict=True, state_dict=None) -> torch.nn.Module:
    """Import `module.py:ClassName`, instantiate it with `params`, load `weights` (a state dict:
    .safetensors, or .pt/.pth/.bin through torch.load(weights_only=True)); eval mode on device.
    `cls` skips the import when the class is already at hand; `state_dict` when the weights are
    already read.  strip_prefix, strict: see `fit_state_dict`."""
    from core.models.checkpoints import fit_state_dict, load_state_dict
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
    if weights is not None or state_dict is not None:
        sd = state_dict if state_dict is not None else load_state_dict(weights)
        sd = fit_state_dict(net, sd, strip_prefix, strict, f"weights {str(weights)!r}", spec)
        try:
            net.load_state_dict(sd, strict=False)               # fit_state_dict checked every key
        except RuntimeError as e:
            raise ScheduleLabError(f"weights {str(weights)!r} do not fit {spec}: {state_dict_mismatch(e)} "
                                   "(check --param values)") from None
    return net.to(device).eval()


def split_params(params: dict) -> tuple:
    """CLI params -> (constructor kwargs, wrap kwargs). Wrap keys are WRAP_KEYS and LOAD_KEYS; prefix
    "net." sends a clashing name to the constructor instead."""
    ctor, wrap = {}, {}
    for k, v in (params or {}).items():
        if k.startswith("net."):
            ctor[k[4:]] = v
        elif k in WRAP_KEYS or k in LOAD_KEYS:
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
    explicit `wrap_kw` win over both.  Load keys: strip_prefix, strict (`fit_state_dict`).
    alphas_cumprod / betas: a .npy / text file, or the name of a tensor in the weights file. Example: --param parametrization=eps --param process=discrete
    --param beta_schedule=linear --param time_input=index --param shape=1,28,28 --param ch=64.
    """
    from core.models.checkpoints import load_state_dict
    ctor, flat = split_params(params)
    cls = import_class(spec)
    defaults = dict(getattr(cls, "schedule_lab", {}) or {})
    flat = {**defaults, **flat}
    load = {k: flat.pop(k) for k in LOAD_KEYS if k in flat}
    sd = load_state_dict(weights) if weights is not None else None
    for k in ("alphas_cumprod", "betas"):          # a table stored in the checkpoint: --param alphas_cumprod=KEY
        v = flat.get(k)
        if isinstance(v, str) and sd is not None and v in sd and not Path(v).is_file():
            flat[k] = sd[v].double().cpu().numpy()
    opts = wrap_options(flat)
    opts.update(wrap_kw)
    opts.setdefault("name", Path(spec.rsplit(":", 1)[0]).stem + ":" + spec.rsplit(":", 1)[1])
    net = load_module_spec(spec, weights, ctor, device, cls=cls, state_dict=sd, **load)
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
    warnings: list = field(default_factory=list)   # own samples that look wrong (see check_own_samples)

    def __call__(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images [n, *event_shape] drawn uniformly with replacement (seeded by generator)."""
        dev = generator.device if generator is not None else torch.device("cpu")
        idx = torch.randint(self.images.shape[0], (int(n),), generator=generator, device=dev)
        return self.images[idx.cpu()]

    def __len__(self) -> int:
        return int(self.images.shape[0])


OWN_SAMPLER = ("dpmpp_2m_sde", 100)      # the model's own samples: a many-step stochastic sampler


class OwnSamplesWarning(UserWarning):
    """The model's own samples (the data fallback) look wrong: an optimizer would fit garbage."""


def image_sampler_from(path_or_none, model, cache_dir, n: int = 512, steps: int = OWN_SAMPLER[1], seed: int = 0,
                       batch: int = 64, progress=None, solver: str = OWN_SAMPLER[0]) -> ImageData:
    """Data samples x0 for optimizers that need them (AYS' KLUB, score-optimal).

    path: a folder of PNG/JPEG files, an .npz (key "images", "x", "arr_0" or its only array), or for
    a model of 1-d samples (2-D points) also .npy / .csv / .txt (`read_points`).
    8-bit pixels map linearly onto `model.data_range` (default [-1, 1]); float arrays are taken
    as already in data units. Files are converted to the model's channels (1: grey, 3: RGB) and
    resized (bilinear) to its height x width; arrays must match its shape (NHWC is transposed).
    None: the model's own samples, `solver` (default SDE-DPM-Solver++(2M): stochastic, so its errors do
    not accumulate along one ODE path) with `steps` steps (default 100) on a Karras (rho = 7) schedule
    over [model.sigma_min, model.sigma_max], n images, generated once and cached in cache_dir as .npz
    (keyed by model name, a hash of its weights, n, solver, steps and seed); `progress(done, n)` per
    batch.  They are checked (`check_own_samples`): an OwnSamplesWarning and `.warnings` say when they
    leave the data range or look like noise.
    """
    shape = tuple(model.event_shape)
    lo, hi = getattr(model, "data_range", (-1.0, 1.0))
    if path_or_none is not None:
        p = Path(path_or_none).expanduser()
        if p.is_dir():
            x = _read_folder(p, shape, lo, hi)
        elif p.is_file() and p.suffix == ".npz":
            x = _read_npz(p, shape, lo, hi)
        elif p.is_file() and len(shape) == 1 and p.suffix in POINT_SUFFIXES:
            x = read_points(p, shape)
        else:
            raise ScheduleLabError(f"image data {str(p)!r} not found; give a folder of PNGs or an .npz file")
        return ImageData(x, str(p), False)
    from core import cache as kc
    from core.solvers import get_solver
    get_solver(solver)
    cache = (Path(cache_dir).expanduser() / (f"{_slug(model.name)}-{kc.model_fingerprint(model)}-v{kc.CODE_VERSION}"
                                             f"-n{n}-{_slug(solver)}{steps}-s{seed}.npz"))
    x = None
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                x = torch.from_numpy(z["images"]).float()
        except (OSError, ValueError, KeyError):          # unreadable: recomputed below
            x = None
        if x is not None and tuple(x.shape[1:]) == shape and x.shape[0] == n and bool(torch.isfinite(x).all()):
            source = f"model samples ({solver}, {steps} steps; cached {cache})"
        else:
            x = None
            cache.unlink(missing_ok=True)
    if x is None:
        x = kc.require_finite(_generate(model, n, steps, seed, batch, progress, solver),
                              f"the {steps}-step {solver} samples of {model.name}")    # never cache a NaN
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, images=x.numpy(), info=np.array(json.dumps(
                {"model": model.name, "n": n, "solver": solver, "schedule": "karras", "steps": steps, "seed": seed,
                 "code_version": kc.CODE_VERSION})))
        tmp.replace(cache)
        source = f"model samples ({solver}, {steps} steps; generated, cached {cache})"
    problems = check_own_samples(x, (lo, hi), float(model.sigma_max))
    for msg in problems:
        warnings.warn(msg, OwnSamplesWarning, stacklevel=2)
    return ImageData(x, source, True, cache, problems)


def check_own_samples(x: torch.Tensor, data_range=(-1.0, 1.0), sigma_max: float = 80.0) -> list:
    """Messages (empty when all is well) about a model's own samples x [N, *event_shape]:

    - images [N, C, H, W]: more than 1 % of the values outside data_range widened by 5 % each side, or
      neighbouring pixels uncorrelated (lag-1 correlation < 0.2, where natural images have > 0.5; i.i.d.
      noise 0): the samples look like noise;
    - any shape: a spread (std) above sigma_max / 4: the sampler did not remove the initial noise.
    A wrong parametrization / process / time input / data_range is the usual cause."""
    out = []
    x = x.double()
    if not torch.isfinite(x).all():
        return [f"LOUD WARNING: {int((~torch.isfinite(x)).sum())} values of the model's own samples are NaN/inf; "
                "check parametrization, process, time_input and the weights"]
    lo, hi = float(data_range[0]), float(data_range[1])
    if x.ndim == 4 and min(x.shape[-2:]) >= 4:
        w = hi - lo
        frac = float(((x < lo - 0.05 * w) | (x > hi + 0.05 * w)).double().mean())
        if frac > 0.01:
            out.append(f"LOUD WARNING: {100 * frac:.1f}% of the values of the model's own samples lie outside its "
                       f"data_range [{lo:g}, {hi:g}] (min {float(x.min()):.3g}, max {float(x.max()):.3g}): check "
                       "--param data_range, parametrization, process, time_input and time_scale")
        r = _neighbour_correlation(x)
        if r < 0.2:
            out.append(f"LOUD WARNING: the model's own samples look like noise (neighbouring pixels correlate "
                       f"{r:.2f}; images have > 0.5): check parametrization, process, time_input, time_scale and "
                       "the weights, or give --data")
    spread = float(x.reshape(x.shape[0], -1).std(0).mean())
    if spread > sigma_max / 4:
        out.append(f"LOUD WARNING: the model's own samples spread like noise (std {spread:.3g} against sigma_max "
                   f"{sigma_max:g}): check parametrization, process, time_input and the weights, or give --data")
    return out


def _neighbour_correlation(x: torch.Tensor) -> float:
    """Lag-1 correlation of horizontally and vertically neighbouring pixels over the samples ([N, C, H, W];
    each pixel centred by its mean over the samples)."""
    z = x - x.mean(dim=0, keepdim=True)
    num = (z[..., :, 1:] * z[..., :, :-1]).mean() + (z[..., 1:, :] * z[..., :-1, :]).mean()
    return float(num / (2 * z.pow(2).mean()).clamp_min(1e-30))


POINT_SUFFIXES = (".npy", ".npz", ".csv", ".txt")


def read_points(path, event_shape=(2,)) -> torch.Tensor:
    """Data points [M, *event_shape] (float32) from .npy, .npz (key "x", "points", "data", "arr_0" or its
    only array) or .csv / .txt (comma / whitespace separated, one point a line, '#' comments)."""
    p = Path(path).expanduser()
    if not p.is_file() or p.suffix not in POINT_SUFFIXES:
        raise ScheduleLabError(f"data points {str(p)!r} not found; give a .npy, .npz, .csv or .txt file")
    try:
        if p.suffix == ".npy":
            a = np.load(p, allow_pickle=False)
        elif p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                keys = list(z.keys())
                key = next((k for k in ("x", "points", "data", "arr_0") if k in keys), keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise ScheduleLabError(f"{str(p)!r} holds {keys}; name the points array 'x'")
                a = z[key]
        else:
            a = np.loadtxt(p, delimiter="," if p.suffix == ".csv" else None, ndmin=2)
    except (ValueError, OSError) as e:
        raise ScheduleLabError(f"cannot read the data points {str(p)!r}: {e}") from None
    a = np.asarray(a, dtype=np.float32)
    shape = tuple(event_shape)
    if a.ndim < 2 or tuple(a.shape[1:]) != shape:
        a = a.reshape(a.shape[0], -1) if a.ndim >= 2 and int(np.prod(a.shape[1:])) == int(np.prod(shape)) else a
        if a.ndim < 2 or int(np.prod(a.shape[1:])) != int(np.prod(shape)):
            raise ScheduleLabError(f"data points in {str(p)!r} have shape {a.shape[1:]}; the model's samples are {shape}")
        a = a.reshape(a.shape[0], *shape)
    if not np.all(np.isfinite(a)):
        raise ScheduleLabError(f"data points in {str(p)!r} contain NaN or inf")
    return torch.from_numpy(np.ascontiguousarray(a))


def _generate(model, n, steps, seed, batch, progress, solver="heun") -> torch.Tensor:
    from core.sampling import generate
    from core.schedules import make_schedule
    sched = make_schedule("karras", int(steps), sigma_min=float(model.sigma_min), sigma_max=float(model.sigma_max))
    out = []
    for k, start in enumerate(range(0, n, batch)):
        b = min(batch, n - start)
        out.append(generate(model, sched, b, solver, seed=seed * 100003 + k).x.detach().float().cpu())
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
