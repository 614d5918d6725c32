"""The Optimizer page's models: the sidebar's toy (app_lib.engine.optimizer_factory: its exact
denoiser, shipped MLP, or the labelled toy guided towards a class) or an image model loaded as the
Images page loads it (app_lib.engine.image_model: digits, digits-flow, a diffusers folder), guided
by a label and a guidance scale w (core.models.guidance), with the data its optimizer needs
(core.models.registry.model_data) — what `python -m core optimize METHOD --model M --label L --cfg W`
does (core.cli.opt_ays / opt_nonuniform / opt_score).

A run's spec (plain data, saved with the run) names its model: "source" is "toy" or the image
model's name / folder, with "label" ("none", "all" or a class) and "cfg" (w).
"""
from __future__ import annotations

import math

from app_lib import engine
from app_lib.optional import optional
from core.errors import ScheduleLabError

TOY = "toy"
# the image knobs the command line uses (core.cli.opt_ays IMAGE_DEFAULTS), rounded to the page's options
IMAGE_KNOBS = {"n_samples": 64, "max_iters": 5, "patience": 2, "heldout_solver": "dpmpp_2m", "heldout_n": 512,
               "levels": 100}
IMAGE_CFG = 3.0               # the guidance scale an image model starts with (digits-flow's card: w = 3)
IMAGE_CHUNK = 256             # AYS Monte Carlo samples per model batch (core.cli.opt_ays)


def image_heldout_options(model_id: str) -> list:
    """Early-stopping metrics for an image model: fd (the digits classifier's Frechet distance to the
    training split) where the digits metrics apply, ref_error (distance to a 128-step Heun solution),
    none. The toys' kde_nll / nll / swd need a 2-D density."""
    return (["fd"] if engine.image_metric_kind(model_id) == "digits" else []) + ["ref_error", "none"]


def data_label(label: str):
    """The class whose training images the optimizer fits (an int), or None: unconditional or 'all'
    (then all images; each meets the guided field of the label its batch row gets)."""
    return int(label) if isinstance(label, str) and label.isdigit() else None


def image_optimizer_factory(method: str, knobs: dict, model_id: str, label: str, w: float, device: str):
    """() -> a fresh optimizer of `method` on the image model `model_id` guided towards `label` at
    scale w (label "none": unconditional). The model loads here (the page's thread, cached); its data
    (the training split, or the model's own samples, cached on disk) in the worker that calls the
    factory. knobs: as engine.optimizer_factory's; heldout "fd" | "ref_error" | None."""
    from core.solvers import get_solver
    k = knobs
    model = engine.image_model(engine.guided_model_id(model_id, label, w), device)
    if method == "nonuniform":
        from core.optimizers.nonuniform import NonUniformOptimizer, model_process
        proc, lo, hi = model_process(getattr(model, "base", model))     # a guided model keeps its base's process
        return lambda: NonUniformOptimizer(k["steps"], lo, hi, p=k["p"], process=proc, starts=tuple(k["starts"]),
                                           maxiter=k["maxiter"], strict=False)
    registry = optional(engine.REGISTRY)

    def data():
        return registry.model_data(model_id, model, label=data_label(label))

    if method == "ays":
        from core.optimizers.ays import AYSOptimizer, default_stages
        from core.optimizers.heldout import FDHeldout
        heldout = k["heldout"]
        if heldout not in image_heldout_options(model_id) + [None]:
            raise ScheduleLabError(f"early-stopping metric {heldout!r} is for toys; for {model_id!r} pick one of "
                                   + ", ".join(image_heldout_options(model_id)))
        if heldout == "fd" and get_solver(k["heldout_solver"]).stochastic:
            raise ScheduleLabError(f"the fd metric samples with a deterministic solver; {k['heldout_solver']!r} is "
                                   "stochastic: pick dpmpp_2m, euler, heun ...")
        stages = default_stages(k["steps"], k["stages"] - 1)

        def make():
            fd = FDHeldout(model, k["heldout_n"], solver=k["heldout_solver"]) if heldout == "fd" else None
            return AYSOptimizer(model, data(), steps=k["steps"], stages=stages, sigma_min=model.sigma_min,
                                sigma_max=model.sigma_max, n_samples=k["n_samples"],
                                n_candidates=k["n_candidates"], c=k["c"], max_iters=k["max_iters"],
                                heldout=None if fd is not None else heldout, heldout_fn=fd, patience=k["patience"],
                                heldout_solver=k["heldout_solver"], heldout_n=k["heldout_n"], mixture=None,
                                seed=k["seed"], chunk=IMAGE_CHUNK)
        return make
    if method == "score_optimal":
        from core.optimizers.score_optimal import ScoreOptimalOptimizer, auto_chunk_points
        chunk = min(auto_chunk_points(model), k["n_samples"] * max(1, math.ceil(k["levels"] / 10)))  # ~10 events
        return lambda: ScoreOptimalOptimizer(model, data(), k["steps"], levels=k["levels"], n=k["n_samples"],
                                             v=engine.speed(k["v"]), seed=k["seed"], chunk_points=chunk)
    raise KeyError(method)


def factory_from_spec(spec: dict, device: str):
    """() -> the optimizer a run's spec describes (a toy's through engine.optimizer_factory)."""
    source = spec.get("source", TOY)
    if source == TOY:
        return engine.optimizer_factory(spec["method"], spec["knobs"], spec["toy"], spec["model_kind"], device)
    return image_optimizer_factory(spec["method"], spec["knobs"], source, spec.get("label", "none"),
                                   float(spec.get("cfg", 1.0)), device)
