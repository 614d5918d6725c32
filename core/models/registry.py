"""Which image models exist and how a `--model` string becomes a Denoiser.

`load_model(spec, device, **options)` resolves, in order:
1. a shipped model name in `MODELS` ("digits": checkpoints/digits/unet.safetensors), cached;
2. the first resolver in `RESOLVERS` whose `match(spec, options)` is true. Resolvers are the
   hook for other model sources: `register_resolver(kind, match, load, help)` adds one.
   Shipped here: `unet` (a .safetensors written by `python -m core train-images`), and,
   when their modules are present, `diffusers` (a `save_pretrained` UNet2DModel folder, or an
   explicit hub id with allow_hub=True) and `module` (`module.py:ClassName` + weights + params).
`options` carry what a source needs (weights, params, allow_hub); unused ones are ignored.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch

from core.device import resolve_device
from core.errors import ScheduleLabError
from core.optional import optional
from core.models.base import Denoiser
from core.models.digits import DIGITS_CHECKPOINT, load_digits_model, load_unet_checkpoint
from core.models.digits_flow import FLOW_CHECKPOINT, load_digits_flow_model


@dataclass(frozen=True)
class ModelEntry:
    """A shipped model: how to load it, where its weights are, what data and metrics go with it."""
    name: str
    load: Callable[[object], Denoiser]            # device -> Denoiser
    path: Path
    description: str
    data: Callable[[], object] | None = None      # () -> training images [N, *event_shape] (model units)
    metrics: str | None = None                    # "digits": the digit classifier's metrics apply
    schedules: Path | None = None                 # optimized schedules shipped with it (JSON {"stages": {n: sigmas}})
    labels: Callable[[], object] | None = None    # () -> class labels [N] of `data` (conditional models)


@dataclass(frozen=True)
class Resolver:
    """A family of model specs (paths, folders, module:Class strings)."""
    kind: str
    match: Callable[[str, dict], bool]             # (spec, options) -> handles it?
    load: Callable[..., Denoiser]                  # (spec, device, **options) -> Denoiser
    help: str
    options: tuple = field(default_factory=tuple)  # option names it reads


def _digits_data():
    from core.data.digits import load_digits_split
    return load_digits_split().train_x


def _digits_labels():
    from core.data.digits import load_digits_split
    return load_digits_split().train_y


MODELS: dict[str, ModelEntry] = {
    "digits": ModelEntry("digits", load_digits_model, DIGITS_CHECKPOINT,
                         "EDM UNet on scikit-learn digits, 1x16x16 in [-1, 1] (checkpoints/digits/CARD.md)",
                         data=_digits_data, metrics="digits", schedules=DIGITS_CHECKPOINT.parent / "ays.json"),
    "digits-flow": ModelEntry("digits-flow", load_digits_flow_model, FLOW_CHECKPOINT,
                              "class-conditional rectified-flow UNet on the digits (velocity, 10 classes + null "
                              "label; --label / --cfg guide it; checkpoints/digits-flow/CARD.md)",
                              data=_digits_data, metrics="digits", labels=_digits_labels),
}

RESOLVERS: dict[str, Resolver] = {}


def register_resolver(kind: str, match, load, help: str, options: tuple = (), first: bool = False) -> None:
    """Add (or replace) a resolver; it is tried after the existing ones, or before them with first=True
    (for a spec form that a broader resolver, e.g. `module`'s "a:b", would otherwise claim)."""
    RESOLVERS.pop(kind, None)
    r = Resolver(kind, match, load, help, tuple(options))
    if first:
        rest = dict(RESOLVERS)
        RESOLVERS.clear()
        RESOLVERS.update({kind: r, **rest})
    else:
        RESOLVERS[kind] = r


def model_names() -> tuple:
    """Names of the shipped models."""
    return tuple(MODELS)


def model_entry(name: str) -> ModelEntry | None:
    """The shipped entry for a name, or None for paths / other specs."""
    return MODELS.get(name)


def load_model(name_or_path: str, device="cpu", **options) -> Denoiser:
    """A Denoiser for a shipped name or any spec a resolver accepts (see module docstring)."""
    spec = str(name_or_path)
    dev = str(resolve_device(device))
    if spec in MODELS:
        return _load_named(spec, dev)
    for r in RESOLVERS.values():
        if r.match(spec, options):
            return r.load(spec, dev, **{k: v for k, v in options.items() if k in r.options})
    if Path(spec).expanduser().is_dir():
        raise ScheduleLabError(_folder_problem(Path(spec).expanduser()))
    forms = "; ".join(f"{r.kind}: {r.help}" for r in RESOLVERS.values())
    raise ScheduleLabError(f"unknown model {spec!r}: not a shipped model ({', '.join(MODELS)}) and no "
                           f"resolver accepts it ({forms}); if it is a file or folder, check the path")


def _folder_problem(p: Path) -> str:
    """Why a folder is not a model: the files a diffusers folder needs that it lacks."""
    have = sorted(f.name for f in p.iterdir())[:8]
    if (p / "unet").is_dir():
        missing = [x for x in ("unet/config.json", "scheduler/scheduler_config.json") if not (p / x).is_file()]
    else:
        missing = [x for x in ("config.json", "scheduler_config.json") if not (p / x).is_file()]
    return (f"{str(p)!r} is a folder but not a model: a diffusers folder needs "
            f"{' and '.join(missing) or 'its UNet and scheduler configs'}, which it lacks (it holds: "
            f"{', '.join(have) or 'nothing'}). Save it with diffusers' save_pretrained (UNet2DModel and its "
            "scheduler: config.json + scheduler_config.json, or unet/ and scheduler/ subfolders)")


@lru_cache(maxsize=8)
def _load_named(name: str, device: str) -> Denoiser:
    return MODELS[name].load(device)


def list_models() -> list:
    """Shipped models and the accepted spec forms, for `python -m core models`."""
    rows = []
    for e in MODELS.values():
        rows.append({"name": e.name, "kind": "shipped", "path": str(e.path), "available": e.path.is_file(),
                     "description": e.description})
    for r in RESOLVERS.values():
        rows.append({"name": None, "kind": r.kind, "path": None, "available": True, "description": r.help})
    return rows


# ---- resolvers --------------------------------------------------------------------------------

def _is_unet_file(spec: str, options: dict) -> bool:
    return spec.endswith(".safetensors") and ":" not in Path(spec).name


def _load_unet_file(spec: str, device: str) -> Denoiser:
    return load_unet_checkpoint(spec, device)


register_resolver("unet", _is_unet_file, _load_unet_file,
                  "PATH.safetensors written by `python -m core train-images` (UNet + config header)")




if optional("core.models.diffusers_loader") is not None:
    def _is_diffusers(spec: str, options: dict) -> bool:
        from core.models.diffusers_loader import looks_like_diffusers
        return looks_like_diffusers(spec) or bool(options.get("allow_hub"))

    def _load_diffusers(spec: str, device: str, allow_hub: bool = False) -> Denoiser:
        from core.models.diffusers_loader import load_diffusers
        return load_diffusers(spec, device=device, allow_hub=bool(allow_hub))

    register_resolver("diffusers", _is_diffusers, _load_diffusers,
                      "FOLDER saved by diffusers' save_pretrained (UNet2DModel + scheduler config); "
                      "a hub id only with --allow-hub", options=("allow_hub",))

if optional("core.models.user_model") is not None:
    def _is_module_spec(spec: str, options: dict) -> bool:
        return ":" in spec and not spec.endswith(":") and not Path(spec).exists()

    def _load_module_spec(spec: str, device: str, weights=None, params=None) -> Denoiser:
        from core.models.user_model import load_user_model
        return load_user_model(spec, weights=weights, params=params, device=device)

    register_resolver("module", _is_module_spec, _load_module_spec,
                      "module.py:ClassName with --weights FILE and --param key=value (docs/models.md)",
                      options=("weights", "params"))


# ---- data for the optimizers that need it (AYS' KLUB, score-optimal) --------------------------

SAMPLES_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "schedule_lab" / "samples"


def model_data(spec: str, model: Denoiser, data=None, cache_dir=None, n: int = 512, steps: int | None = None,
               seed: int = 0, progress=None, solver: str | None = None, label=None):
    """Images x0 for an optimizer on `model` (core.models.user_model.ImageData; `.source` says where
    they came from and `.generated` whether they are the model's own samples).

    data: a PNG/JPEG folder or an .npz (see `image_sampler_from`) — used when given.  Otherwise a
    shipped model's own training split (digits: the scikit-learn training split), otherwise the
    model's own n samples from `solver` with `steps` steps (default: user_model.OWN_SAMPLER, a
    many-step stochastic sampler), generated once and cached in cache_dir (default
    .cache/schedule_lab/samples): the optimizer then fits the model, not the data, and callers
    must say so (and show `.warnings`: samples outside the data range or that look like noise).
    label: one class (int) of a conditional shipped model selects that class's training images; several
    labels keep all (each image then meets the guided field of the label its batch row gets, not
    necessarily its own: an approximation the caller should state)."""
    from core.models.user_model import OWN_SAMPLER, ImageData, image_sampler_from
    entry = MODELS.get(str(spec))
    if data is None and entry is not None and entry.data is not None:
        x = torch.as_tensor(entry.data()).float()
        if isinstance(label, int) and entry.labels is not None:
            x = x[torch.as_tensor(entry.labels()) == label]
            return ImageData(x, f"{entry.name} training split, class {label} ({x.shape[0]} images)", False)
        return ImageData(x, f"{entry.name} training split ({x.shape[0]} images)", False)
    return image_sampler_from(data, model, SAMPLES_CACHE if cache_dir is None else cache_dir, n=n,
                              steps=OWN_SAMPLER[1] if steps is None else steps, seed=seed, progress=progress,
                              solver=OWN_SAMPLER[0] if solver is None else solver)


def shipped_schedule(spec: str, steps: int):
    """The AYS schedule shipped with a model (checkpoints/NAME/ays.json) at `steps` steps: the stage with
    that many steps, else the stage nearest in steps resampled log-linearly (the AYS paper's Sec. 3.3 /
    ComfyUI's way).  None when the model ships none."""
    import json

    from core.schedules import Schedule, resample_loglinear
    entry = MODELS.get(str(spec))
    if entry is None or entry.schedules is None or not entry.schedules.is_file():
        return None
    try:
        meta = json.loads(entry.schedules.read_text())
        stages = {int(k): v for k, v in meta["stages"].items()}
    except (ValueError, KeyError, TypeError) as e:
        raise ScheduleLabError(f"{entry.schedules} is not a valid schedule file ({e}); restore it from git") from None
    n = min(stages, key=lambda k: (abs(k - steps), -k))
    s = Schedule(tuple(stages[n]), name="ays", params={"model": entry.name, "stage_steps": n})
    return s if n == steps else resample_loglinear(s, int(steps))
