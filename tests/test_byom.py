"""Bring your own model with no workaround (issue 10, item 7).

Each case is a small network written into tmp_path the way another person's repository looks (their
file layout, time conventions, checkpoint key names), loaded with --param flags only, and checked
against the EDM conversion computed here by hand from the raw network output (methods.md s.1):

    x_in = x / sqrt(1 + s^2) (VP),  eps: D = x - s F,  v: D = x / (1 + s^2) - s / sqrt(1 + s^2) F,

with the network's time written out independently of core (log-sigma interpolation in the table,
or the closed-form inverse of the VP-SDE's sigma(t))."""
import json
import math
import sys
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from core.cli import main, parse_params
from core.errors import ScheduleLabError
from core.models.registry import load_model, model_data
from core.models.user_model import OWN_SAMPLER, OwnSamplesWarning, check_own_samples, image_sampler_from
from core.models.wrap import wrap_module
from core.sampling import generate
from core.schedules import PresetRangeWarning, make_schedule
from core.solvers import get_solver


def _write(folder, files: dict):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def _load(spec, weights, params):
    return load_model(spec, "cpu", weights=str(weights), params=parse_params(params))


def _table_t(sig_table, s):
    """Fractional step of EDM sigma s in an ascending table: linear in log sigma, clamped."""
    return np.interp(np.log(s), np.log(sig_table), np.arange(len(sig_table)))


SIGMAS = np.array([0.05, 0.7, 3.0, 25.0])


# ---- case 1: float-time CNN fed t / 1000, a 1001-entry alphas_cumprod table, keys "gt.", extra buffers
CNN = '''
import torch
from torch import nn


class TimeCNN(nn.Module):
    def __init__(self, ch=8):
        super().__init__()
        self.conv1 = nn.Conv2d(1, ch, 3, padding=1)
        self.temb = nn.Linear(1, ch)
        self.conv2 = nn.Conv2d(ch, 1, 3, padding=1)

    def forward(self, x, t):                      # t: float in [0, 1] (= step / 1000)
        assert t.dtype == torch.float32 and t.ndim == 1 and float(t.max()) <= 1.0
        h = torch.tanh(self.conv1(x) + self.temb(t[:, None])[:, :, None, None])
        return self.conv2(h)
'''


def test_float_time_cnn_with_gt_prefix_table_in_checkpoint_and_extra_buffers(tmp_path):
    repo = _write(tmp_path / "their_repo", {"model.py": CNN})
    sys.path.insert(0, str(repo))
    try:
        from model import TimeCNN                              # their class, to make the checkpoint
    finally:
        sys.path.remove(str(repo))
        sys.modules.pop("model", None)
    torch.manual_seed(0)
    net = TimeCNN(ch=8)
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1001))         # 1001 entries: steps 0..1000
    sd = {"gt." + k: v for k, v in net.state_dict().items()}
    sd.update({"gt.alphas_cumprod": torch.tensor(abar), "gt.sqrt_alphas_cumprod": torch.tensor(np.sqrt(abar)),
               "gt.step": torch.tensor(12345)})
    torch.save(sd, tmp_path / "ckpt.pt")
    params = ["ch=8", "parametrization=eps", "process=discrete", "alphas_cumprod=gt.alphas_cumprod",
              "time_input=fractional", "time_scale=0.001", "shape=1,8,8", "strict=false"]
    spec = f"{repo / 'model.py'}:TimeCNN"
    with pytest.warns(UserWarning, match="unexpected keys ignored.*gt.alphas_cumprod"):
        model = _load(spec, tmp_path / "ckpt.pt", params)           # "gt." stripped automatically
    with pytest.warns(UserWarning, match="gt.step"):
        explicit = _load(spec, tmp_path / "ckpt.pt", params + ["strip_prefix=gt."])
    table = np.sqrt((1 - abar) / abar)
    assert model.sigma_min == pytest.approx(table[0]) and model.sigma_max == pytest.approx(table[-1])
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * torch.tensor(SIGMAS).float().view(-1, 1, 1, 1)
    s = torch.tensor(SIGMAS, dtype=torch.float32)
    with torch.no_grad():
        t = torch.tensor(_table_t(table, SIGMAS) / 1000, dtype=torch.float32)
        F = net(x / (1 + s ** 2).sqrt().view(-1, 1, 1, 1), t)
        hand = x - s.view(-1, 1, 1, 1) * F
        got, got2 = model(x, s), explicit(x, s)
    torch.testing.assert_close(got, hand, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got2, got)
    with pytest.raises(ScheduleLabError, match="unexpected keys \\(3\\): gt.alphas_cumprod, gt.sqrt_alphas_cumprod, gt.step"):
        _load(spec, tmp_path / "ckpt.pt", params[:-1] + ["strip_prefix=gt."])       # strict: all listed
    assert torch.isfinite(generate(model, make_schedule("karras", 5, model.sigma_min, model.sigma_max), 3, "heun").x).all()


