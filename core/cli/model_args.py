"""The `--toy` / `--model` / `--data` choice the optimizer commands share: a 2-D toy (exact mixture or
its shipped MLP) or any image model the registry resolves, with the data its optimizer needs."""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass

from core.errors import ScheduleLabError

TOY_RANGE = (0.002, 80.0)


def add_model_arguments(p) -> None:
    p.add_argument("--toy", default=None, help="toy name or mixture JSON file")
    p.add_argument("--model", default=None,
                   help="with --toy: exact (default) | mlp; without: an image model (digits, a diffusers folder, "
                        "a UNet .safetensors, module.py:Class with --weights)")
    p.add_argument("--data", default=None, help="image model: a PNG folder or .npz of data images (default: its "
                                                "training split if it ships with one, else its own cached samples)")
    p.add_argument("--weights", default=None, help="image model module.py:Class: its weights file")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="image model module.py:Class: constructor / wrapper parameters")
    p.add_argument("--own-samples", default=None, metavar="SOLVER:STEPS",
                   help="without --data: the sampler for the model's own samples (default dpmpp_2m_sde:100)")
    add_guidance_arguments(p)


def add_guidance_arguments(p) -> None:
    """--label / --cfg: classifier-free guidance of a conditional model (core.models.guidance)."""
    p.add_argument("--label", default=None,
                   help="class label of a conditional model or labelled toy: 3, a list 0,1,2 (cycled over the "
                        "batch) or all; default: unconditional")
    p.add_argument("--cfg", type=float, default=None,
                   help="classifier-free guidance scale w (D = D_uncond + w (D_cond - D_uncond); 2 NFE per call "
                        "unless w = 1); default 1 with --label")


def apply_guidance(model, a):
    """The model guided by --label / --cfg (unchanged when neither is given)."""
    from core.models.guidance import guided, parse_label
    return guided(model, parse_label(getattr(a, "label", None)), getattr(a, "cfg", None))


def toy_model_and_data(toy: str, kind: str, device, label=None, cfg=None):
    """(Denoiser, mixture) for a toy name or mixture file; kind 'exact' | 'mlp'. With a label or a
    guidance scale: the guided exact denoiser of the labelled toy (toy_data.labelled) and, for one
    label, the class's mixture p(x | c) (the guided ODE samples it only at w = 1)."""
    from core.models import MixtureDenoiser, load_toy_model
    from toy_data import get_toy
    if label is not None or cfg is not None:
        from core.models.guidance import guided, parse_label
        from core.models.mixture import LabelledMixtureDenoiser
        from toy_data.labelled import get_labelled_toy
        if kind != "exact":
            raise ScheduleLabError("--label / --cfg on toys need --model exact (the MLPs are unconditional)")
        lm = get_labelled_toy(toy)
        lab = parse_label(label)
        model = guided(LabelledMixtureDenoiser(lm), lab, cfg)
        return model, (lm.conditional(lab) if isinstance(lab, int) else lm.mixture)
    mix = get_toy(toy)
    model = MixtureDenoiser(mix).to(device) if kind == "exact" else load_toy_model(toy, "mlp", device)
    return model, mix


@dataclass
class ModelChoice:
    model: object            # Denoiser
    data: object             # toys: the GaussianMixture; images: core.models.user_model.ImageData
    toy: bool
    sigma_min: float         # the command's --sigma-min, else 0.002 (toys) or the model's
    sigma_max: float


def resolve_model(a, device, fits: str = "the schedule", loaded=None) -> ModelChoice:
    """--toy TOY [--model exact|mlp] or --model SPEC [--data D --weights W --param K=V]; for an image model
    prints where its data came from (and that `fits` then fits the model's own samples, not data).
    loaded: --model SPEC already loaded by the caller (not loaded again)."""
    if a.toy is not None:
        if a.model not in (None, "exact", "mlp"):
            raise ScheduleLabError(f"with --toy, --model is exact or mlp; got {a.model!r}")
        model, data = toy_model_and_data(a.toy, a.model or "exact", device, getattr(a, "label", None),
                                         getattr(a, "cfg", None))
        lo, hi = TOY_RANGE
    elif a.model is None:
        raise ScheduleLabError("give --toy TOY (a 2-D toy) or --model MODEL (an image model; see `python -m core models`)")
    else:
        from core.cli import parse_params
        from core.models.registry import load_model, model_data
        from core.models.user_model import OwnSamplesWarning
        if loaded is None:
            loaded = load_model(a.model, device, weights=a.weights, params=parse_params(a.param))
        model = apply_guidance(loaded, a)
        solver, steps = _own_sampler(getattr(a, "own_samples", None))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OwnSamplesWarning)          # printed below, once
            data = model_data(a.model, model, a.data, solver=solver, steps=steps, label=getattr(model, "cond", None))
        for msg in getattr(data, "warnings", ()):
            print(msg, file=sys.stderr)
        print(f"data: {data.source}" + (f" - {fits} then fits the model's own samples, not data" if data.generated
                                        else ""), file=sys.stderr)
        lo, hi = model.sigma_min, model.sigma_max
    return ModelChoice(model, data, a.toy is not None, lo if a.sigma_min is None else a.sigma_min,
                       hi if a.sigma_max is None else a.sigma_max)


def _own_sampler(spec):
    """'SOLVER:STEPS' -> (solver, steps); None -> (None, None) (the registry's default)."""
    if spec is None:
        return None, None
    solver, _, steps = str(spec).partition(":")
    if not steps.isdigit() or int(steps) < 2:
        raise ScheduleLabError(f"--own-samples {spec!r} must look like SOLVER:STEPS, e.g. dpmpp_2m_sde:100")
    return solver, int(steps)
