"""The shipped digits-flow model: its label path works (conditional samples are classified as their
label far above the 10 % of chance), its EDM form is the velocity model's x0 prediction, and the
checkpoint meets the size limit."""
import pytest
import torch

from core.metrics.images import label_accuracy
from core.models.digits_flow import FLOW_CHECKPOINT
from core.models.guidance import GuidedDenoiser
from core.models.registry import load_model
from core.sampling import generate
from core.schedules import make_schedule

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return load_model("digits-flow")


def test_conditional_samples_have_their_label(model):
    g = GuidedDenoiser(model, list(range(10)), 3.0)
    s = make_schedule("flow_shift", 6, model.sigma_min, model.sigma_max, shift=3.0)
    with torch.no_grad():
        x = generate(g, s, 100, "euler", seed=0).x
    acc = label_accuracy(x, g.expected_labels(100))
    assert acc["accuracy"] > 0.8, acc                      # a broken label path gives ~0.1
    assert min(acc["per_class"].values()) >= 0.5


def test_edm_form_is_the_flow_x0_prediction(model):
    x0 = torch.zeros(3, 1, 16, 16) - 1
    eps = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.2, 0.5, 0.9])
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
    lab = torch.tensor([1, 4, 7])
    with torch.no_grad():
        u = model.velocity(x_t, t, lab)
        d = model.denoise_cond(x_t / (1 - t.view(-1, 1, 1, 1)), t / (1 - t), lab)
    torch.testing.assert_close(d, x_t - t.view(-1, 1, 1, 1) * u, rtol=1e-5, atol=1e-5)


def test_checkpoint_size_and_config():
    assert FLOW_CHECKPOINT.stat().st_size <= 20e6
    from core.models.checkpoints import read_metadata
    meta = read_metadata(FLOW_CHECKPOINT)
    assert meta["net"]["num_classes"] == 10 and meta["kind"] == "flow-velocity"


def test_a_mismatched_flow_checkpoint_names_the_missing_key(tmp_path):
    """A digits-flow checkpoint with a tensor missing is refused with the key's name (not a cut-off message)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from core.errors import ScheduleLabError
    from core.models.digits_flow import FLOW_CHECKPOINT, load_flow_checkpoint
    sd = load_file(FLOW_CHECKPOINT)
    with safe_open(FLOW_CHECKPOINT, "pt") as f:
        meta = f.metadata()
    key = sorted(sd)[-1]
    sd.pop(key)
    save_file(sd, tmp_path / "bad.safetensors", metadata=meta)
    with pytest.raises(ScheduleLabError, match=key.replace(".", r"\.")):
        load_flow_checkpoint(tmp_path / "bad.safetensors")


def test_dm_nonuniform_sees_the_flow_process(model):
    """DM-NonUniform takes the model's process (issue 12 item 4): uniform_t starts uniform in flow t,
    for the bare model and under guidance; an EDM process would start uniform in sigma instead."""
    import numpy as np
    from core.optimizers.nonuniform import model_process, start_levels
    for m in (model, GuidedDenoiser(model, 3, 3.0)):
        proc, smin, smax = model_process(m)
        assert proc.name == "flow" and (smin, smax) == (model.sigma_min, model.sigma_max)
    lam = start_levels("uniform_t", 6, smin, smax, process=proc)
    t = np.exp(-lam) / (1 + np.exp(-lam))
    np.testing.assert_allclose(t, np.linspace(0.999, 0.001, 6), rtol=1e-9)
