"""Tune page through AppTest on the real engine (core.tune on small toys): Start, Stop between units,
a reload that finds the stopped run, Resume refused after a changed setting and then continued from
the state file to the same result as an uninterrupted core.tune run; the leaderboard, the levels
plot and the side-by-side samples asserted on state and plotted data; the winner's exports read
back to the same schedule; "no optimizer won" on a handicapped optimizer; bad model paths."""
from pathlib import Path

import numpy as np
import pytest
import torch

from app_helpers import arr, assert_clean, figures, open_page, trace
from app_lib import tune_view
from core.models import MixtureDenoiser
from core.sampling import generate, initial_noise
from core.schedules import Schedule, make_schedule, parse
from core.tune import Method, tune
from core.tune import methods as tune_methods
from toy_data import get_toy

pytestmark = pytest.mark.usefixtures("one_thread")

# grid8x8, exact mixture, dpmpp_2m, 4 steps: DM-NonUniform beats log-linear on held-out nll (1.5 +- 0.45)
SMALL = {"tp_steps": 4, "tp_methods_toy": ["nonuniform"], "tp_n_toy": 256, "tp_batches_toy": 3}


def _run_to_end(at, job, limit=60):
    for _ in range(limit):
        if job.status != "running":
            break
        at.run()
    assert_clean(at)
    assert job.status == "done", job.message


def _rows(at) -> dict:
    return {r["candidate"]: r for r in at.session_state["tp_result"]["rows"]}


