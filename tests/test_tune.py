"""core.tune (issue 10 item 4): held-out scoring with paired t-intervals, the no-regression rule,
disjoint seeds, resume after a kill, the CLI."""
import json
import math

import pytest
import torch

from core.cli import main
from core.errors import ScheduleLabError
from core.models import MixtureDenoiser
from core.schedules import Schedule, make_schedule
from core.tune import Method, Tuner, decide, interval, paired, tune
from core.tune.methods import HEURISTICS, OPTIMIZERS, default_table
from core.sampling import initial_noise
from toy_data import get_toy

pytestmark = pytest.mark.usefixtures("one_thread")

RING = get_toy("ring8")
SMALL = dict(n=256, batches=3, ref_steps=50)


def _model():
    return MixtureDenoiser(RING)


def _table(*extra):
    t = {m.name: m for m in HEURISTICS}
    t.update({m.name: m for m in extra})
    return t


def _bad(ctx, seed, deadline):
    """A deliberately bad optimizer: every interior level crowded just below sigma_max."""
    lv = [ctx.sigma_max * (1 - 1e-3 * i) for i in range(ctx.steps - 1)] + [ctx.sigma_min]
    return Schedule(tuple(lv) + (0.0,), name="bad")


def _almost_loglinear(ctx, seed, deadline):
    """The log-linear schedule nudged by 1e-9: no held-out difference can be significant."""
    s = make_schedule("loglinear", ctx.steps, ctx.sigma_min, ctx.sigma_max)
    lv = list(s.sigmas)
    lv[1] *= 1 + 1e-9
    return Schedule(tuple(lv), name="almost")


# (d) the statistics against a hand computation ------------------------------------------------------
def test_interval_and_paired_difference_match_a_hand_computation():
    a, b = [1.0, 2.0, 3.0], [2.0, 2.5, 4.5]
    # d = a - b = (-1, -0.5, -1.5): mean -1, sd 0.5, se 0.5 / sqrt 3; t_{0.975, 2} = 4.302652729749464
    d = paired(a, b)
    assert d["mean"] == pytest.approx(-1.0)
    assert d["ci"] == pytest.approx(4.302652729749464 * 0.5 / math.sqrt(3), rel=1e-12)
    iv = interval(a)                                         # sd 1: half-width t * 1 / sqrt 3
    assert iv["mean"] == pytest.approx(2.0) and iv["ci"] == pytest.approx(4.302652729749464 / math.sqrt(3))
    assert interval([1.0, math.inf]) == {"mean": None, "ci": None}      # a diverged batch is no number
    # -1 + 1.242 > 0: not significant, so the heuristic stays; asking only for a lower mean, the optimizer wins
    scores, kinds = {"h": {"nll": b}, "o": {"nll": a}}, {"h": "heuristic", "o": "optimizer"}
    w, best, rows = decide(scores, kinds, "nll")
    assert (w, best) == ("h", "h") and not rows["o"]["wins"] and "includes 0" in rows["o"]["why"]
    assert decide(scores, kinds, "nll", require_significant=False)[0] == "o"
    # significant: d = (-1, -1.1, -0.9): mean -1, half-width 4.3027 * 0.1 / sqrt 3 = 0.248
    scores["o"]["nll"] = [1.0, 1.4, 3.6]
    assert decide(scores, kinds, "nll")[0] == "o"
    # the collapse guard: better nll but significantly worse distance to the reference is refused
    scores["h"]["swd"], scores["o"]["swd"] = [0.1, 0.2, 0.3], [0.3, 0.41, 0.5]
    w, _, rows = decide(scores, kinds, "nll", guard="swd")
    assert w == "h" and "collapse guard" in rows["o"]["why"]


# (a) no regression --------------------------------------------------------------------------------
def test_handicapped_optimizers_give_back_the_best_heuristic_flagged():
    table = _table(Method("bad", "optimizer", _bad), Method("almost", "optimizer", _almost_loglinear))
    res = tune(_model(), "dpmpp_2m", 4, table=table, **SMALL)
    rows = {r["name"]: r for r in res.table}
    heur = {n: r["nll"] for n, r in rows.items() if r["kind"] == "heuristic"}
    assert res.from_heuristic and res.winner_kind == "heuristic"
    assert res.winner == res.best_heuristic == min(heur, key=heur.get)
    assert "no optimizer beat the best heuristic" in res.reason
    assert res.schedule.params["from_heuristic"] is True and res.schedule.solver == "dpmpp_2m"
    assert rows["bad"]["diff"] > 0 and not rows["bad"]["wins"]
    assert not rows["almost"]["wins"]                                    # equal up to noise: not a win
    assert res.schedule.sigmas == tuple(rows[res.winner]["sigmas"])


def test_a_tiny_budget_skips_every_optimizer_and_returns_the_heuristic():
    res = tune(_model(), "dpmpp_2m", 4, methods=["ays", "score_optimal", "nonuniform"], budget_s=1e-3, **SMALL)
    rows = {r["name"]: r for r in res.table}
    assert all(rows[n]["status"] == "skipped" and "budget share" in rows[n]["reason"]
               for n in ("ays", "score_optimal", "nonuniform"))
    assert res.from_heuristic and res.winner == res.best_heuristic


