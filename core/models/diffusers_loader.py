"""A diffusers `UNet2DModel` folder -> EDM-form Denoiser with continuous sigma (methods.md section 1).

Layouts (both accepted):
    pipeline   ROOT/unet/{config.json, diffusion_pytorch_model.safetensors|.bin}
               ROOT/scheduler/scheduler_config.json     (as `pipeline.save_pretrained` writes)
    bare       ROOT/{config.json, diffusion_pytorch_model.*, scheduler_config.json}

The scheduler config (DDPM, DDIM, Euler and the other discrete-beta schedulers) gives the
training process: `num_train_timesteps`, `beta_schedule` (linear, scaled_linear,
squaredcos_cap_v2, sigmoid) or `trained_betas`, `rescale_betas_zero_snr`, and
`prediction_type` (epsilon, v_prediction, sample). The table
sigma_i = sqrt((1 - abar_i)/abar_i) fixes sigma_min = sigma_0 and sigma_max = sigma_{N-1}; a
continuous sigma becomes a fractional timestep by linear interpolation in log sigma between
neighbouring sigma_i, passed to the UNet as a float tensor (a Python float would be truncated
to an integer). The UNet sees x / sqrt(1 + sigma^2); the output converts as in
`core.models.wrap` (eps: D = x - sigma eps; v: D = x/(1+s^2) - s/sqrt(1+s^2) v; sample: D = x0).
This is exactly what diffusers' `EulerDiscreteScheduler` computes (tested). Sampling-time
options of the config (clip_sample, thresholding, timestep_spacing, ...) do not belong to D and
are ignored.

Weights load from safetensors, or a `.bin` through torch.load(weights_only=True) only: the
file is first checked with `core.models.checkpoints.load_state_dict` (which refuses pickles
that need code), and diffusers itself loads .bin with weights_only=True (diffusers >= 0.30,
`model_loading_utils.load_state_dict`). Nothing is downloaded unless a hub id is given with
allow_hub=True.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from core.device import resolve_device
from core.errors import ScheduleLabError
from core.models.wrap import DiscreteVP, WrappedDenoiser, wrap_module

SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
              "PNDMScheduler", "LMSDiscreteScheduler", "HeunDiscreteScheduler", "DPMSolverMultistepScheduler",
              "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler",
              "KDPM2DiscreteScheduler")
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def load_diffusers(path_or_hub_id, device="cpu", allow_hub: bool = False, sigma_data: float = 0.5,
                   scheduler_config=None, null_label: int | None = None) -> WrappedDenoiser:
    """Load a diffusers `UNet2DModel` (unconditional, or class-conditional through `num_class_embeds`)
    with its scheduler config as a Denoiser.

    Args:
        path_or_hub_id: a local folder (pipeline or bare layout, see module docstring), or a
            Hugging Face hub id "owner/name" when allow_hub is True.
        device: torch device (None / "auto" -> cuda when present).
        allow_hub: permit a download; without it a missing folder is an error.
        sigma_data: data std for the Denoiser's metadata (pixels in [-1, 1]: 0.5).
        scheduler_config: a dict (or a JSON path) overriding the folder's scheduler config.
        null_label: class-conditional UNets (num_class_embeds = C): the label trained as "no class"
            for classifier-free guidance; default C - 1 (the DiT convention: C - 1 real classes + null).
    Returns: a `WrappedDenoiser` (data_range (-1, 1), display "clamp") whose `.net` is the UNet; for a
    class-conditional UNet a `core.models.guidance.ConditionalWrapped` (labels by `class_labels`),
    to be guided with --label / --cfg (GuidedDenoiser).
    """
    root = _resolve(path_or_hub_id, allow_hub)
    unet_dir, sched_path = _layout(root, scheduler_config)
    ucfg = _read_json(unet_dir / "config.json", "UNet config")
    scfg = scheduler_config if isinstance(scheduler_config, dict) else _read_json(sched_path, "scheduler config")
    _check_unet_config(ucfg, unet_dir)
    parametrization, process, time_input = _from_scheduler_config(scfg, sched_path)
    if ucfg.get("time_embedding_type", "positional") == "learned":
        time_input = "index"          # an nn.Embedding of integer steps
    unet = _load_unet(unet_dir)
    size = ucfg.get("sample_size") or 32
    hw = (size, size) if isinstance(size, int) else tuple(size)
    local = Path(str(path_or_hub_id)).expanduser().is_dir()
    name = f"diffusers:{root.name}" if local else f"hub:{path_or_hub_id}"
    cond = {}
    if ucfg.get("num_class_embeds"):
        c = int(ucfg["num_class_embeds"])
        null = c - 1 if null_label is None else int(null_label)
        if not 0 <= null < c:
            raise ScheduleLabError(f"null_label {null} is not a class of this UNet (num_class_embeds = {c})")
        cond = {"cond_kwarg": "class_labels", "null_cond": null, "num_classes": c - 1 if null == c - 1 else c}
    m = wrap_module(unet, parametrization, process, time_input,
                    event_shape=(int(ucfg.get("in_channels", 3)), *map(int, hw)), sigma_data=sigma_data,
                    input_scaling="vp", data_range=(-1.0, 1.0), display="clamp", name=name, **cond)
    m.source = str(root)
    return m.to(resolve_device(device)).eval()


def looks_like_diffusers(path) -> bool:
    """True when `path` is a local folder in one of the two layouts (for `--model PATH` dispatch)."""
    p = Path(str(path)).expanduser()
    return p.is_dir() and ((p / "unet" / "config.json").is_file() or
                           ((p / "config.json").is_file() and (p / "scheduler_config.json").is_file()))


def _resolve(path_or_hub_id, allow_hub: bool) -> Path:
    p = Path(str(path_or_hub_id)).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise ScheduleLabError(f"{str(p)!r} is a file; give the folder that holds the UNet config "
                               "(unet/config.json or config.json) and the scheduler config")
    s = str(path_or_hub_id)
    if not HUB_ID.match(s):
        raise ScheduleLabError(f"diffusers model folder {s!r} not found; give a folder saved with "
                               "save_pretrained (unet/ + scheduler/, or config.json + scheduler_config.json)")
    if not allow_hub:
        raise ScheduleLabError(f"no local folder {s!r}; if it is a Hugging Face hub id, allow the "
                               "download explicitly (allow_hub=True, --allow-hub); Schedule Lab downloads nothing "
                               "by default")
    return _download(s)


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
        common = ["model_index.json", "config.json", "scheduler_config.json", "unet/config.json",
                  "scheduler/scheduler_config.json"]
        root = Path(snapshot_download(repo_id, allow_patterns=common + [f"{d}{w}" for d in ("", "unet/")
                                                                         for w in WEIGHT_FILES[:1]]))
        if not any((root / d / WEIGHT_FILES[0]).is_file() for d in ("", "unet")):
            root = Path(snapshot_download(repo_id, allow_patterns=common + [f"{d}{WEIGHT_FILES[1]}"
                                                                             for d in ("", "unet/")]))
    except Exception as e:  # offline, unknown repo, HTTP errors: all end here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ScheduleLabError(
            f"could not get hub model {repo_id!r} ({type(e).__name__}: {first}). Without internet, download "
            f"it elsewhere (huggingface-cli download {repo_id} --local-dir DIR), copy DIR here and pass the folder"
        ) from None
    return root


def _layout(root: Path, scheduler_config) -> tuple:
    """(UNet folder, scheduler config path) for the pipeline or the bare layout."""
    if (root / "unet" / "config.json").is_file():
        unet_dir = root / "unet"
    elif (root / "config.json").is_file():
        unet_dir = root
    else:
        raise ScheduleLabError(f"{str(root)!r} has no UNet config (expected unet/config.json or config.json); "
                               "save the model with UNet2DModel.save_pretrained or pipeline.save_pretrained")
    if scheduler_config is not None and not isinstance(scheduler_config, dict):
        return unet_dir, Path(scheduler_config)
    for cand in (root / "scheduler" / "scheduler_config.json", unet_dir / "scheduler_config.json",
                 root / "scheduler_config.json"):
        if cand.is_file():
            return unet_dir, cand
    raise ScheduleLabError(f"{str(root)!r} has no scheduler config (scheduler/scheduler_config.json or "
                           "scheduler_config.json); save the training scheduler with save_pretrained next to the UNet")


def _read_json(path: Path, what: str) -> dict:
    try:
        cfg = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ScheduleLabError(f"{what} {str(path)!r} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise ScheduleLabError(f"{what} {str(path)!r} is corrupt ({e}); re-save it with save_pretrained") from None
    if not isinstance(cfg, dict):
        raise ScheduleLabError(f"{what} {str(path)!r} is not a JSON object")
    return cfg


def _check_unet_config(cfg: dict, unet_dir: Path) -> None:
    cls = cfg.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise ScheduleLabError(f"{str(unet_dir)!r} holds a {cls}; only unconditional diffusers UNet2DModel "
                               "folders load here (text- or class-conditional models need their conditioning)")
    if cfg.get("class_embed_type") is not None or (cfg.get("num_class_embeds") is not None
                                                   and int(cfg["num_class_embeds"]) < 2):
        raise ScheduleLabError(f"{str(unet_dir)!r} uses class_embed_type {cfg.get('class_embed_type')!r}; only "
                               "unconditional UNet2DModels and class-conditional ones with num_class_embeds >= 2 "
                               "(an nn.Embedding of labels) load here")
    if cfg.get("time_embedding_type") == "fourier":
        raise ScheduleLabError(f"{str(unet_dir)!r} uses Fourier time embeddings (a score-SDE VE model, not a "
                               "DDPM table); wrap it with wrap_module(process='edm', time_input='continuous')")


def _from_scheduler_config(cfg: dict, path) -> tuple:
    """(parametrization, DiscreteVP, time input) from a diffusers scheduler config."""
    cls = cfg.get("_class_name")
    if cls is not None and cls not in SCHEDULERS:
        raise ScheduleLabError(f"scheduler {cls!r} in {str(path)!r} is not a discrete-beta (DDPM-family) "
                               f"scheduler; supported: {', '.join(SCHEDULERS)}")
    pred = cfg.get("prediction_type", "epsilon")
    if pred not in PREDICTION_TYPES:
        raise ScheduleLabError(f"prediction_type {pred!r} in {str(path)!r} is not supported; "
                               f"choose one of: {', '.join(PREDICTION_TYPES)}")
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
            "rescale_betas_zero_snr")
    process = DiscreteVP.from_config(**{k: cfg[k] for k in keys if k in cfg and cfg[k] is not None})
    time_input = "fractional"
    if cfg.get("timestep_type") == "continuous" and pred == "v_prediction":
        time_input = _quarter_log_sigma          # Euler's EDM-style c_noise for such models
    return PREDICTION_TYPES[pred], process, time_input


def _quarter_log_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """c_noise = ln(sigma) / 4 (EDM, Karras et al. 2022, Table 1)."""
    return (0.25 * sigma.log()).to(torch.float32)


def _load_unet(unet_dir: Path):
    from diffusers import UNet2DModel
    from core.models.checkpoints import load_state_dict, state_dict_mismatch
    has_st = (unet_dir / WEIGHT_FILES[0]).is_file() or (unet_dir / (WEIGHT_FILES[0] + ".index.json")).is_file()
    if not has_st:
        if not (unet_dir / WEIGHT_FILES[1]).is_file():
            raise ScheduleLabError(f"{str(unet_dir)!r} has no weights ({' or '.join(WEIGHT_FILES)})")
        load_state_dict(unet_dir / WEIGHT_FILES[1])       # refuses pickles that need code, clearly
    try:
        unet = UNet2DModel.from_pretrained(str(unet_dir), use_safetensors=has_st, local_files_only=True,
                                           low_cpu_mem_usage=False, torch_dtype=torch.float32)
    except Exception as e:  # diffusers raises OSError / ValueError / RuntimeError / EnvironmentError
        first = state_dict_mismatch(e)
        raise ScheduleLabError(f"cannot load the UNet in {str(unet_dir)!r}: {type(e).__name__}: {first}. "
                               "The folder may be corrupt or incomplete; re-save it with save_pretrained") from None
    return unet.eval()
