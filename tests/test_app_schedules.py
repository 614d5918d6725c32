"""Schedules page through AppTest: the library plot and table, adding a heuristic, importing
good and bad schedules, and exporting then re-importing every format."""
from pathlib import Path

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


FORMATS_PAGE = ["json", "comfyui", "comfyui_tensor", "diffusers", "diffusers_edm", "diffusers_timesteps",
                "kdiffusion", "list"]


def _import(page, text, conv="auto", table=None, name=None):
    page.text_area(key="sc_import_text").input(text)
    page.radio(key="sc_import_conv").set_value(conv).run()
    if table is not None:
        page.selectbox(key="sc_import_table").set_value(table)
    if name is not None:
        page.text_input(key="sc_import_name").input(name)
    page.button(key="sc_import_btn").click().run()


def test_export_then_reimport_gives_the_same_sigmas_in_every_format(page):
    s = make_schedule("karras", 9, table="sd15", rho=5.0)       # inside the sd15 table: every format exists
    page.session_state["library"]["mine"] = s
    page.run()
    page.selectbox(key="sc_export_pick").set_value("mine").run()
    texts = dict(page.session_state["sc_export"])
    assert list(texts) == FORMATS_PAGE
    shown = [c.value for c in page.code]
    labels = [b.label for b in page.get("download_button")]
    assert len(labels) == len(FORMATS_PAGE) + 1                 # one download per format ...
    assert labels[-1] == "Download the whole library (JSON)"    # ... and the whole library
    for fmt in FORMATS_PAGE:
        text = texts[fmt]
        assert text == export(s, fmt, table="sd15" if fmt == "diffusers_timesteps" else None)
        assert text in shown                                    # ... and the same text shown (with a copy button)
        _import(page, text, conv="timesteps" if fmt == "diffusers_timesteps" else "auto", table="sd15",
                name=f"back_{fmt}")
        assert_clean(page)
        back = [v for k, v in _library(page).items() if k.startswith(f"back_{fmt}")]
        assert back, (fmt, list(_library(page)))
        if fmt == "diffusers_timesteps":                          # moved to the nearest training timesteps
            from core.schedules.tables import nearest_timesteps
            assert back[0].sigmas == tuple(nearest_timesteps(s, "sd15")["sigmas"]) + (0.0,)
        elif fmt == "diffusers_edm":                              # through EDMEuler's Karras ramp and back
            np.testing.assert_allclose(back[0].sigmas, s.sigmas, rtol=1e-12)
        else:
            assert back[0].sigmas == s.sigmas, fmt                # exact: shortest round-trip decimals


def test_a_schedule_outside_the_table_has_no_timesteps_export_and_a_range_warning(page):
    s = make_schedule("karras", 6, 0.001, 500.0)
    page.session_state["library"]["wide"] = s
    page.run()
    page.selectbox(key="sc_export_pick").set_value("wide").run()
    assert "diffusers_timesteps" not in page.session_state["sc_export"]
    assert any("same training timestep" in w.value for w in page.warning)
    assert any("above the sidebar's model" in w.value and "below" in w.value for w in page.warning)
    assert len(page.get("download_button")) == len(FORMATS_PAGE) - 1 + 1     # no timesteps=; + the library
    page.selectbox(key="sc_export_pick").set_value("karras (10 steps)").run()     # 80 .. 0.002 fits
    assert not any("sidebar's model" in w.value for w in page.warning)


def test_add_a_comfyui_table_scheduler(page):
    import json
    fx = json.loads((Path(__file__).parent / "fixtures" / "comfyui_schedulers.json").read_text())
    page.selectbox(key="sc_add_name").set_value("beta").run()
    page.selectbox(key="sc_add_table").set_value("sd15")
    page.number_input(key="sc_add_steps").set_value(10)
    page.button(key="sc_add_btn").click().run()
    assert_clean(page)
    got = _library(page)["beta (10 steps)"]
    np.testing.assert_allclose(got.sigmas, fx["sd15"]["beta"]["10"], rtol=2e-6)      # ComfyUI's beta, sd15 table


def test_import_conventions_are_explicit(page):
    before = dict(_library(page))
    _import(page, "tensor([999., 850., 736., 645., 0.])")            # auto: looks like timesteps -> refused
    assert len(page.error) == 1 and "'training timesteps (+ table)' with the model's table" in page.error[0].value
    assert "--" not in page.error[0].value and _library(page) == before           # the page's words, no CLI flags
    _import(page, "[999, 850, 736, 645, 545, 455, 343, 233, 124, 24]", conv="timesteps", table="sd15", name="ts")
    assert_clean(page)
    assert _library(page)["ts (10 steps)"].sigmas == make_schedule("ays_sd15", 10).sigmas
    _import(page, "[0.999, 0.6, 0.3, 0.0]", name="fl")                 # auto: looks like flow t -> refused
    assert "flow" in page.error[0].value
    _import(page, "[0.999, 0.6, 0.3, 0.0]", conv="flow", name="fl")
    assert_clean(page)
    np.testing.assert_allclose(_library(page)["fl (3 steps)"].sigmas, [999.0, 1.5, 3 / 7, 0.0], rtol=1e-12)
    _import(page, "[0.999, 0.6, 0.3, 0.0]", conv="sigmas", name="sg")  # told: sigmas
    assert_clean(page)
    assert _library(page)["sg (3 steps)"].sigmas == (0.999, 0.6, 0.3, 0.0)


def test_comfyui_string_from_ays_preset_imports(page):
    page.text_area(key="sc_import_text").input("14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, "
                                               "0.399, 0.152, 0.0")
    page.button(key="sc_import_btn").click().run()
    assert_clean(page)
    assert "imported" in page.success[0].value
    from core.schedules.presets import AYS_PAPER_SIGMAS
    got = _library(page)["imported (10 steps)"]
    assert got.sigmas == tuple(AYS_PAPER_SIGMAS["sd15"][:-1]) + (0.0,)        # the paper's 3-decimal levels
    assert got.sigmas != make_schedule("ays_sd15", 10).sigmas                 # ComfyUI's exact preset differs


def test_remove(page):
    first = next(iter(_library(page)))
    page.multiselect(key="sc_remove_pick").set_value([first])
    page.button(key="sc_remove_btn").click().run()
    assert_clean(page)
    assert first not in _library(page)
    assert first not in [t["name"] for t in figures(page)["sc_fig_library"]["data"]]