# ---- case 2: a 300-step UNet-like net with BatchNorm, a sibling import, list constructor kwargs, v-pred
LAYERS = '''
from torch import nn


class Block(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x):
        return nn.functional.silu(self.norm(self.conv(x)))
'''
UNET = '''
import torch
from torch import nn

from layers import Block                           # a sibling module of their repository


class UNet(nn.Module):
    def __init__(self, channels=(8, 16), n_steps=300):
        super().__init__()
        self.emb = nn.Embedding(n_steps, channels[0])
        self.down = Block(1, channels[0])
        self.mid = Block(channels[0], channels[1])
        self.up = Block(channels[1] + channels[0], channels[0])
        self.out = nn.Conv2d(channels[0], 1, 1)

    def forward(self, x, t):                        # t: integer step [B]
        h = self.down(x) + self.emb(t)[:, :, None, None]
        m = self.mid(nn.functional.avg_pool2d(h, 2))
        u = self.up(torch.cat([nn.functional.interpolate(m, scale_factor=2), h], 1))
        return self.out(u)
'''


def test_batchnorm_unet_300_steps_sibling_import_list_params(tmp_path):
    repo = _write(tmp_path / "unet_repo", {"layers.py": LAYERS, "unet.py": UNET})
    spec = f"{repo / 'unet.py'}:UNet"
    params = ["channels=8,16", "n_steps=300", "parametrization=v", "process=discrete", "num_train_timesteps=300",
              "beta_schedule=linear", "beta_start=1e-4", "beta_end=0.06", "time_input=index", "shape=1,8,8"]
    path_before = list(sys.path)
    fresh = load_model(spec, params=parse_params(params))         # their class, through our import
    assert sys.path == path_before                                # the folder was on sys.path only while importing
    net = fresh.net
    net.train()
    torch.manual_seed(0)
    with torch.no_grad():                                         # BatchNorm running stats move away from 0 / 1
        for _ in range(20):
            net(3.0 + 2.0 * torch.randn(16, 1, 8, 8), torch.randint(0, 300, (16,)))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "unet.safetensors"))
    model = _load(spec, tmp_path / "unet.safetensors", params)
    assert not model.net.training                                  # wrap_module: eval()
    betas = np.linspace(1e-4, 0.06, 300)
    table = np.sqrt((1 - np.cumprod(1 - betas)) / np.cumprod(1 - betas))
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 3
    s = torch.tensor(SIGMAS, dtype=torch.float32).clamp(max=float(table[-1]))
    t = torch.tensor(np.round(_table_t(table, s.numpy().astype(np.float64))), dtype=torch.int64)
    sv = s.view(-1, 1, 1, 1)
    with torch.no_grad():
        def hand(train):
            net.train(train)
            F = net(x / (1 + sv ** 2).sqrt(), t)
            return x / (1 + sv ** 2) - sv / (1 + sv ** 2).sqrt() * F
        want, train_mode = hand(False), hand(True)
        got = model(x, s)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (train_mode - want).abs().max() > 0.1                   # train-mode BatchNorm would change D
    wrapped = wrap_module(net.train(), "v", {"kind": "discrete", "betas": betas}, "index", event_shape=(1, 8, 8))
    assert not wrapped.net.training                                # wrap_module itself puts it in eval()
    sched = make_schedule("karras", 4, model.sigma_min, model.sigma_max)
    assert torch.isfinite(generate(model, sched, 3, "dpmpp_2m").x).all()


