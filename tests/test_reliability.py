"""Issue 13's case list, one test per case: each bad input or broken model stops with
ScheduleLabError (CLI: exit 2, one line) whose message names the problem; no NaN is reported as
a number; caches never hand back another model's or a failed result; resume never loses or mixes
work.  (Reader fuzzing: tests/test_fuzz_readers.py.)"""
from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch

from core.cli import main
from core.errors import ScheduleLabError
from core.models import MixtureDenoiser
from core.models.base import Denoiser
from core.schedules import Schedule, make_schedule, parse
from toy_data import get_toy
from toy_data.mixture import GaussianMixture

pytestmark = pytest.mark.usefixtures("one_thread")


def cli(capsys, *args):
    """Run `python -m core ARGS` in-process -> (exit code, stdout, stderr)."""
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


class HalfNaN(Denoiser):
    """The exact grid8x8 denoiser, but NaN wherever x[:, 0] > 0 (a model broken for some inputs)."""
    name, event_shape = "halfnan", (2,)

    def __init__(self):
        super().__init__()
        self.inner = MixtureDenoiser(get_toy("gaussian"))

    def denoise(self, x, sigma):
        out = self.inner(x, sigma)
        return torch.where(x[:, :1] > 0, torch.full_like(out, math.nan), out)


NET = textwrap.dedent("""
    import torch
    class Net(torch.nn.Module):
        def __init__(self, ch=1, nan=False):
            super().__init__()
            self.conv, self.nan = torch.nn.Conv2d(ch, ch, 3, padding=1), nan
        def forward(self, x, t):
            y = self.conv(x)
            return torch.where(x > 0, y * float("nan"), y) if self.nan else y
""")
IMG = ("--param", "shape=1,4,4", "--param", "parametrization=eps", "--param", "process=discrete")


