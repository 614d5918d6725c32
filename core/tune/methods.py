"""The method table of `tune`: every heuristic and every optimizer it can run on one model.

A `Method` builds one candidate Schedule for a `TuneContext` (model, solver, steps, sigma range,
data) from an OPTIMIZATION seed, within a `Deadline`.  Optimizers are imported lazily, so a
method whose module is absent (GITS, OSS while they are being written) is listed as "not
available" instead of failing the run.  Tests and callers may pass their own table.
"""
from __future__ import annotations

import importlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from core.errors import ScheduleLabError
from core.schedules import make_schedule


class OverBudget(Exception):
    """Raised inside a method (or its progress callback) when its time share is spent."""


@dataclass
class Deadline:
    """Wall-clock end of a method's share (None: no limit)."""
    end: float | None = None

    def left(self) -> float:
        return float("inf") if self.end is None else self.end - time.perf_counter()

    def check(self, *_args, **_kw) -> None:
        """Usable as a progress callback: raises OverBudget once the share is spent."""
        if self.end is not None and time.perf_counter() > self.end:
            raise OverBudget()


@dataclass
class TuneContext:
    """What every method sees.  data: toys: the GaussianMixture; images: the x0 sampler (ImageData)."""
    model: object
    solver: str
    steps: int
    sigma_min: float
    sigma_max: float
    data: object = None
    toy: bool = True
    digits: bool = False
    spec: str | None = None                    # the --model string, when there is one (shipped schedules)
    opt_seeds: list = field(default_factory=list)   # every optimization seed handed out (recorded)
    options: dict = field(default_factory=dict)     # {method: {keyword: value}} for the lazy optimizers' calls

    def opt_seed(self, base: int, k: int = 0) -> int:
        s = int(base) + k
        self.opt_seeds.append(s)
        return s

    @property
    def sampler(self):
        """x0 sampler (n, generator) -> [n, *event]: a mixture's .sample, or the data (points, images)."""
        return self.data.sample if hasattr(self.data, "sample") else self.data


@dataclass
class Method:
    """name; kind "heuristic" | "optimizer"; run(ctx, seed, deadline) -> Schedule;
    applies(ctx) -> None or the reason it does not apply; min_s(ctx): rough seconds it needs at the
    least (a share below it is skipped); solver_dependent: its schedule depends on the solver."""
    name: str
    kind: str
    run: Callable
    applies: Callable = lambda ctx: None
    min_s: Callable = lambda ctx: 0.0
    solver_dependent: bool = False
    note: str = ""


# ---- heuristics ---------------------------------------------------------------------------------
def _heuristic(name: str, label: str, **params) -> Method:
    def run(ctx, seed, deadline):
        p = {k: (v(ctx) if callable(v) else v) for k, v in params.items()}
        return make_schedule(name, ctx.steps, ctx.sigma_min, ctx.sigma_max, **p).with_name(label)
    return Method(label, "heuristic", run, note=f"core.schedules {name} {params or ''}".strip())


def _sigma_data(ctx):
    return float(getattr(ctx.model, "sigma_data", 0.5))


HEURISTICS = [
    _heuristic("karras", "karras"), _heuristic("loglinear", "loglinear"),
    _heuristic("polyexponential", "polyexponential"), _heuristic("time_uniform", "time_uniform"),
    _heuristic("time_quadratic", "time_quadratic"), _heuristic("kl_optimal", "kl_optimal", c=_sigma_data),
    _heuristic("kl_optimal", "kl_optimal_c1", c=1.0), _heuristic("beta_vp", "beta_vp"),
    _heuristic("laplace", "laplace"),
]


# ---- optimizers ---------------------------------------------------------------------------------
def _interior(ctx):
    return None if ctx.steps >= 3 else f"{ctx.steps} steps leave no interior level to optimize"