# ---- case 3: a 28x28 eps DDPM, 1000 linear betas, integer time of shape (N, 1), keys "network."
DDPM = '''
import torch
from torch import nn


class TinyDDPM(nn.Module):
    def __init__(self, ch=4):
        super().__init__()
        self.inp = nn.Conv2d(1, ch, 3, padding=1)
        self.t_proj = nn.Linear(1, ch)
        self.outp = nn.Conv2d(ch, 1, 3, padding=1)

    def forward(self, x, t):
        if t.shape != (x.shape[0], 1) or t.dtype != torch.int64:
            raise ValueError(f"t must be an int64 tensor of shape (N, 1), got {tuple(t.shape)} {t.dtype}")
        h = torch.relu(self.inp(x) + self.t_proj(t.float() / 1000)[:, :, None, None])
        return self.outp(h)
'''


def test_eps_ddpm_28x28_time_n_by_1_and_network_prefix(tmp_path):
    repo = _write(tmp_path / "mnist_ddpm", {"ddpm.py": DDPM})
    spec = f"{repo / 'ddpm.py'}:TinyDDPM"
    base = ["ch=4", "parametrization=eps", "process=discrete", "beta_schedule=linear", "num_train_timesteps=1000",
            "time_input=index", "shape=1,28,28"]
    net = load_model(spec, params=parse_params(base + ["time_shape=N,1"])).net
    torch.save({"network." + k: v for k, v in net.state_dict().items()}, tmp_path / "mnist.pth")
    model = _load(spec, tmp_path / "mnist.pth", base + ["time_shape=N,1", "time_dtype=int64"])   # auto-stripped
    also = _load(spec, tmp_path / "mnist.pth", base + ["time_shape=N,1", "strip_prefix=network."])
    betas = np.linspace(1e-4, 0.02, 1000)
    table = np.sqrt((1 - np.cumprod(1 - betas)) / np.cumprod(1 - betas))
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    s = torch.tensor(SIGMAS, dtype=torch.float32)
    t = torch.tensor(np.round(_table_t(table, SIGMAS)), dtype=torch.int64).view(-1, 1)
    with torch.no_grad():
        want = x - s.view(-1, 1, 1, 1) * net(x / (1 + s.view(-1, 1, 1, 1) ** 2).sqrt(), t)
        torch.testing.assert_close(model(x, s), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(also(x, s), want)
    plain = _load(spec, tmp_path / "mnist.pth", base)              # without time_shape the net refuses
    with pytest.raises(ValueError, match="shape \\(N, 1\\)"):
        plain(x, s)
    with pytest.raises(ScheduleLabError, match="time_shape"):
        _load(spec, tmp_path / "mnist.pth", base + ["time_shape=2,3"])
    assert generate(model, make_schedule("karras", 4, model.sigma_min, model.sigma_max), 2, "euler").x.shape == (2, 1, 28, 28)


# ---- case 4: a 2D MLP on the continuous VP-SDE (beta 0.1..20, t in [1e-3, 1]) on 4 Gaussians
MLP = '''
import math
import torch
from torch import nn

MEANS = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0], [0.0, -2.0]], dtype=torch.float64)
STD = 0.3


def vp_sigma(t, beta_min=0.1, beta_max=20.0):
    return torch.sqrt(torch.expm1(0.5 * (beta_max - beta_min) * t ** 2 + beta_min * t))


class MLP(nn.Module):
    def __init__(self, n_hidden=(16, 16)):
        super().__init__()
        dims = [3, *n_hidden, 2]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x, t):                         # t: continuous VP time in [1e-3, 1], float [B]
        h = torch.cat([x, t[:, None].to(x.dtype)], 1)
        for i, layer in enumerate(self.layers):
            h = layer(h) if i == len(self.layers) - 1 else torch.tanh(layer(h))
        return h


class ExactEps(nn.Module):
    """The exact E[eps | x_t] of the 4-Gaussian mixture under the VP-SDE (a perfectly trained network)."""

    def forward(self, x_t, t):
        x_t, t = x_t.double(), t.double()
        s = vp_sigma(t)[:, None]
        x = x_t * torch.sqrt(1 + s ** 2)                                     # EDM units
        var = STD ** 2 + s ** 2
        logits = -((x[:, None, :] - MEANS[None]) ** 2).sum(-1) / (2 * var)
        w = torch.softmax(logits, 1)
        d = (w[..., None] * (STD ** 2 * x[:, None, :] + s[:, :, None] ** 2 * MEANS[None]) / var[:, :, None]).sum(1)
        return ((x - d) / s).float()
'''
MIX = {"name": "four", "weights": [0.25] * 4, "means": [[2, 0], [-2, 0], [0, 2], [0, -2]],
       "covariances": [[[0.09, 0], [0, 0.09]]] * 4}
VP_PARAMS = ["parametrization=eps", "process=vp-linear", "beta_min=0.1", "beta_max=20", "t_eps=0.001",
             "time_input=continuous", "shape=2"]


def test_vp_sde_mlp_list_kwargs_and_closed_form_time(tmp_path):
    repo = _write(tmp_path / "toy2d", {"mlp.py": MLP})
    spec = f"{repo / 'mlp.py'}:MLP"
    net = load_model(spec, params=parse_params(["n_hidden=16,32,32,16"] + VP_PARAMS)).net
    assert [m.out_features for m in net.layers] == [16, 32, 32, 16, 2]
    save_file(net.state_dict(), str(tmp_path / "mlp.safetensors"))
    model = _load(spec, tmp_path / "mlp.safetensors", ["n_hidden=[16, 32, 32, 16]"] + VP_PARAMS)   # JSON too
    bmin, bd = 0.1, 19.9
    assert model.sigma_min == pytest.approx(math.sqrt(math.expm1(0.5 * bd * 1e-6 + bmin * 1e-3)))
    assert model.sigma_max == pytest.approx(math.sqrt(math.expm1(0.5 * bd + bmin)))
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(4)) * 2
    s = torch.tensor(SIGMAS, dtype=torch.float32)
    t = (np.sqrt(bmin ** 2 + 2 * bd * np.log1p(SIGMAS ** 2)) - bmin) / bd       # sigma(t) inverted by hand
    with torch.no_grad():
        want = x - s[:, None] * net(x / (1 + s[:, None] ** 2).sqrt(), torch.tensor(t, dtype=torch.float32))
        torch.testing.assert_close(model(x, s), want, rtol=1e-5, atol=1e-5)
    assert generate(model, make_schedule("karras", 5, model.sigma_min, model.sigma_max), 16, "heun").x.shape == (16, 2)


