"""Train the small MLP denoiser of a 2D toy (EDM, Karras et al. 2022, Sec. 5 and Table 1).

The network is `core.models.mlp.ToyMLP` (with random Fourier features of its input) inside EDM
preconditioning (`MLPDenoiser`), trained on fresh samples of the exact toy mixture with the EDM
loss (Eq. 2 with Table 1's weighting)

    L = E_{sigma, x0, eps} lambda(sigma) ||D(x0 + sigma eps, sigma) - x0||^2 / d,
    lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2,

i.e. ||F - F_target||^2 with unit weight at every sigma. sigma is drawn from EDM's log-normal,
ln sigma ~ N(P_mean, P_std^2) with P_mean = -1.2, P_std = 1.2, except for a fraction
`uniform_frac` drawn log-uniformly over [sigma_min, sigma_max]: the log-normal puts only ~0.3 %
of its mass below sigma = 0.01, where grid8x8's components (std 0.02) are resolved and where
every sampler's last step evaluates D.

Target (decision, documented on the card). `target="data"` regresses on x0 as in EDM.
`target="posterior"` (default) regresses on E[x0 | x], which the mixture gives exactly: since
D and its Jacobian depend on x only, the expected gradient is identical (the two losses differ
by the constant E lambda ||x0 - E[x0|x]||^2), so the minimiser is the same, but the estimator's
variance is far lower. At small sigma the x0 target is almost pure noise (F_target ~ -eps),
which is why the data target leaves grid8x8 several nats behind in the same CPU budget.
The posterior target is exact at any x, so a fraction `wide_frac` of the points is drawn with
its noise scaled by k in [1/3, 3] (`noise_scale`): D is then also learned off p_sigma, where the
states of a few-step sampler lie (grid8x8, SDE-DPM-Solver++(2M), 10 log-linear steps: NLL gap
to the exact denoiser 0.45 -> 0.29 nats at equal steps, 20000 samples).

Adam with linear warm-up and cosine decay; the weights shipped are an exponential moving
average (EMA) of the iterates. `model_error` measures E||D_mlp - D_exact||^2 / d per sigma band
against the exact mixture denoiser; `write_card` writes checkpoints/toy_mlp/CARD.md.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Callable

import torch

from core.device import resolve_device
from core.errors import ScheduleLabError, unknown_name
from core.models.checkpoints import CHECKPOINTS, read_metadata, save_weights
from core.models.mlp import MLPDenoiser, ToyMLP

SIGMA_DATA = 0.5
P_MEAN, P_STD = -1.2, 1.2
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
BAND_EDGES = (0.002, 0.01, 0.1, 1.0, 10.0, 80.0)
TOY_MLP_DIR = CHECKPOINTS / "toy_mlp"
TARGETS = ("posterior", "data")
WIDE_FRAC = 0.3            # default share of off-p_sigma training points (posterior target)


def sample_sigma(n: int, generator: torch.Generator, uniform_frac: float = 0.25,
                 p_mean: float = P_MEAN, p_std: float = P_STD,
                 sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX) -> torch.Tensor:
    """[n] training noise levels: EDM log-normal, a fraction `uniform_frac` log-uniform on
    [sigma_min, sigma_max] (float64)."""
    ln = p_mean + p_std * torch.randn(n, generator=generator, dtype=torch.float64)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    lu = math.log(sigma_min) + u * (math.log(sigma_max) - math.log(sigma_min))
    pick = torch.rand(n, generator=generator, dtype=torch.float64) < uniform_frac
    return torch.where(pick, lu, ln).exp()


def noise_scale(n: int, generator: torch.Generator, wide_frac: float,
                wide_max: float) -> torch.Tensor:
    """[n] factors k: 1, except a fraction `wide_frac` log-uniform on [1 / wide_max, wide_max].
    Training on x = x0 + k sigma eps with the posterior target E[x0 | x, sigma] (exact for any x)
    teaches D off p_sigma too, where the states of a few-step sampler lie."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    k = torch.exp((2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1) * math.log(wide_max))
    return torch.where(u < wide_frac, k, torch.ones_like(k))


def edm_loss(model: MLPDenoiser, x: torch.Tensor, sigma: torch.Tensor,
             target: torch.Tensor) -> torch.Tensor:
    """EDM loss (Karras et al. 2022, Eq. 2 with Table 1's lambda): mean over the batch of
    lambda(sigma) ||D(x, sigma) - target||^2 / d with x = x0 + sigma n. x, target: [B, d];
    sigma: [B]. target = x0 is the EDM loss; target = E[x0 | x] has the same minimiser."""
    w = (sigma ** 2 + model.sigma_data ** 2) / (sigma * model.sigma_data) ** 2
    return (w * ((model(x, sigma) - target) ** 2).mean(dim=1)).mean()