def _run_ays(ctx, seed, deadline):
    from core.optimizers.ays import AYSOptimizer
    from core.optimizers.heldout import FDHeldout
    s = ctx.opt_seed(seed)
    # toys: early stopping on nll, guarded against collapse (GuardedNLL). On grid8x8 at NFE 6, plain nll
    # kept a schedule whose first jump, 80 -> 0.22, put every sample in the central modes (nll -1.17, the
    # best of all, swd 0.27 against log-linear's 0.054); plain swd hardly moved from the karras start.
    hs = ctx.opt_seed(seed, 1)
    if ctx.toy:
        exact = hasattr(ctx.model, "mixture")            # exact mixture: Monte Carlo is cheap
        n = 4096 if exact else 1024                      # a network (toy MLP: ~20 us a row on one CPU thread)
        if hasattr(ctx.data, "log_prob"):
            hf = GuardedNLL(ctx.model, ctx.data, ctx.solver, n, hs)
        else:                                            # data points only: early stopping on swd to them
            from core.optimizers.heldout import HeldoutMetric
            hf = HeldoutMetric("swd", ctx.model, ctx.solver, n, hs, sampler=ctx.sampler)
        kw = dict(n_samples=n, max_iters=30 if exact else 10, patience=5 if exact else 3, heldout_fn=hf)
    else:
        from core.cli.opt_ays import IMAGE_DEFAULTS as d
        kw = dict(n_samples=d["samples"], max_iters=3, patience=d["patience"], chunk=d["chunk"], heldout=None)
        if ctx.digits and not _stochastic(ctx):          # early stopping on FD to the TRAINING split (500
            kw["heldout_fn"] = FDHeldout(ctx.model, 500, seed=hs, solver=ctx.solver)   # images: ~9 s a check)
    opt = AYSOptimizer(ctx.model, ctx.sampler, steps=ctx.steps, stages=(ctx.steps,), sigma_min=ctx.sigma_min,
                       sigma_max=ctx.sigma_max, heldout_solver=ctx.solver, heldout_seed=hs, seed=s, **kw)
    sweeps = 0
    for ev in opt.events():
        sweeps = ev.iteration
        if deadline.left() < 0:
            if sweeps == 0:
                raise OverBudget()
            break                                       # keep the best sweep so far
    return opt.finest().with_name("ays", sweeps=sweeps, stopped_by_budget=not opt.done)


class GuardedNLL:
    """AYS early-stopping metric for toys: nll of n samples (optimization seed), or inf when their
    sliced W2 to fixed fresh data exceeds GUARD x that of the first schedule measured (the start): a
    sweep that collapses the samples onto a few modes cannot be kept for its nll."""

    GUARD = 1.25
    inf_rejects = True            # AYS: +inf from this metric means "never keep this sweep", not a diverged run

    def __init__(self, model, mixture, solver, n, seed):
        from core.optimizers.heldout import sampling_model
        self.model, self.mixture, self.solver, self.n, self.seed = sampling_model(model), mixture, solver, n, seed
        self.data = mixture.sample(n, torch.Generator().manual_seed(seed + 10_000)).double().cpu()
        self.swd_start = None

    def __call__(self, schedule) -> float:
        from core.metrics.toy import sliced_wasserstein
        from core.sampling import generate
        with torch.no_grad():
            x = generate(self.model, schedule, self.n, self.solver, seed=self.seed).x.double().cpu()
        if not torch.isfinite(x).all():
            return math.inf
        swd = sliced_wasserstein(x, self.data, seed=self.seed)
        if self.swd_start is None:
            self.swd_start = swd
        if swd > self.GUARD * self.swd_start:
            return math.inf
        return float(-self.mixture.log_prob(x.to(self.mixture.means.device)).mean())


def _stochastic(ctx):
    from core.solvers import get_solver
    return get_solver(ctx.solver).stochastic


def _run_nonuniform(ctx, seed, deadline):
    from core.optimizers.nonuniform import NonUniformOptimizer
    opt = NonUniformOptimizer(ctx.steps, ctx.sigma_min, ctx.sigma_max, p=1.0, process="edm", strict=False)
    for _ in opt.events():
        deadline.check()
    return opt.result(check=False).with_name("nonuniform")


def _run_score(ctx, seed, deadline):
    from core.optimizers.score_optimal import ScoreOptimalOptimizer
    kw = dict(levels=200, n=256) if ctx.toy else dict(levels=100, n=32, chunk_points=512)
    opt = ScoreOptimalOptimizer(ctx.model, ctx.data, ctx.steps, ctx.sigma_min, ctx.sigma_max, seed=ctx.opt_seed(seed),
                                **kw)
    for _ in opt.events():
        deadline.check()
    return opt.result().with_name("score_optimal")


def _shipped(ctx):
    if ctx.spec is None:
        return None
    from core.models.registry import shipped_schedule
    return shipped_schedule(ctx.spec, ctx.steps)


def _run_shipped(ctx, seed, deadline):
    s = _shipped(ctx)
    if s is None:
        raise ScheduleLabError("this model ships no AYS schedule")
    if (s.sigma_max, s.sigma_min) != (ctx.sigma_max, ctx.sigma_min):
        raise ScheduleLabError(f"the shipped schedule spans {s.sigma_min:g}..{s.sigma_max:g}, "
                               f"not the tuned range {ctx.sigma_min:g}..{ctx.sigma_max:g}")
    return s.with_name("ays_shipped")


