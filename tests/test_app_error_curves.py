"""Error-curves page through AppTest: per-interval bars, densities and cumulative shares are the
engine's numbers for the chosen schedules. Wiring is checked with the contract stand-ins of
tests/fake_engine; the real-module tests are xfail only while those modules are missing."""
import numpy as np
import pytest

import fake_engine
from app_helpers import arr, assert_clean, figures, missing_ok, open_page, require, trace
from app_helpers import one_thread  # noqa: F401  (autouse: one torch thread)
from core.models import load_toy_model
from core.schedules import make_schedule
from core.viz_data import cumulative_share
from toy_data import get_toy

STATE = {"ec_scheds": ["karras", "loglinear"], "ec_steps": 6, "ec_n": 256}


@pytest.fixture()
def fake(monkeypatch):
    fake_engine.install(monkeypatch, "core.objectives.klub", "core.objectives.truncation")
    yield
    fake_engine.install(monkeypatch)


def _sched(name):
    return make_schedule(name, 6, 0.002, 80.0)


def test_bars_density_and_cumulative_share_are_the_engines(fake, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "core.objectives.stein", None)
    at = open_page("error_curves", **STATE)
    f = figures(at)
    assert {"ec_fig_klub_bars", "ec_fig_klub_density", "ec_fig_klub_cum", "ec_fig_truncation_bars",
            "ec_fig_truncation_cum"} <= set(f)
    assert any("core.objectives.stein" in i.value for i in at.info)          # the missing one says so
    model = load_toy_model("gaussian", "exact")
    for name in ("karras", "loglinear"):
        want = fake_engine.fake_klub_curves(model, None, _sched(name))
        bars = trace(f["ec_fig_klub_bars"], name)
        np.testing.assert_allclose(arr(bars["y"]), want["klub"])
        np.testing.assert_allclose(arr(bars["error_y"]["array"]), want["klub_se"])
        np.testing.assert_allclose(arr(trace(f["ec_fig_klub_density"], name)["y"]), want["density"])
        cum = cumulative_share(want["sigma_lo"], want["sigma_hi"], want["share"])
        np.testing.assert_allclose(arr(trace(f["ec_fig_klub_cum"], name)["y"]), cum["cumulative"])
        tr = fake_engine.fake_truncation_curve(_sched(name), p=1.0)
        np.testing.assert_allclose(arr(trace(f["ec_fig_truncation_bars"], name)["y"]), tr["contribution"])
    # a sentence under each plot says how to read it
    assert sum("how" in c.value.lower() or "each bar" in c.value.lower() or "share" in c.value.lower()
               for c in at.caption) >= 4


def test_changing_p_and_schedules_changes_the_plotted_numbers(fake):
    at = open_page("error_curves", **STATE)
    at.number_input(key="ec_p").set_value(2.0)
    at.multiselect(key="ec_scheds").set_value(["kl_optimal"])
    at.number_input(key="ec_steps").set_value(5).run()
    assert_clean(at)
    f = figures(at)
    s = make_schedule("kl_optimal", 5, 0.002, 80.0, c=0.5)
    bars = trace(f["ec_fig_truncation_bars"], "kl_optimal")
    np.testing.assert_allclose(arr(bars["y"]), fake_engine.fake_truncation_curve(s, p=2.0)["contribution"])
    assert [t["name"] for t in f["ec_fig_klub_bars"]["data"]] == ["kl_optimal"]
    assert at.session_state["ec_curves"]["KLUB (Align Your Steps)"]["kl_optimal"]["klub"].shape == (5,)


@missing_ok
def test_real_klub_curves_on_the_page():
    klub = require("core.objectives.klub")
    at = open_page("error_curves", **STATE)
    bars = trace(figures(at)["ec_fig_klub_bars"], "karras")
    model = load_toy_model("gaussian", "exact")
    mix = get_toy("gaussian")
    want = klub.klub_curves(model, lambda n, g: mix.sample(n, g), _sched("karras"), n_samples=256, c=0.5, seed=0)
    np.testing.assert_allclose(arr(bars["y"]), np.asarray(want["klub"], dtype=np.float64), rtol=1e-9)
    assert np.asarray(want["share"]).sum() == pytest.approx(1.0)


@missing_ok
def test_real_stein_curves_on_the_page():
    require("core.objectives.stein")
    at = open_page("error_curves", **STATE)
    f = figures(at)
    assert "ec_fig_stein_bars" in f and len(f["ec_fig_stein_bars"]["data"]) == 2
    cum = arr(trace(f["ec_fig_stein_cum"], "karras")["y"])
    assert cum[-1] == pytest.approx(1.0) and np.all(np.diff(cum) >= -1e-12)


@missing_ok
def test_real_truncation_curve_on_the_page():
    tr = require("core.objectives.truncation")
    at = open_page("error_curves", **STATE)
    bars = trace(figures(at)["ec_fig_truncation_bars"], "loglinear")
    want = tr.truncation_curve(_sched("loglinear"), p=1.0)
    np.testing.assert_allclose(arr(bars["y"]), np.asarray(want["contribution"], dtype=np.float64), rtol=1e-9)