def lr_at(progress: float, lr: float, warmup: float = 0.02, final: float = 0.02) -> float:
    """Linear warm-up over the first `warmup` of training, then cosine decay to `final` * lr."""
    if progress < warmup:
        return lr * (progress / warmup)
    p = min(1.0, (progress - warmup) / (1 - warmup))
    return lr * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * p)))


def train_toy(toy: str, steps: int = 3000, seconds: float | None = None, seed: int = 0,
              batch: int = 1024, lr: float = 2e-3, ema: float = 0.999, uniform_frac: float = 0.25,
              width: int = 256, depth: int = 4, xfeat: int = 64, xscale: float = 1.0,
              target: str = "posterior", wide_frac: float | None = None, wide_max: float = 3.0,
              device=None,
              progress: Callable[[int, float], None] | None = None):
    """Train an MLPDenoiser on fresh samples of `toy` (registry name or mixture JSON file).

    Stops after `steps` optimizer steps or `seconds` of wall time, whichever comes first; the
    lr schedule follows max(step / steps, elapsed / seconds). `wide_frac` (default WIDE_FRAC
    with the posterior target, 0 with the data target): see `noise_scale`. `progress(step, loss)` is called
    after every step. Returns (ema_model in eval mode, info dict for the checkpoint metadata).
    """
    from toy_data import get_toy
    if steps < 1 or batch < 2 or lr <= 0 or not 0 <= ema < 1 or not 0 <= uniform_frac <= 1:
        raise ScheduleLabError(f"train-toy needs steps >= 1, batch >= 2, lr > 0, 0 <= ema < 1 and "
                               f"0 <= uniform_frac <= 1; got steps={steps}, batch={batch}, lr={lr}, "
                               f"ema={ema}, uniform_frac={uniform_frac}")
    if target not in TARGETS:
        raise unknown_name("training target", target, TARGETS)
    if wide_frac is None:
        wide_frac = WIDE_FRAC if target == "posterior" else 0.0
    if not 0 <= wide_frac <= 1 or wide_max < 1 or (wide_frac > 0 and target != "posterior"):
        raise ScheduleLabError(f"--wide-frac must be in [0, 1] with --wide-max >= 1, and needs "
                               f"--target posterior; got {wide_frac}, {wide_max}, {target}")
    if seconds is not None and seconds <= 0:
        raise ScheduleLabError(f"--seconds must be > 0; got {seconds}")
    mixture = get_toy(toy)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    net = ToyMLP(dim=mixture.dim, width=width, depth=depth, xfeat=xfeat, xscale=xscale)
    model = MLPDenoiser(net, sigma_data=SIGMA_DATA, name=f"mlp:{toy}").to(dev)
    avg = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    t0, step, loss_avg = time.perf_counter(), 0, float("nan")
    while step < steps:
        elapsed = time.perf_counter() - t0
        frac = max(step / steps, elapsed / seconds if seconds else 0.0)
        if frac >= 1:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(frac, lr)
        x0 = mixture.sample(batch, g)
        sigma = sample_sigma(batch, g, uniform_frac)
        x = x0 + (sigma * noise_scale(batch, g, wide_frac, wide_max)).unsqueeze(1) * torch.randn(
            x0.shape, generator=g, dtype=torch.float64)
        y = mixture.denoise(x, sigma) if target == "posterior" else x0
        f32 = dict(device=dev, dtype=torch.float32)
        loss = edm_loss(model, x.to(**f32), sigma.to(**f32), y.to(**f32))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        beta = min(ema, (1 + step) / (10 + step))     # short EMA early on, `ema` later
        with torch.no_grad():
            for pa, pm in zip(avg.parameters(), model.parameters()):
                pa.lerp_(pm, 1 - beta)
        lv = float(loss.detach())
        loss_avg = lv if math.isnan(loss_avg) else 0.98 * loss_avg + 0.02 * lv
        if progress is not None:
            progress(step, lv)
    if not math.isfinite(loss_avg):
        raise ScheduleLabError(f"training {toy!r} diverged (loss {loss_avg}); lower --lr")
    info = {"net": net.config, "sigma_data": SIGMA_DATA, "toy": toy, "steps": step,
            "seconds": round(time.perf_counter() - t0, 1), "seed": seed, "lr": lr, "batch": batch,
            "ema": ema, "uniform_frac": uniform_frac, "target": target, "wide_frac": wide_frac,
            "wide_max": wide_max, "p_mean": P_MEAN, "p_std": P_STD,
            "final_loss": float(f"{loss_avg:.3g}"), "device": str(dev),
            "threads": torch.get_num_threads()}
    return avg.cpu(), info


