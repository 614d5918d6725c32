"""Models -> EDM-form Denoisers. `load_toy_model(toy, kind)` for the 2D toys; image models and
external checkpoints register in `core.models.registry`."""
from __future__ import annotations

from functools import lru_cache

from core.errors import ScheduleLabError, unknown_name
from core.models.base import Denoiser, EDMPrecond  # noqa: F401
from core.models.checkpoints import CHECKPOINTS, load_state_dict, read_metadata
from core.models.mixture import MixtureDenoiser
from core.models.mlp import MLPDenoiser, ToyMLP

TOY_KINDS = ("exact", "mlp")


def toy_checkpoint(toy: str):
    return CHECKPOINTS / "toy_mlp" / f"{toy}.safetensors"


def load_toy_mlp(toy: str, device="cpu") -> MLPDenoiser:
    """The shipped MLP denoiser for a registry toy (checkpoints/toy_mlp/TOY.safetensors)."""
    path = toy_checkpoint(toy)
    if not path.is_file():
        raise ScheduleLabError(f"no MLP checkpoint for toy {toy!r} at {path}; train one with "
                               f"`python -m core train-toy {toy}` or use --model exact")
    cfg = read_metadata(path)
    net = ToyMLP(**cfg.get("net", {}))
    try:
        net.load_state_dict({k[len("precond.net."):]: v for k, v in load_state_dict(path).items()
                             if k.startswith("precond.net.")})
    except RuntimeError as e:
        raise ScheduleLabError(f"checkpoint {path} does not match the ToyMLP architecture: {e}") from None
    m = MLPDenoiser(net, sigma_data=cfg.get("sigma_data", 0.5), name=f"mlp:{toy}")
    return m.to(device).eval()


@lru_cache(maxsize=64)
def _cached(toy: str, kind: str, device: str):
    from toy_data import get_toy
    if kind == "exact":
        return MixtureDenoiser(get_toy(toy)).to(device)
    if kind == "mlp":
        return load_toy_mlp(toy, device)
    raise unknown_name("model kind", kind, TOY_KINDS)


def load_toy_model(toy: str, kind: str = "exact", device="cpu") -> Denoiser:
    """Exact mixture denoiser or the shipped MLP for a toy (cached per toy, kind, device)."""
    return _cached(toy, kind, str(device))
