"""wrap_module: a user's network -> EDM Denoiser. Checked on the exact predictors for Gaussian data
N(0, c^2 I), where D(x, sigma) = c^2 / (c^2 + sigma^2) x in closed form; each test network finds its
noise level from its own time input with formulas written here independently of core."""
import math

import numpy as np
import pytest
import torch

from core.errors import ScheduleLabError
from core.models.user_model import image_sampler_from, load_module_spec, load_user_model, split_params
from core.models.wrap import DiscreteVP, to_display, wrap_module

C = 0.5
BETAS = np.linspace(1e-4, 0.02, 1000)
ABAR = np.cumprod(1 - BETAS)
TABLE = np.sqrt((1 - ABAR) / ABAR)                  # DDPM (Ho et al. 2020) in EDM sigma


def vp_linear_sigma(t, bmin=0.1, bmax=20.0):
    return np.sqrt(np.expm1(0.5 * (bmax - bmin) * t ** 2 + bmin * t))


def vp_cosine_sigma(t, s=0.008):
    f = lambda u: np.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    abar = f(t) / f(0.0)
    return np.sqrt((1 - abar) / abar)


class GaussianNet(torch.nn.Module):
    """Exact E[target | input] for x0 ~ N(0, C^2 I), as a function of (scaled x, time) only."""

    def __init__(self, target, sigma_of_t, vp_input=True):
        super().__init__()
        self.target, self.sigma_of_t = target, sigma_of_t
        self.unscale = {True: "vp", False: "none"}.get(vp_input, vp_input)   # or "flow"
        self.one = torch.nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x_in, t):
        s = torch.as_tensor(self.sigma_of_t(t.double().numpy()), dtype=torch.float64).view(-1, 1, 1, 1)
        x = {"vp": x_in * (1 + s ** 2).sqrt(), "none": x_in, "flow": x_in * (1 + s)}[self.unscale]  # EDM space
        d = C ** 2 / (C ** 2 + s ** 2) * x
        eps = s / (C ** 2 + s ** 2) * x
        alpha = (1 + s ** 2).rsqrt()
        out = {"eps": eps, "x0": d, "v": alpha * eps - s * alpha * d, "velocity": eps - d}[self.target]
        return self.one * out


def exact(x, sigma):
    return C ** 2 / (C ** 2 + sigma.view(-1, 1, 1, 1) ** 2) * x


@torch.no_grad()
def run(model, x, sig) -> np.ndarray:
    return model(x, torch.as_tensor(sig, dtype=torch.float64)).numpy()


