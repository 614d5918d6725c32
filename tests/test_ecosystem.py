"""Schedules in other tools' conventions: ComfyUI's schedulers against its recorded outputs, diffusers'
own schedulers executing our exported snippets, ManualSigmas' regex, and explicit-convention imports."""
import io
import json
import re
import sys
import types
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EDMEulerScheduler, EulerDiscreteScheduler,
                       HeunDiscreteScheduler)

from core.cli import main as cli_main
from core.errors import ScheduleLabError
from core.schedules import export, get_table, make_schedule, parse
from core.schedules.io import plain, provenance
from core.schedules.tables import nearest_timesteps

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "comfyui_schedulers.json").read_text())
SD15 = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)
OURS = {"exponential": "loglinear"}          # ComfyUI name -> ours where they differ (ours also accepts theirs)
F32 = 2e-6                                   # float32 precision: ComfyUI computes in float32 from a float32 table

pytestmark = pytest.mark.usefixtures("one_thread")


def cli(*args):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = cli_main(list(args))
    return rc, out.getvalue(), err.getvalue()


def close_f32(got, ref):
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    np.testing.assert_allclose(got, ref, rtol=F32, atol=0)


# ---------------------------------------------------------------- ComfyUI's recorded values
@pytest.mark.parametrize("name", sorted(FIXTURE["sd15"]))
def test_every_shared_scheduler_name_equals_comfyui_on_the_sd15_table(name):
    """`python -m core schedule NAME --steps N --table sd15 --format json` == ComfyUI's output, n = 5..32."""
    for n in FIXTURE["steps"]:
        rc, out, err = cli("schedule", OURS.get(name, name), "--steps", str(n), "--table", "sd15",
                           "--format", "json")
        assert rc == 0, err
        got = json.loads(out)["sigmas"]
        ref = FIXTURE["sd15"][name][str(n)]
        if name == "laplace":            # ComfyUI's get_sigmas_laplace returns the n levels without the final 0
            assert got[-1] == 0
            got = got[:-1]
        close_f32(got, ref)


@pytest.mark.parametrize("name", sorted(FIXTURE["sd15_denoise"]))
def test_denoise_equals_comfyui_basic_scheduler(name):
    d = FIXTURE["sd15_denoise"][name]
    for n, ref in d["values"].items():
        close_f32(make_schedule(OURS.get(name, name), int(n), table="sd15", denoise=d["denoise"]).sigmas, ref)


@pytest.mark.parametrize("model", ["sd15", "sdxl", "svd"])
def test_ays_presets_equal_comfyui_align_your_steps_scheduler(model):
    for key, ref in FIXTURE["ays"][model].items():
        n, dn = key.split("@")
        close_f32(make_schedule(f"ays_{model}", int(n), denoise=float(dn)).sigmas, ref)


def test_the_named_table_is_comfyui_model_sampling_discrete():
    close_f32(get_table("sd15").sigmas, FIXTURE["table_sigmas_float32"])


def test_table_schedulers_need_a_table_and_beta_without_one_points_to_beta_vp():
    with pytest.raises(ScheduleLabError, match="beta_vp"):
        make_schedule("beta", 10)
    with pytest.raises(ScheduleLabError, match="--table"):
        make_schedule("simple", 10)
    with pytest.raises(ScheduleLabError, match="range from the table"):
        make_schedule("normal", 10, 0.01, 10.0, table="sd15")
    rc, _, err = cli("schedule", "sgm_uniform", "--steps", "4")
    assert rc == 2 and "--table" in err
    # kl_optimal's default is ComfyUI's c = 1; the theorem's data-scaled variant is explicit
    assert make_schedule("kl_optimal", 6).params == {"c": 1.0}