def test_sample_cli_scores_a_2d_user_model_against_points_and_mixture(tmp_path, capsys):
    """The exact VP network through `python -m core sample`: its NLL under the mixture is the mixture's
    entropy (within sampling noise) and its SWD to data points is small; a broken conversion fails both."""
    from toy_data.mixture import GaussianMixture
    repo = _write(tmp_path / "toy2d", {"mlp.py": MLP})
    (tmp_path / "four.json").write_text(json.dumps(MIX))
    mix = GaussianMixture.from_dict(MIX)
    pts = mix.sample(4000, torch.Generator().manual_seed(9)).float().numpy()
    np.save(tmp_path / "points.npy", pts)
    np.savetxt(tmp_path / "points.csv", pts[:3000], delimiter=",")
    args = ["sample", "--model", f"{repo / 'mlp.py'}:ExactEps", "--schedule", "karras", "--steps", "40",
            "--solver", "heun", "--n", "2000", "--json", "--data", str(tmp_path / "points.npy"),
            "--toy", str(tmp_path / "four.json")]
    for p in VP_PARAMS:
        args += ["--model-param", p]
    assert main(args) == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    entropy = float(-mix.log_prob(torch.from_numpy(pts).double()).mean())
    assert out["nll"] == pytest.approx(entropy, abs=0.08), (out["nll"], entropy)
    # two independent 2000-point mixture samples: SWD 0.06-0.17, |MMD| < 4e-4 (measured); the same network
    # with beta_max 10 instead of 20 (a wrong process): NLL 2.64 vs 1.80, SWD 0.26, MMD 7.5e-3
    assert out["swd"] < 0.2 and out["mmd"] < 2e-3
    assert out["sigmas"][0] == pytest.approx(math.sqrt(math.expm1(0.5 * 19.9 + 0.1)))   # the model's range
    args_csv = [a if a != str(tmp_path / "points.npy") else str(tmp_path / "points.csv") for a in args]
    args_csv = args_csv[:args_csv.index("--toy")] + args_csv[args_csv.index("--toy") + 2:]   # points only
    args_csv[args_csv.index("--n") + 1], args_csv[args_csv.index("--steps") + 1] = "500", "12"
    assert main(args_csv) == 0
    only = json.loads(capsys.readouterr().out)
    assert only["nll"] is None and only["nll_ci"] is None and 0 < only["swd"] < 0.3
    bad = args[:args.index("--data")] + args[args.index("--toy") + 2:]
    assert main(bad) == 2 and "--data" in capsys.readouterr().err


