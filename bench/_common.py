"""Shared bench helpers: a table printer and a JSON writer."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def table(rows: list, cols: list, title: str = "") -> str:
    """Markdown table of dict rows."""
    def f(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = [f"### {title}"] if title else []
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(f(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    payload = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()},
               "when": time.strftime("%Y-%m-%d %H:%M:%S"), **payload}
    p = RESULTS / f"{name}.json"
    p.write_text(json.dumps(payload, indent=1, default=float))
    return p


def timeit(fn, repeat: int = 3) -> float:
    """Best-of-`repeat` wall time of fn() in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def timed(fn):
    """(fn(), wall seconds, CPU seconds of this process)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def heldout_reference(model, n: int, seed: int, ref_steps: int = 500):
    """Held-out initial noise [n, *event_shape] at the model's sigma_max and the `ref_steps`-step Heun
    (karras) solution of the ODE from it: the truth a schedule's samples are measured against."""
    from core.sampling import generate, initial_noise
    from core.schedules import make_schedule
    noise = initial_noise(model, n, model.sigma_max, seed=seed)
    sched = make_schedule("karras", ref_steps, model.sigma_min, model.sigma_max)
    return noise, generate(model, sched, n, solver="heun", noise=noise.clone()).x


def ref_distance(model, schedule, solver: str, noise, ref):
    """Mean distance ||x - x_ref|| of the samples from the same noise, with its 95 % t-interval."""
    from core.metrics.toy import mean_ci
    from core.sampling import generate
    x = generate(model, schedule, noise.shape[0], solver=solver, noise=noise.clone()).x
    return mean_ci((x - ref).double().norm(dim=1).cpu().numpy())