@torch.no_grad()
def model_error(model, mixture, sigmas=BAND_EDGES, n: int = 20000, seed: int = 0) -> list:
    """Model error against the exact mixture denoiser per sigma band.

    For each band [lo, hi] of the edges `sigmas`, n levels sigma are drawn log-uniformly in the
    band and x ~ p_sigma (x0 from the mixture plus sigma eps). Returns one dict per band:
    lo, hi, mse = E||D_model - D_exact||^2 / d, and rel = E[||D_model - D_exact||^2 / sigma^2] / d
    (the error of the ODE velocity (x - D) / sigma, the quantity solvers integrate)."""
    edges = [float(s) for s in sigmas]
    if len(edges) < 2 or any(a <= 0 or b <= a for a, b in zip(edges, edges[1:])):
        raise ScheduleLabError(f"band edges must be increasing and > 0; got {edges}")
    g = torch.Generator().manual_seed(seed)
    rows = []
    for lo, hi in zip(edges, edges[1:]):
        u = torch.rand(n, generator=g, dtype=torch.float64)
        s = (math.log(lo) + u * math.log(hi / lo)).exp()
        x = mixture.sample(n, g) + s.unsqueeze(1) * torch.randn(n, mixture.dim, generator=g,
                                                                 dtype=torch.float64)
        exact = mixture.denoise(x, s)
        dm = model(x.to(model.device, model.dtype), s.to(model.device, model.dtype)).double().cpu()
        err = ((dm - exact) ** 2).sum(1) / mixture.dim
        rows.append({"lo": lo, "hi": hi, "mse": float(err.mean()), "rel": float((err / s ** 2).mean())})
    return rows


def default_path(toy: str) -> Path:
    return TOY_MLP_DIR / f"{Path(toy).stem if toy.endswith('.json') else toy}.safetensors"


def train_and_save(toy: str, out=None, progress=None, error_n: int = 20000, **kw) -> tuple:
    """train_toy + model_error, saved as safetensors (metadata: training settings, `model_error`
    rows). Returns (path, info)."""
    from toy_data import get_toy
    if error_n < 10:
        raise ScheduleLabError(f"--error-n must be >= 10; got {error_n}")
    model, info = train_toy(toy, progress=progress, **kw)
    info["model_error"] = model_error(model, get_toy(toy), n=error_n, seed=info["seed"] + 1)
    path = Path(out) if out else default_path(toy)
    save_weights(model, path, info)
    return path, info


# ---- the card -------------------------------------------------------------------------------
def load_mlp_file(path) -> MLPDenoiser:
    """An MLPDenoiser from any train-toy checkpoint file (the shipped ones load through
    `core.models.load_toy_model(toy, "mlp")`)."""
    from core.models.checkpoints import load_state_dict
    cfg = read_metadata(path)
    net = ToyMLP(**cfg.get("net", {}))
    sd = {k[len("precond.net."):]: v for k, v in load_state_dict(path).items()
          if k.startswith("precond.net.")}
    try:
        net.load_state_dict(sd)
    except RuntimeError as e:
        raise ScheduleLabError(f"checkpoint {path} does not match the ToyMLP architecture: {e}") from None
    return MLPDenoiser(net, sigma_data=cfg.get("sigma_data", SIGMA_DATA), name=f"mlp:{cfg.get('toy')}").eval()


def sampled_nll(toy: str, solver: str, schedule: str, steps: int, model, n: int = 20000,
                seed: int = 0) -> dict:
    """NLL (nats) under the exact density of n samples from `model` and from the exact
    denoiser, same initial noise (seed) for both; {"mlp", "exact"}."""
    from core.metrics.toy import nll
    from core.models import MixtureDenoiser
    from core.sampling import generate
    from core.schedules import make_schedule
    from toy_data import get_toy
    mix = get_toy(toy)
    sched = make_schedule(schedule, steps)
    return {kind: nll(generate(m, sched, n, solver=solver, seed=seed).x.double().cpu(), mix)
            for kind, m in (("mlp", model), ("exact", MixtureDenoiser(mix)))}


CARD_RUNS = (("dpmpp_2m", "karras", 10), ("dpmpp_2m", "karras", 20),
             ("dpmpp_2m_sde", "loglinear", 10))


