"""Optimizer page's models and per-method charts through AppTest (issue 15 items 5 and 12; issue 12 item 5):
the labelled toy's label and guidance scale reach the optimizer (its settings, its result, a refused
Resume after w changed, and another w gives another density); an image model (a class-conditional
exact Gaussian stand-in for the registry, so every number is recomputed) runs guided AYS with progress;
score-optimal's chart holds its Stein density and levels that cut it into equal areas; DM-NonUniform
draws one objective line per start."""
import sys
import types

import numpy as np
import pytest
import torch

from app_helpers import arr, assert_clean, figures, open_page, trace
from core.models.guidance import ConditionalDenoiser, GuidedDenoiser
from core.models.mixture import LabelledMixtureDenoiser
from core.optimizers.nonuniform import optimize_nonuniform
from core.optimizers.score_optimal import score_optimal_schedule
from run_helpers import Gate, rerun_until
from toy_data.labelled import get_labelled_toy

pytestmark = pytest.mark.usefixtures("one_thread")
SCORE = {"opt_method": "score_optimal", "opt_steps": 6, "opt_n_samples": 64, "opt_levels": 50}


def _finish(at, run):
    rerun_until(at, lambda: not run.active)
    at.run()
    assert_clean(at)
    assert run.status == "done", run.message


def _guided_toy(label, w):
    lm = get_labelled_toy("grid8x8")
    cond = lm.conditional(label)
    return GuidedDenoiser(LabelledMixtureDenoiser(lm), label, w), (lambda n, g: cond.sample(n, g))


def _band_areas(fig) -> np.ndarray:
    """Areas of the plotted equal-area bands over log sigma (trapezoid on the plotted points)."""
    bands = [t for t in fig["data"] if t.get("name") == "equal-area intervals"]
    return np.array([np.trapezoid(arr(t["y"]), np.log(arr(t["x"]))) for t in bands])


def test_labelled_toy_label_and_guidance_reach_the_optimizer(monkeypatch):
    gate = Gate(monkeypatch, lambda ev: ev.iteration == 2)        # hold the first run inside its density
    at = open_page("optimizer", toy="grid8x8", sb_label="2", sb_cfg=4.0, **SCORE)
    assert at.selectbox(key="opt_label").value == "2" and at.number_input(key="opt_cfg").value == 4.0  # the sidebar's
    at.button(key="opt_start").click().run()
    run = at.session_state["opt_run"]
    assert run.spec["model_kind"] == "exact|2|4" and run.spec["label"] == "2" and run.spec["cfg"] == 4.0
    assert run.knobs["label"] == "2" and run.knobs["cfg"] == 4.0 and run.knobs["model"] == "exact"
    gate.wait()
    at.button(key="opt_stop").click().run()
    gate.release()
    rerun_until(at, lambda: run.status == "stopped")
    figs = figures(at)                                            # the density so far, without levels yet
    assert set(figs) == {"opt_fig_density"} and len(arr(trace(figs["opt_fig_density"], "Stein density")["x"])) < 50
    at.number_input(key="opt_cfg").set_value(1.0).run()
    assert at.session_state["sb_cfg"] == 1.0                      # one setting: the sidebar follows the page
    at.button(key="opt_resume").click().run()
    assert run.status == "stopped"
    assert any("not resumed: cfg changed from 4.0 to 1.0" in e.value for e in at.error), [e.value for e in at.error]
    at.number_input(key="opt_cfg").set_value(4.0).run()
    at.button(key="opt_resume").click().run()
    _finish(at, run)
    model, sampler = _guided_toy(2, 4.0)
    want, info = score_optimal_schedule(model, sampler, 6, levels=50, n=64, seed=0)
    lib = at.session_state["library"]
    np.testing.assert_allclose(lib[run.saved_label].sigmas, want.sigmas, rtol=1e-12)
    assert "label 2 w=4" in run.saved_label
    dens = trace(figures(at)["opt_fig_density"], "Stein density")
    np.testing.assert_allclose(arr(dens["y"]), info["density_log"], rtol=1e-12)
    # another guidance scale: another density and schedule (w = 1 is the class's own conditional model)
    at.number_input(key="opt_cfg").set_value(1.0).run()
    at.button(key="opt_start").click().run()
    run1 = at.session_state["opt_run"]
    _finish(at, run1)
    assert run1.spec["model_kind"] == "exact|2|1"
    other = arr(trace(figures(at)["opt_fig_density"], "Stein density")["y"])
    assert np.abs(other - np.asarray(info["density_log"])).max() > 0.05 * np.max(info["density_log"])
    want1, _ = score_optimal_schedule(*_guided_toy(2, 1.0), 6, levels=50, n=64, seed=0)
    np.testing.assert_allclose(at.session_state["library"][run1.saved_label].sigmas, want1.sigmas, rtol=1e-12)
    assert want1.sigmas != want.sigmas


