"""The shipped digits model: data split, checkpoint, denoiser limits, training script, PNG I/O, CLI."""
import json

import numpy as np
import pytest
import torch

from core.errors import ScheduleLabError
from core.metrics import images as im


@pytest.fixture(scope="module")
def model():
    from core.models.digits import load_digits_model
    return load_digits_model()


@pytest.fixture(scope="module")
def split():
    from core.data.digits import load_digits_split
    return load_digits_split()


def test_split_is_deterministic_disjoint_and_stratified(split):
    from sklearn.datasets import load_digits

    from core.data.digits import split_indices
    y = load_digits().target
    tr, te = split_indices(y)
    tr2, te2 = split_indices(y)
    assert (tr == tr2).all() and (te == te2).all()
    assert len(set(tr) & set(te)) == 0 and len(tr) + len(te) == len(y)
    for c in range(10):                         # 25 % of every class held out
        assert abs((y[te] == c).sum() / (y == c).sum() - 0.25) < 0.01
    assert split.train_x.shape == (len(tr), 1, 16, 16)
    assert split.train_x.min() >= -1 and split.train_x.max() <= 1
    assert split.train_x.min() == -1            # background maps to -1


def test_checkpoint_loads_as_denoiser(model):
    assert model.event_shape == (1, 16, 16)
    assert (model.sigma_min, model.sigma_max, model.sigma_data) == (0.002, 80.0, 0.5)
    meta = __import__("core.models.checkpoints", fromlist=["x"]).read_metadata(
        __import__("core.models.digits", fromlist=["x"]).DIGITS_CHECKPOINT)
    assert meta["training"]["finished"] and meta["training"]["steps"] >= 1000


@pytest.mark.parametrize("sigma", [0.1, 0.3, 1.0])
def test_denoiser_removes_noise_on_held_out_digits(model, split, sigma):
    # a trained D(x0 + sigma n) is much closer to x0 than the noisy input (MSE sigma^2)
    x0 = split.test_x[:200]
    n = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mse = (model(x0 + sigma * n, sigma) - x0).square().mean().item()
    assert mse < 0.35 * sigma ** 2


def test_denoiser_small_sigma_is_identity_and_large_sigma_is_data_mean(model, split):
    x0 = split.test_x[:64]
    mean = split.train_x.mean(0)
    spread = (split.train_x - mean).square().mean(dim=(1, 2, 3)).sqrt().mean()     # ~0.42
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        d_small = model(x0, 0.002)
        d_large = {s: model(x0 + s * torch.randn(x0.shape, generator=g), s) for s in (10.0, 80.0)}
    assert (d_small - x0).abs().max() < 0.02
    # E[x0 | x] -> E[x0] as sigma -> inf: outputs collapse onto the mean training image
    # (measured: 0.08 at sigma 10; 0.18 at sigma 80, where EDM's ln-normal sigma density barely trains)
    for s, d in d_large.items():
        assert (d - mean).square().mean(dim=(1, 2, 3)).sqrt().mean() < 0.5 * spread, s


@pytest.mark.parametrize("sigma", [3.0, 5.0])
def test_denoiser_matches_exact_posterior_mean_of_training_set(model, split, sigma):
    # reference: for the empirical training distribution, E[x0 | x] = sum_i softmax(-|x - x_i|^2 / 2 s^2) x_i;
    # at moderate sigma a generalising model agrees with it (at small sigma it would snap to x_i)
    X = split.train_x.flatten(1).double()
    x0 = split.test_x[:96]
    x = x0 + sigma * torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    w = torch.softmax(-torch.cdist(x.flatten(1).double(), X) ** 2 / (2 * sigma ** 2), dim=1)
    exact = w @ X
    with torch.no_grad():
        d = model(x, sigma).flatten(1).double()
    err = (d - exact).square().mean(1).sqrt().mean()
    assert err < 0.1
    assert err < 0.35 * (exact - X.mean(0)).square().mean(1).sqrt().mean()    # measured 0.24 and 0.25 of it