def write_card(folder=TOY_MLP_DIR, n: int = 20000, progress=None) -> Path:
    """Write folder/CARD.md from the metadata of every *.safetensors there, plus sampled NLLs."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ScheduleLabError(f"no *.safetensors in {folder}; train with `python -m core train-toy all`")
    metas = [read_metadata(f) for f in files]
    m0 = metas[0]
    net = m0["net"]
    lines = [
        "# Toy MLP denoisers (checkpoints/toy_mlp)", "",
        f"One `ToyMLP` per toy (residual SiLU MLP, width {net['width']}, depth {net['depth']}, "
        f"Fourier noise embedding {net['emb']}, {net.get('xfeat', 0)} random Fourier features of "
        f"the input with scale {net.get('xscale', '-')}) inside EDM preconditioning "
        f"(sigma_data = {m0['sigma_data']}), trained by `python -m core train-toy NAME` "
        "(core/train/toy.py) on fresh samples of the exact mixture. Loss: EDM (Karras et al. "
        "2022, Eq. 2, lambda = (s^2+sd^2)/(s sd)^2) with target `posterior` = E[x0 | x] "
        "(exact for a mixture; same expected gradient as the x0 target, much lower variance) "
        f"or `data` = x0; ln sigma ~ N({m0['p_mean']}, {m0['p_std']}^2), with a fraction "
        f"{m0['uniform_frac']} drawn log-uniformly on [{SIGMA_MIN}, {SIGMA_MAX}]; Adam, linear "
        "warm-up (2 %) and cosine decay to 2 % of lr; EMA of the weights (shipped). One CPU "
        "thread on a shared 2-core machine (seconds are wall time). Load with "
        "`core.models.load_toy_model(toy, \"mlp\")`; regenerate this card with "
        "`python -m core train-toy all --card-only`.", "",
        "## Training settings", "",
        "`wide` = fraction of training points whose noise is scaled by k log-uniform on "
        "[1/3, 3] (`--wide-frac`; the posterior target is exact there too), so D is learned where "
        "a few-step sampler's states lie, off p_sigma. Reproduce a row with "
        "`python -m core train-toy TOY --threads 1 --steps STEPS --wide-frac WIDE` (other "
        "settings are the defaults).", "",
        "| toy | steps | seconds | threads | batch | lr | ema | target | wide | seed | final loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in metas:
        lines.append(f"| {m['toy']} | {m['steps']} | {m['seconds']} | {m.get('threads', '')} | "
                     f"{m['batch']} | {m['lr']} | {m['ema']} | {m.get('target', 'data')} | "
                     f"{m.get('wide_frac', 0.0)} | {m['seed']} | {m['final_loss']} |")
    bands = [f"{r['lo']:g}-{r['hi']:g}" for r in m0["model_error"]]
    lines += ["", "## Model error per sigma band", "",
              "`mse` = E||D_mlp - D_exact||^2 / d with sigma log-uniform in the band and "
              "x ~ p_sigma (20000 points per band, `core.train.toy.model_error`); `rel` = "
              "E[||D_mlp - D_exact||^2 / sigma^2] / d, the error of the ODE velocity.", "",
              "| toy | " + " | ".join(f"mse {b}" for b in bands) + " | "
              + " | ".join(f"rel {b}" for b in bands) + " |",
              "|---|" + "---|" * (2 * len(bands))]
    for m in metas:
        rows = m["model_error"]
        lines.append(f"| {m['toy']} | " + " | ".join(f"{r['mse']:.2e}" for r in rows) + " | "
                     + " | ".join(f"{r['rel']:.2e}" for r in rows) + " |")
    runs = " | ".join(f"{s} {sch} {k} (mlp / exact)" for s, sch, k in CARD_RUNS)
    lines += ["", "## Sampled NLL", "",
              f"NLL (nats) under the exact density of {n} samples, seed 0, same initial noise for "
              "the MLP and the exact denoiser (`core.train.toy.sampled_nll`); sigma in "
              f"[{SIGMA_MIN}, {SIGMA_MAX}]. The exact column is what a perfect network gives with "
              "that solver and schedule.", "",
              f"| toy | {runs} |", "|---|" + "---|" * len(CARD_RUNS)]
    for f, m in zip(files, metas):
        cells, model = [], load_mlp_file(f)
        for solver, sched, steps in CARD_RUNS:
            r = sampled_nll(m["toy"], solver, sched, steps, model, n=n)
            cells.append(f"{r['mlp']:.3f} / {r['exact']:.3f}")
            if progress:
                progress(m["toy"], solver, sched, steps, r)
        lines.append(f"| {m['toy']} | " + " | ".join(cells) + " |")
    path = folder / "CARD.md"
    path.write_text("\n".join(lines) + "\n")
    return path
