"""Optimizers on image models: where their data comes from (`core.models.registry.model_data`) and
the score-optimal command on an image model, checked against the Gaussian closed form
Lambda(s) = 2 sqrt(d) (asinh(s / c) - s / sqrt(c^2 + s^2)) (methods.md s.6) through the full
user-model path (module.py:Class, eps prediction, EDM process, data from an .npz)."""
import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from core.cli import main
from core.errors import ScheduleLabError
from core.models.registry import load_model, model_data
from core.schedules import make_schedule

C, SHAPE = 0.5, (1, 4, 4)
D = int(np.prod(SHAPE))
MODULE = '''
import torch


class GaussEps(torch.nn.Module):
    """E[eps | x] = s x / (c^2 + s^2) for x0 ~ N(0, c^2 I) under x = x0 + s eps (t = s)."""

    def __init__(self, c=0.5):
        super().__init__()
        self.register_buffer("c", torch.tensor(float(c)))

    def forward(self, x, t):
        s = t.reshape(-1, *([1] * (x.ndim - 1)))
        return s * x / (self.c ** 2 + s ** 2)
'''
PARAMS = ["parametrization=eps", "process=edm", "time_input=continuous", "shape=1x4x4", "sigma_min=0.002",
          "sigma_max=80", "name=gauss"]


@pytest.fixture
def gauss_spec(tmp_path):
    f = tmp_path / "gauss_eps.py"
    f.write_text(MODULE)
    return f"{f}:GaussEps"


def _lambda(s):
    return 2 * math.sqrt(D) * (math.asinh(s / C) - s / math.sqrt(C ** 2 + s ** 2))


def test_model_data_prefers_given_data_then_the_shipped_split_then_own_cached_samples(gauss_spec, tmp_path):
    digits = load_model("digits")
    split = model_data("digits", digits)
    assert not split.generated and "training split" in split.source and split.images.shape[1:] == (1, 16, 16)
    params = dict(p.split("=", 1) for p in PARAMS)
    model = load_model(gauss_spec, params=params)
    np.savez(tmp_path / "d.npz", x=np.zeros((7, *SHAPE), np.float32))
    given = model_data(gauss_spec, model, tmp_path / "d.npz")
    assert not given.generated and len(given) == 7
    own = model_data(gauss_spec, model, None, cache_dir=tmp_path / "cache", n=128, steps=24, solver="heun")
    assert own.generated and own.cache_path.is_file() and "model samples" in own.source
    assert own.images.std().item() == pytest.approx(C, rel=0.1)     # Heun samples of the exact model


def test_score_optimal_cli_on_an_image_model_matches_the_closed_form(gauss_spec, tmp_path, capsys):
    x = C * np.random.default_rng(0).standard_normal((2000, *SHAPE)).astype(np.float32)
    np.savez(tmp_path / "data.npz", images=x)
    out = tmp_path / "s.json"
    args = ["optimize", "score-optimal", "--model", gauss_spec, "--data", str(tmp_path / "data.npz"),
            "--steps", "6", "--levels", "200", "--n", "256", "--out", str(out), "--json"]
    for p in PARAMS:
        args += ["--param", p]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["solver"] == "heun" and res["data"].endswith("data.npz")
    sig = np.asarray(res["sigmas"][:-1])
    hi, lo = _lambda(80.0), _lambda(0.002)
    exact = [brentq(lambda s: _lambda(s) - t, 1e-4, 200.0) for t in hi - np.arange(6) / 5 * (hi - lo)]
    assert np.allclose(np.log(sig), np.log(exact), atol=0.05), (sig, exact)
    assert json.loads(out.read_text())["sigmas"] == res["sigmas"]


