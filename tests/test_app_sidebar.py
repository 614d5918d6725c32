"""The shared sidebar through AppTest: device choices, the seed and the toy flow into the pages,
and the MLP model kind is offered exactly when its shipped checkpoint exists."""
import numpy as np
import pytest
import torch

from app_helpers import arr, assert_clean, figures, open_page, trace
from app_lib.state import model_kinds
from core.models import load_toy_model, toy_checkpoint
from core.sampling import generate
from core.schedules import make_schedule
from toy_data import TOYS

SMALL = {"pg_steps": 4, "pg_n": 500, "pg_seeds": 1, "pg_paths": 4}

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread for this module


def test_defaults_need_no_gpu_and_no_download():
    at = open_page("playground", toy="grid8x8", **SMALL)
    assert at.sidebar.selectbox(key="sb_device").options == (["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"])
    assert at.sidebar.selectbox(key="sb_toy").value == "grid8x8" and list(at.sidebar.selectbox(key="sb_toy").options) == list(TOYS)
    assert at.sidebar.selectbox(key="sb_model_kind").value == "exact"


def test_seed_and_toy_reach_the_playground():
    at = open_page("playground", toy="gaussian", **SMALL)
    at.number_input(key="sb_seed").set_value(5)
    at.sidebar.selectbox(key="sb_toy").set_value("ring8").run()
    assert_clean(at)
    model = load_toy_model("ring8", "exact")
    want = generate(model, make_schedule("karras", 4), 500, solver="dpmpp_2m", seed=5).x.numpy()
    np.testing.assert_allclose(arr(trace(figures(at)["pg_fig_samples_A"], "samples")["x"]), want[:, 0], rtol=1e-12)
    assert "ring8" in at.caption[1].value


def test_mlp_offered_exactly_when_its_checkpoint_exists():
    for toy in TOYS:
        assert ("mlp" in model_kinds(toy)) == toy_checkpoint(toy).is_file(), toy
        assert model_kinds(toy)[0] == "exact"
    with_ckpt = [t for t in TOYS if toy_checkpoint(t).is_file()]
    toy = with_ckpt[0] if with_ckpt else "gaussian"
    at = open_page("playground", toy=toy, **SMALL)
    assert list(at.sidebar.selectbox(key="sb_model_kind").options) == model_kinds(toy)


def test_page_settings_survive_a_visit_to_another_page():
    # (pg_steps / pg_sched_b not preset: AppTest re-applies preset session state to dropped keys)
    at = open_page("playground", toy="gaussian", pg_n=500, pg_seeds=1, pg_paths=4)
    at.selectbox(key="pg_sched_b").set_value("loglinear")
    at.number_input(key="pg_steps").set_value(5).run()
    at.switch_page("pages/schedules.py").run()
    assert_clean(at)
    at.switch_page("pages/playground.py").run()
    assert_clean(at)
    assert at.number_input(key="pg_steps").value == 5 and at.selectbox(key="pg_sched_b").value == "loglinear"
    assert at.session_state["pg_schedules"]["B: loglinear"] == make_schedule("loglinear", 5).sigmas


def test_sidebar_names_the_folder_of_the_saved_library(app_home):
    at = open_page("playground", toy="gaussian", **SMALL)
    assert any(f"`{app_home}`" in c.value for c in at.sidebar.caption)


def test_app_threads_default_to_one_and_a_bad_value_is_named(monkeypatch):
    """$SCHEDULE_LAB_THREADS sets torch's CPU threads for the app (default 1: 2 threads on a loaded
    2-core machine made the Images page's reference 30x slower); a bad value is a warning, not a crash."""
    from core.device import THREADS_ENV, app_threads
    from core.errors import ScheduleLabError
    assert app_threads({}) == 1 and app_threads({THREADS_ENV: " 2 "}) == 2
    for bad in ("0", "two", "-1", "1.5"):
        with pytest.raises(ScheduleLabError, match=THREADS_ENV):
            app_threads({THREADS_ENV: bad})
    calls = []                      # torch's thread count is per thread (the script's own): record the call
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.delenv(THREADS_ENV, raising=False)
    at = open_page("schedules")
    assert_clean(at)
    assert calls and set(calls) == {1}
    monkeypatch.setenv(THREADS_ENV, "many")
    calls.clear()
    at = open_page("playground", toy="grid8x8", **SMALL)      # (AppTest drops app.py's own elements after switch_page)
    assert any(THREADS_ENV in w.value for w in at.warning) and calls == []