# Image-model settings of the trajectory optimizers in `tune` (the toys keep each optimizer's defaults, the
# references').  Sized for `tune --model digits --steps 10` with every method in <= 10 min on 2 CPU cores:
# the digits UNet costs ~1.7 ms of CPU per image and model call, so one held-out scoring (4 x 250 images x
# 10 calls) is ~17 s and the defaults' OSS DP (64 samples, 200-level grid: ~9 x 190 x 64 calls) ~190 s.
IMAGE_KW = {
    "gits": dict(n_samples=128),                     # teacher 128 x 60 iPNDM calls (reference 256)
    "oss": dict(n_samples=32, teacher_steps=100),    # DP ~ (n - 1) x 100 x 32 calls (reference 200-step teacher)
    "ld3": dict(n_samples=32, rounds=3, teacher_steps=50),   # 16 train / 16 validation pairs
}


def _lazy(module: str, fn: str):
    """A method that calls core.optimizers.<module>.<fn> when the module exists (images: IMAGE_KW)."""
    def applies(ctx):
        try:
            importlib.import_module(f"core.optimizers.{module}")
        except ImportError:
            return f"not available: core.optimizers.{module} is not in this build"
        from core.optimizers.steppers import ALIASES, STEPPERS
        if ALIASES.get(ctx.solver, ctx.solver) not in STEPPERS:
            return f"{module} has steppers for {', '.join(STEPPERS)} only, not {ctx.solver}"
        return _interior(ctx)

    def run(ctx, seed, deadline):
        f = getattr(importlib.import_module(f"core.optimizers.{module}"), fn)
        opts = ctx.options.get(module, {})
        kw = {**({} if ctx.toy else IMAGE_KW.get(module, {})), **opts}    # the caller's options win
        try:
            s = f(ctx.model, ctx.steps, ctx.solver, sigma_min=ctx.sigma_min, sigma_max=ctx.sigma_max,
                  seed=ctx.opt_seed(seed), progress=deadline.check, **kw)
        except TypeError as e:
            if not opts:
                raise
            raise ScheduleLabError(f"{module}: options {opts} do not fit core.optimizers.{module}.{fn} ({e})") from None
        return s.with_name(module)
    return run, applies


OPTIONED = ("gits", "oss", "ld3")                   # methods that take TuneContext.options (Tuner method_options)
_GITS, _GITS_APPLIES = _lazy("gits", "optimize_gits")
_OSS, _OSS_APPLIES = _lazy("oss", "optimize_oss")
_LD3, _LD3_APPLIES = _lazy("ld3", "optimize_ld3")


def _toy_or_image(toy_s, image_s):
    return lambda ctx: toy_s if ctx.toy else image_s


OPTIMIZERS = [
    Method("ays_shipped", "optimizer", _run_shipped,
           applies=lambda ctx: None if _shipped(ctx) is not None else "the model ships no AYS schedule",
           note="the AYS schedule shipped with the model (checkpoints/NAME/ays.json)"),
    Method("nonuniform", "optimizer", _run_nonuniform, applies=_interior, min_s=_toy_or_image(0.5, 0.5),
           note="DM-NonUniform bound (data-free; EDM range, p = 1)"),
    Method("score_optimal", "optimizer", _run_score, applies=lambda ctx: None, min_s=_toy_or_image(1.0, 20.0),
           note="constant Stein speed"),
    Method("gits", "optimizer", _GITS, applies=_GITS_APPLIES, min_s=_toy_or_image(1.0, 15.0),
           solver_dependent=True, note="GITS (Chen et al. 2024)"),
    Method("oss", "optimizer", _OSS, applies=_OSS_APPLIES, min_s=_toy_or_image(2.0, 60.0),
           solver_dependent=True, note="Optimal Stepsize, OSS-ave (Pei et al. 2025)"),
    Method("ld3", "optimizer", _LD3, applies=_LD3_APPLIES, min_s=_toy_or_image(3.0, 25.0),
           solver_dependent=True, note="LD3 (Tong et al. 2024), the reference's recipe, L2 loss"),
    Method("ays", "optimizer", _run_ays, applies=_interior, min_s=_toy_or_image(3.0, 60.0), solver_dependent=True,
           note="Align Your Steps, one stage, significant moves only, early stopping (toys: swd; digits: FD to "
                "the training split) on optimization seeds"),
]


def default_table() -> dict:
    """{name: Method}: heuristics first, then optimizers (cheap ones first)."""
    return {m.name: m for m in HEURISTICS + OPTIMIZERS}


def select(table: dict, methods) -> list:
    """Names to run: every heuristic always (the no-regression baseline), plus the optimizers asked
    for ("all" = every optimizer in the table)."""
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = list(methods or ["all"])
    opts = [n for n, m in table.items() if m.kind == "optimizer"]
    want = opts if "all" in methods else []
    for m in methods:
        if m in ("all", "heuristics"):
            continue
        if m not in table:
            raise ScheduleLabError(f"unknown tune method {m!r}; choose from all, {', '.join(table)}")
        if m not in want and table[m].kind == "optimizer":
            want.append(m)
    return [n for n, m in table.items() if m.kind == "heuristic"] + [n for n in opts if n in want]