# ---- state-dict errors, --param parsing ------------------------------------------------------------
def test_errors_list_every_missing_and_unexpected_key(tmp_path):
    repo = _write(tmp_path / "r", {"ddpm.py": DDPM})
    spec = f"{repo / 'ddpm.py'}:TinyDDPM"
    base = ["parametrization=eps", "shape=1,28,28"]
    net = load_model(spec, params=parse_params(base)).net
    sd = {f"a.{k}": v for k, v in net.state_dict().items()}
    sd.update({f"b.extra{i}": torch.zeros(1) for i in range(30)})           # two prefixes: not unambiguous
    torch.save(sd, tmp_path / "w.pt")
    with pytest.raises(ScheduleLabError) as e:
        _load(spec, tmp_path / "w.pt", base)
    msg = str(e.value)
    for k in net.state_dict():
        assert k in msg                                                     # every missing key
    assert all(f"b.extra{i}" in msg for i in range(30)) and "unexpected keys (36)" in msg
    torch.save({"network." + k: v for k, v in net.state_dict().items()}, tmp_path / "n.pt")
    with pytest.raises(ScheduleLabError, match="shape mismatches.*inp.weight"):
        _load(spec, tmp_path / "n.pt", base + ["ch=5"])
    with pytest.raises(ScheduleLabError, match="strict must be true or false"):
        _load(spec, tmp_path / "n.pt", base + ["strict=maybe"])


def test_param_parses_lists_json_and_booleans():
    got = parse_params(["n_hidden=16,32,32,16", "dims=[16, 32]", 'cfg={"a": 1}', "strict=false", "rho=7",
                        "c=0.5", "shape=1x28x28", "name=my-net", "r=-1,1"])
    assert got == {"n_hidden": [16, 32, 32, 16], "dims": [16, 32], "cfg": {"a": 1}, "strict": False, "rho": 7,
                   "c": 0.5, "shape": "1x28x28", "name": "my-net", "r": [-1, 1]}
    with pytest.raises(ScheduleLabError, match="JSON"):
        parse_params(["dims=[16, 32"])


