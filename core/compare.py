"""Schedules side by side on one model: same noise, distance to a many-step reference
(methods.md s.7, "discretization error": the n-step sample against a reference solution of
the same probability-flow ODE from the same noise, with many steps).

    reference_solution(model, n, seed, sigma_max)          -> x_ref [n, *event_shape]
    cached_reference(model, n, seed, sigma_max)            -> the same, computed once and kept on disk
    compare_to_reference(model, {label: Schedule}, ...)    -> samples, differences, RMSE +- CI
    error_vs_nfe(model, {label: steps -> Schedule}, nfes)  -> RMSE per label and NFE
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from core.errors import ScheduleLabError
from core.metrics.toy import mean_ci
from core.sampling import generate
from core.schedules import make_schedule
from core.solvers import get_solver


def reference_solution(model, n: int, seed: int, sigma_max: float, steps: int = 200,
                       solver: str = "heun", sigma_min: float | None = None) -> torch.Tensor:
    """The probability-flow ODE solved from x = sigma_max * z (z seeded by `seed`, as in
    `generate`) with `steps` Karras steps of a deterministic solver down to sigma_min (default
    the model's), then the jump to 0. [n, *event_shape] float64 on the CPU."""
    _deterministic(solver)
    lo = float(sigma_min if sigma_min is not None else model.sigma_min)
    sched = make_schedule("karras", int(steps), sigma_min=min(lo, sigma_max / 2), sigma_max=float(sigma_max))
    with torch.no_grad():
        return generate(model, sched, n, solver=solver, seed=seed).x.detach().double().cpu()


def reference_path(model, n: int, seed: int, sigma_max: float, steps: int = 200, solver: str = "heun",
                   root=None) -> Path:
    """Where `cached_reference` keeps this reference: CACHE_ROOT/reference/compare_*.safetensors, keyed by
    core.cache.model_fingerprint (weights + wrapper options + guidance + code version), the solver,
    Karras steps, sigma range, n and seed (`python -m core cache list | clear`)."""
    from core import cache as kc
    key = (f"compare_{kc.model_fingerprint(model)}_{solver}-karras{int(steps)}_n{int(n)}_s{int(seed)}"
           f"_{kc.key_number(model.sigma_min)}-{kc.key_number(sigma_max)}_v{kc.CODE_VERSION}")
    return kc.cache_dir("reference", root or kc.CACHE_ROOT) / f"{key}.safetensors"


def cached_reference(model, n: int, seed: int, sigma_max: float, steps: int = 200, solver: str = "heun",
                     root=None) -> torch.Tensor:
    """`reference_solution`, read from disk when an earlier process computed it (same key, see
    `reference_path`), else computed and written atomically. A cached file that is unreadable, of
    another size or non-finite is deleted and recomputed; a non-finite reference is never written."""
    from safetensors.torch import load_file, save_file

    from core import cache as kc
    path = reference_path(model, n, seed, sigma_max, steps, solver, root)
    if path.is_file():
        try:
            x = load_file(str(path))["x"].double()
            if x.shape == (int(n), *model.event_shape) and bool(torch.isfinite(x).all()):
                return x
        except Exception:  # noqa: BLE001  (a corrupt file is recomputed)
            pass
        path.unlink(missing_ok=True)
    x = reference_solution(model, n, seed, sigma_max, steps, solver)
    kc.require_finite(x, f"the {steps}-step {solver} reference of {getattr(model, 'name', 'the model')}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    save_file({"x": x.contiguous()}, str(tmp))                  # float64, as computed
    tmp.replace(path)
    return x


def per_sample_rmse(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Root-mean-square difference per sample over every coordinate / pixel: [n]."""
    if x.shape != ref.shape:
        raise ScheduleLabError(f"samples {list(x.shape)} and reference {list(ref.shape)} differ in shape")
    d = (x.double().cpu() - ref.double().cpu()).reshape(x.shape[0], -1)
    return d.pow(2).mean(1).sqrt()


def compare_to_reference(model, schedules: dict, solver: str = "dpmpp_2m", n: int = 16, seed: int = 0,
                         ref_steps: int = 200, ref_solver: str = "heun", refs: dict | None = None,
                         disk_cache: bool = False) -> dict:
    """Sample every schedule from the same noise and measure it against the reference.

    Args:
        schedules: {label: Schedule}; each starts from sigma_max * z with the same z.
        solver: a deterministic solver (the reference is an ODE solution).
        refs: optional {sigma_max: x_ref} cache, filled and reused (same n, seed and reference).
        disk_cache: read / write each reference through `cached_reference` (kept across processes).
    Returns:
        {"reference": {sigma_max: x_ref}, "samples": {label: x}, "difference": {label: x - x_ref},
         "rmse": {label: mean per-sample RMSE}, "rmse_ci": {label: 95 % half-width over samples},
         "nfe": {label: model calls}} with tensors float64 on the CPU, [n, *event_shape].
    """
    _deterministic(solver)
    refs = {} if refs is None else refs
    out = {"reference": refs, "samples": {}, "difference": {}, "rmse": {}, "rmse_ci": {}, "nfe": {}}
    for label, sched in schedules.items():
        smax = float(sched.sigma_max)
        if smax not in refs:
            make = cached_reference if disk_cache else reference_solution
            refs[smax] = make(model, n, seed, smax, ref_steps, ref_solver)
        with torch.no_grad():
            res = generate(model, sched, n, solver=solver, seed=seed)
        x = res.x.detach().double().cpu()
        out["samples"][label] = x
        out["difference"][label] = x - refs[smax]
        out["rmse"][label], out["rmse_ci"][label] = mean_ci(per_sample_rmse(x, refs[smax]).tolist())
        out["nfe"][label] = res.nfe
    return out


def error_vs_nfe(model, families: dict, nfes, solver: str = "dpmpp_2m", n: int = 16, seed: int = 0,
                 ref_steps: int = 200, ref_solver: str = "heun", disk_cache: bool = False) -> dict:
    """RMSE to the reference as a function of the number of model calls.

    Args:
        families: {label: f(steps) -> Schedule}, a schedule family per label (a heuristic rebuilt
            at each step count, or an optimized schedule interpolated log-linearly).
        nfes: model-call budgets; steps = solver.steps_for_nfe(nfe).
    Returns:
        {"nfe": [m] budgets, "rmse": {label: [m]}, "rmse_ci": {label: [m]}}.
    """
    spec = get_solver(solver)
    nfes = [int(v) for v in nfes]
    if not nfes or min(nfes) < 1:
        raise ScheduleLabError(f"nfes must be positive integers; got {nfes}")
    out, refs = {"nfe": nfes, "rmse": {}, "rmse_ci": {}}, {}
    for label, family in families.items():
        scheds = {nfe: family(spec.steps_for_nfe(nfe)) for nfe in nfes}
        res = compare_to_reference(model, scheds, solver, n, seed, ref_steps, ref_solver, refs, disk_cache)
        out["rmse"][label] = [res["rmse"][nfe] for nfe in nfes]
        out["rmse_ci"][label] = [res["rmse_ci"][nfe] for nfe in nfes]
    return out


def _deterministic(solver: str) -> None:
    if get_solver(solver).stochastic:
        raise ScheduleLabError(f"solver {solver!r} is stochastic: its distance to the ODE reference "
                               "mixes in fresh noise; choose a deterministic solver (euler, heun, "
                               "dpmpp_2m, dpmpp_3m_lagrange, ipndm)")

