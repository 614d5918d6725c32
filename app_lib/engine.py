"""Cached calls into engine parts that a build may not contain yet (objectives, optimizers,
image models). Each `*_available()` says whether the module is there; cached functions take
plain hashable arguments and return numpy / plain data.

Modules (imported guardedly, see app_lib.optional):
    core.objectives.klub.klub_curves(model, sampler, schedule, n_samples, c, seed)
    core.objectives.stein.stein_curves(model, sampler, schedule, ...)
    core.objectives.truncation.truncation_curve(schedule, p)
    core.optimizers.{ays,nonuniform,score_optimal}.*Optimizer
    core.models.registry.load_model(name_or_path, device), model_names()
"""
from __future__ import annotations

import inspect

import numpy as np
import streamlit as st
import torch

from app_lib.optional import optional
from app_lib.state import toy_model, toy_sampler
from core.schedules import Schedule

KLUB, STEIN, TRUNC = "core.objectives.klub", "core.objectives.stein", "core.objectives.truncation"
REGISTRY = "core.models.registry"
OPTIMIZERS = {  # method -> (module, class, label)
    "ays": ("core.optimizers.ays", "AYSOptimizer", "Align Your Steps (KLUB search)"),
    "nonuniform": ("core.optimizers.nonuniform", "NonUniformOptimizer", "DM-NonUniform (error bound, data-free)"),
    "score_optimal": ("core.optimizers.score_optimal", "ScoreOptimalOptimizer", "Score-optimal (Stein cost)"),
}


def _plain(d: dict) -> dict:
    """Tensors -> numpy, so results are cacheable and plottable."""
    out = {}
    for k, v in d.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().double().numpy()
        elif isinstance(v, (list, tuple)) and v and isinstance(v[0], (int, float)):
            v = np.asarray(v, dtype=np.float64)
        out[k] = v
    return out


def accepted_kwargs(fn, pool: dict) -> dict:
    """The entries of `pool` that `fn` (a function or class) accepts by name (all of them when
    it takes **kwargs)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return dict(pool)
    return {k: v for k, v in pool.items() if k in params}


# ---------------------------------------------------------------- objectives
@st.cache_data(show_spinner="Estimating KLUB per interval ...", max_entries=64)
def klub(toy: str, kind: str, device: str, sigmas: tuple, n_samples: int, c: float, seed: int) -> dict:
    m = optional(KLUB)
    return _plain(m.klub_curves(toy_model(toy, kind, device), toy_sampler(toy), Schedule(sigmas),
                                n_samples=n_samples, c=c, seed=seed))


@st.cache_data(show_spinner="Estimating the Stein cost per interval ...", max_entries=64)
def stein(toy: str, kind: str, device: str, sigmas: tuple, n_samples: int, seed: int) -> dict:
    m = optional(STEIN)
    kw = accepted_kwargs(m.stein_curves, {"n_samples": n_samples, "seed": seed})
    return _plain(m.stein_curves(toy_model(toy, kind, device), toy_sampler(toy), Schedule(sigmas), **kw))


@st.cache_data(show_spinner=False, max_entries=64)
def truncation(sigmas: tuple, p: float) -> dict:
    return _plain(optional(TRUNC).truncation_curve(Schedule(sigmas), p=p))


def pick(d: dict, *names):
    """The first of `names` present in d (engine dicts name their cost key after the method)."""
    for n in names:
        if n in d:
            return n
    return None


# ---------------------------------------------------------------- optimizers
def optimizer_class(method: str):
    mod, cls, _ = OPTIMIZERS[method]
    m = optional(mod)
    return None if m is None else getattr(m, cls)


# ---------------------------------------------------------------- image models
@st.cache_resource(show_spinner="Loading image model ...")
def image_model(name_or_path: str, device: str):
    return optional(REGISTRY).load_model(name_or_path, device)


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
                               solver=solver, n=n, seed=seed, ref_steps=ref_steps)
    arr = {k: {kk: vv.numpy() for kk, vv in res[k].items()} for k in ("reference", "samples", "difference")}
    return {**arr, "rmse": res["rmse"], "rmse_ci": res["rmse_ci"], "nfe": res["nfe"]}


@st.cache_data(show_spinner="Sweeping NFE ...", max_entries=16)
def image_error_vs_nfe(model_id: str, device: str, families: dict, nfes: tuple, solver: str, n: int,
                       seed: int, ref_steps: int) -> dict:
    """core.compare.error_vs_nfe; families = {label: {steps: sigmas}} built by the page."""
    from core.compare import error_vs_nfe
    return error_vs_nfe(image_model(model_id, device), _sigma_dict_families(families), list(nfes),
                        solver=solver, n=n, seed=seed, ref_steps=ref_steps)
