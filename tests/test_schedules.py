"""Schedules: heuristic formulas, AYS presets and interpolation, validation, import/export."""
import math

import numpy as np
import pytest

from core.errors import ScheduleLabError
from core.schedules import (AYS_PRESETS, FORMATS, Schedule, export, load_schedule, make_schedule, parse,
                            resample_loglinear, schedule_names)
from core.schedules.presets import AYS_PAPER_SIGMAS


@pytest.mark.parametrize("name", schedule_names())
@pytest.mark.parametrize("steps", [2, 5, 10, 37])
def test_every_schedule_is_valid_and_keeps_the_ends(name, steps):
    s = make_schedule(name, steps, 0.002, 80.0)
    assert s.steps == steps and s.sigmas[-1] == 0
    assert all(a > b for a, b in zip(s.sigmas, s.sigmas[1:]))
    if name == "laplace":        # clamped to [smin, smax]; its own ends are exp(+-0.5 log 1e-5) = 316, 0.00316
        assert s.sigmas[0] == 80.0 and 0.002 <= s.sigmas[-2] <= 0.0032
    elif not name.startswith(("ays_", "oss_")):          # presets carry their own ends
        assert s.sigmas[0] == 80.0 and s.sigmas[-2] == pytest.approx(0.002, rel=1e-12)


