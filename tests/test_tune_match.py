"""core.tune.match: "steps to match" scores the best heuristic at ceil(1.5 n) steps on the run's own
held-out noise (the same numbers an independent run at that many steps gives), pairs it with the
winner batch by batch, and says whether the winner matches; paired_samples starts both schedules
from one noise."""
import numpy as np
import pytest
from scipy import stats

from core.errors import ScheduleLabError
from core.models import MixtureDenoiser
from core.sampling import generate, initial_noise
from core.schedules import Schedule, make_schedule
from core.tune import Method, Tuner
from core.tune.match import match_steps, paired_samples, steps_to_match
from core.tune.methods import HEURISTICS
from toy_data import get_toy

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = dict(n=128, batches=3, ref_steps=50, sigma_min=0.002, sigma_max=80.0)


def _done(tuner):
    for ev in tuner.events():
        pass
    return ev.extra["result"]


def test_match_steps():
    assert [match_steps(n) for n in (2, 4, 5, 10)] == [3, 6, 8, 15]
    with pytest.raises(ScheduleLabError):
        match_steps(10, 1.0)


def test_heuristic_at_1_5n_is_scored_on_the_same_noise_and_paired():
    model = MixtureDenoiser(get_toy("ring8"))
    table = {m.name: m for m in HEURISTICS[:2]}                  # karras, loglinear
    t = Tuner(model, "dpmpp_2m", 8, table=table, metric="ref", **SMALL)
    res = _done(t)
    mt = steps_to_match(t, res)
    assert (mt["heuristic"], mt["heuristic_steps"], mt["winner"]) == (res.best_heuristic, 12, res.winner)
    # an independent run at 12 steps with the same seeds scores the heuristic identically
    res12 = _done(Tuner(model, "dpmpp_2m", 12, table=table, metric="ref", **SMALL))
    row12 = next(r for r in res12.table if r["name"] == res.best_heuristic)
    assert mt["per_batch"]["heuristic"] == row12["per_batch"]["ref"]
    assert mt["heuristic_sigmas"] == list(make_schedule(res.best_heuristic, 12, 0.002, 80.0).sigmas)
    # the paired difference by hand: mean of d_b and the t half-width
    d = np.asarray(mt["per_batch"]["winner"]) - np.asarray(mt["per_batch"]["heuristic"])
    assert mt["diff"]["mean"] == pytest.approx(d.mean(), rel=1e-12)
    assert mt["diff"]["ci"] == pytest.approx(stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3), rel=1e-9)
    # the heuristic against itself with 1.5 x the steps (ring8, loglinear: 0.049 -> 0.015 from the ODE
    # solution at 8 -> 12 steps): no match
    assert mt["diff"]["mean"] - mt["diff"]["ci"] > 0 and mt["matches"] is False


def _crowded(name):
    def run(ctx, seed, deadline):           # every interior level crowded just below sigma_max: a bad schedule
        lv = [ctx.sigma_max * (1 - 1e-3 * i) for i in range(ctx.steps - 1)] + [ctx.sigma_min]
        return Schedule(tuple(lv) + (0.0,), name=name)
    return run


def test_a_winner_that_beats_a_bad_heuristic_at_1_5n_matches():
    def loglinear(ctx, seed, deadline):
        return make_schedule("loglinear", ctx.steps, ctx.sigma_min, ctx.sigma_max)
    table = {"crowded": Method("crowded", "heuristic", _crowded("crowded")),
             "ll": Method("ll", "optimizer", loglinear)}
    t = Tuner(MixtureDenoiser(get_toy("ring8")), "dpmpp_2m", 4, table=table, metric="ref", **SMALL)
    res = _done(t)
    assert res.winner == "ll" and res.best_heuristic == "crowded"
    mt = steps_to_match(t, res)
    assert mt["matches"] is True and mt["diff"]["mean"] < 0


def test_paired_samples_start_from_one_noise():
    model = MixtureDenoiser(get_toy("ring8"))
    table = {m.name: m for m in HEURISTICS[:2]}
    t = Tuner(model, "euler", 4, table=table, **SMALL)
    res = _done(t)
    sm = paired_samples(t, res, n=64)
    assert sm["seed"] == t.heldout_seeds[0]
    z = initial_noise(model, 64, 80.0, sm["seed"]).double()
    assert np.array_equal(sm["noise"].numpy(), z.numpy())
    for key in ("winner", "heuristic"):
        x = generate(model.double(), Schedule(tuple(sm["sigmas"][key])), 64, "euler", noise=z, seed=sm["seed"]).x
        np.testing.assert_allclose(sm[key].numpy(), x.numpy(), rtol=1e-9, atol=1e-9)


def test_method_options_reach_the_optimizer_and_are_part_of_the_settings(tmp_path):
    """Tuner(method_options=...) hands keywords to GITS / OSS / LD3 (the Tune page's smaller image
    defaults), records them in the state's config, and a resume with other options is refused."""
    model = MixtureDenoiser(get_toy("ring8"))
    state = tmp_path / "t.json"
    opts = {"oss": {"teacher_steps": 12, "n_samples": 8}}
    t = Tuner(model, "dpmpp_2m", 3, methods=["oss"], method_options=opts, state_path=state, **SMALL)
    res = _done(t)
    oss = next(r for r in res.table if r["name"] == "oss")
    assert oss["status"] == "ok"
    got = Tuner(model, "dpmpp_2m", 3, methods=["oss"], method_options=opts, state_path=state, **SMALL)
    assert got.state["candidates"]["oss"]["params"]["teacher_steps"] == 12
    assert got.state["candidates"]["oss"]["params"]["n_samples"] == 8
    with pytest.raises(ScheduleLabError, match="method_options"):
        Tuner(model, "dpmpp_2m", 3, methods=["oss"], method_options={"oss": {"teacher_steps": 13}},
              state_path=state, **SMALL)
    with pytest.raises(ScheduleLabError, match="only gits, oss, ld3"):
        Tuner(model, "dpmpp_2m", 3, method_options={"ays": {"n": 1}}, **SMALL)
    bad = _done(Tuner(model, "dpmpp_2m", 3, methods=["oss"], method_options={"oss": {"nonsense": 1}}, **SMALL))
    row = next(r for r in bad.table if r["name"] == "oss")
    assert row["status"] == "failed" and "nonsense" in row["reason"]
