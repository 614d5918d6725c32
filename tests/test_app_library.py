"""The schedule library on disk (app_lib.store): a library saved in one AppTest session is the
library of a fresh session; the library file downloads and loads back; the file is written
atomically and read through a hardened reader that refuses oversize, malformed and mistyped files."""
import json

import pytest

from app_helpers import assert_clean, figures, open_page
from app_lib import store
from core.errors import ScheduleLabError
from core.schedules import make_schedule

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread for this module


def _same(a: dict, b: dict):
    assert list(a) == list(b)
    for k in a:
        assert a[k].sigmas == b[k].sigmas and a[k].name == b[k].name and a[k].solver == b[k].solver


def test_a_saved_library_is_the_library_of_a_fresh_session(app_home):
    at = open_page("schedules")
    at.selectbox(key="sc_add_name").set_value("kl_optimal").run()
    at.number_input(key="sc_add_steps").set_value(7)
    at.number_input(key="sc_add_param").set_value(1.0)
    at.button(key="sc_add_btn").click().run()
    first = next(iter(at.session_state["library"]))
    at.multiselect(key="sc_remove_pick").set_value([first])
    at.button(key="sc_remove_btn").click().run()
    assert_clean(at)
    saved = dict(at.session_state["library"])
    assert first not in saved and "kl_optimal (7 steps)" in saved
    assert (app_home / "library.json").is_file()
    fresh = open_page("schedules")                              # a new session (as after a reload)
    _same(fresh.session_state["library"], saved)
    assert [t["name"] for t in figures(fresh)["sc_fig_library"]["data"]] == list(saved)


def test_the_library_file_loads_back_into_an_empty_library(app_home, monkeypatch, tmp_path):
    at = open_page("schedules")
    at.session_state["library"]["mine"] = make_schedule("karras", 9, 0.01, 50.0, rho=5.0)
    at.run()
    text = store.library_to_json(at.session_state["library"])     # what "Download the whole library" serves
    assert [b.label for b in at.get("download_button")][-1] == "Download the whole library (JSON)"
    monkeypatch.setenv(store.ENV, str(tmp_path / "other_home"))  # another machine: defaults only
    other = open_page("schedules")
    for label in list(other.session_state["library"]):
        other.session_state["library"].pop(label)
    other.text_area(key="sc_import_text").input(text)
    other.button(key="sc_import_btn").click().run()
    assert_clean(other)
    assert "loaded 5 schedule(s)" in other.success[0].value
    _same(other.session_state["library"], at.session_state["library"])
    _same(store.load_library(), at.session_state["library"])          # and it was saved there


def test_a_corrupt_library_file_is_set_aside_with_a_warning(app_home):
    app_home.mkdir(parents=True, exist_ok=True)
    (app_home / "library.json").write_text('{"format": "schedule-lab/library/1", "schedules": [{"label": "x", '
                                           '"schedule": {"sigmas": [1.0, 2.0, 0.0]}}]}')
    at = open_page("schedules")
    assert "karras (10 steps)" in at.session_state["library"]          # the defaults
    assert (app_home / "library.json.bad").is_file() and not (app_home / "library.json").exists()
    assert "strictly decreasing" in at.session_state["_store_message"]


@pytest.mark.parametrize("text, problem", [
    (b"\xff\xfe", "not UTF-8"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"format": "other"}', "not a schedule library"),
    ('{"format": "schedule-lab/library/1", "schedules": {}}', "must be a list"),
    ('{"format": "schedule-lab/library/1", "schedules": [{"label": 3, "schedule": {}}]}', "'label' string"),
    ('{"format": "schedule-lab/library/1", "schedules": [{"label": "a", "schedule": {"sigmas": [1, "x", 0]}}]}',
     "list of numbers"),
    ('{"format": "schedule-lab/library/1", "schedules": [{"label": "a", "schedule": {"sigmas": [1, 0], '
     '"params": [1]}}]}', "bad 'params'"),
])
def test_the_reader_refuses_bad_library_files(text, problem):
    with pytest.raises(ScheduleLabError, match=problem):
        store.library_from_json(text)


def test_size_limit_and_atomic_write(app_home, monkeypatch):
    monkeypatch.setattr(store, "MAX_LIBRARY_BYTES", 100)
    lib = {f"k{i}": make_schedule("karras", 10) for i in range(3)}
    p = store.save_library(lib)
    assert sorted(x.name for x in p.parent.iterdir()) == ["library.json"]       # no temporary left behind
    with pytest.raises(ScheduleLabError, match="over the 100-byte limit"):
        store.library_from_json(p)
    monkeypatch.setattr(store, "MAX_LIBRARY_BYTES", 1 << 20)
    _same(store.library_from_json(p), lib)
    rec = {"run_id": "r", "method": "ays", "knobs": {}, "spec": {}, "status": "stopped", "message": "",
           "history": [{"iteration": "0", "stage": 0, "sigmas": [], "group": "stage 0"}], "state": None}
    store.save_run(rec)
    assert store.load_run() is None and (app_home / "run.json.bad").is_file()   # malformed: set aside
    rec["history"][0]["iteration"] = 0
    store.save_run(rec)
    assert store.load_run()["history"] == rec["history"]
    assert json.loads((app_home / "run.json").read_text())["format"] == store.RUN_FORMAT


def test_a_run_file_with_mistyped_fields_is_set_aside(app_home):
    good = {"run_id": "r", "method": "ays", "knobs": {}, "status": "stopped", "message": "", "state": None,
            "spec": {"method": "ays", "knobs": {}, "toy": "gaussian", "model_kind": "exact", "device": "cpu"},
            "history": [{"iteration": 0, "stage": 0, "sigmas": [1.0, 0.0], "group": "stage 0", "objective": 1.5,
                         "heldout": None}]}
    store.save_run(good)
    assert store.load_run()["spec"] == good["spec"]
    for bad in ({"objective": "1.5"}, {"sigmas": [1.0, "x"]}, {"iteration": True}):
        rec = {**good, "history": [{**good["history"][0], **bad}]}
        store.save_run(rec)
        assert store.load_run() is None, bad
    for rec in ({**good, "spec": {"method": "ays"}}, {**good, "progress": {"stage": 1}}, {**good, "status": "x"}):
        store.save_run(rec)
        assert store.load_run() is None, rec
