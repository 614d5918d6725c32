"""Issue 15's warnings, downloads and transfer view through AppTest: a schedule sampled with another
solver than its own, or used on another model, is flagged next to its picker (and only then); a bad
path in the sidebar gets a message in the app's words; the metric tables download as CSV with the
numbers the page shows; the transfer heatmaps hold the engine's numbers (computed on the toy) and the
benchmark JSON's numbers (read from disk)."""
import csv
import io
import json
import math

import numpy as np
import pytest

from app_helpers import APP, ROOT, arr, assert_clean, figures, open_page
from core.schedules import Schedule, make_schedule, resample_loglinear
from core.schedules.provenance import model_mismatch, solver_mismatch
from core.transfer import guidance_transfer

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread for this module

CHEAP = {"pg_steps": 4, "pg_n": 500, "pg_seeds": 2, "pg_paths": 4}


@pytest.fixture
def downloads(monkeypatch):
    """The files st.download_button stored in AppTest's media storage: url -> bytes (AppTest makes a
    fresh storage per run; every storage is kept here)."""
    import streamlit.testing.v1.app_test as app_test
    stores = []

    class Recording(app_test.MemoryMediaFileStorage):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            stores.append(self)

    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", Recording)

    def read(at, key):
        url = next(b for b in at.get("download_button") if b.proto.id.endswith(key) or key in b.proto.id).proto.url
        return stores[-1].get_file(url.rsplit("/", 1)[1]).content
    return read


# ---------------------------------------------------------------- the sentences (core.schedules.provenance)
def test_fit_sentences_fire_only_on_a_mismatch():
    heur = make_schedule("karras", 6)
    so = Schedule(heur.sigmas, name="score_optimal", solver="heun", params={"model": "mlp:spiral"})
    assert solver_mismatch(heur, "dpmpp_2m") is None and model_mismatch(heur, "exact:ring8") is None
    assert solver_mismatch(so, "heun") is None and model_mismatch(so, "mlp:spiral") is None
    assert "heun" in solver_mismatch(so, "dpmpp_2m") and "dpmpp_2m" in solver_mismatch(so, "dpmpp_2m")
    assert "mlp:spiral" in model_mismatch(so, "exact:spiral")


# ---------------------------------------------------------------- warnings on the pages
def _lib_schedule(toy_model_name: str, solver: str | None) -> Schedule:
    return Schedule(make_schedule("karras", 4).sigmas, name="score_optimal", solver=solver,
                    params={"model": toy_model_name})


def test_playground_warns_for_another_solver_and_another_model_and_not_otherwise():
    at = open_page("playground", toy="gaussian", **CHEAP)
    assert at.session_state["pg_warnings"] == [] and not at.warning
    at.session_state["library"]["so (4 steps)"] = _lib_schedule("exact:gaussian", "heun")
    at.run()
    at.selectbox(key="pg_sched_a").set_value("lib:so (4 steps)").run()
    assert_clean(at)
    got = at.session_state["pg_warnings"]                      # dpmpp_2m, made for heun, same model
    assert len(got) == 1 and "optimized for the heun solver" in got[0] and "dpmpp_2m" in got[0]
    assert [w.value for w in at.warning] == got
    at.number_input(key="pg_steps").set_value(3).run()         # resampled: still made for heun, and labelled so
    assert list(at.session_state["pg_schedules"])[0] == "A: library: so (4 steps, resampled to 3)"
    assert at.session_state["pg_warnings"] == [got[0].replace("(4 steps)", "(4 steps, resampled to 3)")]
    at.selectbox(key="pg_solver").set_value("heun").run()      # its own solver: no warning
    assert at.session_state["pg_warnings"] == [] and not at.warning
    at.session_state["sb_toy"] = "ring8"                         # another toy's model
    at.run()
    got = at.session_state["pg_warnings"]
    assert len(got) == 1 and "'exact:gaussian'" in got[0] and "'exact:ring8'" in got[0]


def test_error_curves_warn_for_another_model_only(downloads):
    state = {"ec_scheds": ["karras"], "ec_steps": 4, "ec_n": 256, "ec_levels": 50}
    at = open_page("error_curves", toy="gaussian", **state)
    at.session_state["library"]["so"] = _lib_schedule("exact:gaussian", "heun")
    at.run()
    at.multiselect(key="ec_scheds").set_value(["karras", "lib:so"]).run()
    assert_clean(at)
    assert list(at.session_state["ec_curves"]["KLUB (Align Your Steps)"]) == ["karras", "library: so"]
    assert at.session_state["ec_warnings"] == []                # same model; the solver is not this page's
    # the totals table downloads with the numbers it shows (full precision)
    rows = list(csv.DictReader(io.StringIO(downloads(at, "ec_dl_totals").decode())))
    totals = at.session_state["ec_totals"]["rows"]
    assert [r["schedule"] for r in rows] == [t["schedule"] for t in totals]
    for r, t in zip(rows, totals):
        for col in ("KLUB", "KLUB s.e.", "Stein", "bound"):
            assert float(r[col]) == pytest.approx(t[col], rel=1e-12), col
        assert r["toy"] == "gaussian" and int(r["steps"]) == 4
    at.session_state["library"]["so"] = _lib_schedule("mlp:ring8", "heun")
    at.run()
    got = at.session_state["ec_warnings"]
    assert len(got) == 1 and "'mlp:ring8'" in got[0] and [w.value for w in at.warning] == got


