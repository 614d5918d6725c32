"""Guidance widgets through AppTest: the Playground's labelled toy with a guidance scale (sidebar) and
the Images page's label / guidance scale for digits-flow give the engine's guided samples."""
import numpy as np
import pytest
import torch

from app_helpers import arr, figures, open_page, trace
from core.models.guidance import GuidedDenoiser
from core.models.mixture import LabelledMixtureDenoiser
from core.sampling import generate
from core.schedules import make_schedule
from toy_data.labelled import get_labelled_toy

pytestmark = pytest.mark.usefixtures("one_thread")


def test_playground_labelled_toy_with_guidance():
    at = open_page("playground", toy="grid8x8", sb_label="2", sb_cfg=4.0, pg_sched_a="karras",
                   pg_sched_b="loglinear", pg_steps=5, pg_n=500, pg_seeds=1, pg_paths=8)
    assert at.sidebar.selectbox(key="sb_label").value == "2"
    model = GuidedDenoiser(LabelledMixtureDenoiser(get_labelled_toy("grid8x8")), 2, 4.0)
    s = make_schedule("karras", 5, 0.002, 80.0)
    x = generate(model, s, 500, solver="dpmpp_2m", seed=0).x.numpy()
    got = trace(figures(at)["pg_fig_samples_A"], "samples")
    np.testing.assert_allclose(arr(got["x"]), x[:, 0], rtol=1e-10)
    assert ((x[:, 0] > 0) & (x[:, 1] < 0)).mean() > 0.6      # quadrant 2 (x > 0, y < 0) at 5 steps; chance 0.25


def test_images_page_label_and_guidance_for_digits_flow():
    at = open_page("images", im_model="digits-flow", im_scheds=["flow_shift"], im_nfe=4, im_n=4, im_ref_steps=20,
                   im_label="all", im_cfg=3.0)
    assert at.selectbox(key="im_label").value == "all"
    res = at.session_state["im_result"]
    label = next(iter(res["nfe"]))
    assert res["nfe"][label] == 8                              # 4 steps x 2 model calls (guided)
    from core.compare import compare_to_reference
    from core.models.registry import load_model
    g = GuidedDenoiser(load_model("digits-flow"), list(range(10)), 3.0)
    s = make_schedule("flow_shift", 4, g.sigma_min, g.sigma_max)
    with torch.no_grad():
        want = compare_to_reference(g, {label: s}, solver="dpmpp_2m", n=4, seed=0, ref_steps=20)
    assert res["rmse"][label] == pytest.approx(want["rmse"][label], rel=1e-6)
