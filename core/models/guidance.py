"""Classifier-free guidance as part of the Denoiser (Ho & Salimans 2022; methods.md section 9).

A conditional model D(x, sigma | c), with a null conditioning c = None for "unconditional",
and a guidance scale w give again an EDM denoiser

    D_w(x, sigma) = D(x, sigma | None) + w (D(x, sigma | c) - D(x, sigma | None)),

so every schedule, solver and optimizer runs on it unchanged. The guidance formula is affine,
so it is the same in every parameterisation (eps, x0, velocity): guiding D is guiding v.

NFE: one evaluation of D_w costs `calls_per_eval` network calls: 2, or 1 where w = 1 (the
conditional model), w = 0 (the unconditional one) or the model is guidance-distilled.

The guided probability-flow ODE's endpoint is NOT, in general, distributed as
p(x) p(c | x)^w (the "sharpened" posterior): the guided score at each sigma is that of
p_sigma(x) p_sigma(c | x)^w, but these intermediate densities are not the noised versions of
one density, so the ODE does not transport N(0, sigma_max^2) to p(x) p(c | x)^w (Chidambaram
et al. 2024; Bradley & Nakkiran 2024). Schedule quality under guidance is therefore measured
against a many-step solution of the same guided ODE, not against a sharpened target.
"""
from __future__ import annotations

import math

import torch

from core.errors import ScheduleLabError
from core.models.base import Denoiser


