"""Train the digits UNet with the EDM recipe (Karras et al. 2022, section 5 and Table 1).

    ln sigma ~ N(P_mean, P_std^2)                       P_mean = -1.2, P_std = 1.2
    loss = lambda(sigma) || D(x0 + sigma n, sigma) - x0 ||^2,   lambda = (s^2 + sd^2) / (s sd)^2

Adam with a linear warm-up and cosine decay (to 10 % of the peak), gradient clipping at 1,
and an exponential moving average of the weights (decay min(ema, (1 + k) / (10 + k)) at
step k); the EMA weights are what is saved. Deterministic for a given seed and --steps
(a --minutes budget stops on wall time, so it is reproducible only up to the step reached).
Entry point: `python -m core train-images digits [--steps K | --minutes M] [--seed 0]`.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Callable

import torch

from core.errors import ScheduleLabError
from core.models.checkpoints import save_weights
from core.models.digits import DIGITS_CHECKPOINT, UNetDenoiser
from core.models.unet import UNet

P_MEAN, P_STD = -1.2, 1.2
DEFAULTS = {"channels": (32, 64, 128), "blocks": 1, "emb": 128, "attention": True, "dropout": 0.0,
            "batch": 128, "lr": 1e-3, "warmup": 200, "ema": 0.999, "steps": 4000,
            "shift_prob": 0.0}


def edm_loss(model: UNetDenoiser, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mean EDM loss over the batch x0 [B, C, H, W] (sigma and noise drawn from `generator`)."""
    b = x0.shape[0]
    sigma = (P_MEAN + P_STD * torch.randn(b, generator=generator)).exp().to(x0)
    n = torch.randn(x0.shape, generator=generator).to(x0) * sigma.reshape(-1, 1, 1, 1)
    weight = (sigma ** 2 + model.sigma_data ** 2) / (sigma * model.sigma_data) ** 2
    err = (model(x0 + n, sigma) - x0).square().flatten(1).sum(1)
    return (weight * err).mean() / x0[0].numel()


def random_shift(x: torch.Tensor, prob: float, generator: torch.Generator) -> torch.Tensor:
    """Shift a random `prob` fraction of images by one pixel in x and / or y (background -1 fills)."""
    if prob <= 0:
        return x
    b = x.shape[0]
    pick = torch.rand(b, generator=generator) < prob
    dx = torch.randint(-1, 2, (b,), generator=generator)
    dy = torch.randint(-1, 2, (b,), generator=generator)
    pad = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    out = x.clone()
    h, w = x.shape[-2:]
    for i in torch.nonzero(pick).flatten().tolist():
        out[i] = pad[i, :, 1 + dy[i]:1 + dy[i] + h, 1 + dx[i]:1 + dx[i] + w]
    return out


def lr_at(frac: float, step: int, lr: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine from lr to 0.1 lr as frac goes 0 -> 1."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    return lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def train_digits(out: str | Path = DIGITS_CHECKPOINT, steps: int | None = None,
                 minutes: float | None = None, seed: int = 0, size: int = 16,
                 progress: Callable[[dict], None] | None = None, log_every: int = 100,
                 save_every_s: float = 300.0, **overrides) -> dict:
    """Train the digits UNet; write EMA weights + config to `out`; return the training record.

    Args:
        steps: optimizer steps (default 4000); minutes: wall-clock budget, stops early when
            reached (the LR schedule then follows elapsed / budget).
        progress: called every `log_every` steps with {"step", "loss", "seconds", "lr"}.
        overrides: any key of DEFAULTS (channels, blocks, batch, lr, ema, shift_prob, ...).
    """
    from core.data.digits import load_digits_split
    bad = set(overrides) - set(DEFAULTS)
    if bad:
        raise ScheduleLabError(f"unknown training option {sorted(bad)[0]!r}; options: {', '.join(DEFAULTS)}")
    cfg = {**DEFAULTS, **overrides}
    if steps is None and minutes is None:
        steps = cfg["steps"]
    if (steps is not None and steps < 1) or (minutes is not None and minutes <= 0):
        raise ScheduleLabError(f"--steps must be >= 1 and --minutes > 0; got {steps}, {minutes}")
    out = Path(out)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    data = load_digits_split(size).train_x
    net = UNet(in_ch=1, channels=cfg["channels"], blocks=cfg["blocks"], emb=cfg["emb"],
               attention=cfg["attention"], dropout=cfg["dropout"])
    model = UNetDenoiser(net, size=size, name="digits")

    def batch_loss(step):
        idx = torch.randint(0, data.shape[0], (cfg["batch"],), generator=g)
        return edm_loss(model, random_shift(data[idx], cfg["shift_prob"], g), g)
    return fit(model, batch_loss, out, cfg, steps, minutes, seed, progress, log_every, save_every_s)


