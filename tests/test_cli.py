"""The command line is a contract: JSON on stdout, one-line errors, exit codes."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    p = subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    return p.returncode, p.stdout, p.stderr


def test_lists():
    for cmd, member in (("toys", "grid8x8"), ("solvers", "dpmpp_2m_sde"), ("schedules", "kl_optimal")):
        rc, out, _ = run(cmd, "--json")
        assert rc == 0
        data = json.loads(out)
        names = [d["name"] if isinstance(d, dict) else d for d in data]
        assert member in names


def test_schedule_formats():
    rc, out, _ = run("schedule", "karras", "--steps", "4", "--format", "comfyui")
    assert rc == 0 and out.strip().endswith(", 0.0") and out.startswith("80.0, ")
    rc, out, _ = run("schedule", "kl_optimal", "--steps", "5", "--param", "c=1.0")
    d = json.loads(out)
    assert d["params"] == {"c": 1.0} and len(d["sigmas"]) == 6
    rc, out, _ = run("schedule", "ays_sd15", "--steps", "10", "--format", "diffusers")
    assert out.startswith("# Schedule Lab: ays_sd15, 10 steps")
    assert "sigmas = [14.614641229333639, 6.474576095621179, " in out and "0.15152326618344922, 0.0]" in out


def test_sample_json_contract(tmp_path):
    rc, out, err = run("sample", "--toy", "grid8x8", "--schedule", "loglinear", "--steps", "8", "--solver",
                       "dpmpp_2m_sde", "--n", "2000", "--seeds", "2", "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert {"nll", "kde_nll", "coverage", "swd", "mmd", "nfe", "seconds", "sigmas"} <= set(d)
    assert d["nfe"] == 8 and len(d["sigmas"]) == 9 and d["nll_ci"] is not None
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"sigmas": d["sigmas"], "name": "mine"}))
    rc, out2, _ = run("sample", "--toy", "grid8x8", "--schedule", str(f), "--steps", "8", "--solver",
                      "dpmpp_2m_sde", "--n", "2000", "--seeds", "2", "--json")
    assert rc == 0 and json.loads(out2)["nll"] == d["nll"]


@pytest.mark.parametrize("args,needle", [
    (("sample", "--toy", "grid9", "--schedule", "karras", "--steps", "4", "--solver", "euler"), "unknown toy 'grid9'"),
    (("sample", "--toy", "moons", "--schedule", "karas", "--steps", "4", "--solver", "euler"), "unknown schedule"),
    (("sample", "--toy", "moons", "--schedule", "karras", "--steps", "4", "--solver", "rk9"), "unknown solver"),
    (("sample", "--toy", "moons", "--schedule", "karras", "--steps", "4", "--solver", "euler", "--model", "big"),
     "unknown model 'big'"),            # --model is exact | mlp | your own module.py:Class
    (("schedule", "karras", "--steps", "0"), "positive integer"),
    (("schedule", "karras", "--steps", "5", "--param", "rh=7"), "no parameter"),
])
def test_bad_values_exit_nonzero_with_one_line(args, needle):
    rc, out, err = run(*args)
    assert rc == 2 and needle in err
    assert len(err.strip().splitlines()) == 1