class ConditionalDenoiser(Denoiser):
    """A Denoiser that also takes a conditioning: `denoise_cond(x, sigma, cond)`.

    cond: None (the null / unconditional input) or what `expand_cond(cond, batch)` returns.
    `denoise(x, sigma)` is the unconditional model. `guidance_distilled`: one call gives the
    guided output (w is then an input of the network, not a combination of two calls).
    """

    guidance_distilled: bool = False
    num_classes: int = 0

    def denoise_cond(self, x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def denoise(self, x, sigma):
        return self.denoise_cond(x, sigma, None)

    def expand_cond(self, cond, batch: int):
        """A conditioning for a batch of `batch`: a class label (int), or labels cycled over the
        batch (sample i gets labels[i % len(labels)]), as a [batch] int64 tensor."""
        return cycle_labels(cond, batch, self.num_classes, self.device)

    def denoise_pair(self, x, sigma, cond):
        """(D(x, sigma | cond), D(x, sigma | None)); subclasses may batch the two calls in one."""
        return self.denoise_cond(x, sigma, cond), self.denoise_cond(x, sigma, None)


class ConditionalWrapped(ConditionalDenoiser):
    """A wrapped user network (core.models.wrap.WrappedDenoiser) that takes a conditioning keyword.

    D(x, sigma | c) = inner.denoise(x, sigma, {cond_kwarg: c}), with c = null_cond for None.
    Conditioning: class labels (num_classes > 0; an int or a list cycled over the batch) or a
    tensor [1, ...] (broadcast to the batch) or [B, ...].
    """

    def __init__(self, inner, cond_kwarg: str, null_cond=None, num_classes: int = 0,
                 guidance_kwarg: str | None = None):
        super().__init__()
        if null_cond is None and guidance_kwarg is None:
            raise ScheduleLabError("a conditional network needs null_cond (its unconditional input, e.g. the "
                                   "null label) for classifier-free guidance")
        self.inner, self.cond_kwarg, self.null_cond = inner, str(cond_kwarg), null_cond
        self.num_classes = int(num_classes)
        self.guidance_kwarg = guidance_kwarg                     # guidance-distilled: w is a network input
        self.guidance_distilled = guidance_kwarg is not None
        for k in ("event_shape", "sigma_min", "sigma_max", "sigma_data", "name", "display", "data_range",
                  "parametrization", "process", "input_scaling", "time_input"):
            if hasattr(inner, k):
                setattr(self, k, getattr(inner, k))

    @property
    def net(self):
        return self.inner.net

    def expand_cond(self, cond, batch: int):
        if isinstance(cond, torch.Tensor) and not (self.num_classes and cond.dtype == torch.long and cond.ndim <= 1):
            c = cond.to(self.device)
            if c.shape[0] == batch:
                return c
            if c.shape[0] == 1:
                return c.expand(batch, *c.shape[1:])
            raise ScheduleLabError(f"a conditioning tensor of batch {c.shape[0]} for a batch of {batch}; give 1 or {batch}")
        return cycle_labels(cond, batch, self.num_classes, self.device)

    def _null(self, batch: int):
        if isinstance(self.null_cond, torch.Tensor):
            return self.expand_cond(self.null_cond, batch)
        return torch.full((batch,), int(self.null_cond), dtype=torch.long, device=self.device)

    def denoise_cond(self, x, sigma, cond):
        if isinstance(cond, tuple):                                   # guidance-distilled: (cond, w), 1 call
            c, w = cond
            return self.inner.denoise(x, sigma, {self.cond_kwarg: c,
                                                 self.guidance_kwarg: torch.full_like(sigma, w, dtype=torch.float32)})
        c = self._null(x.shape[0]) if cond is None else cond
        return self.inner.denoise(x, sigma, {self.cond_kwarg: c})

    def denoise_pair(self, x, sigma, cond):
        """Both branches in one call of 2B (labels or tensors of matching shape), else two calls."""
        null = self._null(x.shape[0])
        if isinstance(cond, torch.Tensor) and cond.shape[1:] == null.shape[1:]:
            d = self.inner.denoise(torch.cat([x, x]), torch.cat([sigma, sigma]),
                                   {self.cond_kwarg: torch.cat([cond, null.to(cond.dtype)])})
            return d.chunk(2)
        return super().denoise_pair(x, sigma, cond)


def cycle_labels(labels, batch: int, num_classes: int, device="cpu") -> torch.Tensor:
    """int or sequence of ints in 0..num_classes-1 -> [batch] int64, labels[i % len] for sample i."""
    lab = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if lab.numel() == 0:
        raise ScheduleLabError("an empty label list; give one label or several (e.g. 3 or 0,1,2)")
    if num_classes and (lab.min() < 0 or lab.max() >= num_classes):
        raise ScheduleLabError(f"label {int(lab.max() if lab.max() >= num_classes else lab.min())} out of range; "
                               f"this model has classes 0..{num_classes - 1}")
    idx = torch.arange(batch) % lab.numel()
    return lab[idx].to(device)


class GuidedDenoiser(Denoiser):
    """D_w(x, sigma) = D_uncond + w (D_cond - D_uncond) for a ConditionalDenoiser `base`.

    Args:
        base: the conditional model (its `denoise_cond`, `denoise_pair`, `expand_cond`).
        cond: the conditioning (a label, labels cycled over the batch, or a tensor the base accepts);
            None: the unconditional model (w is then irrelevant).
        w: guidance scale (w = 1: the conditional model; w = 0: the unconditional one).
    """

    def __init__(self, base: ConditionalDenoiser, cond, w: float = 1.0):
        super().__init__()
        w = float(w)
        if not math.isfinite(w):
            raise ScheduleLabError(f"guidance scale must be a finite number; got {w}")
        if not isinstance(base, ConditionalDenoiser):
            raise ScheduleLabError(f"model {getattr(base, 'name', base)!r} takes no conditioning, so it cannot "
                                   "be guided; drop --label / --cfg or load a conditional model")
        if cond is not None:
            base.expand_cond(cond, 1)                                  # validates labels before any work
        self.base, self.cond, self.w = base, cond, w
        self.sigma_min, self.sigma_max, self.sigma_data = base.sigma_min, base.sigma_max, base.sigma_data
        self.event_shape = base.event_shape
        self.name = f"{base.name} | {_cond_str(cond)}, w={w:g}"
        one = cond is None or w in (0.0, 1.0) or base.guidance_distilled
        self.calls_per_eval = 1 if one else 2

    @property
    def dtype(self):
        return self.base.dtype

    @property
    def device(self):
        return self.base.device

    def denoise(self, x, sigma):
        if self.cond is None or self.w == 0.0:
            return self.base.denoise_cond(x, sigma, None)
        c = self.base.expand_cond(self.cond, x.shape[0])
        if self.w == 1.0:
            return self.base.denoise_cond(x, sigma, c)
        if self.base.guidance_distilled:
            return self.base.denoise_cond(x, sigma, (c, self.w))
        d_cond, d_uncond = self.base.denoise_pair(x, sigma, c)
        return d_uncond + self.w * (d_cond - d_uncond)

    def guidance_key(self) -> str:
        """What distinguishes this guided model from its base and from other labels / scales."""
        c = self.cond.tolist() if isinstance(self.cond, torch.Tensor) else self.cond
        return f"guided|{c!r}|{self.w!r}"

    def expected_labels(self, n: int, chunk: int | None = None) -> torch.Tensor | None:
        """The label sample i of an n-batch gets ([n] int64), when the conditioning is class labels;
        labels cycle within each model call's batch, so pass the sampler's chunk size if it splits."""
        if self.cond is None or not self.base.num_classes:
            return None
        idx = torch.arange(n) if chunk is None else torch.arange(n) % chunk
        lab = self.base.expand_cond(self.cond, n).cpu()
        return lab[idx]

    def describe(self) -> dict:
        return {**super().describe(), "label": _cond_str(self.cond), "guidance_scale": self.w,
                "calls_per_eval": self.calls_per_eval}


def _cond_str(cond) -> str:
    if cond is None:
        return "unconditional"
    if isinstance(cond, (int, float)):
        return f"label {int(cond)}"
    if isinstance(cond, (list, tuple)) and all(isinstance(c, int) for c in cond):
        return "labels " + ",".join(str(c) for c in cond)
    return "cond tensor"


def guided(model: Denoiser, label=None, w: float | None = None) -> Denoiser:
    """`model` itself when neither a label nor a guidance scale is given, else GuidedDenoiser.

    A guidance scale without a label guides towards labels cycled over all classes."""
    if label is None and w is None:
        return model
    if not isinstance(model, ConditionalDenoiser):
        raise ScheduleLabError(f"model {getattr(model, 'name', model)!r} is not conditional: --label / --cfg "
                               "need a class-conditional model (e.g. --model digits-flow)")
    if label is None or label == "all":
        if not model.num_classes:
            raise ScheduleLabError(f"model {model.name!r} has no class labels; give its conditioning explicitly")
        label = list(range(model.num_classes))
    return GuidedDenoiser(model, label, 1.0 if w is None else w)


def parse_label(text: str | None):
    """CLI text -> label: None, an int ("3"), a list ("0,1,2"), or "all" -> the string "all"."""
    if text is None or str(text).strip() == "":
        return None
    t = str(text).strip().lower()
    if t in ("all", "cycle"):
        return "all"
    try:
        vals = [int(v) for v in t.split(",")]
    except ValueError:
        raise ScheduleLabError(f"--label {text!r}: give a class index (3), a list (0,1,2) or `all`") from None
    return vals[0] if len(vals) == 1 else vals


def calls_per_eval(model) -> int:
    """Network calls per evaluation of `model` (2 for a guided model at w != 0, 1; else 1)."""
    return int(getattr(model, "calls_per_eval", 1))