def fit(model, batch_loss: Callable[[int], torch.Tensor], out: Path, cfg: dict, steps: int | None,
        minutes: float | None, seed: int, progress=None, log_every: int = 100,
        save_every_s: float = 300.0) -> dict:
    """The optimisation loop shared by the image trainers: Adam (lr warm-up + cosine, `lr_at`),
    gradient clipping at 1, EMA of the weights (saved, with `model.config()` and the record, to
    `out` every `save_every_s` and at the end). `batch_loss(step)` draws a batch and returns its loss."""
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.999), eps=1e-8)
    budget = None if minutes is None else 60.0 * minutes
    curve, acc, nacc = [], 0.0, 0
    t0 = last_save = time.perf_counter()
    c0 = time.process_time()
    step = 0
    while True:
        elapsed = time.perf_counter() - t0
        frac = max(step / steps if steps else 0.0, elapsed / budget if budget else 0.0)
        if frac >= 1.0:
            break
        lr = lr_at(frac, step, cfg["lr"], cfg["warmup"])
        for pg in opt.param_groups:
            pg["lr"] = lr
        loss = batch_loss(step)
        if not torch.isfinite(loss):
            raise ScheduleLabError(f"training diverged at step {step} (loss {float(loss)}); lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        beta = min(cfg["ema"], (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - beta)
        step += 1
        acc, nacc = acc + float(loss.detach()), nacc + 1
        if step % log_every == 0 or (steps and step == steps):
            rec = {"step": step, "loss": acc / nacc, "seconds": time.perf_counter() - t0, "lr": lr}
            curve.append([step, round(rec["loss"], 5), round(rec["seconds"], 1)])
            acc, nacc = 0.0, 0
            if progress:
                progress(rec)
        if time.perf_counter() - last_save > save_every_s:
            _save(ema, out, cfg, seed, step, time.perf_counter() - t0, time.process_time() - c0, curve,
                  partial=True, asked=(steps, minutes))
            last_save = time.perf_counter()
    seconds = time.perf_counter() - t0
    return _save(ema, out, cfg, seed, step, seconds, time.process_time() - c0, curve, partial=False,
                 asked=(steps, minutes))


def _save(ema, out: Path, cfg: dict, seed: int, step: int, seconds: float,
          cpu_seconds: float, curve: list, partial: bool, asked=(None, None)) -> dict:
    """Atomically write the EMA weights with their config and training record (`seconds` is
    wall time, `cpu_seconds` the process CPU time: on a shared machine the latter measures cost;
    `asked`: the run's --steps and --minutes caps, so a card can name the command)."""
    record = {"steps": step, "max_steps": asked[0], "budget_minutes": asked[1], "seconds": round(seconds, 1),
              "cpu_seconds": round(cpu_seconds, 1),
              "seconds_per_step": round(seconds / max(step, 1), 4), "seed": seed,
              "threads": torch.get_num_threads(), "finished": not partial,
              "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
              "loss_curve": curve, "data": "sklearn load_digits, train split (core.data.digits)"}
    meta = {**ema.config(), "training": record}
    tmp = out.with_name(out.name + ".tmp")
    save_weights(ema, tmp, meta)
    tmp.replace(out)
    return {"path": str(out), **record}


def train_classifier(out=None, epochs: int = 30, seed: int = 0, batch: int = 64, lr: float = 2e-3,
                     shift_prob: float = 0.5, progress: Callable[[dict], None] | None = None) -> dict:
    """Train the digit classifier (core.metrics.images.DigitClassifier) on the real training split.

    Adam with cosine decay, random one-pixel shifts (prob `shift_prob`) for robustness to
    slightly off-centre samples; reports held-out accuracy; writes safetensors + config."""
    from core.data.digits import load_digits_split
    from core.models.digits import CLASSIFIER_CHECKPOINT
    from core.metrics.images import DigitClassifier
    out = Path(out or CLASSIFIER_CHECKPOINT)
    if epochs < 1:
        raise ScheduleLabError(f"epochs must be >= 1; got {epochs}")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    d = load_digits_split()
    clf = DigitClassifier()
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    n = d.train_x.shape[0]
    total, step = epochs * math.ceil(n / batch), 0
    t0 = time.perf_counter()
    for ep in range(epochs):
        clf.train()
        perm = torch.randperm(n, generator=g)
        losses = []
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            for pg in opt.param_groups:
                pg["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            x = random_shift(d.train_x[idx], shift_prob, g)
            loss = torch.nn.functional.cross_entropy(clf(x), d.train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            losses.append(float(loss.detach()) * len(idx))
        if progress:
            progress({"epoch": ep + 1, "loss": sum(losses) / n, "seconds": time.perf_counter() - t0})
    clf.eval()
    with torch.no_grad():
        acc = float((clf(d.test_x).argmax(1) == d.test_y).double().mean())
        train_acc = float((clf(d.train_x).argmax(1) == d.train_y).double().mean())
        f = clf.body(d.train_x)
        clf.feature_scale.fill_(float((f.square().sum(1).mean() / f.shape[1]).sqrt()))
    record = {"held_out_accuracy": round(acc, 4), "train_accuracy": round(train_acc, 4),
              "held_out_n": int(d.test_x.shape[0]), "epochs": epochs, "seed": seed,
              "seconds": round(time.perf_counter() - t0, 1), "shift_prob": shift_prob}
    tmp = out.with_name(out.name + ".tmp")
    save_weights(clf, tmp, {"net": clf.config, "training": record})
    tmp.replace(out)
    return {"path": str(out), **record}


# ---- the model card -----------------------------------------------------------------------------

def quality_report(model, n: int = 1000, seeds=(0, 1, 2)) -> dict:
    """The card's quality bar: Heun 50-step (99 NFE) EDM-schedule samples, n per seed, against the
    held-out split; the FD baseline is FD(random n-subset of the real train split, held-out)."""
    from core.metrics import images as im
    from core.metrics.toy import mean_ci
    _, ftrain = im.real_features("train")
    _, fheld = im.real_features("test")
    per, base = [], []
    for s in seeds:
        x = im.reference_samples(model, n, s)
        per.append(im.image_metrics(x, seed=s))
        idx = torch.randperm(ftrain.shape[0], generator=torch.Generator().manual_seed(s))[:n]
        base.append(im.frechet_distance(ftrain[idx], fheld))
    out = {"n": n, "seeds": list(seeds), "nfe": 2 * im.REFERENCE["steps"] - 1,
           "class_balance_per_seed": [p["class_balance"] for p in per],
           "fd_real_train_vs_heldout": mean_ci(base)}
    for k in ("fd", "kid", "confidence", "balance_max_dev"):
        out[k] = mean_ci([p[k] for p in per])
    bal = torch.tensor(out["class_balance_per_seed"]).mean(0)
    out["class_balance_mean"] = bal.tolist()
    out["bar"] = {"confidence >= 0.9": out["confidence"][0] >= 0.9,
                  "every class 10 +- 4 %": bool(((bal - 0.1).abs() <= 0.04).all()),
                  "every class 10 +- 4 % in every seed": all(p["balance_max_dev"] <= 0.04 for p in per),
                  "FD <= 2 x FD(train, held-out)": out["fd"][0] <= 2 * out["fd_real_train_vs_heldout"][0]}
    return out


@torch.no_grad()
def denoiser_accuracy(model, sigmas=(0.5, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0), n: int = 96, seed: int = 2) -> list:
    """[(sigma, RMS(D - exact posterior mean of the train set), RMS(exact - mean image))] on held-out digits."""
    from core.data.digits import load_digits_split
    d = load_digits_split()
    X = d.train_x.flatten(1).double()
    g = torch.Generator().manual_seed(seed)
    rows = []
    for s in sigmas:
        x = d.test_x[:n] + s * torch.randn(d.test_x[:n].shape, generator=g)
        w = torch.softmax(-torch.cdist(x.flatten(1).double(), X) ** 2 / (2 * s * s), dim=1)
        exact = w @ X
        den = model(x, s).flatten(1).double()
        rows.append((s, float((den - exact).square().mean(1).sqrt().mean()),
                     float((exact - X.mean(0)).square().mean(1).sqrt().mean())))
    return rows


def _spark(values) -> str:
    bars = "▁▂▃▄▅▆▇█"
    lo, hi = min(values), max(values)
    return "".join(bars[int((v - lo) / (hi - lo + 1e-12) * (len(bars) - 1))] for v in values)


def write_card(folder=None, n: int = 1000, seeds=(0, 1, 2)) -> Path:
    """(Re)write checkpoints/digits/CARD.md and samples.png from the shipped checkpoints."""
    from core.images_io import save_grid
    from core.metrics import images as im
    from core.models.checkpoints import read_metadata
    from core.models.digits import CLASSIFIER_CHECKPOINT, load_unet_checkpoint
    folder = Path(folder or DIGITS_CHECKPOINT.parent)
    unet_path, clf_path = folder / "unet.safetensors", folder / CLASSIFIER_CHECKPOINT.name
    model = load_unet_checkpoint(unet_path, name="digits")
    meta, cmeta = read_metadata(unet_path), read_metadata(clf_path)["training"]
    tr, net = meta["training"], meta["net"]
    q = quality_report(model, n, seeds)
    save_grid(im.reference_samples(model, n, seeds[0])[:100], folder / "samples.png", nrow=10, scale=3)
    nparams = sum(p.numel() for p in model.parameters())
    curve = tr["loss_curve"]
    busy = tr.get("cpu_seconds", float("nan")) / (tr["seconds"] * tr["threads"])
    pick = curve[:: max(1, len(curve) // 10)] + ([curve[-1]] if len(curve) % 10 else [])
    ci = lambda v, f=".4f": f"{v[0]:{f}} ± {v[1]:{f}}"  # noqa: E731
    yes = lambda b: "met" if b else "**NOT met**"  # noqa: E731
    lines = [
        "# Digits UNet (EDM) — model card", "",
        "`checkpoints/digits/unet.safetensors`, loaded by `core.models.registry.load_model(\"digits\")` "
        "(`--model digits`).", "",
        "## Data",
        "scikit-learn `load_digits` (1,797 images, 8x8, values 0..16, shipped inside scikit-learn: nothing is "
        "downloaded), bilinearly upsampled to 1x16x16 and scaled to [-1, 1] (background -1). Stratified, "
        "deterministic split (numpy seed 0, 25 % of every class held out): 1,347 train / 450 held-out "
        "(`core/data/digits.py`). The UNet and the metric classifier see only the train split. Augmentation: "
        f"one-pixel shifts with probability {tr['options']['shift_prob']} (UNet), 0.5 (classifier).", "",
        "## Architecture",
        f"EDM preconditioning (Karras et al. 2022, Table 1; sigma_data = {meta['sigma_data']}, "
        f"c_noise = ln(sigma)/4) around a UNet (`core/models/unet.py`): channels {net['channels']} at 16/8/4 px, "
        f"{net['blocks']} residual block(s) per level (GroupNorm, SiLU, 3x3 convs, scale/shift from a "
        f"{net['emb']}-d Fourier noise embedding), {'self-attention at 4x4, ' if net['attention'] else ''}"
        f"average-pool down / nearest up, skip concatenation. {nparams:,} parameters; "
        f"{unet_path.stat().st_size / 1e6:.1f} MB safetensors (float32). Valid sigma range "
        f"[{meta['sigma_min']}, {meta['sigma_max']}].", "",
        "## Training",
        f"`python -m core train-images digits --steps {tr['steps']} --seed {tr['seed']}` "
        f"(`core/train/images.py`): EDM loss, ln sigma ~ N(-1.2, 1.2^2), weight (s^2 + sd^2)/(s sd)^2; Adam, "
        f"lr {tr['options']['lr']} (warm-up {tr['options']['warmup']} steps, cosine to 10 %), batch "
        f"{tr['options']['batch']}, gradient clipping 1, EMA {tr['options']['ema']} (saved weights are the EMA).",
        "",
        f"- steps: {tr['steps']}; wall time {tr['seconds'] / 60:.1f} min with {tr['threads']} torch thread(s); "
        f"CPU time {tr.get('cpu_seconds', float('nan')) / 60:.1f} min ({tr['seconds_per_step']:.3f} s/step wall).",
        f"- CPU time / (wall time x threads) = {busy:.2f}: "
        + ("the machine's 2 cores were shared with other jobs during this run, so the wall time is inflated; "
           if busy < 0.7 else "the run had the cores mostly to itself; ")
        + "uncontended, 2 threads run a step in about 0.2-0.25 s (about 15 min for 4,000 steps), inside the "
        "45-minute budget.",
        "- bitwise reproducible for the same seed, step count and thread count.", "",
        f"Loss curve (mean EDM loss per {curve[0][0]} steps, log scale, from step {curve[1][0]}): "
        f"`{_spark([math.log(c[1]) for c in curve[1:]])}`", "",
        "| step | loss | wall s |", "|---|---|---|"] + [f"| {c[0]} | {c[1]:.4f} | {c[2]:.0f} |" for c in pick] + [
        "",
        "## Metric classifier",
        f"`checkpoints/digits/classifier.safetensors` (`core/metrics/images.py`, `python -m core train-images "
        f"classifier`): 4 conv layers + 64-d penultimate layer (the FD / KID features), {cmeta['epochs']} epochs "
        f"on the train split. Held-out accuracy **{cmeta['held_out_accuracy']:.4f}** ({cmeta['held_out_n']} "
        f"images; train {cmeta['train_accuracy']:.4f}).", "",
        "## Quality (the bar of issue 5)",
        f"Heun, 50 steps on the EDM (rho 7) schedule = {q['nfe']} NFE, {q['n']} samples per seed, seeds "
        f"{q['seeds']}, against the 450 held-out digits; mean ± 95 % t-interval over seeds.", "",
        "| metric | value | bar | |", "|---|---|---|---|",
        f"| mean classifier confidence | {ci(q['confidence'])} | >= 0.9 | {yes(q['bar']['confidence >= 0.9'])} |",
        f"| class balance, largest abs(fraction - 0.1) | {ci(q['balance_max_dev'])} | <= 0.04 | "
        f"{yes(q['bar']['every class 10 +- 4 % in every seed'])} |",
        f"| FD to held-out | {ci(q['fd'])} | <= 2 x {q['fd_real_train_vs_heldout'][0]:.4f} | "
        f"{yes(q['bar']['FD <= 2 x FD(train, held-out)'])} |",
        f"| FD(real train {q['n']}-subset, held-out) | {ci(q['fd_real_train_vs_heldout'])} | (baseline) | |",
        f"| KID to held-out | {ci(q['kid'], '.5f')} | | |", "",
        "Class fractions (mean over seeds, classes 0..9): "
        + ", ".join(f"{v:.3f}" for v in q["class_balance_mean"]) + ".", "",
        "![samples](samples.png)", "",
        "First 100 reference samples (seed 0). Regenerate this card: `python -m core train-images digits --card-only`.",
        "", "## Denoiser accuracy by noise level",
        "RMS (per pixel, data units) between D(x0 + sigma n, sigma) on 96 held-out digits and the exact "
        "posterior mean of the training set (a mixture of its 1,347 images), and between that exact "
        "posterior mean and the mean training image:", "",
        "| sigma | RMS(D - exact) | RMS(exact - mean image) |", "|---|---|---|"] + [
        f"| {s:g} | {e:.3f} | {m:.3f} |" for s, e, m in denoiser_accuracy(model)] + [
        "", "Below sigma ~ 2 the exact training-set posterior snaps to the nearest training image "
        "(memorisation), so a model that generalises differs from it by design. Above sigma ~ 20 the network is rarely trained (ln sigma ~ N(-1.2, 1.2^2) puts 0.02 % of its "
        "samples above sigma = 20), so D drifts from the exact answer there; samplers barely notice, since "
        "at those levels the state is almost all noise (a D error e moves the first DPM-Solver++ step by "
        "about (1 - sigma_1 / sigma_0) e).",
    ]
    card = folder / "CARD.md"
    card.write_text("\n".join(lines) + "\n")
    return card