# ---- the own-sample data fallback -----------------------------------------------------------------
class _Const(torch.nn.Module):
    """x0-prediction of data x0 = a * ones (a ~ N(0, c^2)): smooth images (neighbours correlate 1)."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x, t):
        s = t.double().view(-1, 1, 1, 1)
        d = x[0].numel()
        m = x.double().mean(dim=(1, 2, 3), keepdim=True) * d          # u.x sqrt(d), u = 1/sqrt(d)
        return (self.c ** 2 * m / (self.c ** 2 * d + s ** 2) * torch.ones_like(x)).float()


class _White(torch.nn.Module):
    """x0-prediction of i.i.d. N(0, c^2) pixels: white noise, the correct samples of this model."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x, t):
        s = t.view(-1, 1, 1, 1)
        return self.c ** 2 / (self.c ** 2 + s ** 2) * x


def _edm(net, name="user-model"):
    """(The cache key hashes the weights: these weight-less nets need distinct names.)"""
    return wrap_module(net, "x0", {"kind": "edm", "sigma_min": 0.002, "sigma_max": 80.0}, "continuous",
                       event_shape=(1, 8, 8), name=name)


def test_own_samples_default_stochastic_sampler_and_loud_warnings(tmp_path):
    solver, steps = OWN_SAMPLER
    assert get_solver(solver).stochastic and steps >= 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                      # a good model: no warning
        ok = image_sampler_from(None, _edm(_Const(0.4)), tmp_path, n=32, steps=20, solver="heun")
    assert ok.warnings == [] and ok.generated and "heun" in ok.source
    with pytest.warns(OwnSamplesWarning) as rec:
        wide = image_sampler_from(None, _edm(_Const(3.0), "wide"), tmp_path, n=32, steps=20, solver="heun")
    assert any("outside its data_range" in str(w.message) for w in rec) and len(wide.warnings) == 1
    with pytest.warns(OwnSamplesWarning, match="look like noise") as rec:
        white = image_sampler_from(None, _edm(_White(0.2), "white"), tmp_path, n=32, steps=20, solver="heun")
    assert len(white.warnings) == 1 and not any("outside" in str(w.message) for w in rec)
    stuck = torch.randn(32, 2) * 60                                        # a sampler that never denoised
    assert any("spread like noise" in m for m in check_own_samples(stuck, (-1, 1), 80.0))
    d = model_data("custom", _edm(_Const(0.4)), cache_dir=tmp_path, n=8, steps=100)
    assert d.cache_path.name.endswith(f"n8-{solver}100-s0.npz") and solver in d.source


def test_own_samples_cli_says_so_loudly(tmp_path, capsys):
    repo = _write(tmp_path / "r", {"white.py": "import torch\nclass W(torch.nn.Module):\n"
                                                "    def forward(self, x, t):\n"
                                                "        return 0.04 / (0.04 + t.view(-1, 1, 1, 1) ** 2) * x\n"})
    args = ["optimize", "score-optimal", "--model", f"{repo / 'white.py'}:W", "--steps", "4", "--levels", "20",
            "--n", "8", "--own-samples", "heun:12", "--chunk", "5", "--out", str(tmp_path / "s.json")]
    for p in ("parametrization=x0", "process=edm", "time_input=continuous", "shape=1,8,8", "name=white-byom"):
        args += ["--param", p]
    import core.models.registry as reg
    old = reg.SAMPLES_CACHE
    reg.SAMPLES_CACHE = tmp_path / "cache"
    try:
        assert main(args) == 0
    finally:
        reg.SAMPLES_CACHE = old
    err = capsys.readouterr().err
    assert "LOUD WARNING" in err and "look like noise" in err and "heun, 12 steps" in err