def test_playground_metrics_download_is_the_table(downloads):
    at = open_page("playground", toy="gaussian", **CHEAP)
    rows = list(csv.DictReader(io.StringIO(downloads(at, "pg_dl_metrics").decode())))
    metrics = at.session_state["pg_metrics"]
    assert [r["schedule"] for r in rows] == list(metrics)
    for r in rows:
        m = metrics[r["schedule"]]
        for k in ("nll", "kde_nll", "coverage", "swd", "mmd"):
            assert float(r[k]) == pytest.approx(m[k], rel=1e-12) and float(r[k + "_ci95"]) == pytest.approx(
                m[k + "_ci"], rel=1e-12)
        assert (r["solver"], int(r["steps"]), int(r["NFE"]), int(r["seeds"])) == ("dpmpp_2m", 4, m["nfe"], 2)
    # the winner of each column is the one highlighted (core.viz_data.metric_winners)
    best = at.session_state["pg_metric_winners"]
    assert best["NLL (nats)"] == min(metrics, key=lambda k: metrics[k]["nll"])
    assert best["mode coverage"] == max(metrics, key=lambda k: metrics[k]["coverage"])


def test_schedules_page_downloads_hold_the_export_text(downloads):
    at = open_page("schedules", toy="gaussian")
    texts = at.session_state["sc_export"]
    for fmt in ("json", "comfyui", "diffusers", "list"):
        assert downloads(at, f"sc_dl_{fmt}").decode() == texts[fmt]
    # an import outside the sidebar model's range (0.002 .. 80) is added with a warning next to Import
    for text, outside in (("[120, 10, 1, 0]", True), ("[10, 1, 0.1, 0]", False)):
        at.text_area(key="sc_import_text").input(text)
        at.radio(key="sc_import_conv").set_value("sigmas")
        at.button(key="sc_import_btn").click().run()
        assert_clean(at)
        assert (len(at.warning), len(at.success)) == ((1, 0) if outside else (0, 1))
        msg = (at.warning if outside else at.success)[0].value
        assert msg.startswith("imported 3-step schedule") and ("above the sidebar's model" in msg) == outside


# ---------------------------------------------------------------- the sidebar's paths
@pytest.mark.parametrize("spec, weights, says", [
    ("/nowhere/model.py:Net", "", "no Python file '/nowhere/model.py' on the machine that runs the app"),
    ("/nowhere/folder", "", "This box takes a Python class"),
    ("tests/fake_engine.py:Net", "/nowhere/w.safetensors", "the weights file '/nowhere/w.safetensors' is not there"),
])
def test_a_bad_path_gets_a_message_for_the_app(spec, weights, says):
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(APP, default_timeout=120)
    for k, v in {"sb_toy": "gaussian", "sb_user_spec": spec, "sb_user_weights": weights, **CHEAP}.items():
        at.session_state[k] = v
    at.run()
    assert not at.exception
    errs = [e.value for e in at.error]
    assert len(errs) == 1 and says in errs[0], errs
    assert "--" not in errs[0]                                  # no command-line flags
    assert at.sidebar.selectbox(key="sb_model_kind").value == "exact"


# ---------------------------------------------------------------- transfer view
def test_guidance_heatmap_is_the_benchmark_json():
    at = open_page("schedules", toy="gaussian")
    figs = figures(at)
    files = [json.loads((ROOT / "bench" / "results" / f).read_text()) for f in ("guidance_toy.json",
                                                                                 "guidance_digits.json")]
    cases = [(name, c) for d in files for name, c in d["cases"].items() if "ws" in c]   # transfer cases only
    assert len(cases) == len([k for k in figs if k.startswith("sc_fig_transfer_guidance_")]) == 2
    for i, (name, case) in enumerate(cases):
        hm = figs[f"sc_fig_transfer_guidance_{i}"]["data"][0]
        rows, cols = hm["y"], hm["x"]
        assert cols == [f"w={w:g}" for w in case["ws"]]
        optimized = set(case["schedules"])
        for r, row in enumerate(rows):
            for c, col in enumerate(cols):
                key = f"{row} -> {col}" if row in optimized else f"{row} @ w=1 -> {col}"
                want = case["error"][key]                        # the JSON's number, as the cell's text
                assert hm["text"][r][c].split(" ")[0] == f"{want:.3g}", (row, col)
                own = row in optimized and row.endswith(f"@ {col}")
                assert hm["text"][r][c].endswith("●") == own
        z = arr(hm["z"]).reshape(len(rows), len(cols))          # colour: log10 of the ratio to the column's best
        best = [min(case["error"][f"{row} -> {col}" if row in optimized else f"{row} @ w=1 -> {col}"]
                    for row in rows) for col in cols]
        for r, row in enumerate(rows):
            for c, col in enumerate(cols):
                v = case["error"][f"{row} -> {col}" if row in optimized else f"{row} @ w=1 -> {col}"]
                assert z[r, c] == pytest.approx(math.log10(v / best[c]), abs=1e-12)
        assert f"bench/results/guidance_{'toy' if i == 0 else 'digits'}.json" in " ".join(c.value for c in at.caption)