def test_start_stop_reload_resume_then_the_results(monkeypatch, app_home):
    monkeypatch.setattr(tune_view, "SLICE_S", 0.0)              # exactly one unit per rerun
    at = open_page("tune", toy="grid8x8", **SMALL)
    assert at.button(key="tp_stop").disabled and at.button(key="tp_resume").disabled
    at.button(key="tp_start").click().run()
    assert_clean(at)
    job = at.session_state["tune_job"]
    assert job.status == "running" and job.done_units == 1 and job.total_units == 9 + 2 + 1   # + steps to match
    at.run()
    bar = at.get("progress")[0].proto
    assert job.done_units == 2 and bar.value == int(100 * 2 / 12) and bar.text.startswith("loglinear: held-out nll")
    at.button(key="tp_stop").click().run()                      # Stop: no unit after the one in flight
    assert job.status == "stopped" and job.done_units == 2
    at.run()
    assert job.done_units == 2 and not at.button(key="tp_resume").disabled
    # a reload is a new session: the stopped run comes back from disk; a changed setting is refused
    at2 = open_page("tune", toy="grid8x8")
    job2 = at2.session_state["tune_job"]
    assert job2.run_id == job.run_id and job2.status == "stopped" and job2.done_units == 2
    assert at2.number_input(key="tp_steps").value == 4            # the run's own settings in the widgets
    at2.number_input(key="tp_steps").set_value(5).run()
    at2.button(key="tp_resume").click().run()
    assert "steps changed from 4 to 5" in at2.error[0].value and job2.status == "stopped"
    at2.number_input(key="tp_steps").set_value(4).run()
    at2.button(key="tp_resume").click().run()
    assert_clean(at2)
    assert job2.status == "running" and job2.done_units == 3      # continued from the state file
    _run_to_end(at2, job2)
    # the same numbers as one uninterrupted engine run with the same seeds
    ref = tune(MixtureDenoiser(get_toy("grid8x8")), "dpmpp_2m", 4, methods=["nonuniform"], n=256, batches=3,
               seed=0, sigma_min=0.002, sigma_max=80.0)
    res = at2.session_state["tp_result"]
    assert res["winner"] == ref.winner == "nonuniform" and not res["from_heuristic"]
    assert res["best_heuristic"] == ref.best_heuristic
    rows = _rows(at2)
    for r in ref.table:
        assert rows[r["name"]]["held-out nll"] == pytest.approx(r["nll"], rel=1e-12)
    assert rows["nonuniform"]["role"] == "winner" and rows[ref.best_heuristic]["role"] == "best heuristic"
    assert "nonuniform" in at2.success[0].value

    figs = figures(at2)
    board = figs["tp_fig_board"]
    win = trace(board, "winner")
    assert list(win["y"]) == ["nonuniform"] and arr(win["x"])[0] == pytest.approx(rows["nonuniform"]["held-out nll"])
    assert board["layout"]["shapes"][0]["x0"] == pytest.approx(rows[ref.best_heuristic]["held-out nll"])
    levels = figs["tp_fig_levels"]
    for r in ref.table:                                           # every candidate's levels, on one log axis
        np.testing.assert_allclose(arr(trace(levels, r["name"])["x"]), np.asarray(r["sigmas"][:-1]), rtol=1e-12)
    assert levels["layout"]["xaxis"]["type"] == "log"
    assert set(levels["layout"]["xaxis"]["ticktext"]) <= {f"{m * 10.0 ** k:g}" for k in range(-3, 3) for m in (1, 2, 5)}

    # side by side from ONE noise: regenerating from the recorded seed's noise gives both panels
    sm = at2.session_state["tp_samples"]
    model = MixtureDenoiser(get_toy("grid8x8"))
    z = initial_noise(model, 1000, 80.0, sm["seed"]).double()
    torch.testing.assert_close(sm["noise"], z)
    for key, name in (("winner", "nonuniform"), ("heuristic", ref.best_heuristic)):
        sig = next(r["sigmas"] for r in ref.table if r["name"] == name)
        x = generate(model.double(), Schedule(tuple(sig)), 1000, "dpmpp_2m", seed=sm["seed"], noise=z).x
        torch.testing.assert_close(sm[key], x.double(), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(arr(trace(figs[f"tp_fig_{key}"], "samples")["x"]), sm[key][:, 0].numpy())
    assert not torch.allclose(sm["winner"], sm["heuristic"])

    # exports: read back to the winner's levels; the provenance names model, solver, steps, seeds, metric
    ex = at2.session_state["tp_exports"]
    win_sig = ref.schedule.sigmas
    for fmt in ("json", "comfyui", "comfyui_tensor", "diffusers", "kdiffusion", "list"):
        assert parse(ex[fmt], convention="sigmas").sigmas == win_sig, fmt
    assert parse(ex["json"]).params["heldout_seeds"] == ref.seeds["heldout"]
    prov = ex["diffusers"].splitlines()[0]
    for word in ("nonuniform", "solver: dpmpp_2m", "4 steps", "metric=nll", "tune_seed=0", "exact:grid8x8"):
        assert word in prov, (word, prov)
    assert "flow_comfyui" not in ex                               # t exports only for flow models
    # steps to match: the heuristic rebuilt at 6 steps, scored on the same held-out noise
    mt = job2.match
    assert mt["heuristic_steps"] == 6 and mt["heuristic"] == ref.best_heuristic
    assert mt["per_batch"]["winner"] == next(r for r in ref.table if r["name"] == "nonuniform")["per_batch"]["nll"]
    assert mt["heuristic_sigmas"] == list(make_schedule(ref.best_heuristic, 6, 0.002, 80.0).sigmas)
    at2.button(key="tp_save").click().run()
    assert at2.session_state["library"][at2.session_state["tp_saved"]].sigmas == win_sig
    # the finished result is written where the Images page looks for a model's optimized schedules
    from core.tune.known import known_schedules
    assert Path(job2.saved_to).parent == app_home / "tune"
    known, problems = known_schedules(ref.schedule.params["model"], "dpmpp_2m", 4, folders=[app_home / "tune"])
    assert not problems and known[0].sigmas == tuple(win_sig) and known[0].beat_heuristic


def _bad(ctx, seed, deadline):
    """A handicapped optimizer: every interior level crowded just below sigma_max."""
    lv = [ctx.sigma_max * (1 - 1e-3 * i) for i in range(ctx.steps - 1)] + [ctx.sigma_min]
    return Schedule(tuple(lv) + (0.0,), name="bad")


def test_no_optimizer_wins_says_so_plainly(monkeypatch):
    monkeypatch.setattr(tune_methods, "OPTIMIZERS", [Method("bad", "optimizer", _bad)])
    at = open_page("tune", toy="ring8", tp_steps=4, tp_methods_toy=["bad"], tp_n_toy=128, tp_batches_toy=3)
    at.button(key="tp_start").click().run()
    _run_to_end(at, at.session_state["tune_job"])
    res = at.session_state["tp_result"]
    assert res["from_heuristic"] and res["winner"] == res["best_heuristic"] != "bad"
    assert "No optimizer won" in at.warning[0].value and res["winner"] in at.warning[0].value
    assert _rows(at)["bad"]["why"] == "not better than the best heuristic"
    assert trace(figures(at)["tp_fig_board"], "winner")["y"] == [res["winner"]]


def test_bad_model_paths_get_messages_for_the_app(tmp_path):
    at = open_page("tune", toy="gaussian")
    at.selectbox(key="tp_source").set_value("folder").run()
    assert "Enter the path" in at.info[0].value
    at.text_input(key="tp_path").set_value(str(tmp_path / "nowhere")).run()
    assert "does not exist" in at.error[0].value and "--" not in at.error[0].value
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    at.text_input(key="tp_path").set_value(str(tmp_path / "empty")).run()
    assert "config.json" in at.error[0].value and "--" not in at.error[0].value
    at.selectbox(key="tp_source").set_value("module").run()
    net = tmp_path / "net.py"
    net.write_text("import torch\nclass Net(torch.nn.Module):\n    pass\n")
    at.text_input(key="tp_path").set_value(f"{net}:Net").run()
    at.text_input(key="tp_weights").set_value(str(tmp_path / "w.safetensors")).run()
    assert "weights file" in at.error[0].value and "does not exist" in at.error[0].value


def test_an_image_model_from_a_folder_tunes_and_shows_image_grids(monkeypatch, tmp_path):
    """The folder source on the stand-in registry (tests/fake_engine: an exact Gaussian 1x8x8 image
    model, metric 'ref'): the side-by-side panels are image grids of samples from one noise."""
    import sys

    import fake_engine
    fake_engine.install(monkeypatch, "core.models.registry")
    monkeypatch.setattr(sys.modules["core.models.registry"], "model_entry", lambda name: None, raising=False)
    (tmp_path / "gauss8").mkdir()
    at = open_page("tune", toy="gaussian", tp_source="folder", tp_path=str(tmp_path / "gauss8"), tp_steps=4,
                   tp_methods_image=["nonuniform"], tp_n_image=64, tp_batches_image=2)
    at.button(key="tp_start").click().run()
    _run_to_end(at, at.session_state["tune_job"])
    res = at.session_state["tp_result"]
    assert res["metric"] == "ref" and set(_rows(at)) >= {"karras", "loglinear", "nonuniform"}
    sm = at.session_state["tp_samples"]
    assert tuple(sm["winner"].shape) == (16, 1, 8, 8) == tuple(sm["heuristic"].shape)
    z = initial_noise(fake_engine.GaussianImages(), 16, 80.0, sm["seed"]).double()
    torch.testing.assert_close(sm["noise"], z)
    # D(x, s) = c^2 / (c^2 + s^2) x is linear: each sample is a multiple of the noise it started from
    for k in ("winner", "heuristic"):
        assert float(torch.nn.functional.cosine_similarity(sm[k].flatten(1), z.flatten(1)).min()) > 0.9999
    fig = figures(at)["tp_fig_winner"]
    assert fig["data"][0]["type"] == "heatmap" and "tp_fig_levels" in figures(at)


def test_flow_models_export_flow_t_that_reads_back():
    from core.models.registry import load_model
    flow = load_model("digits-flow")
    assert tune_view.is_flow(flow) and not tune_view.is_flow(MixtureDenoiser(get_toy("gaussian")))
    from core.models.guidance import guided
    assert tune_view.is_flow(guided(flow, 3, 2.0))
    s = make_schedule("loglinear", 6, flow.sigma_min, flow.sigma_max).with_name("gits", heldout_seeds=[1, 2])
    texts, problems = tune_view.exports(s, "digits-flow", flow=True)
    assert set(texts) >= {"flow_diffusers", "flow_comfyui", "comfyui", "json"}
    assert list(problems) == ["diffusers_timesteps"]        # sigma 999 and 63 share SD 1.5's timestep 999: said so
    back = parse(texts["flow_comfyui"], convention="flow")
    np.testing.assert_allclose(back.sigmas, s.sigmas, rtol=1e-8)
    texts, _ = tune_view.exports(s, "a toy", flow=False)
    assert "flow_comfyui" not in texts


def test_a_corrupt_run_record_is_moved_aside(app_home):
    app_home.mkdir(parents=True, exist_ok=True)
    (app_home / "tune_run.json").write_text('{"format": "schedule-lab/app-tune/1", "run_id": "../x", "status": "done"}')
    at = open_page("tune", toy="gaussian")
    assert at.session_state["tune_job"] is None and "press Start" in at.info[0].value
    assert (app_home / "tune_run.json.bad").is_file() and not (app_home / "tune_run.json").exists()


def test_stop_while_another_thread_runs_a_unit(tmp_path):
    """Streamlit may run Stop's callback while an older script run's fragment is inside a unit: the
    job is then "stopping" and the unit's own thread stops it after the unit (no generator re-entry)."""
    import threading

    from app_lib.tune_run import TuneJob
    from core.tune import Tuner
    from core.tune.methods import HEURISTICS
    inside, go = threading.Event(), threading.Event()

    def slow(ctx, seed, deadline):
        inside.set()
        assert go.wait(30)
        return make_schedule("loglinear", ctx.steps, ctx.sigma_min, ctx.sigma_max).with_name("slow")
    table = {m.name: m for m in HEURISTICS[:2]} | {"slow": Method("slow", "optimizer", slow)}
    model = MixtureDenoiser(get_toy("ring8"))
    job = TuneJob({}, lambda path: Tuner(model, "euler", 3, table=table, n=64, batches=2, ref_steps=20,
                                         state_path=path), home=tmp_path).start()
    job.advance(0.0)
    job.advance(0.0)
    assert job.done_units == 2
    worker = threading.Thread(target=job.advance, args=(10.0,))
    worker.start()
    assert inside.wait(30)                         # the worker is inside "optimize:slow"
    job.stop()
    assert job.status == "stopping" and job.active
    job.advance(0.0)                               # a second caller does not wait and does not step
    go.set()
    worker.join(30)
    assert job.status == "stopped" and job.done_units == 3 and job._gen is None
    assert "slow" in Tuner(model, "euler", 3, table=table, n=64, batches=2, ref_steps=20,
                           state_path=job.state_path).state["candidates"]
    job.resume()
    while job.active:
        job.advance(0.0)
    assert job.status == "done" and job.result.winner in ("slow", job.result.best_heuristic)
