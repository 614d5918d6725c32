"""torch.distributed scale-out of the KLUB Monte Carlo (gloo, 2 CPU processes) equals 1 process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from core.cli import main
from core.errors import ScheduleLabError
from core.models import MixtureDenoiser
from core.objectives.klub import klub
from core.optimizers.ays import AYSOptimizer
from core.optimizers.distributed import Partition, free_port, init_from_env, shutdown
from toy_data import get_toy

ROOT = Path(__file__).resolve().parents[1]
A, B = [0.01, 0.1, 1.0], [0.05, 0.7, 5.0]
OPT = dict(steps=4, n_samples=301, max_iters=2, heldout="nll", heldout_n=128, seed=3)   # 301: uneven split


def _single():
    mix = get_toy("ring8")
    model = MixtureDenoiser(mix)
    r = klub(model, mix.sample, A, B, n_samples=301, seed=11)
    opt = AYSOptimizer(model, mix.sample, **OPT)
    objs = [(e.objective, e.heldout) for e in opt.events()]
    return {"est": r.estimate.tolist(), "se": r.se.tolist(), "n": r.n, "objs": objs,
            "sigmas": list(opt.finest().sigmas)}


def _worker(rank, world, port, out):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        part = Partition.from_torch()
        mix = get_toy("ring8")
        model = MixtureDenoiser(mix)
        r = klub(model, mix.sample, A, B, n_samples=301, seed=11, partition=part)
        opt = AYSOptimizer(model, mix.sample, partition=part, **OPT)
        objs = [(e.objective, e.heldout) for e in opt.events()]
        res = {"est": r.estimate.tolist(), "se": r.se.tolist(), "n": r.n, "objs": objs,
               "sigmas": list(opt.finest().sigmas), "slice": [part.slice(301).start, part.slice(301).stop]}
        Path(out, f"rank{rank}.json").write_text(json.dumps(res))
    finally:
        shutdown()


def test_two_processes_equal_one(tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = _single()
    finally:
        torch.set_num_threads(n)
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2))
    assert r0["slice"] == [0, 151] and r1["slice"] == [151, 301]          # the union is the 1-process draw
    for r in (r0, r1):                                                     # every rank agrees with 1 process
        assert r["n"] == 301
        assert torch.allclose(torch.tensor(r["est"]), torch.tensor(ref["est"]), rtol=1e-10)
        assert torch.allclose(torch.tensor(r["se"]), torch.tensor(ref["se"]), rtol=1e-8)
        assert torch.allclose(torch.tensor(r["sigmas"]), torch.tensor(ref["sigmas"]), rtol=1e-12)
        got, want = torch.tensor(r["objs"]), torch.tensor(ref["objs"])
        assert torch.allclose(got, want, rtol=1e-10)


def test_torchrun_cli_equals_single_process_cli(tmp_path, capsys):
    args = ["optimize", "ays", "--toy", "ring8", "--steps", "4", "--samples", "256", "--max-iters", "2",
            "--heldout", "none", "--quiet", "--threads", "1"]
    assert main(args + ["--out", str(tmp_path / "one.json")]) == 0
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "core", *args,
           "--distributed", "--out", str(tmp_path / "two.json")]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    one = json.loads((tmp_path / "one.json").read_text())["sigmas"]
    two = json.loads((tmp_path / "two.json").read_text())["sigmas"]
    assert torch.allclose(torch.tensor(two), torch.tensor(one), rtol=1e-12)


def test_partition_rules():
    assert [Partition(r, 3).slice(10) for r in range(3)] == [slice(0, 4), slice(4, 7), slice(7, 10)]
    with pytest.raises(ScheduleLabError):
        Partition(0, 4).slice(3)
    with pytest.raises(ScheduleLabError):
        Partition(2, 2)
    saved = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE") if k in os.environ}
    try:
        with pytest.raises(ScheduleLabError, match="torchrun"):
            init_from_env()
    finally:
        os.environ.update(saved)