def test_score_optimal_cli_on_digits_says_where_its_data_came_from(tmp_path, capsys):
    out = tmp_path / "d.json"
    assert main(["optimize", "score-optimal", "--model", "digits", "--steps", "4", "--levels", "16", "--n", "4",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "data: digits training split" in err
    s = json.loads(out.read_text())
    assert len(s["sigmas"]) == 5 and s["solver"] == "heun" and s["params"]["model"] == "digits"


def test_score_optimal_cli_needs_a_toy_or_a_model(capsys):
    assert main(["optimize", "score-optimal", "--steps", "4", "--out", "x.json"]) == 2
    assert "--toy" in capsys.readouterr().err
    assert main(["optimize", "score-optimal", "--toy", "moons", "--model", "digits", "--steps", "4",
                 "--out", "x.json"]) == 2


# ---- Align Your Steps on image models -----------------------------------------------------------
def _klub_gauss(sig, c=0.5, d=D):
    """Total KLUB of the levels sig (sigma_max .. sigma_min) for N(0, c^2 I_d) data: sum_i Z(s_{i+1}, s_i) d c^4
    (methods.md s.4: D(x, s) = c^2 x / (c^2 + s^2) makes the Monte Carlo ratio exactly d c^4)."""
    G = lambda s: -1 / (2 * c * c * s * s) - np.log(s) / c ** 4 + np.log(s * s + c * c) / (2 * c ** 4)  # noqa: E731
    Z = lambda a, b: G(b) - G(a) - (1 / (b * b + c * c)) * (1 / (2 * a * a) - 1 / (2 * b * b))      # noqa: E731
    return sum(Z(sig[i + 1], sig[i]) for i in range(len(sig) - 1)) * d * c ** 4


def test_ays_cli_on_an_image_model_reaches_the_closed_form_klub_minimum(gauss_spec, tmp_path, capsys):
    from scipy.optimize import minimize
    x = C * np.random.default_rng(0).standard_normal((2000, *SHAPE)).astype(np.float32)
    np.savez(tmp_path / "data.npz", images=x)
    out = tmp_path / "ays.json"
    args = ["optimize", "ays", "--model", gauss_spec, "--data", str(tmp_path / "data.npz"), "--steps", "6",
            "--stages", "6", "--samples", "2048", "--max-iters", "15", "--heldout", "none", "--quiet",
            "--out", str(out), "--json"]
    for p in PARAMS:
        args += ["--param", p]
    assert main(args) == 0
    got = json.loads(capsys.readouterr().out)["sigmas"][:-1]
    start = [float(v) for v in make_schedule("karras", 6, 0.002, 80.0).sigmas[:-1]]
    best = minimize(lambda u: _klub_gauss([80.0, *np.exp(u), 0.002]), np.log(start[1:-1]), method="Nelder-Mead",
                    options={"maxiter": 20000, "xatol": 1e-10, "fatol": 1e-10}).fun
    assert _klub_gauss(got) < 1.25 * best < 0.1 * _klub_gauss(start), (_klub_gauss(got), best)


def test_ays_cli_on_digits_stops_early_on_fd_to_the_training_split_and_resumes(tmp_path, capsys):
    out = tmp_path / "a.json"
    args = ["optimize", "ays", "--model", "digits", "--steps", "4", "--stages", "4,8", "--samples", "8",
            "--max-iters", "2,1", "--heldout-n", "50", "--quiet", "--out", str(out), "--json"]
    assert main(args) == 0
    cap = capsys.readouterr()
    assert "data: digits training split" in cap.err
    res = json.loads(cap.out)
    assert res["steps"] == 4 and res["heldout"] is not None and math.isfinite(res["heldout"])
    state = tmp_path / "a.state.json"
    assert state.is_file()
    assert main(args + ["--resume", str(state)]) == 0                  # a finished run resumes to the same result
    again = json.loads(capsys.readouterr().out)
    assert again["sigmas"] == res["sigmas"] and again["resumed"]


def test_ays_cli_heldout_choices_fit_the_model(gauss_spec, capsys):
    assert main(["optimize", "ays", "--toy", "moons", "--heldout", "fd", "--out", "x.json"]) == 2
    args = ["optimize", "ays", "--model", gauss_spec, "--heldout", "fd", "--out", "x.json"]
    for p in PARAMS:
        args += ["--param", p]
    assert main(args) == 2
    assert "digits classifier" in capsys.readouterr().err
    assert main(["optimize", "ays", "--out", "x.json"]) == 2


def test_shipped_ays_schedules_exact_stages_resampled_otherwise(tmp_path, monkeypatch):
    import dataclasses

    import core.models.registry as reg
    from core.schedules import resample_loglinear
    meta = json.loads(reg.MODELS["digits"].schedules.read_text())
    for n in (10, 20, 40):
        s = reg.shipped_schedule("digits", n)
        assert s.sigmas == tuple(meta["stages"][str(n)]) and s.steps == n
    six = reg.shipped_schedule("digits", 6)                       # nearest stage (10), log-linear resampling
    assert six.sigmas == resample_loglinear(reg.shipped_schedule("digits", 10), 6).sigmas and six.steps == 6
    assert reg.shipped_schedule("some/folder", 10) is None
    bad = tmp_path / "ays.json"
    bad.write_text("{not json")
    monkeypatch.setitem(reg.MODELS, "digits", dataclasses.replace(reg.MODELS["digits"], schedules=bad))
    with pytest.raises(ScheduleLabError, match="not a valid schedule file"):
        reg.shipped_schedule("digits", 10)
