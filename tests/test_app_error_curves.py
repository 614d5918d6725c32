"""Error-curves page through AppTest on the real objectives: the plotted per-interval bars,
densities and cumulative shares are klub_curves / stein_curves / truncation_curve's numbers for
the same schedules and seed, and they follow the widgets."""
import re

import numpy as np
import pytest

from app_helpers import arr, assert_clean, figures, open_page, trace
from core.models import load_toy_model
from core.objectives.klub import klub_curves
from core.objectives.stein import log_grid, stein_curves, stein_density
from core.objectives.truncation import truncation_curve
from core.schedules import make_schedule
from core.viz_data import cumulative_share
from toy_data import get_toy

STATE = {"ec_scheds": ["karras", "loglinear"], "ec_steps": 6, "ec_n": 256, "ec_levels": 50}

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread for this module


def _sched(name, steps=6, **kw):
    return make_schedule(name, steps, 0.002, 80.0, **kw)


def _sampler(toy):
    mix = get_toy(toy)
    return lambda n, g: mix.sample(n, g)


def test_klub_stein_and_truncation_plots_are_the_engines_numbers():
    at = open_page("error_curves", **STATE)
    f = figures(at)
    assert {"ec_fig_klub_bars", "ec_fig_klub_density", "ec_fig_klub_cum", "ec_fig_stein_bars",
            "ec_fig_stein_density", "ec_fig_stein_cum", "ec_fig_truncation_bars", "ec_fig_truncation_cum"} <= set(f)
    model, sampler = load_toy_model("gaussian", "exact"), _sampler("gaussian")
    grid = log_grid(0.002, 80.0, 50)
    delta = stein_density(model, sampler, grid, n=256, seed=0)
    for name in ("karras", "loglinear"):
        k = klub_curves(model, sampler, _sched(name), n_samples=256, c=0.5, seed=0)   # same seed: same numbers
        bars = trace(f["ec_fig_klub_bars"], name)
        np.testing.assert_allclose(arr(bars["y"]), k["klub"], rtol=1e-12)
        np.testing.assert_allclose(arr(bars["error_y"]["array"]), k["klub_se"], rtol=1e-12)
        np.testing.assert_allclose(arr(trace(f["ec_fig_klub_density"], name)["y"]), k["density"], rtol=1e-12)
        cum = cumulative_share(k["sigma_lo"], k["sigma_hi"], k["share"])
        np.testing.assert_allclose(arr(trace(f["ec_fig_klub_cum"], name)["y"]), cum["cumulative"], rtol=1e-12)
        s = stein_curves(None, None, _sched(name), density=(grid, delta))
        np.testing.assert_allclose(arr(trace(f["ec_fig_stein_bars"], name)["y"]), s["cost"], rtol=1e-9)
        np.testing.assert_allclose(arr(trace(f["ec_fig_stein_density"], name)["y"]), s["density_log"], rtol=1e-9)
        tr = truncation_curve(_sched(name), p=1.0)
        np.testing.assert_allclose(arr(trace(f["ec_fig_truncation_bars"], name)["y"]), tr["contribution"], rtol=1e-12)
    # the Stein costs sum to the cumulative curve's end and KLUB is positive: real estimates, not zeros
    assert arr(trace(f["ec_fig_klub_bars"], "karras")["y"]).min() > 0
    assert arr(trace(f["ec_fig_stein_cum"], "karras")["y"])[-1] == pytest.approx(1.0)
    # a sentence under each plot says how to read it
    assert sum("each bar" in c.value.lower() or "share" in c.value.lower() for c in at.caption) >= 6


