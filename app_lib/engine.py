"""Cached calls into the engine's objectives and optimizers (and, guardedly, the image models).
Cached functions take plain hashable arguments and return numpy / plain data.

    core.objectives.klub.klub_curves(model, sampler, schedule, n_samples, c, seed)
    core.objectives.stein.stein_density / stein_curves(..., density=(grid, delta))
    core.objectives.truncation.truncation_curve(schedule, p)
    core.optimizers.{ays.AYSOptimizer, nonuniform.NonUniformOptimizer, score_optimal.ScoreOptimalOptimizer}
    core.models.registry.load_model(name_or_path, device), model_names()   (guarded: other branch)
"""
from __future__ import annotations

import math

import numpy as np
import streamlit as st
import torch

from app_lib.optional import optional
from app_lib.state import toy_model, toy_sampler
from core.errors import ScheduleLabError
from core.objectives.klub import klub_curves
from core.objectives.stein import log_grid, stein_curves, stein_density
from core.objectives.truncation import SOLVER as NONUNIFORM_SOLVER
from core.objectives.truncation import truncation_curve
from core.optimizers.ays import AYSOptimizer, default_stages
from core.optimizers.nonuniform import NonUniformOptimizer
from core.optimizers.score_optimal import ScoreOptimalOptimizer, auto_chunk_points
from core.schedules import Schedule
from toy_data import get_toy

REGISTRY = "core.models.registry"
OPTIMIZERS = {  # method -> label
    "ays": "Align Your Steps (KLUB search)",
    "nonuniform": "DM-NonUniform (error bound, data-free, for dpmpp_3m_lagrange)",
    "score_optimal": "Score-optimal (Stein cost)",
}
# the page's knobs each method uses (the others are shown disabled)
METHOD_KNOBS = {
    "ays": {"steps", "stages", "n_samples", "n_candidates", "c", "max_iters", "heldout", "patience",
            "heldout_solver", "heldout_n", "seed"},
    "nonuniform": {"steps", "p", "maxiter", "starts"},
    "score_optimal": {"steps", "n_samples", "levels", "v", "seed"},
}


def _plain(d: dict) -> dict:
    """Lists of numbers / tensors -> float64 numpy, so results are cacheable and plottable."""
    out = {}
    for k, v in d.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().double().numpy()
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                        for x in v):
            v = np.asarray(v, dtype=np.float64)
        out[k] = v
    return out


def speed(v: float):
    """Stein speed v(sigma) = sigma^v as the engine takes it (None = the default sigma^1)."""
    v = float(v)
    return None if v == 1.0 else (lambda s: np.asarray(s, dtype=np.float64) ** v)


# ---------------------------------------------------------------- objectives
@st.cache_data(show_spinner="Estimating KLUB per interval ...", max_entries=64)
def klub(toy: str, kind: str, device: str, sigmas: tuple, n_samples: int, c: float, seed: int) -> dict:
    return _plain(klub_curves(toy_model(toy, kind, device), toy_sampler(toy, kind), Schedule(sigmas),
                              n_samples=n_samples, c=c, seed=seed))


@st.cache_data(show_spinner="Estimating the Stein density ...", max_entries=32)
def stein_grid_density(toy: str, kind: str, device: str, sigma_min: float, sigma_max: float, levels: int,
                       n: int, v: float, seed: int) -> tuple:
    """(grid, delta): the Stein cost density on `levels` log-spaced levels, shared by all schedules."""
    grid = log_grid(sigma_min, sigma_max, levels)
    return grid, stein_density(toy_model(toy, kind, device), toy_sampler(toy, kind), grid, n=n, v=speed(v), seed=seed)


@st.cache_data(show_spinner=False, max_entries=64)
def stein(toy: str, kind: str, device: str, sigmas: tuple, sigma_range: tuple, levels: int, n: int, v: float,
          seed: int) -> dict:
    """core.objectives.stein.stein_curves of one schedule, on the density over `sigma_range`."""
    dens = stein_grid_density(toy, kind, device, *sigma_range, levels, n, v, seed)
    return _plain(stein_curves(None, None, Schedule(sigmas), n=n, v=speed(v), seed=seed, density=dens))


@st.cache_data(show_spinner=False, max_entries=64)
def truncation(sigmas: tuple, p: float) -> dict:
    return _plain(truncation_curve(Schedule(sigmas), p=p))


