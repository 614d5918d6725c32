"""Images page through AppTest: schedules sampled from the same noise, differences to the
many-step reference and the NFE sweep are core.compare's numbers. The wiring is checked with a
Gaussian image model whose denoiser is exact (tests/fake_engine); the digits-model test runs the shipped checkpoint."""
import numpy as np
import pytest

import fake_engine
import core.models.registry as registry
from app_helpers import arr, assert_clean, figures, open_page, trace
from core.compare import compare_to_reference, error_vs_nfe
from core.schedules import make_schedule
from core.tune.known import known_schedules

STATE = {"im_scheds": ["karras", "loglinear"], "im_opt": [], "im_nfe": 6, "im_n": 4, "im_ref_steps": 40}

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread for this module


@pytest.fixture(autouse=True)
def ref_cache(tmp_path, monkeypatch):
    """The on-disk reference cache (core.cache.CACHE_ROOT) in a fresh folder per test."""
    import core.cache
    root = tmp_path / "cache"
    monkeypatch.setattr(core.cache, "CACHE_ROOT", root)
    return root


@pytest.fixture()
def fake(monkeypatch):
    fake_engine.install(monkeypatch, "core.models.registry")
    yield
    fake_engine.install(monkeypatch)


def test_missing_registry_is_reported(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "core.models.registry", None)
    at = open_page("images")
    assert any("not available in this build" in i.value for i in at.info)


def test_same_noise_samples_and_reference_difference(fake):
    at = open_page("images", **STATE)
    f = figures(at)
    model = fake_engine.GaussianImages()
    scheds = {k: make_schedule(k, 6, 0.002, 80.0) for k in ("karras", "loglinear")}
    want = compare_to_reference(model, scheds, solver="dpmpp_2m", n=4, seed=0, ref_steps=40)
    res = at.session_state["im_result"]
    for k in scheds:
        assert res["rmse"][k] == pytest.approx(want["rmse"][k], rel=1e-9)
        assert res["nfe"][k] == 6
    # the first image of each grid is the engine's sample / difference, [8, 8]
    img = arr(f["im_fig_s0"]["data"][0]["z"]).reshape(8, 8)
    np.testing.assert_allclose(img, want["samples"]["karras"][0, 0].numpy(), rtol=1e-9)
    diff = arr(f["im_fig_d1"]["data"][0]["z"]).reshape(8, 8)
    np.testing.assert_allclose(diff, want["difference"]["loglinear"][0, 0].numpy(), rtol=1e-9, atol=1e-15)
    # the exact Gaussian denoiser makes the ODE linear: more steps -> closer to the reference
    assert len(at.dataframe[0].value) == 2


def test_nfe_sweep_plots_error_vs_nfe(fake):
    at = open_page("images", **STATE)
    at.multiselect(key="im_nfes").set_value([3, 6])
    at.toggle(key="im_sweep").set_value(True).run()
    assert_clean(at)
    sweep = at.session_state["im_sweep_result"]
    fams = {k: (lambda steps, k=k: make_schedule(k, steps, 0.002, 80.0)) for k in ("karras", "loglinear")}
    want = error_vs_nfe(fake_engine.GaussianImages(), fams, [3, 6], solver="dpmpp_2m", n=4, seed=0, ref_steps=40)
    fig = figures(at)["im_fig_nfe"]
    for k in fams:
        np.testing.assert_allclose(arr(trace(fig, k)["y"]), want["rmse"][k], rtol=1e-9)
        np.testing.assert_allclose(sweep["rmse"][k], want["rmse"][k], rtol=1e-9)
        assert want["rmse"][k][1] < want["rmse"][k][0]          # more model calls, closer to the ODE


def test_stochastic_solvers_are_not_offered(fake):
    at = open_page("images", **STATE)
    assert set(at.selectbox(key="im_solver").options).isdisjoint({"ddim_sde", "dpmpp_2m_sde"})


def test_real_digits_model_on_the_page():
    assert "digits" in registry.model_names()
    at = open_page("images", im_model="digits", im_scheds=["karras", "loglinear"], im_opt=[], im_nfe=6, im_n=4,
                   im_ref_steps=30)
    f = figures(at)
    assert {"im_fig_ref", "im_fig_s0", "im_fig_s1", "im_fig_d0", "im_fig_d1"} <= set(f)
    res = at.session_state["im_result"]
    assert all(np.isfinite(v) and v > 0 for v in res["rmse"].values())


