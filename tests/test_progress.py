"""Progress over a whole optimizer run (core.optimizers.progress): the work-weighted fraction in
closed form, monotone to 100 % over all AYS stages, the early-stopping state, and the CLI's one
bar over every stage."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core.models import load_toy_model
from core.optimizers.ays import AYSOptimizer
from core.optimizers.progress import ays_progress, progress_of
from toy_data import get_toy

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _ays(**kw):
    mix = get_toy("gaussian")
    args = dict(steps=5, stages=(5, 10, 20), n_samples=64, n_candidates=3, max_iters=3, heldout=None, seed=0)
    return AYSOptimizer(load_toy_model("gaussian", "exact"), lambda n, g: mix.sample(n, g), **{**args, **kw})


def test_fraction_is_the_work_weighted_closed_form_and_reaches_one():
    opt = _ays()
    p0 = ays_progress(opt)
    # nothing done: start (5) + 3 sweeps x 5 + 3 x 10 + 3 x 20 = 110 units left
    assert (p0.stage, p0.stages, p0.step, p0.cap, p0.fraction) == (1, 3, 0, 3, 0.0) and p0.remaining_s is None
    seen, done_work = [], 0
    for ev in opt.events():
        p = progress_of(opt)
        seen.append(p)
        done_work += (5, 10, 20)[ev.stage]
        if not ev.done:
            k = opt._stage
            caps_left = (3 - opt._stage_iter) * (5, 10, 20)[k] + sum(3 * n for n in (5, 10, 20)[k + 1:])
            assert p.fraction == pytest.approx(done_work / (done_work + caps_left), rel=1e-12)
            assert p.stage == k + 1 and p.step == opt._stage_iter and p.remaining_s > 0
    fr = [p.fraction for p in seen]
    assert all(b > a for a, b in zip(fr, fr[1:])) and fr[-1] == 1.0 and seen[-1].done
    assert [p.stage for p in seen][-1] == 3 and seen[-1].early_stop == "early stopping off"
    assert seen[-1].elapsed_s == pytest.approx(sum(h["seconds"] for h in opt.history), rel=1e-12)
    assert "stage 3/3" in seen[-1].text() and "100 %" in seen[-1].short()


def test_early_stopping_state_in_words():
    opt = _ays(heldout="nll", heldout_n=256, heldout_solver="dpmpp_2m", patience=1, mixture=get_toy("gaussian"),
               max_iters=6)
    texts = []
    for ev in opt.events():
        texts.append(ays_progress(opt).early_stop)
        if ev.extra["early_stopped_at"] is not None:
            break
    assert texts[0].startswith("held-out: 0/1 sweeps without gain (best: sweep 0)")
    assert texts[-1] == f"stage 1 kept sweep {opt.state_dict()['early_stopped_at']}"


def test_cli_bar_covers_every_stage(tmp_path):
    p = subprocess.run([sys.executable, "-m", "core", "optimize", "ays", "--toy", "gaussian", "--steps", "5",
                        "--stages", "5,10,20", "--samples", "64", "--candidates", "3", "--max-iters", "3",
                        "--heldout", "none", "--threads", "1", "--out", str(tmp_path / "a.json")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    frames = re.split(r"[\r\n]", p.stderr)
    last = [f for f in frames if f.startswith("AYS:")][-1]
    assert "100%" in last and "stage 3/3" in last, last
    stages = {m for f in frames for m in re.findall(r"stage (\d)/3", f)}
    assert stages == {"1", "2", "3"}            # the same bar went through all three stages