def test_missing_optimizer_modules_are_reported_not_available():
    t = default_table()
    for name in ("gits", "oss"):
        try:
            __import__(f"core.optimizers.{name}")
        except ImportError:
            assert "not in this build" in t[name].applies(None)


# (b) seeds ----------------------------------------------------------------------------------------
def test_heldout_seeds_are_disjoint_from_optimization_seeds():
    seen = []

    def recording(ctx, seed, deadline):
        seen.append(ctx.opt_seed(seed))
        return _almost_loglinear(ctx, seed, deadline)
    ays = next(m for m in OPTIMIZERS if m.name == "ays")
    t = Tuner(_model(), "dpmpp_2m", 4, table=_table(Method("rec", "optimizer", recording), ays), seed=3, **SMALL)
    for ev in t.events():
        res = ev.extra.get("result")
    opt, held = set(res.seeds["optimization"]), set(res.seeds["heldout"])
    assert seen == [3] and {3, 4} <= opt and not opt & held and len(held) == 3       # AYS: MC seed, early-stop seed
    # the scorer samples from the held-out seeds' noise
    z = t.scorer.noise(res.seeds["heldout"][0], 80.0)
    assert torch.equal(z, initial_noise(t.scorer._fast, 256, 80.0, res.seeds["heldout"][0]))
    with pytest.raises(ScheduleLabError, match="collide"):
        Tuner(_model(), "dpmpp_2m", 4, seed=0, heldout_seeds=[5, 100], **SMALL)


# (c) resume ---------------------------------------------------------------------------------------
def _strip(res):
    return [{k: v for k, v in r.items() if k not in ("seconds", "cpu_seconds")} for r in res.table]


RESUME = dict(methods=["nonuniform", "ays"], **SMALL)


@pytest.fixture(scope="module")
def full():
    return tune(_model(), "dpmpp_2m", 4, **RESUME)


@pytest.mark.parametrize("k", [2, 9])
def test_resume_after_a_kill_equals_the_uninterrupted_run(tmp_path, k, full):
    kw = RESUME
    path = tmp_path / "state.json"
    it = Tuner(_model(), "dpmpp_2m", 4, state_path=path, **kw).events()
    for _ in range(k):                                         # then the process "dies"
        next(it)
    del it
    done_before = len(json.loads(path.read_text())["scores"])
    t2 = Tuner(_model(), "dpmpp_2m", 4, state_path=path, **kw)
    evs = list(t2.events())
    res = evs[-1].extra["result"]
    n_heuristics = sum(1 for m in default_table().values() if m.kind == "heuristic")   # scored before any optimizer
    assert len(evs) == len(t2.units()) - k + 1 and done_before == min(k, n_heuristics)
    assert res.schedule.sigmas == full.schedule.sigmas and res.winner == full.winner
    assert _strip(res) == _strip(full)
    with pytest.raises(ScheduleLabError, match="steps"):
        Tuner(_model(), "dpmpp_2m", 5, state_path=path, **kw)


# (e) CLI ------------------------------------------------------------------------------------------
def test_cli_json_smoke_and_resume(tmp_path, capsys):
    out = tmp_path / "t.json"
    argv = ["tune", "--toy", "ring8", "--steps", "4", "--n", "256", "--batches", "2", "--ref-steps", "50",
            "--methods", "nonuniform", "--out", str(out), "--json", "--quiet"]
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    s = Schedule.load(out)
    names = [r["name"] for r in d["table"]]
    assert d["winner"] in names and s.name == d["winner"] and s.steps == 4 and s.solver == "dpmpp_2m"
    assert d["metric"] == "nll" and d["guard"] == "swd" and "karras" in names and "nonuniform" in names
    assert json.loads(out.read_text())["tune"]["best_heuristic"] == d["best_heuristic"]
    assert main(argv + ["--resume"]) == 0                      # a finished state resumes to the same answer
    assert json.loads(capsys.readouterr().out)["sigmas"] == d["sigmas"]
    capsys.readouterr()
    assert main(argv) == 2                                     # an existing state is never clobbered ...
    assert "--resume" in capsys.readouterr().err
    assert main(argv + ["--force"]) == 0                       # ... unless forced, which keeps a .bak
    assert (tmp_path / "t.state.json.bak").is_file()
    capsys.readouterr()
    assert main(["tune", "--toy", "ring8", "--steps", "4", "--metric", "fd", "--out", str(tmp_path / "u.json")]) == 2
    assert "fd" in capsys.readouterr().err


def test_identical_levels_are_scored_once():
    """polyexponential (rho = 1) and loglinear give the same levels up to 2e-15: the second is not sampled
    again but gets the first's per-batch scores (the same noise, the same samples)."""
    calls = []
    t = Tuner(_model(), "dpmpp_2m", 4, methods="heuristics", table=_table(), **SMALL)
    real = t.scorer.__call__
    t.scorer = lambda s: calls.append(s.name) or real(s)
    msgs = [ev.message for ev in t.events()]
    assert "polyexponential" not in calls and "loglinear" in calls
    assert any(m.startswith("polyexponential: the same levels as loglinear") for m in msgs)
    assert t.state["scores"]["polyexponential"] == t.state["scores"]["loglinear"]
    assert t.state["scores"]["karras"] != t.state["scores"]["loglinear"]