def test_optimized_schedules_for_the_image_model(fake):
    """DM-NonUniform is optimize_nonuniform over the model's range; score-optimal is built from the
    model's own Stein density, which for N(0, c^2 I) images must follow the closed-form
    Lambda(s) = 2 sqrt(d) (asinh(s / c) - s / sqrt(c^2 + s^2)) (methods.md s.6), d = 64."""
    import math

    from scipy.optimize import brentq

    from core.optimizers.nonuniform import optimize_nonuniform
    at = open_page("images", **{**STATE, "im_scheds": ["loglinear"], "im_opt": ["opt:nonuniform",
                                                                                 "opt:score_optimal"]})
    res = at.session_state["im_result"]
    assert set(res["rmse"]) == {"loglinear", "DM-NonUniform", "score-optimal"}
    assert all(v == 6 for v in res["nfe"].values())
    np.testing.assert_allclose(res["sigmas"]["DM-NonUniform"], optimize_nonuniform(6, 0.002, 80.0)[0].sigmas,
                               rtol=1e-9)
    lam = lambda s: 2 * 8 * (math.asinh(s / 0.5) - s / math.sqrt(0.25 + s * s))  # noqa: E731
    hi, lo = lam(80.0), lam(0.002)
    exact = [brentq(lambda s: lam(s) - t, 1e-4, 200.0) for t in hi - np.arange(6) / 5 * (hi - lo)]
    np.testing.assert_allclose(np.log(res["sigmas"]["score-optimal"][:-1]), np.log(exact), atol=0.05)


def test_digits_quality_table_is_the_metric_suites_numbers():
    from core.metrics.images import evaluate_images
    at = open_page("images", im_model="digits", im_scheds=["loglinear"], im_opt=[], im_nfe=6, im_n=4,
                   im_ref_steps=30, im_quality=True, im_q_n=200)
    q = at.session_state["im_quality_result"]["loglinear"]
    want = evaluate_images(registry.load_model("digits"), make_schedule("loglinear", 6, 0.002, 80.0), "dpmpp_2m",
                           n=200, seeds=(0,), reference=False)
    assert q["fd"] == pytest.approx(want["fd"], rel=1e-6) and q["nfe"] == 6
    assert q["confidence"] == pytest.approx(want["confidence"], rel=1e-6)
    # every metric column has its winner (one schedule here); negative KID is explained; a CSV download
    assert at.session_state["im_quality_winners"] == dict.fromkeys(
        ["FD", "KID", "confidence", "largest class deviation"], "loglinear")
    assert any("unbiased" in c.value and "negative" in c.value for c in at.caption)
    assert any(d.proto.id.endswith("im_quality_csv") for d in at.get("download_button"))


def test_shipped_ays_schedule_for_digits_on_the_page():
    at = open_page("images", im_model="digits", im_scheds=["loglinear"], im_opt=["opt:ays"], im_nfe=10, im_n=4,
                   im_ref_steps=30)
    res = at.session_state["im_result"]
    assert res["sigmas"]["AYS"] == registry.shipped_schedule("digits", 10).sigmas
    assert res["nfe"]["AYS"] == 10 and np.isfinite(res["rmse"]["AYS"])


# ---------------------------------------------------------------- issue 15: the default, the cache, downloads, warnings
def _tune_file(sigmas, model="gauss8", solver="dpmpp_2m", winner_kind="optimizer"):
    """A tune result as the Tune page saves it (core.tune.TuneResult via app_lib.store.save_tune_result)."""
    from app_lib import store
    from core.schedules import Schedule
    from core.tune import TuneResult
    best = Schedule(tuple(sigmas), name="gits", solver=solver, params={"model": model, "solver": solver})
    table = [{"name": "gits", "kind": "optimizer", "status": "ok", "sigmas": list(sigmas), "ref": 0.05, "ref_ci": 0.01},
             {"name": "loglinear", "kind": "heuristic", "status": "ok", "sigmas": None, "ref": 0.08}]
    res = TuneResult(best, "gits" if winner_kind == "optimizer" else "loglinear", winner_kind,
                     winner_kind != "optimizer", "test", "loglinear", "ref", None, table, {}, {})
    return store.save_tune_result(res)


def test_default_compares_the_saved_tune_result_with_heuristics(fake):
    """With nothing chosen, "Optimized for this model" holds the best tune result saved for this model
    and solver (the Tune page's folder), next to the default heuristics; its levels are the file's."""
    sig = make_schedule("karras", 6, 0.002, 80.0, rho=3.0).sigmas
    _tune_file(make_schedule("karras", 9, 0.002, 80.0).sigmas, solver="heun")      # other solver: ranked after
    path = _tune_file(sig)
    at = open_page("images", im_nfe=6, im_n=4, im_ref_steps=40)
    key = f"known:tune:{path}#gits"
    assert at.multiselect(key="im_opt").value[0] == key
    assert at.multiselect(key="im_scheds").value == ["loglinear", "karras"]
    res = at.session_state["im_result"]
    label = "tune: gits (for dpmpp_2m)"
    assert res["kinds"] == {"loglinear": "heuristic", "karras": "heuristic", label: "optimized"}
    np.testing.assert_allclose(res["sigmas"][label], sig, rtol=1e-12)
    want = compare_to_reference(fake_engine.GaussianImages(), {"t": make_schedule("karras", 6, 0.002, 80.0, rho=3.0)},
                                solver="dpmpp_2m", n=4, seed=0, ref_steps=40)
    assert res["rmse"][label] == pytest.approx(want["rmse"]["t"], rel=1e-9)
    # the winner of the metric table is the lowest RMSE, and it is the highlighted cell
    win = min(res["rmse"], key=res["rmse"].get)
    assert at.session_state["im_winners"] == {"RMSE to reference": win}
    table = at.dataframe[0]
    assert "background-color" in table.proto.arrow_data.styler.styles


