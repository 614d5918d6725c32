"""diffusers UNet2DModel folder -> EDM Denoiser: equal to diffusers' own Euler loop, exact conversion
formulas, the beta tables of diffusers' schedulers, and clear errors for bad folders."""
import json

import numpy as np
import pytest
import torch

from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, UNet2DModel

from core.errors import ScheduleLabError
from core.models.diffusers_loader import load_diffusers
from core.models.wrap import DiscreteVP
from core.schedules import make_schedule
from core.solvers import get_solver

SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2"]
PREDICTIONS = ["epsilon", "v_prediction", "sample"]


def tiny_unet(seed=0, learned=False):
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"),
                       time_embedding_type="learned" if learned else "positional", num_train_timesteps=1000)


def beta_kw(schedule):
    # scaled_linear is used with latent-diffusion betas
    return dict(beta_schedule=schedule, beta_start=0.00085, beta_end=0.012) if schedule == "scaled_linear" \
        else dict(beta_schedule=schedule)


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread for this module


@pytest.fixture(scope="module")
def unet():
    return tiny_unet().eval()


def save_pipeline(unet, root, scheduler_cls=DDPMScheduler, **sched_kw):
    unet.save_pretrained(root / "unet")
    scheduler_cls(**sched_kw).save_pretrained(root / "scheduler")
    return root


def save_bare(unet, root, scheduler_cls=DDIMScheduler, **sched_kw):
    unet.save_pretrained(root)
    scheduler_cls(**sched_kw).save_pretrained(root)       # writes root/scheduler_config.json
    return root


def diffusers_euler(unet, sched, sigmas, noise):
    """diffusers' own loop: set_timesteps(sigmas=...), scale_model_input, unet, step."""
    sched.set_timesteps(sigmas=list(sigmas))
    x = noise * sched.sigmas[0]
    with torch.no_grad():
        for t in sched.timesteps:
            out = unet(sched.scale_model_input(x, t), t).sample
            x = sched.step(out, t, x).prev_sample
    return x


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_euler_equals_diffusers_euler_discrete(unet, tmp_path, schedule, prediction):
    """Our Euler solver on the loaded Denoiser == diffusers' EulerDiscreteScheduler(sigmas=...) loop."""
    save_pipeline(unet, tmp_path, DDPMScheduler, prediction_type=prediction, **beta_kw(schedule))
    model = load_diffusers(tmp_path)
    sched = EulerDiscreteScheduler.from_pretrained(tmp_path / "scheduler")   # DDPM config -> Euler
    # diffusers' betas, accumulated in float64 (its float32 1 - abar loses ~1e-3 relative at step 0)
    abar = torch.cumprod(1 - sched.betas.double(), 0)
    table = ((1 - abar) / abar).sqrt()
    assert model.sigma_min == pytest.approx(float(table[0]), rel=1e-5)
    assert model.sigma_max == pytest.approx(float(table[-1]), rel=1e-5)
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for name, smax in (("karras", model.sigma_max), ("loglinear", 14.6)):
        s = make_schedule(name, 8, sigma_min=model.sigma_min, sigma_max=smax)
        # float32-representable sigmas so both sides start from the same numbers
        sig = torch.tensor(s.sigmas, dtype=torch.float32)
        ref = diffusers_euler(unet, sched, sig.tolist(), noise)
        ours = get_solver("euler").fn(model, noise * sig[0], sig.double())
        # float32 states reach |x| ~ 4e4 here (ulp 0.004): the absolute tolerance scales with the state
        scale = max(1.0, float(ref.abs().max()))
        assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-4 * scale), (name, (ours - ref).abs().max())
        assert (ours - ref).abs().max() < 1e-4 * max(1.0, ref.abs().max())


def test_fractional_timestep_is_log_sigma_interpolation(unet, tmp_path):
    """sigma -> t is linear in log sigma between table entries and reaches diffusers' _sigma_to_t."""
    save_pipeline(unet, tmp_path, DDPMScheduler)
    model = load_diffusers(tmp_path)
    abar = DDPMScheduler().alphas_cumprod.double().numpy()
    table = np.sqrt((1 - abar) / abar)
    i = np.array([3, 100, 517, 998])
    w = np.array([0.25, 0.5, 0.9, 0.1])
    sig = np.exp((1 - w) * np.log(table[i]) + w * np.log(table[i + 1]))
    t = model.net_time(torch.tensor(sig))
    assert t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), i + w, atol=2e-3)
    sched = EulerDiscreteScheduler()
    ref = np.array([sched._sigma_to_t(np.float64(s), np.log(table)) for s in sig]).reshape(-1)
    np.testing.assert_allclose(t.numpy(), ref, atol=2e-3)
    # outside the table the step is clamped to [0, N-1]
    assert model.net_time(torch.tensor([1e-4, 1e4])).tolist() == [0.0, 999.0]