@pytest.fixture()
def net(tmp_path):
    (tmp_path / "net.py").write_text(NET)
    import importlib.util
    spec = importlib.util.spec_from_file_location("relnet", tmp_path / "net.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    torch.save(mod.Net().state_dict(), tmp_path / "w.pt")
    torch.save(mod.Net(ch=2).state_dict(), tmp_path / "w2.pt")
    return tmp_path


def wrapped(net_dir, parametrization="eps", nan=False):
    from core.models.user_model import load_user_model
    return load_user_model(f"{net_dir / 'net.py'}:Net", weights=net_dir / "w.pt",
                           params={"shape": "1,4,4", "parametrization": parametrization,
                                   "process": "discrete", "nan": nan})


# ---- 1. NaN and inf never pass as results ----------------------------------------------------
def test_generate_stops_at_the_first_nan_naming_step_and_sigma():
    from core.sampling import generate
    with pytest.raises(ScheduleLabError, match=r"halfnan returned NaN or inf for \d+ of 2000 samples at step 0 "
                                               r"of 6 \(sigma = 80"):
        generate(HalfNaN(), make_schedule("karras", 6), 2000, "euler")


def test_klub_curves_refuse_a_nan_total():
    from core.objectives.klub import klub_curves
    with pytest.raises(ScheduleLabError, match=r"halfnan returned NaN or inf in the KLUB estimate: interval \d"):
        klub_curves(HalfNaN(), get_toy("gaussian").sample, make_schedule("karras", 5), n_samples=64)


def test_ays_with_a_nan_objective_stops_instead_of_converging():
    from core.optimizers.ays import AYSOptimizer
    opt = AYSOptimizer(HalfNaN(), get_toy("gaussian").sample, steps=4, stages=(4,), n_samples=64, heldout=None)
    with pytest.raises(ScheduleLabError, match="NaN or inf in the KLUB estimate"):
        list(opt.events())


def test_ays_with_an_inf_heldout_stops_instead_of_converging():
    from core.optimizers.ays import AYSOptimizer
    mix = get_toy("gaussian")
    opt = AYSOptimizer(MixtureDenoiser(mix), mix.sample, steps=4, stages=(4,), n_samples=64,
                       heldout_fn=lambda s: math.inf)
    with pytest.raises(ScheduleLabError, match=r"AYS iteration 0 \(stage 0, 4 steps\): the held-out metric "
                                               r"custom is inf"):
        list(opt.events())


def test_ays_keeps_running_when_a_declared_guard_rejects_a_sweep_with_inf():
    """+inf is "never keep this sweep" only from a metric that says so (tune's collapse guard); the run goes
    on, and no rejected sweep becomes the best one."""
    from core.optimizers.ays import AYSOptimizer
    mix = get_toy("gaussian")
    calls = []

    class Guard:
        inf_rejects = True

        def __call__(self, s):
            calls.append(s)
            return 1.0 if len(calls) == 1 else math.inf        # the start is fine, every later sweep rejected

    opt = AYSOptimizer(MixtureDenoiser(mix), mix.sample, steps=4, stages=(4,), n_samples=64, max_iters=3,
                       patience=2, heldout_fn=Guard(), significance=0.0)
    evs = list(opt.events())
    assert len(calls) >= 2 and evs[-1].done
    assert opt.finest().sigmas == calls[0].sigmas                # the kept schedule is the only accepted one


def test_images_with_a_nan_model_exits_nonzero_instead_of_printing_ref_error_nan(capsys, net):
    rc, out, err = cli(capsys, "images", "--model", f"{net / 'net.py'}:Net", "--weights", net / "w.pt", *IMG,
                       "--param", "nan=true", "--schedule", "karras", "--steps", 3, "--solver", "euler",
                       "--n", 4, "--no-metrics")
    assert rc == 2 and "returned NaN or inf" in err and "sigma =" in err and "nan" not in out


def test_curves_truncation_with_huge_p_exits_nonzero(capsys):
    rc, out, err = cli(capsys, "curves", "truncation", "--schedule", "karras", "--steps", 10, "--p", 1e6)
    assert rc == 2 and "--p must be in [0, 16]" in err and out == ""
    from core.objectives.truncation import truncation_curve
    with pytest.raises(ScheduleLabError, match="p .*must be a number in"):
        truncation_curve(make_schedule("karras", 10), p=1e6)


# ---- 2. caches keyed on everything; nothing non-finite stored ----------------------------------
def test_reference_cache_separates_eps_and_v_wrappings_of_the_same_weights(net, tmp_path, monkeypatch):
    from core.metrics import images as im
    monkeypatch.setattr(im, "CACHE", tmp_path / "cache")
    eps, v = wrapped(net, "eps"), wrapped(net, "v")
    assert im.model_fingerprint(eps) == im.model_fingerprint(v)          # same weights ...
    r_eps = im.reference_samples(eps, 4, steps=3)
    r_v = im.reference_samples(v, 4, steps=3)
    assert len(list((tmp_path / "cache" / "reference").glob("*.safetensors"))) == 2   # ... two entries
    assert not torch.allclose(r_eps, r_v)
    torch.testing.assert_close(im.reference_samples(v, 4, steps=3), r_v)  # a hit returns its own entry


def test_a_nan_reference_is_never_cached(net, tmp_path, monkeypatch):
    from core.metrics import images as im
    monkeypatch.setattr(im, "CACHE", tmp_path / "cache")
    with pytest.raises(ScheduleLabError, match="returned NaN or inf"):
        im.reference_samples(wrapped(net, nan=True), 4, steps=3)
    assert not list((tmp_path / "cache").rglob("*.safetensors"))
    assert torch.isfinite(im.reference_samples(wrapped(net), 4, steps=3)).all()   # fixed model: fresh


def test_nan_model_samples_are_never_cached(net, tmp_path):
    from core.models.user_model import image_sampler_from
    with pytest.raises(ScheduleLabError, match="returned NaN or inf"):
        image_sampler_from(None, wrapped(net, nan=True), tmp_path / "samples", n=4, steps=3)
    assert not list((tmp_path / "samples").glob("*.npz"))
    ok = image_sampler_from(None, wrapped(net), tmp_path / "samples", n=4, steps=3)
    assert ok.cache_path.is_file() and torch.isfinite(ok.images).all()


def test_cache_list_and_clear(capsys, tmp_path, monkeypatch):
    import core.cache as kc
    monkeypatch.setattr(kc, "CACHE_ROOT", tmp_path)
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "a.safetensors").write_bytes(b"x" * 10)
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "b.npz").write_bytes(b"y" * 5)
    rc, out, _ = cli(capsys, "cache", "list", "--json")
    assert rc == 0 and json.loads(out)["bytes"] == 15 and len(json.loads(out)["files"]) == 2
    rc, out, _ = cli(capsys, "cache", "clear", "--kind", "reference")
    assert rc == 0 and "removed 1" in out and kc.entries() == [kc.entries()[0]] and kc.entries()[0]["kind"] == "samples"