def test_reference_is_computed_once_and_read_from_disk(fake, ref_cache, monkeypatch):
    """The first run computes the reference inside a status box and writes it under the cache; once the
    in-memory results are gone (a new process), the page reads it back and computes none."""
    import core.compare
    from app_lib import engine
    at = open_page("images", **STATE)
    files = list((ref_cache / "reference").glob("compare_*.safetensors"))
    assert len(files) == 1
    assert any("reference" in s.label.lower() for s in at.status)
    first = at.session_state["im_result"]["rmse"]
    engine.image_compare.clear()

    def no_reference(*a, **k):
        raise AssertionError("the reference was recomputed")
    monkeypatch.setattr(core.compare, "reference_solution", no_reference)
    at.run()
    assert at.session_state["im_result"]["rmse"] == first
    assert not any("reference" in s.label.lower() for s in at.status)


def test_tiles_png_download_and_enlarge(fake, monkeypatch):
    """Tiles carry no axes; each grid's PNG download holds exactly core.images_io.grid of its images;
    Enlarge opens the same grid, larger. (No optimized schedule is known for this model: the default
    is the data-free DM-NonUniform, and the page points to the Tune page.)"""
    import io

    from PIL import Image
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    from core.images_io import grid
    sent = {}
    real = MemoryMediaFileStorage.load_and_get_id

    def record(self, data, mimetype, kind, filename=None):
        fid = real(self, data, mimetype, kind, filename)
        sent[filename] = bytes(data) if isinstance(data, (bytes, bytearray)) else data
        return fid
    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)
    at = open_page("images", **{k: v for k, v in STATE.items() if k != "im_opt"})
    assert at.multiselect(key="im_opt").value == ["opt:nonuniform"]
    assert any("Tune page" in c.value for c in at.caption)
    f = figures(at)
    for ax in [k for k in f["im_fig_s0"]["layout"] if k.startswith(("xaxis", "yaxis"))]:
        assert f["im_fig_s0"]["layout"][ax]["visible"] is False
    want = compare_to_reference(fake_engine.GaussianImages(), {"k": make_schedule("karras", 6, 0.002, 80.0)},
                                solver="dpmpp_2m", n=4, seed=0, ref_steps=40)
    png = Image.open(io.BytesIO(sent["s0.png"]))
    assert png.format == "PNG"
    np.testing.assert_array_equal(np.asarray(png), grid(want["samples"]["k"], nrow=4, scale=4)[..., 0])
    diff = np.asarray(Image.open(io.BytesIO(sent["d0.png"])))
    np.testing.assert_array_equal(diff, grid(want["difference"]["k"], nrow=4, scale=4, lo=-0.5, hi=0.5)[..., 0])
    csv = [d for d in at.get("download_button") if d.proto.id.endswith("im_csv")]
    assert csv and "images_rmse.csv" in sent
    assert sent["images_rmse.csv"].decode().splitlines()[0].startswith("schedule,kind,NFE,RMSE to reference")
    at.button(key="im_big_s0").click().run()
    big = figures(at)["im_fig_big"]
    np.testing.assert_allclose(arr(big["data"][0]["z"]).reshape(8, 8), want["samples"]["k"][0, 0].numpy(), rtol=1e-9)
    assert big["layout"]["height"] > f["im_fig_s0"]["layout"]["height"]