def test_guidance_transfer_refuses_a_malformed_case():
    with pytest.raises(Exception, match="'ROW -> w=W'"):
        guidance_transfer({"ws": [1.0], "error": {"karras w=1": 0.1}})
    rec = guidance_transfer({"ws": [1, 2], "schedules": {"a @ w=2": []},
                             "error": {"a @ w=2 -> w=1": 0.2, "a @ w=2 -> w=2": 0.1, "k @ w=1 -> w=1": 0.1,
                                       "k @ w=1 -> w=2": 0.3}})
    assert rec["rows"] == ["a @ w=2", "k"] and rec["own"] == [[False, True], [False, False]]
    assert np.asarray(rec["ratio"]) == pytest.approx(np.array([[2.0, 1.0], [1.0, 3.0]]), rel=1e-12)


def test_solver_heatmap_is_the_engines_matrix():
    from app_lib.state import toy_model
    from core.transfer import solver_transfer
    so = Schedule(make_schedule("loglinear", 5).sigmas, name="so", solver="heun", params={"model": "exact:gaussian"})
    at = open_page("schedules", toy="gaussian", sc_tr_steps=5, sc_tr_n=256, sc_tr_toyopt=False,
                   sc_tr_solvers=["euler", "heun", "dpmpp_2m"])
    at.session_state["library"]["so"] = so
    at.run()
    at.multiselect(key="sc_tr_rows").set_value(["karras (10 steps)", "so"]).run()
    assert "sc_transfer_solver" not in at.session_state             # computed on demand only
    at.button(key="sc_tr_btn").click().run()
    assert_clean(at)
    rec = at.session_state["sc_transfer_solver"]
    model = toy_model("gaussian", "exact", "cpu")
    karras = resample_loglinear(make_schedule("karras", 10), 5)      # the library's, resampled to 5 steps
    want = solver_transfer(model, {"karras": karras, "so": so}, ["euler", "heun", "dpmpp_2m"], n=256, seed=0)
    np.testing.assert_allclose(rec["value"], want["value"], rtol=1e-10)
    assert rec["own"] == [[False, False, False], [False, True, False]] and rec["nfe"] == want["nfe"]
    hm = figures(at)["sc_fig_transfer_solver"]["data"][0]
    assert hm["x"] == ["euler", "heun", "dpmpp_2m"] and hm["y"] == ["karras (heuristic)", "so (heun)"]
    np.testing.assert_allclose(arr(hm["z"]).reshape(2, 3), np.log10(np.asarray(want["ratio"])), atol=1e-12)


def test_solver_transfer_shows_each_solvers_convergence_order():
    """core.transfer.solver_transfer on the exact ring8 denoiser: doubling the Karras steps from 32 to 64
    halves euler's distance to the reference (first order) and quarters heun's (second order); a
    stochastic solver is refused (its samples do not follow the reference ODE)."""
    from core.errors import ScheduleLabError
    from core.models import load_toy_model
    from core.transfer import solver_transfer
    m = load_toy_model("ring8", "exact")
    sc = {f"k{n}": make_schedule("karras", n, m.sigma_min, m.sigma_max) for n in (32, 64)}
    rec = solver_transfer(m, sc, ["euler", "heun"], n=256, ref_steps=800)
    (e32, h32), (e64, h64) = rec["value"]
    assert 1.7 < e32 / e64 < 2.6 and 3.2 < h32 / h64 < 6.0, rec["value"]
    assert rec["nfe"] == [[32, 63], [64, 127]] and rec["own"] == [[False, False], [False, False]]
    with pytest.raises(ScheduleLabError, match="stochastic"):
        solver_transfer(m, sc, ["euler_ancestral"])


def test_cli_sample_warns_for_another_solver(tmp_path, capsys):
    from core.cli import main
    f = tmp_path / "so.json"
    f.write_text(_lib_schedule("exact:grid8x8", "heun").to_json())
    args = ["sample", "--toy", "grid8x8", "--schedule", str(f), "--steps", "4", "--n", "200", "--json"]
    assert main(args + ["--solver", "dpmpp_2m"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "optimized for the heun solver" in err
    assert main(args + ["--solver", "heun"]) == 0
    assert "warning" not in capsys.readouterr().err