def test_changing_p_v_c_and_schedules_changes_the_plotted_numbers():
    at = open_page("error_curves", **STATE)
    before = arr(trace(figures(at)["ec_fig_stein_bars"], "karras")["y"])
    at.number_input(key="ec_v").set_value(2.0).run()
    assert_clean(at)
    after = arr(trace(figures(at)["ec_fig_stein_bars"], "karras")["y"])
    model, sampler = load_toy_model("gaussian", "exact"), _sampler("gaussian")
    grid = log_grid(0.002, 80.0, 50)
    delta = stein_density(model, sampler, grid, n=256, seed=0, v=lambda s: s ** 2.0)
    np.testing.assert_allclose(after, stein_curves(None, None, _sched("karras"), density=(grid, delta))["cost"],
                               rtol=1e-9)
    assert not np.allclose(before, after)
    at.number_input(key="ec_p").set_value(2.0)
    at.number_input(key="ec_c").set_value(1.0)
    at.multiselect(key="ec_scheds").set_value(["kl_optimal"])
    at.number_input(key="ec_steps").set_value(5).run()
    assert_clean(at)
    f = figures(at)
    s = _sched("kl_optimal", 5, c=0.5)
    np.testing.assert_allclose(arr(trace(f["ec_fig_truncation_bars"], "kl_optimal")["y"]),
                               truncation_curve(s, p=2.0)["contribution"], rtol=1e-12)
    np.testing.assert_allclose(arr(trace(f["ec_fig_klub_bars"], "kl_optimal")["y"]),
                               klub_curves(model, sampler, s, n_samples=256, c=1.0, seed=0)["klub"], rtol=1e-12)
    assert [t["name"] for t in f["ec_fig_klub_bars"]["data"]] == ["kl_optimal"]
    shown = at.session_state["ec_curves"]
    assert shown["KLUB (Align Your Steps)"]["kl_optimal"]["klub"].shape == (4,)      # 5 levels, 4 intervals
    assert shown["Truncation error bound (DM-NonUniform)"]["kl_optimal"]["contribution"].shape == (5,)


def test_totals_table_and_log_toggle():
    at = open_page("error_curves", **{**STATE, "ec_scheds": ["karras", "loglinear", "kl_optimal"]})
    f = figures(at)
    assert f["ec_fig_klub_bars"]["layout"]["yaxis"]["type"] == "log"          # on by default
    assert f["ec_fig_stein_density"]["layout"]["yaxis"]["type"] == "log"
    assert f["ec_fig_klub_cum"]["layout"]["yaxis"].get("type", "linear") != "log"   # shares stay linear
    table = at.dataframe[0].value
    assert list(table["schedule"]) == ["karras", "loglinear", "kl_optimal"]
    shown = at.session_state["ec_curves"]
    for col, title, key in (("KLUB", "KLUB (Align Your Steps)", "klub"),
                            ("Stein", "Stein cost (score-optimal)", "cost"),
                            ("bound", "Truncation error bound (DM-NonUniform)", "contribution")):
        per = {lab: float(np.sum(c[key])) for lab, c in shown[title].items()}     # totals = the bars' sums
        np.testing.assert_allclose(table[col].to_numpy(), [per[k] for k in table["schedule"]], rtol=1e-6)
        assert at.session_state["ec_totals"]["best"][col] == min(per, key=per.get)
    # the winner of each column is highlighted, and only it
    css = at.dataframe[0].proto.arrow_data.styler.styles  # the Styler's CSS: "#T_id_rowR_colC, ... { ... }"
    marked = {(int(r), int(c)) for r, c in re.findall(r"_row(\d+)_col(\d+)", css.split("{")[0])}
    best = at.session_state["ec_totals"]["best"]
    cols = list(table.columns)
    assert marked == {(list(table["schedule"]).index(best[c]), cols.index(c)) for c in ("KLUB", "Stein", "bound")}
    assert any("KLUB: " + at.session_state["ec_totals"]["best"]["KLUB"] in c.value for c in at.caption)
    at.toggle(key="ec_log").set_value(False).run()
    assert_clean(at)
    f2 = figures(at)
    assert f2["ec_fig_klub_bars"]["layout"]["yaxis"].get("type", "linear") == "linear"
    np.testing.assert_allclose(arr(trace(f2["ec_fig_klub_bars"], "karras")["y"]),
                               arr(trace(f["ec_fig_klub_bars"], "karras")["y"]))
