"""Time to interactive per app page, through streamlit's AppTest (no browser).

For every page, with the app's default settings:
  cold      first run in a fresh process for that page (models load, results computed)
  warm      a new session once models and results are cached (what the next visit costs):
            the time to interactive, target <= 2 s
  rerun     a rerun of the same session (what a widget change with cached inputs costs)
Prints a table and writes bench/results/app.json. Torch runs with the app's thread count
(core.device.app_threads: $SCHEDULE_LAB_THREADS, default 1), set by app.py in each script run.
Pages whose engine part is missing from this build are timed as they are (a notice) and marked
"guarded". For a true first visit, clear the disk cache first (`python -m core cache clear`).
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from core.device import app_threads  # noqa: E402

PAGES = ("playground", "error_curves", "optimizer", "tune", "images", "schedules")
TARGET_S = 2.0


def _session(page: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    if page != "playground":
        at.switch_page(f"pages/{page}.py")
    return at


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_page(page: str) -> dict:
    at = _session(page)
    cold = _timed(at.run)
    if at.exception:
        raise RuntimeError(f"{page}: {at.exception[0].value}")
    guarded = any("not available in this build" in i.value for i in at.info)
    warm_at = _session(page)
    warm = _timed(warm_at.run)
    rerun = _timed(warm_at.run)
    return {"page": page, "cold_s": cold, "warm_s": warm, "rerun_s": rerun, "charts": len(warm_at.get("plotly_chart")),
            "guarded": guarded, "within_target": warm <= TARGET_S}


def bench_tune_digits() -> dict:
    """Issue 15's target: the Tune page on digits with its defaults (GITS + OSS + every heuristic, 10 steps,
    dpmpp_2m) from Start to the finished result (steps to match included), target <= 180 s. Runs
    in a fresh app folder; the digits reference is computed unless already in the disk cache."""
    import tempfile
    os.environ["SCHEDULE_LAB_HOME"] = tempfile.mkdtemp(prefix="bench_tune_")
    at = _session("tune")
    at.run()
    at.selectbox(key="tp_source").set_value("digits").run()
    spec = {"methods": list(at.session_state["tp_methods_image"]), "solver": at.session_state["tp_solver"],
            "steps": int(at.session_state["tp_steps"])}
    load0, t0, c0 = os.getloadavg()[0], time.perf_counter(), time.process_time()
    at.button(key="tp_start").click().run()
    job = at.session_state["tune_job"]
    while job.status in ("running", "stopping"):
        at.run()
    if at.exception:
        raise RuntimeError(f"tune page: {at.exception[0].value}")
    res = at.session_state.get("tp_result") or {}
    return {**spec, "status": job.status, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "load_start": load0, "load_end": os.getloadavg()[0], "winner": res.get("winner"),
            "from_heuristic": res.get("from_heuristic"), "reason": res.get("reason"), "target_s": 180.0}


def main() -> int:
    if "--tune-digits" in sys.argv:                        # the Tune page's run on digits (minutes)
        r = bench_tune_digits()
        print(f"Tune page, digits, {'+'.join(r['methods'])} + heuristics, {r['steps']} steps {r['solver']}: "
              f"{r['status']} in {r['wall_s']:.1f} s wall ({r['cpu_s']:.1f} s CPU, load {r['load_start']:.1f} -> "
              f"{r['load_end']:.1f}); winner {r['winner']} ({r['reason']})")
        out = {"bench": "app_tune_digits", "torch_threads_app": app_threads(), "python": platform.python_version(), **r}
        path = ROOT / "bench" / "results" / "app_tune_digits.json"
        path.write_text(json.dumps(out, indent=1))
        print(f"wrote {path.relative_to(ROOT)}")
        return 0
    only = sys.argv[sys.argv.index("--pages") + 1].split(",") if "--pages" in sys.argv else PAGES   # e.g. --pages images
    _timed(_session("schedules").run)                      # import streamlit / torch / plotly once
    rows = [bench_page(p) for p in PAGES if p in only]
    print(f"{'page':<14}{'cold s':>9}{'warm s':>9}{'rerun s':>9}{'charts':>8}  note")
    for r in rows:
        note = ("guarded (engine part missing)" if r["guarded"] else "") + ("" if r["within_target"] else " SLOW")
        print(f"{r['page']:<14}{r['cold_s']:9.2f}{r['warm_s']:9.2f}{r['rerun_s']:9.2f}{r['charts']:8d}  {note}")
    out = {"bench": "app", "target_warm_s": TARGET_S, "device": "cpu", "torch_threads_app": app_threads(), "torch_threads_main": torch.get_num_threads(),
           "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"), "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0], "pages": rows}
    path = ROOT / "bench" / "results" / ("app.json" if only == PAGES else f"app_{'_'.join(only)}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path.relative_to(ROOT)}")
    return 0          # timings depend on the machine and its load: reported, not enforced


if __name__ == "__main__":
    sys.exit(main())