# ---------------------------------------------------------------- diffusers' table schedulers
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("n", [7, 10, 25])
def test_diffusers_timestep_spacing_equals_euler_discrete_set_timesteps(spacing, n):
    from core.models.wrap import DiscreteVP
    sched = EulerDiscreteScheduler(**SD15, timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
    sched.set_timesteps(n)
    table = DiscreteVP(alphas_cumprod=sched.alphas_cumprod.double().numpy())   # diffusers' own float32 table
    kw = {"steps_offset": 1} if spacing == "leading" else {}
    s = make_schedule(f"diffusers_{spacing}", n, table=table, **kw)
    close_f32(s.sigmas, sched.sigmas.double())


# ---------------------------------------------------------------- exports executed against diffusers
def run_snippet(text, **env):
    ns = dict(env)
    exec(compile(text, "<export>", "exec"), ns)
    return ns


@pytest.fixture(scope="module")
def unet():
    from test_diffusers_loader import tiny_unet
    return tiny_unet().eval()


def unet_loop(unet, sched) -> int:
    """diffusers' own denoising loop on a tiny UNet2DModel; returns the number of UNet calls."""
    calls = 0
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            calls += 1
            x = sched.step(unet(sched.scale_model_input(x, t), t).sample, t, x).prev_sample
    assert torch.isfinite(x).all()
    return calls


def test_diffusers_snippet_runs_n_steps_and_ends_at_zero_with_euler_discrete(unet):
    s = make_schedule("karras", 10, table="sd15")
    ns = run_snippet(export(s, "diffusers", model="sd15"))
    sched = EulerDiscreteScheduler(**SD15)
    sched.set_timesteps(sigmas=ns["sigmas"])
    assert len(sched.timesteps) == 10 and float(sched.sigmas[-1]) == 0.0
    close_f32(sched.sigmas.double(), np.float32(s.sigmas))
    assert unet_loop(unet, sched) == 10 and sched.step_index == 10
    # the old export (no final 0) ran one step short and stopped at sigma_min
    short = EulerDiscreteScheduler(**SD15)
    short.set_timesteps(sigmas=ns["sigmas"][:-1])
    assert len(short.timesteps) == 9 and float(short.sigmas[-1]) == pytest.approx(s.sigma_min, rel=1e-6)


def test_edm_euler_takes_the_tensor_form_and_lands_on_our_levels(unet):
    s = make_schedule("karras", 12, 0.01, 50.0, rho=5.0)
    with pytest.raises(AttributeError):                         # the old export: a plain list
        EDMEulerScheduler().set_timesteps(sigmas=list(s.sigmas[:-1]))
    ns = run_snippet(export(s, "diffusers_edm"))
    sched = EDMEulerScheduler(**ns["scheduler_kwargs"])
    sched.set_timesteps(sigmas=ns["ramp"])
    assert len(sched.timesteps) == 12 and float(sched.sigmas[-1]) == 0.0
    close_f32(sched.sigmas.double(), np.float32(s.sigmas))
    assert unet_loop(unet, sched) == 12


@pytest.mark.parametrize("cls", [DPMSolverMultistepScheduler, HeunDiscreteScheduler, EulerDiscreteScheduler])
def test_timesteps_export_runs_where_diffusers_accepts_timesteps(cls, unet):
    s = make_schedule("karras", 8, table="sd15")
    text = export(s, "diffusers_timesteps", table="sd15", model="sd15")
    m = nearest_timesteps(s, "sd15")
    assert f"largest relative move {m['max_rel_move']:.3g}" in text
    ns = run_snippet(text)
    assert ns["timesteps"] == m["timesteps"]
    sched = cls(**SD15)
    sched.set_timesteps(timesteps=ns["timesteps"])
    ts = [int(round(float(t))) for t in sched.timesteps]
    if cls is HeunDiscreteScheduler:                              # Heun repeats each interior timestep
        ts = [t for i, t in enumerate(ts) if i == 0 or t != ts[i - 1]]
    assert ts == m["timesteps"] and float(sched.sigmas[-1]) == 0.0
    assert unet_loop(unet, sched) == (2 * 8 - 1 if cls is HeunDiscreteScheduler else 8)   # Heun: 2n - 1 calls
    abar = sched.alphas_cumprod.double()
    np.testing.assert_allclose(sorted(set(sched.sigmas.double().tolist()))[1:][::-1],
                               ((1 - abar) / abar).sqrt()[m["timesteps"]], rtol=1e-6)
    # each exported timestep is the nearest (log sigma) on the table
    table = get_table("sd15").sigmas
    for lv, t in zip(s.sigmas[:-1], m["timesteps"]):
        assert t == int(np.argmin(np.abs(np.log(table) - np.log(lv))))


def test_ddim_takes_no_custom_timesteps_in_this_diffusers():
    import inspect
    assert not ({"timesteps", "sigmas"} & set(inspect.signature(DDIMScheduler.set_timesteps).parameters))


def test_kdiffusion_and_comfyui_tensor_snippets_are_self_contained():
    s = make_schedule("loglinear", 6, 1e-5, 80.0)
    fake = types.ModuleType("k_diffusion")
    fake.sampling = types.SimpleNamespace()
    sys.modules.setdefault("k_diffusion", fake)
    try:
        ns = run_snippet(export(s, "kdiffusion"))
    finally:
        if sys.modules.get("k_diffusion") is fake:
            del sys.modules["k_diffusion"]
    assert ns["sigmas"].dtype == torch.float64 and tuple(ns["sigmas"].tolist()) == s.sigmas
    ns = run_snippet(export(s, "comfyui_tensor"))
    assert ns["sigmas"].dtype == torch.float32 and torch.equal(ns["sigmas"], torch.tensor(s.sigmas, dtype=torch.float32))


def test_every_python_export_carries_provenance():
    s = make_schedule("karras", 10, table="sd15", rho=5.0).with_name("karras")
    s = type(s)(s.sigmas, name=s.name, params=s.params, solver="dpmpp_2m")
    line = provenance(s, "sd15")
    for part in ("karras", "10 steps", "sigma 14.614641229333639 .. 0.029167158151720367", "model: sd15",
                 "solver: dpmpp_2m", "rho=5.0"):
        assert part in line, part
    for fmt in ("comfyui_tensor", "diffusers", "diffusers_edm", "diffusers_timesteps", "kdiffusion"):
        assert export(s, fmt, table="sd15", model="sd15").startswith("# " + line), fmt
    d = json.loads(export(s, "json", model="sd15"))
    assert d["params"]["rho"] == 5.0 and d["solver"] == "dpmpp_2m" and d["provenance"] == line


# ---------------------------------------------------------------- ComfyUI ManualSigmas
def test_comfyui_string_reads_back_under_manual_sigmas_regex_below_1e_4():
    """ManualSigmas: re.findall(r"[-+]?(?:\\d*\\.*\\d+)") -- no exponent; 1e-05 would give 1.0 and -5.0."""
    s = make_schedule("karras", 10, 1e-5, 80.0)
    text = export(s, "comfyui")
    assert "e" not in text.lower()
    vals = [float(v) for v in re.findall(r"[-+]?(?:\d*\.*\d+)", text)]
    assert len(vals) == 11 and vals == list(s.sigmas)
    assert plain(1e-5) == "0.00001" and plain(2.5e-12) == "0.0000000000025" and plain(80.0) == "80.0"


# ---------------------------------------------------------------- imports
def test_printed_tensors_numpy_and_scheduler_attributes_import():
    sched = EulerDiscreteScheduler(**SD15)
    sched.set_timesteps(10)
    printed = str(sched.sigmas)                                  # 'tensor([14.6146, ..., 0.0000])'
    got = parse(printed, convention="sigmas")
    np.testing.assert_allclose(got.sigmas, sched.sigmas.double(), atol=6e-5)
    for extra in (", device='cuda:0'", ", dtype=torch.float64", ", device='cuda:0', dtype=torch.float64, "
                  "requires_grad=True", ", grad_fn=<ToCopyBackward0>"):
        assert parse(printed[:-1] + extra + ")", convention="sigmas").sigmas == got.sigmas
    assert parse("scheduler.sigmas\n" + printed).sigmas == got.sigmas        # auto: says sigmas, looks like them
    ts = parse("scheduler.timesteps\n" + str(sched.timesteps), table="sd15")  # says timesteps
    assert ts.params["convention"] == "timesteps" and ts.steps == 10
    np.testing.assert_allclose(ts.sigmas, sched.sigmas.double(), rtol=2e-3)   # diffusers' float32 table
    arr = np.array([14.6146, 6.4746, 0.0])
    assert parse(repr(arr)).sigmas == (14.6146, 6.4746, 0.0) == parse(str(arr)).sigmas
    multi = "sigmas = [\n  14.6146,  # top\n  6.4746,\n  0.0,\n]\n"
    assert parse(multi).sigmas == (14.6146, 6.4746, 0.0)
    assert parse('{"sigmas": [3, 1, 0], "name": "x"}').name == "x"
    assert parse('{"timesteps": [999, 500, 0]}', table="sd15").steps == 3


def test_timesteps_need_a_table_and_flow_t_is_not_taken_as_sigmas():
    with pytest.raises(ScheduleLabError, match="--table"):
        parse("timesteps = [999, 850, 736, 0]")
    with pytest.raises(ScheduleLabError, match="look like training timesteps.*--from timesteps --table"):
        parse("[999, 850, 736, 645, 0]")
    with pytest.raises(ScheduleLabError, match="--table"):
        parse("[999, 850, 736, 0]", convention="timesteps")
    with pytest.raises(ScheduleLabError, match="flow-matching t.*--from flow"):
        parse("tensor([1.0000, 0.7500, 0.5000, 0.0000])"[:-2].replace("1.0000", "0.9990") + "])")
    flow = parse("[0.999, 0.75, 0.5, 0.0]", convention="flow")
    from core.processes import FlowMatching
    np.testing.assert_allclose(flow.sigmas, FlowMatching().sigma(np.array([0.999, 0.75, 0.5, 0.0])), rtol=1e-15)
    with pytest.raises(ScheduleLabError, match="pure noise"):
        parse("[1.0, 0.5, 0.0]", convention="flow")
    assert parse("[0.9, 0.5, 0.0]", convention="sigmas").sigmas == (0.9, 0.5, 0.0)     # when told, accepted
    back = parse("[999, 850, 736, 645, 545, 455, 343, 233, 124, 24]", convention="timesteps", table="sd15")
    close_f32(back.sigmas, FIXTURE["ays"]["sd15"]["10@1.0"])                        # AYS timesteps -> ComfyUI's levels


@pytest.mark.parametrize("bad, msg", [
    (b"\xff\xfe\x00", "not UTF-8"),
    ("x" * 1_000_001, "longer than"),
    ("[" * 50 + "]" * 50, "nested|nests|closing"),
    ('{"sigmas": ' + "[" * 40 + "1" + "]" * 40 + "}", "nests deeper"),
    ("1" * 80 + ", 0", "more than 64 characters"),
    ("[" + "1" * 500 + ", 0]", "too large"),
    ("[" + "1" * 5000 + ", 0]", "more than 64 characters"),   # past Python's int-digit limit: not JSON
    ("tensor([14.6146, 6.4746, ..., 0.0000])", "truncated"),
    ("[[1, 2], [3, 0]]", "nested"),
    ("a = [3, 1, 0]\nb = [2, 1, 0]", "more than one list"),
    ('{"sigmas": "14, 0"}', "'sigmas' list"),
    ('{"sigmas": [1, 0], "params": 3}', "params"),
    ("1e999, 0", "finite"),
    ("nan, 0", "finite"),
    ("14.6, abc, 0", "cannot read 'abc'"),
    ("scheduler_kwargs = dict(sigma_min=0.002, sigma_max=80.0, rho=1e-300)\nramp = torch.tensor([0.5])", "overflow"),
    ("scheduler_kwargs = dict(sigma_min=0.002, sigma_max=80.0, rho=7)\nramp = torch.tensor([-1e300])", "overflow"),
    ('{"sigmas": [1, 0], "solver": [1]}', "'solver'"),
    (None, "nothing to import"),
    (12, "cannot import a int"),
])
def test_bad_input_is_always_a_schedule_lab_error(bad, msg):
    with pytest.raises(ScheduleLabError, match=msg):
        parse(bad)


def test_random_mutations_raise_only_schedule_lab_errors():
    rng = np.random.default_rng(0)
    seeds = [export(make_schedule("karras", 5, table="sd15"), f, table="sd15")
             for f in ("json", "comfyui", "diffusers", "diffusers_edm", "diffusers_timesteps", "kdiffusion", "list")]
    alphabet = list("[](){},.:;=#'\"-+eE0123456789 \n\tabcxyz") + ["...", "nan", "inf", "\x00", "\u2026"]
    for i in range(400):
        t = list(seeds[i % len(seeds)])
        for _ in range(int(rng.integers(1, 6))):
            j = int(rng.integers(0, len(t) + 1))
            op = rng.integers(0, 3)
            if op == 0 and t:
                del t[min(j, len(t) - 1)]
            elif op == 1:
                t.insert(j, alphabet[int(rng.integers(0, len(alphabet)))])
            elif t:
                t[min(j, len(t) - 1)] = alphabet[int(rng.integers(0, len(alphabet)))]
        for conv in ("auto", "sigmas", "timesteps", "flow"):
            try:
                parse("".join(t), convention=conv, table="sd15")
            except ScheduleLabError:
                pass


# ---------------------------------------------------------------- convert on the command line
def test_convert_command(tmp_path):
    rc, out, err = cli("convert", "[999, 850, 736, 645, 545, 455, 343, 233, 124, 24]", "--from", "timesteps",
                       "--table", "sd15", "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert d["convention"] == "timesteps" and d["steps"] == 10
    close_f32(d["sigmas"], FIXTURE["ays"]["sd15"]["10@1.0"])
    rc, _, err = cli("convert", "[999, 850, 736, 0]")
    assert rc == 2 and "--from timesteps --table" in err and "\n" == err[-1] and err.count("\n") == 1
    rc, _, err = cli("convert", "[0.9, 0.5, 0]")
    assert rc == 2 and "--from flow" in err
    f = tmp_path / "s.txt"
    f.write_bytes(b"# from a notebook\ntensor([14.6146, 6.4746, 0.0000], device='cuda:0')\n")
    rc, out, err = cli("convert", str(f), "--format", "comfyui")
    assert rc == 0 and out.strip() == "14.6146, 6.4746, 0.0" and err.startswith("# Schedule Lab: imported")
    f.write_bytes(b"\xff\xfe")
    rc, _, err = cli("convert", str(f))
    assert rc == 2 and "UTF-8" in err


def test_a_diffusers_scheduler_config_file_is_a_table(tmp_path):
    EulerDiscreteScheduler(**SD15, timestep_spacing="leading", steps_offset=1).save_config(tmp_path)
    cfg = str(tmp_path / "scheduler_config.json")
    assert np.array_equal(get_table(cfg).sigmas, get_table("sd15").sigmas)
    rc, out, err = cli("schedule", "normal", "--steps", "10", "--table", cfg, "--format", "json")
    assert rc == 0, err
    assert json.loads(out)["sigmas"] == list(make_schedule("normal", 10, table="sd15").sigmas)
    lin = get_table("ddpm-linear")
    assert lin.sigma_min == pytest.approx(0.01, rel=1e-3) and lin.sigma_max == pytest.approx(157.4, rel=1e-3)
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ScheduleLabError, match="JSON object"):
        get_table(str(tmp_path / "bad.json"))
    with pytest.raises(ScheduleLabError, match="unknown noise table 'sd16'"):
        get_table("sd16")


def test_an_imported_name_cannot_inject_code_into_a_snippet():
    s = parse('{"sigmas": [3, 1, 0], "name": "x\\nimport os\\rY = 1", "params": {"k": "a\\u2028b"}}')
    for fmt in ("comfyui_tensor", "diffusers", "diffusers_edm", "kdiffusion"):
        ns = run_snippet(export(s, fmt).replace("import k_diffusion as K", "K = None"))
        assert "os" not in ns and "Y" not in ns
        assert export(s, fmt).splitlines()[0].startswith("# Schedule Lab: x import os Y = 1")