# ---- 3. parsers raise only the clear error -----------------------------------------------------
@pytest.mark.parametrize("doc, problem", [
    ({"sigmas": [10, 1, 0], "params": "a"}, "'params' must be a JSON object"),
    ({"sigmas": 5}, "'sigmas' must be a list of numbers"),
    ({"sigmas": [10, 1, 0], "params": True}, "'params' must be a JSON object"),
    ({"sigmas": [10, "x", 0]}, "'sigmas'[1] must be a number"),
    ({"sigmas": [10 ** 400, 1, 0]}, "beyond the float range"),
    ({"sigmas": [10, 1, 0], "name": 7}, "'name' must be a string"),
    ({"sigmas": [10, 1, 0], "steps": 5}, "'steps' is 5 but 'sigmas' has 3 levels"),
])
def test_schedule_json_fields_are_checked(doc, problem):
    with pytest.raises(ScheduleLabError, match=None) as e:
        Schedule.from_dict(doc)
    assert problem in str(e.value)
    if "params" in doc or not isinstance(doc["sigmas"], list):  # the crashes, pasted as text too
        with pytest.raises(ScheduleLabError):
            parse(json.dumps(doc))


def test_mixture_covariances_beyond_float_range(tmp_path):
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"weights": [1.0], "means": [[0, 0]], "covariances": [[[10 ** 400, 0], [0, 1]]]}))
    with pytest.raises(ScheduleLabError, match=r"'covariances'\[0\]\[0\]\[0\] = an integer of about 401 digits "
                                               r"is beyond the float range"):
        GaussianMixture.from_json(f)


def test_a_5000_digit_number_is_refused(tmp_path):
    text = '{"sigmas": [' + "1" * 5000 + ", 0]}"
    (tmp_path / "s.json").write_text(text)
    with pytest.raises(ScheduleLabError, match="a number in the JSON has 5000 characters"):
        Schedule.load(tmp_path / "s.json")
    with pytest.raises(ScheduleLabError):
        parse(text)