def test_reference_samples_are_confident_digits(model, tmp_path, monkeypatch):
    monkeypatch.setattr(im, "CACHE", tmp_path)
    x = im.reference_samples(model, 40, seed=5, steps=18)           # Heun, 35 NFE
    probs, _ = im.classify(x)
    assert im.confidence(probs) > 0.85
    assert len(set(probs.argmax(1).tolist())) >= 7                    # not one class
    assert x.min() >= -1.5 and x.max() <= 1.5                         # the data range, roughly
    again = im.reference_samples(model, 40, seed=5, steps=18)         # cached on disk
    assert torch.equal(x, again) and len(list(tmp_path.rglob("*.safetensors"))) == 1


def test_missing_and_corrupt_checkpoints_raise_clear_errors(tmp_path):
    from core.models.digits import load_unet_checkpoint
    from core.models.registry import load_model
    with pytest.raises(ScheduleLabError, match="not found"):
        load_unet_checkpoint(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ScheduleLabError, match="corrupt"):
        load_model(str(bad))
    with pytest.raises(ScheduleLabError, match="unknown model"):
        load_model("no-such-model")


def test_training_script_is_reproducible_and_writes_a_loadable_checkpoint(tmp_path):
    from core.models.registry import load_model
    from core.train.images import train_digits
    kw = dict(steps=4, seed=3, channels=(8, 16), emb=16, batch=8, warmup=2, log_every=2)
    a = train_digits(tmp_path / "a.safetensors", **kw)
    b = train_digits(tmp_path / "b.safetensors", **kw)
    assert a["steps"] == 4 and a["finished"] and [r[0] for r in a["loss_curve"]] == [2, 4]
    assert (a["max_steps"], a["budget_minutes"]) == (4, None)          # the caps, for the card's command
    ma, mb = load_model(str(tmp_path / "a.safetensors")), load_model(str(tmp_path / "b.safetensors"))
    assert ma.net.config["channels"] == [8, 16]
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(va, vb), k                                   # same seed -> same weights
    x = torch.randn(3, 1, 16, 16)
    assert ma(x, 1.0).shape == x.shape
    with pytest.raises(ScheduleLabError):
        train_digits(tmp_path / "c.safetensors", steps=2, learning_rate=1.0)


def test_flow_card_names_the_command_and_the_contention_from_the_record():
    from core.train.flow_card import _command, _contention
    rec = {"steps": 4100, "max_steps": 5000, "budget_minutes": 44, "threads": 1, "finished": True}
    assert _command(rec) == "python -m core train-images digits-flow --steps 5000 --minutes 44 --threads 1"
    assert "budget" in _contention(rec, 0.95) and "to itself" in _contention(rec, 0.95)
    assert "shared" in _contention(rec, 0.3)
    old = {"steps": 1574, "threads": 1, "finished": True}                # a record from before the caps
    assert _command(old) == "python -m core train-images digits-flow --steps 1574 --threads 1"
    assert "step cap" in _contention(old, 0.9) and "budget" not in _contention(old, 0.9)


def test_to_uint8_and_save_grid(tmp_path):
    from PIL import Image

    from core.images_io import grid, save_grid, to_uint8
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 2, 2)
    assert to_uint8(x).reshape(-1).tolist() == [0, 128, 255, 255]
    mm = to_uint8(torch.stack([x[0] * 0.1, x[0] + 5]), normalise="minmax")
    assert mm[0].min() == 0 and mm[0].max() == 255 and mm[1].min() == 0 and mm[1].max() == 255
    g = grid(torch.zeros(5, 1, 16, 16), nrow=3, pad=1)
    assert g.shape == (2 * 17 + 1, 3 * 17 + 1, 1)
    p = save_grid(torch.zeros(5, 1, 16, 16), tmp_path / "g.png", nrow=3, scale=2)
    assert Image.open(p).size == (2 * (3 * 17 + 1), 2 * (2 * 17 + 1))
    with pytest.raises(ScheduleLabError, match="NaN"):
        to_uint8(torch.full((1, 1, 2, 2), float("nan")))
    with pytest.raises(ScheduleLabError):
        to_uint8(x, normalise="sigmoid")