def batch(sig, seed=0):
    x = torch.randn(len(sig), 1, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x * torch.sqrt(torch.as_tensor(sig, dtype=torch.float64) ** 2 + C ** 2).view(-1, 1, 1, 1)


CASES = {   # name: (process, time_input, extra kw, sigma(t) of the network, vp input?, test sigmas)
    "index": ({"kind": "discrete", "betas": BETAS}, "index", {}, lambda t: TABLE[t.astype(int)], True,
              TABLE[[0, 7, 150, 600, 999]]),
    "fractional": ({"kind": "discrete", "beta_schedule": "linear"}, "fractional", {},
                   lambda t: np.exp(np.interp(t, np.arange(1000), np.log(TABLE))), True,
                   np.array([0.013, 0.2, 1.7, 30.0, 150.0])),
    "continuous": ({"kind": "vp-linear", "beta_min": 0.1, "beta_max": 20.0}, "continuous", {},
                   vp_linear_sigma, True, np.array([0.01, 0.3, 2.0, 40.0, 150.0])),
    "continuous*999": ("vp-linear", "continuous", {"time_scale": 999}, lambda t: vp_linear_sigma(t / 999), True,
                       np.array([0.01, 0.3, 2.0, 40.0])),
    "vp-cosine": ("vp-cosine", "continuous", {}, vp_cosine_sigma, True, np.array([0.01, 0.3, 2.0, 40.0, 150.0])),
    "edm": ({"kind": "edm"}, "continuous", {}, lambda t: t, False, np.array([0.002, 0.5, 5.0, 80.0])),
    "callable": ("edm", lambda s: 0.25 * s.log(), {}, lambda t: np.exp(4 * t), False, np.array([0.01, 1.0, 60.0])),
}


@pytest.mark.parametrize("target", ["eps", "v", "x0"])
@pytest.mark.parametrize("case", CASES)
def test_exact_gaussian_predictor_wraps_to_exact_denoiser(case, target):
    process, time_input, kw, sigma_of_t, vp, sig = CASES[case]
    net = GaussianNet(target, sigma_of_t, vp)
    model = wrap_module(net, target, process, time_input, event_shape=(1, 4, 4), **kw)
    sigma = torch.as_tensor(sig, dtype=torch.float64)
    x = batch(sig)
    np.testing.assert_allclose(run(model, x, sigma), exact(x, sigma).numpy(), rtol=2e-4, atol=1e-6)


def test_flow_velocity_and_any_length_alphas_cumprod():
    """Flow-matching velocity u = eps - x0 (x_t = x / (1 + s)); a 50-step cosine alphas_cumprod table."""
    net = GaussianNet("velocity", lambda t: t / (1 - t), vp_input="flow")
    model = wrap_module(net, "velocity", "flow", "continuous", event_shape=(1, 4, 4))
    sig = np.array([0.01, 0.4, 3.0, 200.0])
    x = batch(sig, 1)
    np.testing.assert_allclose(run(model, x, sig), exact(x, torch.tensor(sig)).numpy(), rtol=2e-4)

    n = 50
    f = lambda t: np.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    abar = np.clip(f(np.arange(1, n + 1) / n) / f(0.0), 1e-5, None)
    table = np.sqrt((1 - abar) / abar)
    net = GaussianNet("eps", lambda t: np.exp(np.interp(t, np.arange(n), np.log(table))))
    model = wrap_module(net, "epsilon", {"kind": "discrete", "alphas_cumprod": abar}, "fractional",
                        event_shape=(1, 4, 4))
    assert model.sigma_min == pytest.approx(table[0]) and model.sigma_max == pytest.approx(table[-1])
    sig = np.array([table[0] * 1.5, 1.0, table[-1] / 2])
    x = batch(sig, 2)
    np.testing.assert_allclose(run(model, x, sig), exact(x, torch.tensor(sig)).numpy(), rtol=2e-4)


def test_index_time_rounds_to_nearest_step_in_log_sigma():
    """Off the table, 'index' feeds the nearest step (in log sigma) while the scalings use the exact sigma."""
    net = GaussianNet("eps", lambda t: TABLE[t.astype(int)])
    model = wrap_module(net, "eps", {"kind": "discrete", "betas": BETAS}, "index", event_shape=(1, 4, 4))
    k = np.array([10, 400, 800])
    w = np.array([0.3, 0.7, 0.55])                       # fraction of the log-sigma gap above step k
    sig = np.exp((1 - w) * np.log(TABLE[k]) + w * np.log(TABLE[k + 1]))
    t = model.net_time(torch.tensor(sig))
    assert t.dtype == torch.int64 and t.tolist() == (k + (w > 0.5)).tolist()
    s, s_net = torch.tensor(sig).view(-1, 1, 1, 1), torch.tensor(TABLE[t.numpy()]).view(-1, 1, 1, 1)
    x = batch(sig, 3)
    eps_net = s_net / (C ** 2 + s_net ** 2) * x / (1 + s ** 2).sqrt() * (1 + s_net ** 2).sqrt()
    np.testing.assert_allclose(run(model, x, sig), (x - s * eps_net).numpy(), rtol=1e-6)


def test_discrete_process_t_and_sigma_are_inverse():
    p = DiscreteVP(betas=BETAS)
    t = np.array([0.0, 0.5, 17.25, 998.9, 999.0])
    np.testing.assert_allclose(p.t(p.sigma(t)), t, atol=1e-9)
    assert p.sigma_min == pytest.approx(TABLE[0]) and p.sigma_max == pytest.approx(TABLE[-1])


def test_bad_names_and_incompatible_options_are_rejected():
    net = GaussianNet("eps", lambda t: t)
    for kw in (dict(parametrization="noise"), dict(time_input="steps"), dict(process="ve-nope"),
               dict(time_input="continuous"), dict(process="vp-linear", time_input="index"),
               dict(time_scale=2.0), dict(input_scaling="weird"), dict(display="gamma"),
               dict(process={"kind": "discrete", "betas": [0.5, 1.5]}), dict(data_range=(1, -1))):
        args = dict(parametrization="eps", process="discrete", time_input="index", event_shape=(1, 4, 4)) | kw
        with pytest.raises(ScheduleLabError):
            wrap_module(net, **args)
    with pytest.raises(ScheduleLabError, match="event_shape"):
        wrap_module(net, "eps", "discrete", "index", event_shape=None)
    with pytest.raises(ScheduleLabError, match="display mode"):
        to_display(torch.zeros(1, 1, 2, 2), "sepia")


def test_to_display_clamp_and_minmax():
    x = torch.tensor([[[[-1.0, 0.0], [1.0, 3.0]]], [[[0.2, 0.4], [0.6, 0.2]]]])
    c = to_display(x, "clamp", (-1, 1))
    assert c[0].flatten().tolist() == [0.0, 0.5, 1.0, 1.0]
    m = to_display(x, "minmax")
    assert torch.allclose(m.flatten(1).min(1).values, torch.zeros(2))
    assert torch.allclose(m.flatten(1).max(1).values, torch.ones(2))
    assert torch.allclose(m[1, 0, 0], torch.tensor([0.0, 0.5]))


MODULE = '''
import numpy as np, torch

class TinyEps(torch.nn.Module):
    """Exact eps-predictor for N(0, c^2 I) under DDPM linear betas, c = exp(log_c) (a weight)."""
    schedule_lab = {"parametrization": "eps", "process": "discrete", "time_input": "index", "shape": "1,4,4"}

    def __init__(self, hidden=2):
        super().__init__()
        self.log_c = torch.nn.Parameter(torch.zeros(()))
        self.unused = torch.nn.Linear(hidden, hidden)
        abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
        self.register_buffer("table", torch.tensor(np.sqrt((1 - abar) / abar), dtype=torch.float32))

    def forward(self, x_in, t):
        s = self.table[t].view(-1, 1, 1, 1)
        c2 = self.log_c.exp() ** 2
        return s / (c2 + s ** 2) * x_in * (1 + s ** 2).sqrt()
'''


@pytest.fixture
def module_file(tmp_path):
    f = tmp_path / "tiny_eps.py"
    f.write_text(MODULE)
    return f


def test_load_module_spec_loads_a_torch_save_state_dict(module_file, tmp_path):
    net = load_module_spec(f"{module_file}:TinyEps", params={"hidden": 3})
    assert net.log_c.item() == 0.0                       # c = 1 before the weights
    sd = net.state_dict()
    sd["log_c"] = torch.tensor(math.log(C))
    torch.save(sd, tmp_path / "w.pt")
    model = load_user_model(f"{module_file}:TinyEps", tmp_path / "w.pt", {"hidden": 3})
    assert model.parametrization == "eps" and model.event_shape == (1, 4, 4)
    sig = TABLE[[5, 300, 900]]
    x = batch(sig, 4).float()
    # float32 network: D = x - s eps cancels, so the tolerance scales with |x|
    np.testing.assert_allclose(run(model, x, sig), exact(x.double(), torch.tensor(sig)).numpy(),
                               rtol=1e-4, atol=1e-6 * float(x.abs().max()))
    # the same through CLI-style flat params (strings as --param gives them), overriding the class defaults
    cli = load_user_model(f"{module_file}:TinyEps", tmp_path / "w.pt",
                          {"hidden": 3, "parametrization": "epsilon", "beta_schedule": "linear",
                           "num_train_timesteps": 1000, "shape": "1x4x4", "display": "minmax"})
    assert cli.display == "minmax"
    np.testing.assert_array_equal(run(cli, x, sig), run(model, x, sig))
    # "net." forces a constructor key
    ctor, wrap = split_params({"hidden": 3, "shape": "1,4,4", "net.name": "x", "time_input": "fractional"})
    assert ctor == {"hidden": 3, "name": "x"} and wrap == {"shape": "1,4,4", "time_input": "fractional"}


def test_module_spec_errors_and_code_pickles_refused(module_file, tmp_path):
    spec = f"{module_file}:TinyEps"
    net = load_module_spec(spec, params={"hidden": 2})
    torch.save(net, tmp_path / "whole_model.pt")           # a pickle that needs code to load
    with pytest.raises(ScheduleLabError, match="refuses pickles"):
        load_module_spec(spec, weights=tmp_path / "whole_model.pt", params={"hidden": 2})
    torch.save(net.state_dict(), tmp_path / "w2.pt")
    with pytest.raises(ScheduleLabError, match="do not fit"):
        load_module_spec(spec, weights=tmp_path / "w2.pt", params={"hidden": 5})
    for bad, msg in ((str(module_file), "ClassName"), (f"{tmp_path}/missing.py:X", "not found"),
                     (f"{module_file}:Nope", "no attribute")):
        with pytest.raises(ScheduleLabError, match=msg):
            load_module_spec(bad)
    with pytest.raises(ScheduleLabError, match="cannot build"):
        load_module_spec(spec, params={"widht": 3})
    with pytest.raises(ScheduleLabError, match="parametrization"):
        load_user_model(spec, params={"parametrization": "score"})


def test_image_data_from_png_folder_and_npz(tmp_path):
    from PIL import Image
    model = wrap_module(GaussianNet("eps", lambda t: t), "eps", "edm", "continuous", event_shape=(1, 4, 4))
    d = tmp_path / "pngs"
    d.mkdir()
    for i, v in enumerate((0, 255, 51)):
        Image.fromarray(np.full((4, 4), v, np.uint8)).save(d / f"{i}.png")
    Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(d / "big_rgb.png")   # grey + resized
    data = image_sampler_from(d, model, tmp_path / "cache")
    assert not data.generated and len(data) == 4
    np.testing.assert_allclose(data.images[:, 0, 0, 0].numpy(), [-1.0, 1.0, 51 / 255 * 2 - 1, 1.0], atol=1e-6)
    a, b = data(6, torch.Generator().manual_seed(0)), data(6, torch.Generator().manual_seed(0))
    assert a.shape == (6, 1, 4, 4) and torch.equal(a, b)

    rgb = wrap_module(GaussianNet("eps", lambda t: t), "eps", "edm", "continuous", event_shape=(3, 2, 2),
                      data_range=(0.0, 1.0))
    arr = np.random.default_rng(0).integers(0, 256, (5, 2, 2, 3), dtype=np.uint8)   # NHWC pixels
    np.savez(tmp_path / "rgb.npz", images=arr)
    got = image_sampler_from(tmp_path / "rgb.npz", rgb, tmp_path / "cache").images
    np.testing.assert_allclose(got.numpy(), arr.transpose(0, 3, 1, 2) / 255.0, atol=1e-6)
    np.savez(tmp_path / "grey.npz", x=np.zeros((3, 4, 4), np.float32) + 0.25)       # floats: data units
    assert torch.all(image_sampler_from(tmp_path / "grey.npz", model, None).images == 0.25)
    np.savez(tmp_path / "bad.npz", images=np.zeros((3, 5, 5), np.float32))
    with pytest.raises(ScheduleLabError, match="shape"):
        image_sampler_from(tmp_path / "bad.npz", model, None)
    with pytest.raises(ScheduleLabError, match="not found"):
        image_sampler_from(tmp_path / "nothing", model, None)


def test_image_data_generated_once_from_the_model_and_cached(tmp_path, monkeypatch):
    """No data: the model's own Heun samples; for the exact Gaussian model their std is C."""
    import core.models.user_model as um
    model = wrap_module(GaussianNet("eps", lambda t: t, vp_input=False), "eps",
                        {"kind": "edm", "sigma_min": 0.002, "sigma_max": 80.0}, "continuous", event_shape=(1, 4, 4))
    calls = []
    with pytest.warns(UserWarning, match="look like noise"):     # i.i.d. Gaussian pixels are white noise
        data = image_sampler_from(None, model, tmp_path / "cache", n=256, steps=24, solver="heun",
                                  progress=lambda done, n: calls.append(done))
    assert data.generated and data.cache_path.is_file() and calls[-1] == 256
    assert data.images.std().item() == pytest.approx(C, rel=0.05)
    monkeypatch.setattr(um, "_generate", lambda *a, **k: pytest.fail("the cache was not used"))
    with pytest.warns(UserWarning, match="look like noise"):     # checked again when read from the cache
        again = image_sampler_from(None, model, tmp_path / "cache", n=256, steps=24, solver="heun")
    assert again.generated and torch.equal(again.images, data.images)