# ---------------------------------------------------------------- optimizers
def optimizer_factory(method: str, knobs: dict, toy: str, kind: str, device: str):
    """() -> a fresh optimizer of `method` built from the page's knobs (the same on resume).

    knobs: steps, stages (count of hierarchical stages), n_samples, n_candidates, c, max_iters,
    heldout (None = no early stopping), patience, heldout_solver, heldout_n, p, v, levels,
    maxiter, starts, seed."""
    k = knobs
    model = toy_model(toy, kind, device)
    guided = "|" in kind               # the guided labelled toy: its ODE does not sample a known density
    if method == "ays":
        stages = default_stages(k["steps"], k["stages"] - 1)
        heldout = "ref_error" if guided and k["heldout"] in ("nll", "swd") else k["heldout"]
        return lambda: AYSOptimizer(model, toy_sampler(toy, kind), steps=k["steps"], stages=stages,
                                    n_samples=k["n_samples"], n_candidates=k["n_candidates"], c=k["c"],
                                    max_iters=k["max_iters"], heldout=heldout, patience=k["patience"],
                                    heldout_solver=k["heldout_solver"], heldout_n=k["heldout_n"],
                                    mixture=None if guided else get_toy(toy), seed=k["seed"])
    if method == "nonuniform":
        return lambda: NonUniformOptimizer(k["steps"], model.sigma_min, model.sigma_max, p=k["p"],
                                           starts=tuple(k["starts"]), maxiter=k["maxiter"], strict=False)
    if method == "score_optimal":
        chunk = k["n_samples"] * max(1, math.ceil(k["levels"] / 10))         # about ten events
        return lambda: ScoreOptimalOptimizer(model, toy_sampler(toy, kind), k["steps"], levels=k["levels"],
                                             n=k["n_samples"], v=speed(k["v"]), seed=k["seed"],
                                             chunk_points=chunk)
    raise KeyError(method)

# ---------------------------------------------------------------- image models
GUIDE = "#"            # model id of a guided conditional model: NAME#LABEL#W (LABEL: a class or "all")


def guided_model_id(name: str, label: str | None, w: float) -> str:
    """The id under which the page caches `name` guided towards `label` at scale w (label None: `name`)."""
    return name if label in (None, "none") else f"{name}{GUIDE}{label}{GUIDE}{float(w):g}"


def _split_model_id(model_id: str):
    parts = model_id.rsplit(GUIDE, 2)
    if len(parts) == 3 and (parts[1] == "all" or parts[1].isdigit()):
        return parts[0], parts[1], float(parts[2])
    return model_id, None, None


def base_model_id(model_id: str) -> str:
    """The model id without its guidance part (NAME#LABEL#W -> NAME)."""
    return _split_model_id(model_id)[0]


@st.cache_resource(show_spinner="Loading image model ...")
def image_model(name_or_path: str, device: str):
    name, label, w = _split_model_id(name_or_path)
    model = optional(REGISTRY).load_model(name, device)
    if label is None:
        return model
    from core.models.guidance import guided, parse_label
    return guided(model, parse_label(label), w)


def image_num_classes(model_id: str, device: str) -> int:
    """Classes of a conditional image model (0: unconditional)."""
    return int(getattr(image_model(_split_model_id(model_id)[0], device), "num_classes", 0) or 0)


def image_model_names() -> list:
    reg = optional(REGISTRY)
    return [] if reg is None else list(reg.model_names())


def _sigma_dict_families(families: dict):
    """{label: {steps: sigmas}} -> {label: steps -> Schedule} (the families core.compare takes)."""
    return {label: (lambda steps, per=per: Schedule(per[steps])) for label, per in families.items()}


@st.cache_data(show_spinner="Sampling images ...", max_entries=32)
def image_compare(model_id: str, device: str, schedules: dict, solver: str, n: int, seed: int,
                  ref_steps: int) -> dict:
    """core.compare.compare_to_reference on {label: sigmas}, as numpy arrays [n, C, H, W]."""
    from core.compare import compare_to_reference
    res = compare_to_reference(image_model(model_id, device), {k: Schedule(v) for k, v in schedules.items()},
                               solver=solver, n=n, seed=seed, ref_steps=ref_steps, disk_cache=True)
    arr = {k: {kk: vv.numpy() for kk, vv in res[k].items()} for k in ("reference", "samples", "difference")}
    return {**arr, "rmse": res["rmse"], "rmse_ci": res["rmse_ci"], "nfe": res["nfe"]}


@st.cache_data(show_spinner="Sweeping NFE ...", max_entries=16)
def image_error_vs_nfe(model_id: str, device: str, families: dict, nfes: tuple, solver: str, n: int,
                       seed: int, ref_steps: int) -> dict:
    """core.compare.error_vs_nfe; families = {label: {steps: sigmas}} built by the page."""
    from core.compare import error_vs_nfe
    return error_vs_nfe(image_model(model_id, device), _sigma_dict_families(families), list(nfes),
                        solver=solver, n=n, seed=seed, ref_steps=ref_steps, disk_cache=True)