def test_score_optimal_chart_holds_the_density_and_equal_area_levels():
    at = open_page("optimizer", **SCORE)
    at.button(key="opt_start").click().run()
    run = at.session_state["opt_run"]
    _finish(at, run)
    from core.models import load_toy_model
    from toy_data import get_toy
    mix = get_toy("gaussian")
    want, info = score_optimal_schedule(load_toy_model("gaussian", "exact"), lambda n, g: mix.sample(n, g), 6,
                                        levels=50, n=64, seed=0)
    fig = figures(at)["opt_fig_density"]
    dens = trace(fig, "Stein density")
    np.testing.assert_allclose(arr(dens["x"]), info["grid_sigma"], rtol=1e-12)
    np.testing.assert_allclose(arr(dens["y"]), info["density_log"], rtol=1e-12)
    pts = trace(fig, "schedule levels")
    np.testing.assert_allclose(arr(pts["x"]), sorted(want.sigmas[:-1]), rtol=1e-12)
    areas = _band_areas(fig)
    assert len(areas) == 5                                         # 6 levels, 5 intervals
    # equal areas under the plotted density, and together the whole Lambda between sigma_min and sigma_max
    # (the engine interpolates Lambda by PCHIP, the plot linearly between 50 grid levels: 1 % apart at most)
    assert areas.max() / areas.min() - 1 < 0.01, areas
    assert areas.sum() == pytest.approx(info["Lambda_total"], rel=2e-3)
    # a loglinear schedule on the same plot would not cut equal areas (the check can fail)
    u = np.log(arr(dens["x"]))
    edges = np.exp(np.linspace(u[0], u[-1], 6))
    loglin = [np.trapezoid(np.interp(np.linspace(np.log(a), np.log(b), 200), u, arr(dens["y"])),
                           np.linspace(np.log(a), np.log(b), 200)) for a, b in zip(edges[:-1], edges[1:])]
    assert max(loglin) / min(loglin) - 1 > 0.2


def test_score_optimal_events_carry_the_density_so_far():
    """Engine side of the live chart: each density event holds the levels estimated so far, a prefix of
    the final density on the same grid (the same x0 and noise at every level)."""
    from core.models import load_toy_model
    from core.optimizers.score_optimal import ScoreOptimalOptimizer
    from toy_data import get_toy
    mix = get_toy("grid8x8")
    opt = ScoreOptimalOptimizer(load_toy_model("grid8x8", "exact"), lambda n, g: mix.sample(n, g), 5, levels=40,
                                n=32, chunk_points=32 * 10)
    evs = list(opt.events())
    final = evs[-1].extra
    assert [len(e.extra["density_log"]) for e in evs[:-1]] == [10, 20, 30, 40]
    for e in evs[:-1]:
        k = e.extra["levels_done"]
        assert e.extra["grid_sigma"] == final["grid_sigma"][:k]
        np.testing.assert_allclose(e.extra["density_log"], final["density_log"][:k], rtol=1e-12)


def test_nonuniform_draws_one_objective_line_per_start():
    at = open_page("optimizer", opt_method="nonuniform", opt_steps=5, opt_maxiter=100)
    at.button(key="opt_start").click().run()
    run = at.session_state["opt_run"]
    _finish(at, run)
    fig = figures(at)["opt_fig_curves"]
    starts = ["uniform_lambda", "uniform_t", "edm"]
    assert [t["name"] for t in fig["data"]] == [f"objective, start {s}" for s in starts] + ["objective, result"]
    spans = []
    for s in starts:
        line = trace(fig, f"objective, start {s}")
        mine = [h for h in run.history if h["group"] == f"start {s}"]
        assert list(arr(line["x"])) == [h["iteration"] for h in mine] and line["mode"] == "lines+markers"
        np.testing.assert_allclose(arr(line["y"]), [h["objective"] for h in mine], rtol=1e-12)
        spans.append((min(arr(line["x"])), max(arr(line["x"]))))
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:]))    # no line joins one start to the next
    ys = np.concatenate([arr(t["y"]) for t in fig["data"]])
    assert ys.max() / ys.min() > 30 and fig["layout"]["yaxis"]["type"] == "log"   # uniform_t starts far above
    _, info = optimize_nonuniform(5, 0.002, 80.0, strict=False, maxiter=100)
    assert arr(trace(fig, "objective, result")["y"])[0] == pytest.approx(info["objective"], rel=1e-12)


# ---------------------------------------------------------------- an image model: a conditional exact Gaussian
class CondGaussImages(ConditionalDenoiser):
    """Images [1, 8, 8] of class k ~ N(m_k, c^2 I) with m_k = (k - 0.5) (constant images); the null
    label is N(0, c^2 I). D(x, s | k) = m_k + c^2 / (c^2 + s^2) (x - m_k), exact."""

    num_classes = 2

    def __init__(self, c: float = 0.5):
        super().__init__()
        self.c, self.name, self.event_shape = c, "cgauss8", (1, 8, 8)
        self.sigma_min, self.sigma_max, self.sigma_data = 0.002, 80.0, c
        self.register_buffer("_anchor", torch.zeros(()))

    def denoise_cond(self, x, sigma, cond):
        m = torch.zeros(x.shape[0], 1, 1, 1, dtype=x.dtype) if cond is None else \
            (cond.to(x.dtype) - 0.5).reshape(-1, 1, 1, 1)
        s2 = sigma.reshape(-1, 1, 1, 1) ** 2
        return m + self.c ** 2 / (self.c ** 2 + s2) * (x - m)


