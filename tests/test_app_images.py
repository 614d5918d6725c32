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

STATE = {"im_scheds": ["karras", "loglinear"], "im_nfe": 6, "im_n": 4, "im_ref_steps": 40}

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread for this module


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
    at = open_page("images", im_model="digits", im_scheds=["karras", "loglinear"], im_nfe=6, im_n=4,
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
    at = open_page("images", im_model="digits", im_scheds=["loglinear"], im_nfe=6, im_n=4, im_ref_steps=30,
                   im_quality=True, im_q_n=200)
    q = at.session_state["im_quality_result"]["loglinear"]
    want = evaluate_images(registry.load_model("digits"), make_schedule("loglinear", 6, 0.002, 80.0), "dpmpp_2m",
                           n=200, seeds=(0,), reference=False)
    assert q["fd"] == pytest.approx(want["fd"], rel=1e-6) and q["nfe"] == 6
    assert q["confidence"] == pytest.approx(want["confidence"], rel=1e-6)


def test_shipped_ays_schedule_for_digits_on_the_page():
    at = open_page("images", im_model="digits", im_scheds=["loglinear"], im_opt=["opt:ays"], im_nfe=10, im_n=4,
                   im_ref_steps=30)
    res = at.session_state["im_result"]
    assert res["sigmas"]["AYS"] == registry.shipped_schedule("digits", 10).sigmas
    assert res["nfe"]["AYS"] == 10 and np.isfinite(res["rmse"]["AYS"])