def test_prediction_types_follow_direct_formulas(unet, tmp_path):
    """D for eps / v / sample from the same UNet output F, against hand-written formulas."""
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 3
    sigma = torch.tensor([0.05, 0.7, 3.0, 40.0])
    s = sigma.view(-1, 1, 1, 1)
    ref_sched = EulerDiscreteScheduler()
    log_table = np.log(((1 - ref_sched.alphas_cumprod) / ref_sched.alphas_cumprod).numpy() ** 0.5)
    t = torch.tensor([float(ref_sched._sigma_to_t(np.float64(v), log_table)) for v in sigma])
    with torch.no_grad():
        F = unet(x / (1 + s ** 2).sqrt(), t).sample
    expect = {"epsilon": x - s * F, "v_prediction": x / (1 + s ** 2) - s / (1 + s ** 2).sqrt() * F, "sample": F}
    for k, pred in enumerate(PREDICTIONS):
        root = save_bare(unet, tmp_path / pred, DDIMScheduler, prediction_type=pred)
        model = load_diffusers(root)
        with torch.no_grad():
            D = model(x, sigma)
        assert torch.allclose(D, expect[pred], rtol=1e-4, atol=1e-4), pred


def test_beta_tables_match_diffusers_schedulers():
    """Our float64 tables == diffusers' float32 alphas_cumprod for every beta schedule."""
    for sched in SCHEDULES + ["sigmoid"]:
        ours = DiscreteVP.from_config(num_train_timesteps=1000, **beta_kw(sched)).alphas_cumprod
        ref = DDPMScheduler(**beta_kw(sched)).alphas_cumprod.double().numpy()
        np.testing.assert_allclose(ours, ref, rtol=2e-5, err_msg=sched)
    ours = DiscreteVP.from_config(rescale_betas_zero_snr=True, beta_schedule="scaled_linear",
                                  beta_start=0.00085, beta_end=0.012).alphas_cumprod
    ref = EulerDiscreteScheduler(rescale_betas_zero_snr=True, beta_schedule="scaled_linear",
                                 beta_start=0.00085, beta_end=0.012).alphas_cumprod.double().numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4)
    with pytest.raises(ScheduleLabError, match="beta_schedule"):
        DiscreteVP.from_config(beta_schedule="quadratic-ish")


def test_learned_time_embedding_gets_integer_steps(tmp_path):
    unet = tiny_unet(learned=True).eval()
    save_pipeline(unet, tmp_path, EulerDiscreteScheduler)
    model = load_diffusers(tmp_path)
    t = model.net_time(torch.tensor([float(model.process.sigmas[10]), float(model.process.sigmas[500]) * 1.001]))
    assert t.dtype == torch.int64 and t.tolist() == [10, 500]
    assert model(torch.zeros(2, 1, 8, 8), 1.0).shape == (2, 1, 8, 8)


def test_bin_weights_load_with_weights_only_and_code_pickles_are_refused(unet, tmp_path):
    root = save_bare(unet, tmp_path / "bin", DDPMScheduler)
    (root / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(unet.state_dict(), root / "diffusion_pytorch_model.bin")
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(load_diffusers(root)(x, 2.0), load_diffusers(tmp_path / "bin")(x, 2.0))
    torch.save({"net": unet}, root / "diffusion_pytorch_model.bin")   # a pickle that needs code
    with pytest.raises(ScheduleLabError, match="refuses pickles"):
        load_diffusers(root)


def test_bad_folders_give_clear_errors(unet, tmp_path):
    with pytest.raises(ScheduleLabError, match="not found"):
        load_diffusers(tmp_path / "nope" / "deeper")
    with pytest.raises(ScheduleLabError, match="allow_hub"):
        load_diffusers("someone/some-ddpm")
    with pytest.raises(ScheduleLabError, match="could not get hub model"):
        load_diffusers("someone/some-ddpm-that-is-not-cached", allow_hub=True)   # offline in tests
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScheduleLabError, match="no UNet config"):
        load_diffusers(tmp_path / "empty")
    root = save_pipeline(unet, tmp_path / "p", DDPMScheduler)
    (root / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(ScheduleLabError, match="no scheduler config"):
        load_diffusers(root)
    root = save_pipeline(unet, tmp_path / "c", DDPMScheduler)
    (root / "unet" / "config.json").write_text("{not json")
    with pytest.raises(ScheduleLabError, match="corrupt"):
        load_diffusers(root)
    root = save_pipeline(unet, tmp_path / "w", DDPMScheduler)
    w = root / "unet" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:200])
    with pytest.raises(ScheduleLabError, match="corrupt"):
        load_diffusers(root)
    root = save_pipeline(unet, tmp_path / "nw", DDPMScheduler)
    (root / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ScheduleLabError, match="no weights"):
        load_diffusers(root)
    root = save_pipeline(unet, tmp_path / "pt", DDPMScheduler, prediction_type="epsilon")
    cfg = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    cfg["prediction_type"] = "flow_prediction"
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ScheduleLabError, match="prediction_type"):
        load_diffusers(root)