def image_reference_cached(model_id: str, device: str, n: int, seed: int, ref_steps: int, sigma_max: float) -> bool:
    """Whether the many-step reference of these settings is already on disk (core.compare.reference_path)."""
    from core.compare import reference_path
    return reference_path(image_model(model_id, device), int(n), int(seed), float(sigma_max), int(ref_steps)).is_file()


def image_reference(model_id: str, device: str, n: int, seed: int, ref_steps: int, sigma_max: float) -> None:
    """Compute the many-step reference once and keep it on disk (core.compare.cached_reference); the
    page calls it inside a status box before image_compare, which then reads it."""
    from core.compare import cached_reference
    cached_reference(image_model(model_id, device), int(n), int(seed), float(sigma_max), int(ref_steps))


@st.cache_data(show_spinner=False, max_entries=64)
def grid_png(images, lo: float = -1.0, hi: float = 1.0, cols: int = 8) -> bytes:
    """The images [n, C, H, W] as one PNG grid (core.images_io.grid_png; [lo, hi] -> black .. white)."""
    from core.images_io import grid_png as png
    return png(images, nrow=min(int(cols), len(images)), scale=4, lo=lo, hi=hi)


def winner(values: dict, lower_is_better: bool = True):
    """The key of the best finite value (None when there is none): the row a metric table highlights."""
    ok = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
    if not ok:
        return None
    return (min if lower_is_better else max)(ok, key=ok.get)


def schedule_warnings(schedule: Schedule, model_names, solver: str, label: str | None = None) -> dict:
    """{"model": sentence | None, "solver": sentence | None}: the schedule was made for another model /
    solver (core.schedules.provenance)."""
    from core.schedules.provenance import model_mismatch, solver_mismatch
    names = [n for n in model_names if n]
    return {"model": model_mismatch(schedule, names, shown=names[0] if names else None, label=label),
            "solver": solver_mismatch(schedule, solver, label=label)}


# ---------------------------------------------------------------- optimized schedules for an image model
IMAGE_OPTIMIZED = {  # picker key -> label
    "opt:ays": "AYS (shipped with the model: digits 10 / 20 / 40, resampled otherwise)",
    "opt:nonuniform": "DM-NonUniform (data-free, meant for dpmpp_3m_lagrange)",
    "opt:score_optimal": "score-optimal (this model's Stein density, meant for heun)",
}
IMAGE_OPTIMIZED_SHORT = {k: v.split(" (")[0] for k, v in IMAGE_OPTIMIZED.items()}   # table / legend labels


@st.cache_data(show_spinner="Optimizing DM-NonUniform time steps ...", max_entries=64)
def nonuniform_sigmas(steps: int, sigma_min: float, sigma_max: float, p: float = 1.0) -> tuple:
    """core.optimizers.nonuniform.optimize_nonuniform over the model's range (no model calls)."""
    from core.optimizers.nonuniform import optimize_nonuniform
    return tuple(optimize_nonuniform(int(steps), sigma_min, sigma_max, p=p)[0].sigmas)


@st.cache_data(show_spinner=False, max_entries=8)
def image_stein_density(model_id: str, device: str, levels: int = 100, n: int = 64, seed: int = 0) -> dict:
    """The model's Stein density on `levels` log-spaced levels over its range, from its data
    (core.models.registry.model_data: the shipped training split, else its own many-step samples,
    generated once and cached on disk).  {grid, delta, source, generated}."""
    reg = optional(REGISTRY)
    model = image_model(model_id, device)
    name, label, _ = _split_model_id(model_id)
    data = reg.model_data(name, model, label=int(label) if label and label.isdigit() else None)
    grid = log_grid(model.sigma_min, model.sigma_max, int(levels))
    delta = stein_density(model, data, grid, n=int(n), seed=int(seed), chunk_points=auto_chunk_points(model))
    return {"grid": grid, "delta": delta, "source": data.source, "generated": bool(data.generated)}


def best_known_schedules(model_id: str, solver: str, nfe: int, model_name: str | None = None) -> dict:
    """The optimized schedules known for an image model (core.tune.known.known_schedules), best first
    for this solver and NFE: shipped with it (checkpoints/NAME/ays.json, checkpoints/NAME/schedules/*.json)
    or saved by `tune` in the app's folder (app_lib.store.tune_dir() = $SCHEDULE_LAB_HOME/tune/*.json,
    written by store.save_tune_result / TuneResult.write). model_name: the loaded model's name (a
    folder model's tune files record it).

    Returns {"steps", "options": {picker key: KnownSchedule}, "default": [picker keys], "problems": [str]}:
    the default is the best tune-based entry and the shipped AYS (each when there is one)."""
    from core.solvers import get_solver
    return _known(model_id, solver, get_solver(solver).steps_for_nfe(int(nfe)), model_name)