def _cgauss_data(name, model, data=None, label=None, **kw):
    from core.models.user_model import ImageData
    g = torch.Generator().manual_seed(0)
    k = torch.full((2000,), label) if label is not None else torch.arange(2000) % 2
    x = (k.float() - 0.5).reshape(-1, 1, 1, 1) + 0.5 * torch.randn(2000, 1, 8, 8, generator=g)
    return ImageData(x, f"cgauss8 training images{'' if label is None else f', class {label}'}", False)


@pytest.fixture
def cgauss_registry(monkeypatch):
    import streamlit as st
    st.cache_data.clear()
    st.cache_resource.clear()
    reg = types.ModuleType("core.models.registry")
    reg.model_names = lambda: ["cgauss8"]
    reg.load_model = lambda name, device="cpu": CondGaussImages().to(device)
    reg.model_data = _cgauss_data
    monkeypatch.setitem(sys.modules, "core.models.registry", reg)
    yield
    st.cache_resource.clear()


AYS_IMG = {"opt_method": "ays", "opt_steps": 4, "opt_stages": 1, "opt_n_candidates": 3}


def test_image_model_run_with_label_and_guidance_shows_progress_and_gives_the_engines_result(cgauss_registry,
                                                                                            monkeypatch):
    from app_lib import optimizer_models
    gate, real = Gate(None, lambda ev: ev.iteration == 1), optimizer_models.image_optimizer_factory
    monkeypatch.setattr(optimizer_models, "image_optimizer_factory", lambda *a, **k: gate.wrap(real(*a, **k)))
    at = open_page("optimizer", **AYS_IMG)
    at.selectbox(key="opt_model").set_value("diffusers folder ...").run()     # no path yet: Start waits for one
    assert at.button(key="opt_start").disabled and not at.error
    at.text_input(key="opt_path").set_value("/no/such/folder").run()
    assert at.button(key="opt_start").disabled and "no folder at '/no/such/folder'" in at.error[0].value
    at.selectbox(key="opt_model").set_value("cgauss8").run()
    assert_clean(at)
    assert at.selectbox(key="opt_n_samples").value == 64 and at.number_input(key="opt_patience").value == 2
    at.number_input(key="opt_max_iters").set_value(3)              # (the image defaults replaced the toy's)
    assert at.selectbox(key="opt_heldout").options == ["ref_error", "none"]     # no 2-D density here
    at.selectbox(key="opt_label").set_value("1").run()
    at.number_input(key="opt_cfg").set_value(3.0)
    at.selectbox(key="opt_heldout_n").set_value(256).run()
    at.button(key="opt_start").click().run()
    assert_clean(at)
    run = at.session_state["opt_run"]
    assert run.spec["source"] == "cgauss8" and run.knobs["model"] == "cgauss8"
    assert run.knobs["label"] == "1" and run.knobs["cfg"] == 3.0 and run.knobs["toy"] is None
    gate.wait()
    at.run()
    assert run.status == "running" and 0 < run.progress["fraction"] < 1
    assert at.get("progress") and "AYS" in at.get("progress")[0].proto.text
    assert any("cgauss8, label 1, w = 3" in c.value for c in at.caption)
    gate.release()
    _finish(at, run)
    from core.optimizers.ays import AYSOptimizer
    model = GuidedDenoiser(CondGaussImages(), 1, 3.0)
    opt = AYSOptimizer(model, _cgauss_data("cgauss8", model, label=1), steps=4, stages=(4,), n_samples=64,
                       n_candidates=3, c=0.5, max_iters=3, heldout="ref_error", patience=2,
                       heldout_solver="dpmpp_2m", heldout_n=256, mixture=None, seed=0, chunk=256)
    evs = list(opt.events())
    np.testing.assert_allclose([h["objective"] for h in run.history], [e.objective for e in evs], rtol=1e-9)
    assert at.session_state["library"][run.saved_label].sigmas == opt.result().sigmas
    fig = figures(at)["opt_fig_curves"]
    assert fig["layout"]["yaxis2"]["title"]["text"] == "held-out ref_error (lower is better)"


def test_a_guided_image_model_keeps_its_noise_process_for_dm_nonuniform(cgauss_registry, monkeypatch):
    """DM-NonUniform's error model follows the image model's own process (here a flow one); guiding the
    model must not hide it (GuidedDenoiser has no `process`: the factory asks its base)."""
    from app_lib import optimizer_models
    from core.models.wrap import make_process
    monkeypatch.setattr(CondGaussImages, "process", make_process("flow"), raising=False)
    knobs = {"steps": 5, "p": 1.0, "starts": ["uniform_t"], "maxiter": 50}
    for label in ("none", "1"):
        opt = optimizer_models.image_optimizer_factory("nonuniform", knobs, "cgauss8", label, 3.0, "cpu")()
        assert opt.noise == "flow" and (opt.sigma_min, opt.sigma_max) == (0.002, 80.0)