def test_warnings_for_another_model_or_solver_sit_next_to_their_control(fake):
    """The library's ays_sd15 was made for SD 1.5, not this model; DM-NonUniform was made for
    dpmpp_3m_lagrange, not dpmpp_2m: each says so, beside the picker / the solver."""
    at = open_page("images", **{**STATE, "im_scheds": ["lib:ays_sd15 (10 steps)"], "im_opt": ["opt:nonuniform"]})
    w = at.session_state["im_warnings"]
    assert "'sd15'" in w["library: ays_sd15 (10 steps)"]["model"] and w["library: ays_sd15 (10 steps)"]["solver"] is None
    assert "dpmpp_3m_lagrange" in w["DM-NonUniform"]["solver"] and w["DM-NonUniform"]["model"] is None
    assert any("dpmpp_3m_lagrange" in x.value for x in _column_of(at, "im_solver").warning)        # beside the solver
    assert any("'sd15'" in x.value for x in _column_of(at, "im_scheds").warning)         # beside its picker
    assert not _column_of(at, "im_opt").warning
    at.selectbox(key="im_solver").set_value("dpmpp_3m_lagrange").run()
    assert at.session_state["im_warnings"]["DM-NonUniform"]["solver"] is None


def _column_of(at, key):
    """The page column that holds the widget `key` (where its messages belong)."""
    hits = [c for c in at.main.columns if any(getattr(w, "key", None) == key for w in c.get(
        "selectbox") + c.get("multiselect") + c.get("text_input"))]
    assert len(hits) == 1, key
    return hits[0]


def test_bad_folder_path_gets_a_message_for_the_app(tmp_path):
    from streamlit.testing.v1 import AppTest

    from app_helpers import APP, CHEAP_START
    for path, words in ((str(tmp_path / "nope"), "There is no file or folder"), (str(tmp_path), "is a folder but not")):
        at = AppTest.from_file(APP, default_timeout=60)
        for k, v in CHEAP_START.items():
            at.session_state[k] = v
        at.session_state["im_model"], at.session_state["im_path"] = "diffusers folder ...", path
        at.run()
        at.switch_page("pages/images.py").run()
        assert not at.exception
        msg = _column_of(at, "im_path").error[0].value
        assert words in msg and "--" not in msg


def test_default_digits_page_shows_the_shipped_ays_next_to_the_best_heuristics():
    """The page as a new user opens it: digits, log-linear and EDM next to the AYS schedule shipped with
    the model, at the small defaults (8 images, a 40-step reference)."""
    at = open_page("images")
    assert at.selectbox(key="im_model").value == "digits"
    assert at.multiselect(key="im_opt").value == ["opt:ays"]
    res = at.session_state["im_result"]
    assert res["kinds"] == {"loglinear": "heuristic", "karras": "heuristic", "AYS": "optimized"}
    assert res["sigmas"]["AYS"] == registry.shipped_schedule("digits", 10).sigmas
    assert all(v == 10 for v in res["nfe"].values()) and all(np.isfinite(v) for v in res["rmse"].values())
    f = figures(at)
    assert len(f["im_fig_s2"]["data"]) == 8                                  # 8 tiles
    assert at.session_state["im_winners"]["RMSE to reference"] == min(res["rmse"], key=res["rmse"].get)


def test_guidance_widgets_change_the_samples():
    """digits-flow: the class label steers the samples to that digit (the shipped classifier agrees),
    and the guidance scale changes them. Its defaults: the flow heuristics (uniform t, SD3 shift 3) and
    its best known optimized schedule (the tune result shipped in checkpoints/digits-flow/schedules)."""
    import torch

    from core.metrics.images import load_classifier
    st = {"im_model": "digits-flow", "im_nfe": 6, "im_n": 4, "im_ref_steps": 20, "im_label": "3", "im_cfg": 3.0}
    at = open_page("images", **st)
    assert at.multiselect(key="im_scheds").value == ["flow_uniform", "flow_shift"]
    known, _ = known_schedules("digits-flow", "dpmpp_2m", 6)
    assert at.multiselect(key="im_opt").value == [f"known:{known[0].key}"] and known[0].params["method"] == "oss"
    assert at.session_state["im_result"]["kinds"]["tune: oss (for dpmpp_2m)"] == "optimized"

    def samples():                                           # the plotted tiles, one trace per image
        return np.stack([arr(t["z"]).reshape(16, 16) for t in figures(at)["im_fig_s0"]["data"]])[:, None]
    clf = load_classifier()
    three = samples()                                        # (flow_uniform is the first grid)
    at.multiselect(key="im_scheds").set_value(["flow_uniform"])
    at.multiselect(key="im_opt").set_value([])
    at.selectbox(key="im_label").set_value("7").run()
    seven = samples()
    at.number_input(key="im_cfg").set_value(1.0).run()
    seven_w1 = samples()
    assert at.session_state["im_result"]["nfe"]["flow_uniform"] == 6                  # w = 1: one call per step
    with torch.no_grad():
        pred = {k: clf(torch.as_tensor(v, dtype=torch.float32)).argmax(1).tolist() for k, v in
                (("3", three), ("7", seven))}
    assert pred["3"].count(3) >= 3 and pred["7"].count(7) >= 3, pred
    assert np.abs(seven - seven_w1).max() > 0.1