def test_100k_deep_nesting_is_refused(tmp_path):
    f = tmp_path / "deep.json"
    f.write_text('{"sigmas": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ScheduleLabError, match="nested too deeply"):
        Schedule.load(f)


@pytest.mark.parametrize("reader", ["schedule", "mixture", "state"])
def test_a_binary_file_is_refused(tmp_path, reader):
    from core.optimizers.base import Optimizer
    f = tmp_path / "bin.json"
    f.write_bytes(bytes(range(128, 256)) * 8)
    fn = {"schedule": Schedule.load, "mixture": GaussianMixture.from_json, "state": Optimizer.read_state}[reader]
    with pytest.raises(ScheduleLabError, match="is not UTF-8 text"):
        fn(f)


def test_schedules_page_import_of_deep_json_shows_an_error():
    from app_helpers import open_page
    page = open_page("schedules")
    page.text_area(key="sc_import_text").input('{"sigmas": ' + "[" * 5000 + "]" * 5000 + "}")
    page.button(key="sc_import_btn").click().run()
    assert not page.exception and "nest" in page.error[0].value       # "nests deeper than ..." 


# ---- 4. CLI values checked before any work ----------------------------------------------------
@pytest.mark.parametrize("args, problem", [
    (("schedule", "karras", "--steps", 5, "--param", "rho=abc"), "parameter rho must be a number; got 'abc'"),
    (("schedule", "karras", "--steps", 5, "--param", "rho=0"), "parameter rho = 0 is out of range"),
    (("schedule", "karras", "--steps", 5, "--sigma-max", "inf"), "--sigma-max must be a finite number > 0; got inf"),
    (("sample", "--toy", "gaussian", "--schedule", "karras", "--steps", 4, "--solver", "euler",
      "--seed", "99999999999999999999"), "--seed must be an integer in [0, "),
    (("sample", "--toy", "gaussian", "--schedule", "karras", "--steps", 4, "--solver", "euler",
      "--device", "banana"), "unknown device 'banana'"),
    (("optimize", "nonuniform", "--steps", 2, "--out", "x.json"), "needs steps >= 3"),
    (("images", "--schedule", "karras", "--steps", 4, "--solver", "euler", "--nrow", -3), "--nrow must be an integer in [1,"),
    (("images", "--schedule", "karras", "--steps", 4, "--solver", "euler", "--scale", 100000), "--scale must be an integer in [1, 64]"),
    (("sample", "--toy", "gaussian", "--schedule", "karras", "--steps", 4, "--solver", "euler",
      "--n", 10 ** 12), "SCHEDULE_LAB_MAX_MEMORY_GB"),
    (("curves", "klub", "--toy", "gaussian", "--schedule", "karras", "--steps", 4, "--samples", 10 ** 11),
     "--samples 100,000,000,000 is more than this machine can hold"),
    (("sample", "--toy", "gaussian", "--schedule", "karras", "--steps", 10 ** 6, "--solver", "euler"),
     "SCHEDULE_LAB_MAX_STEPS"),
    (("sample", "--toy", "gaussian", "--schedule", "karras", "--steps", 4, "--solver", "euler", "--seeds", 100000),
     "SCHEDULE_LAB_MAX_SEEDS"),
])
def test_bad_cli_values_exit_2_naming_the_value(capsys, args, problem):
    rc, out, err = cli(capsys, *args)
    assert rc == 2 and problem in err and err.count("\n") == 1, err


def test_device_cuda_without_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    rc, _, err = cli(capsys, "schedule", "karras", "--steps", 3)          # sanity: works
    rc, _, err = cli(capsys, "sample", "--toy", "gaussian", "--schedule", "karras", "--steps", 4, "--solver",
                     "euler", "--device", "cuda")
    assert rc == 2 and "needs CUDA, which this machine does not have" in err


def test_nonuniform_at_nfe_2_is_a_clear_error_for_the_images_page_too():
    from core.optimizers.nonuniform import optimize_nonuniform
    with pytest.raises(ScheduleLabError, match="needs steps >= 3"):
        optimize_nonuniform(2, 0.002, 80.0)


@pytest.mark.parametrize("case, problem", [
    ("empty", "is empty (0 bytes)"),
    ("shape", "failed on a batch of shape [4, 1, 8]"),
    ("data_range", "bad data_range 1"),
    ("mismatch", "conv.weight: checkpoint (2, 2, 3, 3) vs module (1, 1, 3, 3)"),
])
def test_user_model_problems_are_named(capsys, net, case, problem):
    (net / "empty.pt").write_bytes(b"")
    weights = {"empty": net / "empty.pt", "mismatch": net / "w2.pt"}.get(case, net / "w.pt")
    extra = {"shape": ("--param", "shape=1,8"), "data_range": ("--param", "data_range=1")}.get(case, ())
    rc, _, err = cli(capsys, "images", "--model", f"{net / 'net.py'}:Net", "--weights", weights, *IMG, *extra,
                     "--schedule", "karras", "--steps", 3, "--solver", "euler", "--n", 4, "--no-metrics")
    assert rc == 2 and problem in err, err


def test_diffusers_folder_without_configs_names_the_missing_files(capsys, tmp_path):
    (tmp_path / "unet").mkdir()
    rc, _, err = cli(capsys, "images", "--model", tmp_path, "--schedule", "karras", "--steps", 3,
                     "--solver", "euler", "--n", 4)
    assert rc == 2 and "unet/config.json and scheduler/scheduler_config.json" in err


# ---- 5. --out / --state fail at once; resume cannot lose or mix work -----------------------------
AYS = ("optimize", "ays", "--steps", 4, "--stages", 4, "--samples", 64, "--heldout-n", 64, "--max-iters", 2,
       "--quiet", "--threads", 1)


@pytest.mark.parametrize("where", ["dir", "missing"])
def test_ays_out_is_checked_before_the_run(capsys, tmp_path, where):
    out = tmp_path if where == "dir" else tmp_path / "nope" / "s.json"
    rc, _, err = cli(capsys, *AYS, "--toy", "gaussian", "--out", out)
    assert rc == 2 and ("is a folder" if where == "dir" else "does not exist; create it first") in err
    assert not list(tmp_path.rglob("*.state.json"))


def _iteration(path):
    return json.loads(path.read_text())["iteration"]


def test_an_existing_state_is_not_overwritten_without_resume_or_force(capsys, tmp_path):
    out, state = tmp_path / "s.json", tmp_path / "s.state.json"
    assert cli(capsys, *AYS, "--toy", "gaussian", "--out", out)[0] == 0
    before = state.read_text()
    rc, _, err = cli(capsys, *AYS, "--toy", "gaussian", "--out", out)
    assert rc == 2 and "already exists; continue it with --resume" in err and state.read_text() == before
    rc, _, err = cli(capsys, *AYS, "--toy", "gaussian", "--out", out, "--force")
    assert rc == 0 and (tmp_path / "s.state.json.bak").read_text() == before


def _state_for(capsys, tmp_path, toy="gaussian"):
    out = tmp_path / "s.json"
    assert cli(capsys, *AYS, "--toy", toy, "--out", out)[0] == 0
    return out, tmp_path / "s.state.json"


def test_a_state_without_config_is_refused(capsys, tmp_path):
    out, state = _state_for(capsys, tmp_path)
    d = json.loads(state.read_text())
    del d["config"]
    state.write_text(json.dumps(d))
    rc, _, err = cli(capsys, *AYS, "--toy", "gaussian", "--out", out, "--resume", state)
    assert rc == 2 and "records no settings ('config')" in err


def test_a_different_mixture_file_named_like_the_toy_does_not_resume_its_state(capsys, tmp_path):
    out, state = _state_for(capsys, tmp_path, "grid8x8")
    d = get_toy("grid8x8").to_dict()
    d["covariances"] = (torch.tensor(d["covariances"]) * 4).tolist()         # other data, same name
    (tmp_path / "impostor.json").write_text(json.dumps(d))
    assert json.loads((tmp_path / "impostor.json").read_text())["name"] == "grid8x8"
    before = state.read_text()
    rc, _, err = cli(capsys, *AYS, "--toy", tmp_path / "impostor.json", "--out", out, "--resume", state)
    assert rc == 2 and "was made with data = 'mixture:" in err and state.read_text() == before


@pytest.mark.parametrize("field, value, problem", [
    ("history", 5, "'history' must be a list"),
    ("history", [{"iteration": "a"}], "'history'[0]['iteration'] must be an integer"),
    ("best", "x", "'best' must be a JSON object"),
    ("best", {"heldout": "x", "levels": [1, 0.5], "iteration": 0}, "'best'['heldout'] must be a number"),
])
def test_history_or_best_of_the_wrong_type_is_a_clear_error(capsys, tmp_path, field, value, problem):
    out, state = _state_for(capsys, tmp_path)
    d = json.loads(state.read_text())
    d[field] = value
    state.write_text(json.dumps(d))
    rc, _, err = cli(capsys, *AYS, "--toy", "gaussian", "--out", out, "--resume", state)
    assert rc == 2 and problem in err, err


def test_changed_knobs_on_resume_are_refused_and_listed():
    """The engine side of the app's Resume: a state made with other settings is refused by load_state_dict,
    and changed_settings lists every differing knob (what the page shows)."""
    from core.optimizers.ays import CONFIG_KEYS, AYSOptimizer
    from core.optimizers.resume import changed_settings
    mix = get_toy("gaussian")
    kw = dict(steps=4, stages=(4,), n_samples=64, heldout=None, mixture=mix)
    a = AYSOptimizer(MixtureDenoiser(mix), mix.sample, max_iters=1, **kw)
    list(a.events())
    b = AYSOptimizer(MixtureDenoiser(mix), mix.sample, max_iters=1, **{**kw, "n_samples": 128})
    assert changed_settings(a.state_dict(), b.config(), CONFIG_KEYS) == ["n_samples"]
    with pytest.raises(ScheduleLabError, match="made with n_samples = 64, this run has 128"):
        b.load_state_dict(a.state_dict())


# ---- 7. misleading messages ------------------------------------------------------------------
def test_sigma_max_inf_is_named_in_the_engine_too():
    with pytest.raises(ScheduleLabError, match="sigma_max must be a finite number; got inf"):
        make_schedule("karras", 5, 0.002, math.inf)


def test_app_resume_with_a_changed_knob_is_refused_visibly(monkeypatch):
    from app_helpers import open_page
    from run_helpers import Gate, start_and_stop
    gate = Gate(monkeypatch, lambda ev: ev.iteration >= 1)          # hold the worker after its first sweep
    knobs = {"opt_method": "ays", "opt_steps": 5, "opt_stages": 1, "opt_n_samples": 128, "opt_n_candidates": 4,
             "opt_max_iters": 20, "opt_heldout": "none"}
    at = open_page("optimizer", toy="grid8x8", **knobs)
    run = start_and_stop(at, gate)
    it = run.state["iteration"]
    at.session_state["opt_n_samples"] = 256                 # the Samples knob, changed while stopped
    at.run()
    at.button(key="opt_resume").click().run()
    assert not at.exception
    assert run.status == "stopped" and run.state["iteration"] == it and run.knobs["n_samples"] == 128
    assert any("not resumed: n_samples changed from 128 to 256" in e.value for e in at.error)