def test_cli_images_writes_png_and_json(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from core.cli import main
    monkeypatch.setattr(im, "CACHE", tmp_path)
    monkeypatch.setitem(im.REFERENCE, "steps", 15)
    out = tmp_path / "grid.png"
    rc = main(["images", "--model", "digits", "--schedule", "karras", "--steps", "5", "--solver", "dpmpp_2m",
               "--n", "16", "--seed", "2", "--out", str(out), "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert r["nfe"] == 5 and r["n"] == 16 and len(r["sigmas"]) == 6
    for k in ("fd", "kid", "confidence", "ref_error", "seconds"):
        assert isinstance(r[k], float) and np.isfinite(r[k])
    assert len(r["class_balance"]) == 10 and sum(r["class_balance"]) == pytest.approx(1)
    img = Image.open(out)
    assert img.size == (4 * (4 * 17 + 1),) * 2 and img.mode == "L"


def test_cli_models_and_bad_input(capsys):
    from core.cli import main
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert any(r["name"] == "digits" and r["available"] for r in rows)
    assert main(["images", "--model", "digits", "--schedule", "karras", "--steps", "5",
                 "--solver", "nope", "--n", "4"]) == 2
    assert "solver" in capsys.readouterr().err
    assert main(["images", "--model", "digits", "--schedule", "karras", "--steps", "5",
                 "--solver", "euler", "--out", "x.jpg"]) == 2


def test_registry_resolvers_dispatch_and_filter_options(monkeypatch):
    from core.models import registry
    monkeypatch.setattr(registry, "RESOLVERS", dict(registry.RESOLVERS))
    registry.register_resolver("probe", lambda s, o: s.startswith("probe:"), lambda s, d, **kw: (s, d, kw),
                               "probe:NAME", options=("weights",), first=True)      # before `module`'s "a:b"
    assert list(registry.RESOLVERS)[0] == "probe"
    assert registry.load_model("probe:x", weights="w.pt", params={"a": 1}) == ("probe:x", "cpu", {"weights": "w.pt"})
    assert registry.load_model("digits") is registry.load_model("digits")        # shipped models are cached
    assert "digits" in registry.model_names()


TINY = '''
import torch

class Tiny(torch.nn.Module):
    """x0-predictor returning zeros: D = 0, so every ODE sample is exactly 0 (a property to check)."""
    schedule_lab = {"parametrization": "x0", "process": "edm", "time_input": "continuous", "shape": "1,4,4",
                    "input_scaling": "none"}

    def __init__(self, hidden=2):
        super().__init__()
        self.lin = torch.nn.Linear(hidden, hidden)

    def forward(self, x, t):
        return torch.zeros_like(x)
'''


def test_cli_images_with_a_module_spec(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from core.cli import main
    monkeypatch.setattr(im, "CACHE", tmp_path)
    (tmp_path / "tiny.py").write_text(TINY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    torch.save(importlib.import_module("tiny").Tiny(hidden=3).state_dict(), tmp_path / "w.pt")
    out = tmp_path / "t.png"
    rc = main(["images", "--model", f"{tmp_path / 'tiny.py'}:Tiny", "--weights", str(tmp_path / "w.pt"),
               "--param", "hidden=3", "--schedule", "karras", "--steps", "3", "--solver", "euler", "--n", "4",
               "--out", str(out), "--json"])
    assert rc == 0, capsys.readouterr().err
    r = json.loads(capsys.readouterr().out)
    assert r["nfe"] == 3 and r["fd"] is None and r["confidence"] is None      # digit metrics: digits only
    assert r["ref_error"] < 1e-6                                              # D = 0: both samples are 0
    assert Image.open(out).size == (4 * (2 * 5 + 1),) * 2


@pytest.mark.parametrize("name", ["digits", "digits-flow"])
def test_train_images_cli_trains_each_model_to_its_out_with_its_caps(tmp_path, name, capsys):
    import json

    from core.cli import main
    from core.models.checkpoints import read_metadata
    out = tmp_path / f"{name}.safetensors"
    assert main(["train-images", name, "--steps", "2", "--batch", "4", "--out", str(out), "--json",
                 "--threads", "1"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["path"] == str(out) and rec["steps"] == 2 and "loss_curve" not in rec
    tr = read_metadata(out)["training"]
    assert tr["max_steps"] == 2 and tr["options"]["batch"] == 4
    assert main(["train-images", "digitz", "--steps", "1"]) != 0
    assert "unknown image model 'digitz'" in capsys.readouterr().err
