"""Schedules page through AppTest: the library plot and table, adding a heuristic, importing
good and bad schedules, and exporting then re-importing every format."""
import numpy as np
import pytest

from app_helpers import arr, assert_clean, figures, open_page, trace
from core.schedules import export, make_schedule

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread for this module


@pytest.fixture()
def page():
    return open_page("schedules")


def _library(at):
    return at.session_state["library"]


def test_library_plot_and_table_show_every_schedule(page):
    lib = _library(page)
    fig = figures(page)["sc_fig_library"]
    assert [t["name"] for t in fig["data"]] == list(lib)
    for label, s in lib.items():
        np.testing.assert_allclose(arr(trace(fig, label)["y"]), s.sigmas[:-1])
    table = page.dataframe[0].value
    assert list(table["label"]) == list(lib)
    assert list(table["steps"]) == [s.steps for s in lib.values()]


def test_add_heuristic_with_parameter(page):
    page.selectbox(key="sc_add_name").set_value("kl_optimal").run()
    assert page.number_input(key="sc_add_param").value == 0.5       # c's default follows the choice
    page.number_input(key="sc_add_steps").set_value(7)
    page.number_input(key="sc_add_param").set_value(1.0)
    page.button(key="sc_add_btn").click().run()
    assert_clean(page)
    want = make_schedule("kl_optimal", 7, 0.002, 80.0, c=1.0)
    added = [s for s in _library(page).values() if s.name == "kl_optimal" and s.steps == 7]
    assert added and added[0].sigmas == want.sigmas
    assert "kl_optimal (7 steps)" in [t["name"] for t in figures(page)["sc_fig_library"]["data"]]
    # a parameter-free choice in between, then back: the default comes back (not the widget minimum)
    page.selectbox(key="sc_add_name").set_value("loglinear").run()
    page.selectbox(key="sc_add_name").set_value("kl_optimal").run()
    assert page.number_input(key="sc_add_param").value == 0.5


@pytest.mark.parametrize("text, problem", [
    ("14.6, 6.4, 3.8", "not 0"),                     # no final 0
    ("1, 2, 0", "strictly decreasing"),
    ("14.6, abc, 0", "cannot read 'abc'"),
    ('{"name": "x"}', "'sigmas'"),
    ("", "nothing to import"),
])
def test_bad_import_shows_the_error_and_keeps_the_library(page, text, problem):
    before = dict(_library(page))
    page.text_area(key="sc_import_text").input(text)
    page.button(key="sc_import_btn").click().run()
    assert not page.exception
    assert len(page.error) == 1 and problem in page.error[0].value, [e.value for e in page.error]
    assert _library(page) == before


@pytest.mark.parametrize("fmt", ["json", "comfyui", "diffusers", "kdiffusion"])
def test_export_then_reimport_gives_the_same_sigmas(page, fmt):
    s = make_schedule("karras", 9, 0.01, 50.0, rho=5.0)
    page.session_state["library"]["mine"] = s
    page.run()
    page.selectbox(key="sc_export_pick").set_value("mine").run()
    text = page.session_state["sc_export"][fmt]
    assert text == export(s, fmt)
    shown = [c.value for c in page.code]
    assert text in shown                               # the snippet shown is the one downloaded
    labels = [b.label for b in page.get("download_button")]
    assert len(labels) == 5 and labels[-1] == "Download the whole library (JSON)"   # 4 formats + the library
    page.text_area(key="sc_import_text").input(text)
    page.text_input(key="sc_import_name").input(f"back_{fmt}")
    page.button(key="sc_import_btn").click().run()
    assert_clean(page)
    back = [v for k, v in _library(page).items() if k.startswith(f"back_{fmt}")]
    assert back, list(_library(page))
    assert back[0].sigmas == s.sigmas                  # exact: repr() round-trips floats


def test_comfyui_string_from_ays_preset_imports(page):
    page.text_area(key="sc_import_text").input("14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, "
                                               "0.399, 0.152, 0.0")
    page.button(key="sc_import_btn").click().run()
    assert_clean(page)
    assert "imported" in page.success[0].value
    assert make_schedule("ays_sd15", 10).sigmas in [s.sigmas for s in _library(page).values()]


def test_remove(page):
    first = next(iter(_library(page)))
    page.multiselect(key="sc_remove_pick").set_value([first])
    page.button(key="sc_remove_btn").click().run()
    assert_clean(page)
    assert first not in _library(page)
    assert first not in [t["name"] for t in figures(page)["sc_fig_library"]["data"]]
