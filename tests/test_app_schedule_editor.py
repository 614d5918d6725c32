"""Schedule editor on the Schedules page through AppTest: a level edited in the table (the editor's
edit state, as the browser sends it) or nudged moves the plotted levels and the per-interval
KLUB / Stein / truncation bars to the engine's numbers for the edited schedule; invalid edits
show a message next to the table and change nothing; Save adds a library entry."""
import numpy as np
import pytest

from app_helpers import arr, assert_clean, figures, open_page, trace
from core.models import load_toy_model
from core.objectives.klub import klub_curves
from core.objectives.truncation import truncation_curve
from core.schedules import Schedule
from toy_data import get_toy

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread for this module


def _edit(at, rows: dict):
    """Send the table's edit state {row: new sigma} (what st.data_editor receives from the browser)."""
    key = f"se_table_{at.session_state['se_version']}"
    at.session_state[key] = {"edited_rows": {r: {"sigma": v} for r, v in rows.items()},
                             "added_rows": [], "deleted_rows": []}
    return at.run()


def test_edit_a_level_and_the_bars_follow_then_save():
    at = open_page("schedules", se_n=256)
    lib = at.session_state["library"]
    label = at.session_state["se_pick"]
    orig = lib[label]
    f0 = figures(at)
    klub_before = arr(trace(f0["se_fig_klub"], "edited")["y"])
    np.testing.assert_allclose(klub_before, arr(trace(f0["se_fig_klub"], "original")["y"]))
    lv = list(orig.sigmas[:-1])
    new = float(np.sqrt(lv[3] * lv[4]))                         # a valid move of row 4
    _edit(at, {4: new})
    assert_clean(at)
    want = Schedule(tuple(lv[:4] + [new] + lv[5:]) + (0.0,))
    assert at.session_state["se_current"] == want.sigmas[:-1]
    f = figures(at)
    np.testing.assert_allclose(arr(trace(f["se_fig"], "edited")["y"]), want.sigmas[:-1])
    model, mix = load_toy_model("gaussian", "exact"), get_toy("gaussian")
    k = klub_curves(model, lambda n, g: mix.sample(n, g), want, n_samples=256, c=0.5, seed=0)
    klub_after = arr(trace(f["se_fig_klub"], "edited")["y"])
    np.testing.assert_allclose(klub_after, k["klub"], rtol=1e-12)
    assert not np.allclose(klub_after[2:5], klub_before[2:5])    # the two intervals next to row 4 changed
    np.testing.assert_allclose(arr(trace(f["se_fig_klub"], "original")["y"]), klub_before)
    np.testing.assert_allclose(arr(trace(f["se_fig_truncation"], "edited")["y"]),
                               truncation_curve(want, p=1.0)["contribution"], rtol=1e-12)
    assert not np.allclose(arr(trace(f["se_fig_stein"], "edited")["y"]),
                           arr(trace(f["se_fig_stein"], "original")["y"]))
    # save it as a new schedule
    at.text_input(key="se_name").input("hand-made")
    at.button(key="se_save").click().run()
    assert_clean(at)
    lib = at.session_state["library"]
    assert "hand-made (10 steps)" in lib and lib["hand-made (10 steps)"].sigmas == want.sigmas
    assert lib["hand-made (10 steps)"].params["edited_from"] == label
    assert "saved 'hand-made (10 steps)'" in at.success[-1].value
    assert "hand-made (10 steps)" in [t["name"] for t in figures(at)["sc_fig_library"]["data"]]


def test_invalid_edits_show_a_message_and_keep_the_last_valid_levels():
    at = open_page("schedules", se_n=256)
    before = at.session_state["se_current"]
    klub = arr(trace(figures(at)["se_fig_klub"], "edited")["y"])
    for rows, problem in (({4: before[2]}, "row 4: sigma = "), ({4: 0.0}, "not positive"),
                          ({9: -1.0}, "not positive"), ({4: None}, "not a number")):
        _edit(at, rows)
        assert not at.exception
        assert len(at.error) == 1 and problem in at.error[0].value, [e.value for e in at.error]
        assert at.session_state["se_current"] == before
        np.testing.assert_allclose(arr(trace(figures(at)["se_fig_klub"], "edited")["y"]), klub)


def test_pick_a_row_and_nudge_it():
    at = open_page("schedules", se_n=256)
    before = at.session_state["se_current"]
    at.selectbox(key="se_point").set_value(5).run()
    at.button(key="se_up").click().run()
    assert_clean(at)
    after = at.session_state["se_current"]
    assert after[5] == pytest.approx(before[5] * 1.1) and after[:5] + after[6:] == before[:5] + before[6:]
    fig = figures(at)["se_fig"]
    np.testing.assert_allclose(arr(trace(fig, "edited")["y"]), after)
    assert arr(trace(fig, "picked")["x"]).tolist() == [5]
    at.button(key="se_down").click().run()
    assert at.session_state["se_current"][5] == pytest.approx(before[5] * 1.1 * 0.9)
    # a new pick starts from that schedule's levels
    other = list(at.session_state["library"])[1]
    at.selectbox(key="se_pick").set_value(other).run()
    assert_clean(at)
    assert at.session_state["se_current"] == at.session_state["library"][other].sigmas[:-1]