# ---- score-optimal memory: chunked == unchunked, memory-aware default ------------------------------
def test_score_optimal_chunked_estimate_equals_unchunked_and_auto_chunk_fits_memory():
    from core.objectives.stein import stein_density
    from core.optimizers.score_optimal import JVP_FACTOR, activation_bytes, auto_chunk_points
    model = _edm(_Const(0.4)).double()
    data = lambda n, g: 0.4 * torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64) * torch.ones(n, 1, 8, 8, dtype=torch.float64)  # noqa: E731
    grid = np.geomspace(0.01, 50, 12)
    whole = stein_density(model, data, grid, n=24, chunk_points=24 * 12)
    pieces = stein_density(model, data, grid, n=24, chunk_points=7)           # a level split into 7 + 7 + 7 + 3
    np.testing.assert_allclose(pieces, whole, rtol=1e-10)
    unet = load_model(f"{_write_unet()}:UNet", params=parse_params(
        ["channels=32,64", "parametrization=eps", "process=discrete", "time_input=index", "shape=1,28,28"]))
    per = activation_bytes(unet)
    assert per > 28 * 28 * 4 * 32                                            # at least one 32-channel map
    assert auto_chunk_points(unet, budget_bytes=1 << 30) == (1 << 30) // (JVP_FACTOR * per)
    assert auto_chunk_points(unet, budget_bytes=1 << 30) < 2560               # the size that was killed
    assert auto_chunk_points(_edm(_Const(0.4)), budget_bytes=1 << 30) > auto_chunk_points(unet, budget_bytes=1 << 30)


def _write_unet():
    import tempfile
    from pathlib import Path
    d = Path(tempfile.mkdtemp(prefix="byom_unet_"))
    _write(d, {"layers.py": LAYERS, "unet.py": UNET})
    return d / "unet.py"


# ---- presets, packaging -------------------------------------------------------------------------
def test_presets_warn_when_their_range_is_not_the_models():
    with pytest.warns(PresetRangeWarning, match=r"ays_sd15 .* 0\.029\d* \.\. 14\.61\d*.* 0\.002 \.\. 80"):
        make_schedule("ays_sd15", 10, 0.002, 80.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_schedule("ays_sd15", 10, 0.0292, 14.6146)                     # SD 1.5's own table: silent
        make_schedule("karras", 10, 0.002, 80.0)


@pytest.mark.slow
def test_pyproject_mirrors_requirements_and_installs_editable(tmp_path):
    """`pip install -e .` into a throw-away venv (the main venv's packages visible through a .pth, no
    build isolation, no index): `import core` then works from another folder."""
    import subprocess
    import tomllib
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    deps = meta["project"]["dependencies"] + meta["project"]["optional-dependencies"]["test"]
    reqs = [ln.strip() for ln in (root / "requirements.txt").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert sorted(deps) == sorted(reqs) and "torch==2.13.0" in meta["project"]["dependencies"]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "main_venv.pth").write_text("\n".join(p for p in sys.path if p.endswith("site-packages")) + "\n")
    py = str(venv / "bin" / "python")
    r = subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-e",
                        str(root)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([py, "-c", "import core, toy_data, app_lib; print(core.__file__)"], capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == str(root / "core" / "__init__.py"), r.stderr


# ---- the Playground with a user's 2-D model -----------------------------------------------------
def test_playground_samples_a_user_2d_model(tmp_path):
    """The sidebar's "your own 2-D model" loads module.py:Class with its parameters; the page's samples
    are the engine's samples of that model over its own sigma range."""
    from app_helpers import arr, figures, open_page, trace
    from app_lib.state import user_kind
    repo = _write(tmp_path / "toy2d", {"mlp.py": MLP})
    spec, params = f"{repo / 'mlp.py'}:ExactEps", "\n".join(VP_PARAMS)
    kind = user_kind(spec, "", params)
    page = open_page("playground", toy="gaussian", sb_user_spec=spec, sb_user_params=params, sb_model_kind=kind,
                     pg_steps=6, pg_n=500, pg_seeds=1, pg_paths=4)
    assert page.session_state["sb_model_kind"] == kind
    model = load_model(spec, params=parse_params(VP_PARAMS))
    s = make_schedule("karras", 6, model.sigma_min, model.sigma_max)
    assert page.session_state["pg_schedules"]["A: karras"] == s.sigmas
    x = generate(model, s, 500, "dpmpp_2m", seed=0).x.numpy()
    got = trace(figures(page)["pg_fig_samples_A"], "samples")
    np.testing.assert_allclose(arr(got["x"]), x[:, 0], rtol=1e-6)
    assert set(page.session_state["pg_metrics"]) == {"A: karras", "B: kl_optimal"}
