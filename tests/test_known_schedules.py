"""Best known schedules for a model (core.tune.known), where a schedule was made (core.schedules.provenance),
the on-disk reference of core.compare and the PNG grid of core.images_io."""
import io
import json

import numpy as np
import pytest
import torch

from core.compare import cached_reference, reference_path, reference_solution
from core.models.registry import shipped_schedule
from core.schedules import Schedule, make_schedule
from core.schedules.provenance import base_model_name, made_for, model_mismatch, solver_mismatch
from core.tune.known import known_schedules


def _write_tune(folder, name, model, solver, steps, won=True, metric="fd"):
    """A file in TuneResult.write's format: the winner's schedule JSON plus the leaderboard under "tune"."""
    opt = make_schedule("karras", steps, 0.002, 80.0, rho=3.0)
    heur = make_schedule("loglinear", steps, 0.002, 80.0)
    win = opt if won else heur
    d = Schedule(win.sigmas, name="gits" if won else "loglinear", solver=solver,
                 params={"model": model, "solver": solver}).to_dict()
    d["tune"] = {"winner": "gits" if won else "loglinear", "winner_kind": "optimizer" if won else "heuristic",
                 "best_heuristic": "loglinear", "metric": metric,
                 "table": [{"name": "gits", "kind": "optimizer", "sigmas": list(opt.sigmas), metric: 0.2,
                            f"{metric}_ci": 0.01},
                           {"name": "oss", "kind": "optimizer", "sigmas": list(heur.sigmas), metric: 0.3},
                           {"name": "loglinear", "kind": "heuristic", "sigmas": list(heur.sigmas), metric: 0.25}]}
    p = folder / f"{name}.json"
    p.write_text(json.dumps(d))
    return p, opt


def test_known_schedules_rank_shipped_and_saved_results(tmp_path):
    """digits ships AYS; saved tune files count for their model only; the one made for the asked solver
    and step count comes first; from each file the best optimizer (lowest held-out metric) is offered."""
    p_heun, _ = _write_tune(tmp_path, "a", "digits", "heun", 10)
    p_2m, opt = _write_tune(tmp_path, "b", "digits", "dpmpp_2m", 10)
    _write_tune(tmp_path, "c", "digits-flow | label 3, w=3", "dpmpp_2m", 10)
    (tmp_path / "bad.json").write_text('{"sigmas": [1, 2, 0], "tune": {}}')
    known, problems = known_schedules("digits", "dpmpp_2m", 10, [tmp_path])
    assert [k.key for k in known] == [f"tune:{p_2m}#gits", "shipped:ays", f"tune:{p_heun}#gits"]
    assert known[0].sigmas == opt.sigmas and known[0].beat_heuristic is True and known[0].solver == "dpmpp_2m"
    assert known[1].sigmas == shipped_schedule("digits", 10).sigmas
    assert len(problems) == 1 and "bad.json" in problems[0] and "decreasing" in problems[0]
    # the guided flow model's file counts for digits-flow, with its guidance in the label
    flow = [k for k in known_schedules("digits-flow", "dpmpp_2m", 10, [tmp_path])[0] if str(tmp_path) in k.source]
    assert len(flow) == 1 and "label 3, w=3" in flow[0].label
    # resampled to other step counts log-linearly, ends kept
    s6 = known[0].schedule(6)
    assert s6.steps == 6 and s6.sigma_max == opt.sigma_max and s6.sigma_min == pytest.approx(opt.sigma_min)


def test_a_tune_that_no_optimizer_won_offers_its_best_optimizer_as_having_lost(tmp_path):
    _write_tune(tmp_path, "lost", "digits-flow", "dpmpp_2m", 10, won=False)
    (k,) = [k for k in known_schedules("digits-flow", "dpmpp_2m", 10, [tmp_path])[0] if str(tmp_path) in k.source]
    assert k.beat_heuristic is False and "did not beat the best heuristic loglinear" in k.detail
    assert k.sigmas == make_schedule("karras", 10, 0.002, 80.0, rho=3.0).sigmas          # gits (0.2) over oss (0.3)


def test_digits_flow_ships_a_tune_result_that_beat_its_best_heuristic():
    """checkpoints/digits-flow/schedules/tune_dpmpp_2m_10.json: OSS, held-out ref 0.0345 against time_quadratic's
    0.0519 (README there); offered first for dpmpp_2m at 10 steps."""
    k = known_schedules("digits-flow", "dpmpp_2m", 10)[0][0]
    assert k.beat_heuristic is True and k.solver == "dpmpp_2m" and k.steps_made == 10
    assert k.params["method"] == "oss" and k.params["heldout_mean"] == pytest.approx(0.0345, abs=1e-4)


def test_provenance_messages():
    nonuni = Schedule((80.0, 1.0, 0.0), name="nonuniform", solver="dpmpp_3m_lagrange")
    ays = Schedule((80.0, 1.0, 0.0), name="ays", params={"model": "digits"})
    sd15 = make_schedule("ays_sd15", 10)
    assert made_for(sd15) == {"model": "sd15", "solver": None}
    assert base_model_name("digits-flow | label 3, w=3") == "digits-flow" == base_model_name("digits-flow#3#3")
    assert model_mismatch(ays, ["digits#all#3"]) is None and "'digits'" in model_mismatch(ays, ["gauss8"])
    assert solver_mismatch(nonuni, "dpmpp_3m_lagrange") is None and "dpmpp_3m_lagrange" in solver_mismatch(nonuni, "euler")
    assert model_mismatch(make_schedule("karras", 5), ["x"]) is None                   # a heuristic fits any model
    assert solver_mismatch(make_schedule("karras", 5), "euler") is None


def test_cached_reference_is_the_reference_and_survives_a_corrupt_file(tmp_path):
    from fake_engine import GaussianImages
    model = GaussianImages()
    want = reference_solution(model, 3, 5, 80.0, steps=12)
    x = cached_reference(model, 3, 5, 80.0, steps=12, root=tmp_path)
    path = reference_path(model, 3, 5, 80.0, steps=12, root=tmp_path)
    assert path.is_file() and torch.equal(x, want)
    assert torch.equal(cached_reference(model, 3, 5, 80.0, steps=12, root=tmp_path), want)     # read back
    assert reference_path(model, 3, 6, 80.0, steps=12, root=tmp_path) != path                   # seed in the key
    assert reference_path(GaussianImages(c=0.4), 3, 5, 80.0, steps=12, root=tmp_path) != path   # model in the key
    path.write_bytes(b"not a safetensors file")
    assert torch.equal(cached_reference(model, 3, 5, 80.0, steps=12, root=tmp_path), want)


def test_grid_png_is_the_grid():
    from PIL import Image

    from core.images_io import grid, grid_png
    x = torch.linspace(-1, 1, 2 * 1 * 3 * 3).reshape(2, 1, 3, 3)
    img = Image.open(io.BytesIO(grid_png(x, nrow=2, scale=2)))
    assert img.format == "PNG" and img.size == (18, 10)        # 2 x (3 + 1) + 1 by 1 x (3 + 1) + 1, x 2
    np.testing.assert_array_equal(np.asarray(img), grid(x, nrow=2, scale=2)[..., 0])
    assert np.asarray(img).max() == 255 and np.asarray(img).min() == 0