def test_karras_matches_edm_eq5():
    s = np.array(make_schedule("karras", 10, 0.002, 80.0, rho=7).sigmas[:-1])
    i = np.arange(10)
    ref = (80 ** (1 / 7) + i / 9 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(s, ref, rtol=1e-12)


def test_loglinear_is_uniform_in_log_sigma_and_polyexponential_rho1_equals_it():
    s = np.array(make_schedule("loglinear", 12, 0.01, 10.0).sigmas[:-1])
    d = np.diff(np.log(s))
    np.testing.assert_allclose(d, d[0], rtol=1e-10)
    p = make_schedule("polyexponential", 12, 0.01, 10.0, rho=1.0).sigmas
    np.testing.assert_allclose(p, make_schedule("loglinear", 12, 0.01, 10.0).sigmas, rtol=1e-12)


def test_kl_optimal_is_uniform_in_arctan_sigma_over_c():
    c = 0.5
    s = np.array(make_schedule("kl_optimal", 9, 0.002, 80.0, c=c).sigmas[:-1])
    d = np.diff(np.arctan(s / c))
    np.testing.assert_allclose(d, d[0], rtol=1e-10)


def test_time_uniform_is_uniform_in_vp_time():
    from core.processes import VPLinear
    s = np.array(make_schedule("time_uniform", 8, 0.01, 50.0).sigmas[:-1])
    t = VPLinear().t(s)
    np.testing.assert_allclose(np.diff(t), np.diff(t)[0], rtol=1e-9)
    np.testing.assert_allclose(VPLinear().sigma(t), s, rtol=1e-10)


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_ays_preset_at_10_steps_is_the_table_at_the_ays_timesteps_and_rounds_to_the_paper(model):
    from core.schedules import AYS_TIMESTEPS, get_table
    s = make_schedule(f"ays_{model}", 10)
    np.testing.assert_allclose(s.sigmas[:-1], get_table(model).sigmas[AYS_TIMESTEPS[model][:-1]], rtol=0, atol=0)
    assert s.sigmas[-1] == 0 and s.steps == 10
    # the paper's 3-decimal Table 3 (what the old preset held) is close, not equal
    np.testing.assert_allclose(s.sigmas[:-1], AYS_PAPER_SIGMAS[model][:-1], rtol=1.5e-2)   # SDXL 0.1114 vs 0.113


@pytest.mark.parametrize("model", list(AYS_PRESETS))
def test_ays_20_step_interpolation_is_monotone_keeps_ends_and_passes_through_the_table(model):
    s = make_schedule(f"ays_{model}", 20)
    pub = AYS_PRESETS[model]
    assert s.steps == 20 and s.sigmas[0] == pub[0] and s.sigmas[-1] == 0
    assert all(a > b for a, b in zip(s.sigmas, s.sigmas[1:]))
    # 21 points on linspace(0, 1, 21) contain the 11 published nodes at even indices
    np.testing.assert_allclose(s.sigmas[0:20:2], pub[:10], rtol=1e-12)
    # odd points are geometric means of their neighbours (linear in log sigma)
    np.testing.assert_allclose(s.sigmas[1:19:2], np.sqrt(np.array(pub[:9]) * np.array(pub[1:10])), rtol=1e-12)


def test_resample_loglinear_keeps_both_ends():
    s = make_schedule("karras", 10, 0.002, 80.0)
    r = resample_loglinear(s, 25)
    assert r.steps == 25 and r.sigmas[0] == 80.0 and r.sigmas[-2] == pytest.approx(0.002)


@pytest.mark.parametrize("sigmas,match", [
    ([10, 5, 7, 0], "strictly decreasing"),
    ([10, 5, 5, 0], "strictly decreasing"),
    ([10, -1, 0], "negative"),
    ([10, float("nan"), 0], "finite"),
    ([10, 5, 1], "not 0"),
    ([0], "at least 2"),
    (["a", 0], "numbers"),
])
def test_bad_schedules_are_rejected_with_a_clear_message(sigmas, match):
    with pytest.raises(ScheduleLabError, match=match):
        Schedule(tuple(sigmas))


def test_bad_names_and_parameters():
    with pytest.raises(ScheduleLabError, match="unknown schedule 'karas'.*karras"):
        make_schedule("karas", 10)
    with pytest.raises(ScheduleLabError, match="no parameter 'rh'"):
        make_schedule("karras", 10, rh=7)
    with pytest.raises(ScheduleLabError, match="sigma_min < sigma_max"):
        make_schedule("karras", 10, 5.0, 1.0)
    with pytest.raises(ScheduleLabError, match="positive integer"):
        make_schedule("karras", 0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_then_import_round_trips(fmt):
    s = make_schedule("kl_optimal", 7, 0.002, 80.0)
    if fmt == "diffusers_timesteps":
        s = make_schedule("kl_optimal", 7, table="sd15")
    back = parse(export(s, fmt, table="sd15"), table="sd15")
    if fmt == "diffusers_edm":                 # through EDMEulerScheduler's Karras ramp and back
        np.testing.assert_allclose(back.sigmas, s.sigmas, rtol=1e-12)
    elif fmt == "diffusers_timesteps":         # each level moved to its nearest training timestep
        from core.schedules.tables import nearest_timesteps
        assert back.sigmas == tuple(nearest_timesteps(s, "sd15")["sigmas"]) + (0.0,)
        assert parse(export(back, fmt, table="sd15"), table="sd15").sigmas == back.sigmas
    else:
        assert back.sigmas == s.sigmas


def test_comfyui_string_and_list_import_and_errors(tmp_path):
    assert parse("14.615, 6.475, 3.861, 0").steps == 3
    assert parse("[1.0, 0.5, 0]", convention="sigmas").sigmas == (1.0, 0.5, 0.0)
    with pytest.raises(ScheduleLabError, match="flow-matching t"):
        parse("[1.0, 0.5, 0]")             # [0, 1] ending in 0: not taken as sigmas unless told
    with pytest.raises(ScheduleLabError, match="cannot read 'abc'"):
        parse("14.6, abc, 0")
    with pytest.raises(ScheduleLabError, match="strictly decreasing"):
        parse("1, 2, 0")
    with pytest.raises(ScheduleLabError, match="nothing to import"):
        parse("   ")
    f = tmp_path / "s.json"
    make_schedule("karras", 6).to_json(f)
    assert load_schedule(str(f)).sigmas == make_schedule("karras", 6).sigmas
    assert load_schedule(str(f), steps=12).steps == 12
    with pytest.raises(ScheduleLabError, match="not found"):
        Schedule.load(tmp_path / "missing.json")


def test_schedule_is_immutable():
    s = make_schedule("karras", 5)
    with pytest.raises(Exception):
        s.sigmas = (1.0, 0.0)
    assert math.isclose(s.sigma_max, 80.0)