def _known(model_id: str, solver: str, steps: int, model_name: str | None = None) -> dict:
    from app_lib import store
    from core.tune.known import known_schedules
    base = _split_model_id(model_id)[0]
    try:
        folders = [store.tune_dir()]
    except (OSError, ScheduleLabError):
        folders = []
    known, problems = known_schedules([base, model_name or base], solver, int(steps), folders)
    opts = {("opt:ays" if k.key == "shipped:ays" else "known:" + k.key): k for k in known}
    tuned = [key for key in opts if key.startswith("known:")]
    default = tuned[:1] + (["opt:ays"] if "opt:ays" in opts else [])
    return {"steps": int(steps), "options": opts, "default": default, "problems": problems}


def image_optimized_schedule(key: str, steps: int, model_id: str, device: str, sigma_min: float,
                             sigma_max: float, solver: str = "dpmpp_2m") -> Schedule:
    """The picker's optimized option `key` (IMAGE_OPTIMIZED, or a best_known_schedules key) at `steps`
    steps for this model."""
    if key.startswith("known:"):
        k = _known(model_id, solver, steps, getattr(image_model(model_id, device), "name", None))["options"].get(key)
        if k is None:
            raise ScheduleLabError(f"the saved schedule {key[len('known:tune:'):]!r} is gone (deleted or moved); "
                                   "pick another")
        return k.schedule(int(steps))
    if key == "opt:ays":
        s = optional(REGISTRY).shipped_schedule(_split_model_id(model_id)[0], int(steps))
        if s is None:
            raise ScheduleLabError(f"no AYS schedule ships with {model_id!r}; optimize one with `python -m core "
                                   f"optimize ays --model {model_id} --out ays.json` and import it on the "
                                   "Schedules page")
        return s
    if key == "opt:nonuniform":
        return Schedule(nonuniform_sigmas(int(steps), float(sigma_min), float(sigma_max)), name="nonuniform",
                        solver=NONUNIFORM_SOLVER)
    if key == "opt:score_optimal":
        from core.objectives.stein import constant_speed_schedule
        d = image_stein_density(model_id, device)
        return constant_speed_schedule(d["grid"], d["delta"], int(steps), sigma_min, sigma_max)
    raise KeyError(key)


def image_metric_kind(model_id: str):
    """'digits' when the shipped model's classifier metrics (FD, KID, confidence) apply, else None."""
    reg = optional(REGISTRY)
    model_id = _split_model_id(model_id)[0]
    entry = reg.model_entry(model_id) if reg is not None and hasattr(reg, "model_entry") else None
    return getattr(entry, "metrics", None)


@st.cache_data(show_spinner=False, max_entries=32)
def image_quality(model_id: str, device: str, schedules: dict, solver: str, n: int, seed: int) -> dict:
    """core.metrics.images.evaluate_images (FD / KID / confidence against the held-out digits) for
    {label: sigmas}: {label: {fd, kid, confidence, balance_max_dev, nfe, seconds}}."""
    from core.metrics.images import evaluate_images
    model = image_model(model_id, device)
    out = {}
    for label, sig in schedules.items():
        r = evaluate_images(model, Schedule(sig), solver, n=int(n), seeds=(int(seed),), reference=False)
        out[label] = {k: r[k] for k in ("fd", "kid", "confidence", "balance_max_dev", "nfe", "seconds")}
    return out


def folder_problem(path: str) -> str | None:
    """Why a typed folder path cannot be a model, in the app's words (None when it may be one; loading
    then says the rest)."""
    from pathlib import Path
    p = Path(path).expanduser()
    if not p.exists():
        return (f"There is no file or folder at {path!r}. Enter the full path of a local diffusers model folder "
                "(the one that holds config.json and scheduler_config.json, or unet/ and scheduler/).")
    if p.is_file() and p.suffix != ".safetensors":        # a UNet .safetensors from train-images is a model
        return (f"{path!r} is a file. Enter the folder that holds it: a diffusers model folder with config.json "
                "and scheduler_config.json (or unet/ and scheduler/).")
    reg, dif = optional(REGISTRY), optional("core.models.diffusers_loader")
    if p.is_dir() and reg is not None and hasattr(reg, "_folder_problem") and dif is not None \
            and not dif.looks_like_diffusers(str(p)):
        return reg._folder_problem(p)
    return None
