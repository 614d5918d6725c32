"""Offline image metrics for the digits model (methods.md section 7).

A small CNN classifier trained on the real training split (`core.train.images.train_classifier`,
weights in checkpoints/digits/classifier.safetensors) gives
- its penultimate features for the Frechet distance (FD; Heusel et al. 2017, the FID formula on
  our own features) and KID (Binkowski et al. 2018: unbiased MMD^2 with the cubic polynomial
  kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets) against the held-out split;
- its confidence (mean max softmax probability) and the class balance of generated samples;
and the discretization error of an n-step sample against a many-step Heun reference from the
same initial noise (ODE solvers): mean over images of the RMS pixel difference, data units.
"""
from __future__ import annotations

import hashlib
import math
from functools import lru_cache

import numpy as np
import torch
from torch import nn
import torch.nn.functional as Fn

from core.errors import ScheduleLabError
from core.models.checkpoints import ROOT, load_state_dict, read_metadata, state_dict_mismatch
from core.models.digits import CLASSIFIER_CHECKPOINT

CACHE = ROOT / ".cache" / "schedule_lab"


class DigitClassifier(nn.Module):
    """[n, 1, 16, 16] in [-1, 1] -> logits [n, 10]; `features` gives the penultimate layer [n, features]."""

    def __init__(self, width: int = 32, features: int = 64, classes: int = 10, size: int = 16):
        super().__init__()
        self.config = {"width": width, "features": features, "classes": classes, "size": size}
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.25),
            nn.Linear(2 * w * (size // 4) ** 2, features), nn.ReLU())
        self.head = nn.Linear(features, classes)
        # features are divided by this (set after training: RMS of ||f|| / sqrt(d) on the real
        # training split), so that x.y / d ~ 1 in the KID kernel and FD is on a unit scale
        self.register_buffer("feature_scale", torch.ones(()))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations [n, features], divided by `feature_scale`."""
        return self.body(x) / self.feature_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def load_classifier(path=CLASSIFIER_CHECKPOINT, device="cpu") -> DigitClassifier:
    """The shipped digit classifier (eval mode, no grad)."""
    return _load_classifier(str(path), str(device))


@lru_cache(maxsize=4)
def _load_classifier(path: str, device: str) -> DigitClassifier:
    from pathlib import Path
    if not Path(path).is_file():
        raise ScheduleLabError(f"the digit classifier is missing at {path}; restore it from git or train "
                               "it with `python -m core train-images classifier`")
    cfg = read_metadata(path)
    try:
        clf = DigitClassifier(**cfg.get("net", {}))
        clf.load_state_dict(load_state_dict(path))
    except (RuntimeError, TypeError) as e:
        raise ScheduleLabError(f"classifier checkpoint {path} does not match its architecture: "
                               f"{state_dict_mismatch(e)}; re-train it") from None
    return clf.to(device).eval().requires_grad_(False)


@torch.no_grad()
def classify(x: torch.Tensor, clf: DigitClassifier | None = None, batch: int = 1000):
    """Images [n, 1, 16, 16] -> (probabilities [n, 10], features [n, F]) as float64 CPU tensors."""
    clf = clf or load_classifier()
    _check(x)
    dev = next(clf.parameters()).device
    probs, feats = [], []
    for i in range(0, x.shape[0], batch):
        f = clf.body(x[i:i + batch].to(dev, torch.float32))
        feats.append((f / clf.feature_scale).double().cpu())
        probs.append(torch.softmax(clf.head(f), dim=1).double().cpu())
    return torch.cat(probs), torch.cat(feats)


def _check(x: torch.Tensor) -> torch.Tensor:
    if x.ndim != 4 or x.shape[1:] != (1, 16, 16):
        raise ScheduleLabError(f"digit metrics need images [n, 1, 16, 16]; got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ScheduleLabError("samples contain NaN or inf: the sampler diverged (check the schedule)")
    return x


def frechet_distance(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between Gaussian fits of features [n, d].

    tr (S1 S2)^(1/2) = sum of sqrt(eigenvalues of S1^(1/2) S2 S1^(1/2)) (symmetric PSD; float64)."""
    f1, f2 = f1.double(), f2.double()
    if f1.shape[0] < 2 or f2.shape[0] < 2:
        raise ScheduleLabError("FD needs at least 2 samples in each set")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = torch.cov(f1.T), torch.cov(f2.T)
    w, v = torch.linalg.eigh(s1)
    r1 = (v * w.clamp_min(0).sqrt()) @ v.T
    tr_sqrt = torch.linalg.eigvalsh(r1 @ s2 @ r1).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * tr_sqrt)


def kid(f1: torch.Tensor, f2: torch.Tensor, subsets: int = 50, subset_size: int = 1000,
        seed: int = 0) -> tuple:
    """Kernel Inception Distance on features [n, d], [m, d] -> (mean, std) over random subsets.

    Each subset estimate is the unbiased MMD^2 (diagonals excluded) with k(x, y) = (x.y/d + 1)^3;
    subset_size is capped at min(n, m)."""
    f1, f2 = f1.double(), f2.double()
    m = min(subset_size, f1.shape[0], f2.shape[0])
    if m < 2:
        raise ScheduleLabError("KID needs at least 2 samples in each set")
    d = f1.shape[1]
    g = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(subsets):
        x = f1[torch.randperm(f1.shape[0], generator=g)[:m]]
        y = f2[torch.randperm(f2.shape[0], generator=g)[:m]]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        vals.append(float((kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum())
                          / (m * (m - 1)) - 2 * kxy.mean()))
    v = np.asarray(vals)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def confidence(probs: torch.Tensor) -> float:
    """Mean over images of the classifier's max class probability."""
    return float(probs.max(dim=1).values.mean())


def class_balance(probs: torch.Tensor) -> list:
    """Fraction of images assigned (argmax) to each class, [classes] summing to 1."""
    counts = torch.bincount(probs.argmax(dim=1), minlength=probs.shape[1]).double()
    return (counts / counts.sum()).tolist()


def reference_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean over images of the RMS pixel difference between x and the reference from the same noise."""
    if x.shape != ref.shape:
        raise ScheduleLabError(f"reference has shape {tuple(ref.shape)}, samples {tuple(x.shape)}")
    e = float((x.double() - ref.double().to(x.device)).square().flatten(1).mean(1).sqrt().mean())
    if not math.isfinite(e):
        raise ScheduleLabError(f"ref_error is {e}: the samples or the many-step reference contain NaN or inf "
                               "(nothing is reported; check the model and the schedule)")
    return e


@lru_cache(maxsize=4)
def real_features(split: str = "test"):
    """(probabilities, features) of a real digits split ("train" or "test" = held-out)."""
    from core.data.digits import load_digits_split
    d = load_digits_split()
    if split not in ("train", "test"):
        raise ScheduleLabError(f"split must be 'train' or 'test'; got {split!r}")
    return classify(d.train_x if split == "train" else d.test_x)


def image_metrics(x: torch.Tensor, ref: torch.Tensor | None = None, kid_subsets: int = 50,
                  seed: int = 0) -> dict:
    """All digit metrics of samples x [n, 1, 16, 16] against the held-out split.

    Returns fd, kid, kid_std, confidence, class_balance (10 fractions), balance_max_dev
    (largest |fraction - 0.1|), ref_error (None without `ref`), n."""
    probs, feats = classify(_check(x))
    _, real = real_features("test")
    bal = class_balance(probs)
    k, ks = kid(feats, real, subsets=kid_subsets, seed=seed)
    return {"fd": frechet_distance(feats, real), "kid": k, "kid_std": ks,
            "confidence": confidence(probs), "class_balance": bal,
            "balance_max_dev": float(max(abs(b - 1 / len(bal)) for b in bal)),
            "ref_error": None if ref is None else reference_error(x, ref), "n": int(x.shape[0])}


def label_accuracy(x: torch.Tensor, labels: torch.Tensor) -> dict:
    """Conditional samples x [n, 1, 16, 16] meant to show digits `labels` [n]: the fraction the
    classifier assigns to its label, overall and per class ({class: fraction}, classes present)."""
    probs, _ = classify(_check(x))
    labels = torch.as_tensor(labels).reshape(-1).cpu()
    hit = (probs.argmax(1).cpu() == labels).double()
    return {"accuracy": float(hit.mean()),
            "per_class": {int(c): float(hit[labels == c].mean()) for c in labels.unique().tolist()}}


def model_fingerprint(model: torch.nn.Module) -> str:
    """Short SHA-1 of a model's parameters and buffers (keys the on-disk reference cache), and of its
    guidance (label, scale) when it is a guided denoiser."""
    h = hashlib.sha1()
    if hasattr(model, "guidance_key"):
        h.update(model.guidance_key().encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def sample_images(model, schedule, solver: str, n: int, seed: int = 0, chunk: int = 500,
                  noise: torch.Tensor | None = None):
    """n samples in chunks of `chunk` (bounded memory) -> (x [n, ...] CPU float32, nfe, seconds).

    The initial noise is `initial_noise(model, n, sigma_0, seed)` (the same for every chunk size);
    a stochastic solver's draws in chunk k come from generator seed `seed * 1000 + k + 1`."""
    from core.sampling import generate, initial_noise
    if n < 1:
        raise ScheduleLabError(f"n must be >= 1; got {n}")
    z = initial_noise(model, n, schedule.sigma_max, seed) if noise is None else noise
    xs, nfe, secs = [], 0, 0.0
    for k, i in enumerate(range(0, n, chunk)):
        r = generate(model, schedule, min(chunk, n - i), solver,
                     seed=seed * 1000 + k, noise=z[i:i + chunk])
        xs.append(r.x.float().cpu())
        nfe, secs = r.nfe, secs + r.seconds
    return torch.cat(xs), nfe, secs


REFERENCE = {"solver": "heun", "schedule": "karras", "steps": 50}   # 99 NFE


def reference_samples(model, n: int, seed: int = 0, sigma_max: float | None = None,
                      steps: int | None = None, cache: bool = True) -> torch.Tensor:
    """Many-step Heun / EDM (rho = 7) samples (REFERENCE["steps"] steps unless given) from the same
    initial noise as `sample_images` (seed, sigma_0 = sigma_max); cached under CACHE/reference/,
    keyed by core.cache.model_fingerprint (weights + wrapper options + code version), the reference
    solver, schedule, steps, sigma range, n and seed. A non-finite reference raises and is never cached."""
    from safetensors.torch import load_file, save_file

    from core import cache as kc
    from core.schedules import make_schedule
    steps = int(steps or REFERENCE["steps"])
    smax = float(sigma_max or model.sigma_max)
    sched = make_schedule(REFERENCE["schedule"], steps, model.sigma_min, smax)
    key = (f"{kc.model_fingerprint(model)}_{REFERENCE['solver']}-{REFERENCE['schedule']}{steps}_n{n}_s{seed}"
           f"_{kc.key_number(model.sigma_min)}-{kc.key_number(smax)}_v{kc.CODE_VERSION}")
    path = kc.cache_dir("reference", CACHE) / f"{key}.safetensors"
    if cache and path.is_file():
        try:
            x = load_file(str(path))["x"]
            if bool(torch.isfinite(x).all()) and x.shape[0] == n:
                return x
        except Exception:  # a corrupt cache file is recomputed
            pass
        path.unlink(missing_ok=True)
    x, _, _ = sample_images(model, sched, REFERENCE["solver"], n, seed)
    kc.require_finite(x, f"the {steps}-step {REFERENCE['solver']} reference of {getattr(model, 'name', 'the model')}")
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"x": x.contiguous()}, str(tmp))
        tmp.replace(path)
    return x


def evaluate_images(model, schedule, solver: str, n: int = 1000, seeds=(0,), reference: bool = True,
                    kid_subsets: int = 50) -> dict:
    """Digit metrics of `schedule` + `solver` over several seeds, with 95 % t-intervals.

    Returns, for fd, kid, confidence, balance_max_dev, ref_error: the mean over seeds and
    KEY_ci (half-width; nan for one seed); class_balance of the first seed; nfe; seconds
    (sampling wall time summed over seeds); per_seed (the raw dicts). ref_error is None for
    stochastic solvers or when reference=False."""
    from core.metrics.toy import mean_ci
    from core.solvers import get_solver
    spec = get_solver(solver)
    use_ref = reference and not spec.stochastic
    per, secs, nfe = [], 0.0, 0
    for s in seeds:
        x, nfe, t = sample_images(model, schedule, solver, n, s)
        secs += t
        ref = reference_samples(model, n, s, schedule.sigma_max) if use_ref else None
        per.append(image_metrics(x, ref, kid_subsets=kid_subsets, seed=s))
    out = {"nfe": nfe, "seconds": secs, "n": n, "seeds": list(seeds), "solver": solver,
           "schedule": schedule.name, "sigmas": list(schedule.sigmas),
           "class_balance": per[0]["class_balance"], "per_seed": per}
    for k in ("fd", "kid", "confidence", "balance_max_dev", "ref_error"):
        vals = [p[k] for p in per]
        if any(v is None for v in vals):
            out[k], out[k + "_ci"] = None, None
        else:
            out[k], out[k + "_ci"] = mean_ci(vals)
    return out
