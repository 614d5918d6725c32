"""Fuzz every reader of user input (issue 13, deliverable 6): schedule JSON (dict, file, pasted text),
mixture JSON (dict, file), optimizer state files and the three optimizers' load_state_dict.

Seeded mutations of valid documents -- a field replaced by a value of another type, a huge or
non-finite number, deep nesting, a deleted or added key, truncated / byte-flipped / binary files,
5000-digit numbers.  Property: each reader either succeeds or raises ScheduleLabError; any other
exception is a crash the user would see as a traceback.
"""
from __future__ import annotations

import copy
import json
import os
import random

import pytest
import torch

from core.errors import ScheduleLabError
from core.optimizers.ays import AYSOptimizer
from core.optimizers.base import Optimizer
from core.schedules import Schedule, make_schedule, parse
from toy_data import get_toy
from toy_data.mixture import GaussianMixture

LAST = {}
SEED, CASES = 20261206, int(os.environ.get("FUZZ_CASES", 300))      # FUZZ_CASES=3000 for a longer run

ODD_VALUES = ["a", "", True, False, None, 5, -1, 0, 10 ** 400, -(10 ** 30), 1e308, 3.5, [], {}, [1, "x"],
              [[1, 2], [3]], {"a": 1}, [None], "1e999", [10 ** 400], "\udcff" * 3, [[[[[]]]]], list(range(50)),
              [float("nan")], [float("inf"), 1, 0], "9" * 5000]


def _mutate(doc, rng: random.Random, rounds: int = 2):
    """A copy of a JSON document with `rounds` random edits at random paths."""
    doc = copy.deepcopy(doc)
    for _ in range(rounds):
        parent, key = None, None
        node = doc
        for _ in range(rng.randint(0, 4)):                  # walk down a random path
            if isinstance(node, dict) and node:
                parent, key = node, rng.choice(list(node))
            elif isinstance(node, list) and node:
                parent, key = node, rng.randrange(len(node))
            else:
                break
            node = parent[key]
        op = rng.random()
        if parent is None:
            if isinstance(doc, dict) and doc and op < 0.3:
                doc.pop(rng.choice(list(doc)))
            elif isinstance(doc, dict):
                doc[rng.choice(["x", "sigmas", "config", "name", "params"])] = rng.choice(ODD_VALUES)
            continue
        if op < 0.55:
            parent[key] = copy.deepcopy(rng.choice(ODD_VALUES))
        elif op < 0.7 and isinstance(parent, dict):
            parent.pop(key)
        elif op < 0.8 and isinstance(node, (int, float)) and not isinstance(node, bool):
            m = rng.choice([-1, 0, 1e300, 1e-300])
            parent[key] = -node if isinstance(node, int) and abs(node) > 10 ** 300 else node * m
        elif op < 0.9 and isinstance(node, list):
            parent[key] = node[: rng.randint(0, len(node))] + node[:1] * rng.randint(0, 3)
        else:
            parent[key] = [copy.deepcopy(node)]
    return doc


def _text_variants(text: str, rng: random.Random) -> str:
    """Truncate, flip, nest or pad a JSON text."""
    op = rng.random()
    if op < 0.25 and text:
        return text[: rng.randrange(len(text))]
    if op < 0.45 and text:
        i = rng.randrange(len(text))
        return text[:i] + rng.choice("{}[],:\"0e-9nN\\\x00é") + text[i + 1:]
    if op < 0.55:
        d = rng.choice([50, 5000, 100_000])
        return "[" * d + "1" + "]" * d
    if op < 0.65:
        return '{"sigmas": [' + "9" * rng.choice([400, 5000]) + ', 1, 0]}'
    if op < 0.75:
        return text.replace("0.", "1e99999", 1)
    return text


def _valid_ays_state(mix):
    opt = AYSOptimizer(mix_model(mix), mix.sample, steps=4, stages=(4,), n_samples=64, max_iters=1,
                       heldout=None, mixture=mix, seed=0)
    for _ in opt.events():
        pass
    return opt.state_dict()


def mix_model(mix):
    from core.models import MixtureDenoiser
    return MixtureDenoiser(mix)


def _call(fn, *args):
    """'ok' | 'error' (ScheduleLabError) | the crash as 'Type: message'."""
    try:
        fn(*args)
        return "ok"
    except ScheduleLabError:
        return "error"
    except Exception as e:  # noqa: BLE001 - the property under test
        return f"{type(e).__name__}: {str(e)[:120]}"


def test_every_reader_raises_only_schedule_lab_error(tmp_path):
    rng = random.Random(SEED)
    torch.manual_seed(0)
    mix = get_toy("gaussian")
    sched = make_schedule("karras", 6).to_dict()
    mixture = get_toy("ring8").to_dict()
    ays_state = _valid_ays_state(mix)
    fresh_ays = AYSOptimizer(mix_model(mix), mix.sample, steps=4, stages=(4,), n_samples=64, max_iters=1,
                             heldout=None, mixture=mix, seed=0)
    from core.optimizers.nonuniform import NonUniformOptimizer
    nu = NonUniformOptimizer(4)
    nu_state = {"method": "nonuniform", "config": nu._config(), "iteration": 3,
                "done": [{"start": "edm", "lambdas": [1.0, 0.5], "objective": 1.0, "converged": True}]}

    readers = {
        "Schedule.from_dict": lambda d, t: Schedule.from_dict(d),
        "Schedule.load": lambda d, t: Schedule.load(_write(tmp_path / "s.json", t)),
        "parse": lambda d, t: parse(t),
        "GaussianMixture.from_dict": lambda d, t: GaussianMixture.from_dict(d),
        "GaussianMixture.from_json": lambda d, t: GaussianMixture.from_json(_write(tmp_path / "m.json", t)),
        "Optimizer.read_state": lambda d, t: Optimizer.read_state(_write(tmp_path / "st.json", t)),
        "AYS.load_state_dict": lambda d, t: fresh_ays.load_state_dict(d),
        "NonUniform.load_state_dict": lambda d, t: NonUniformOptimizer(4).load_state_dict(d),
    }
    bases = {"Schedule.from_dict": sched, "Schedule.load": sched, "parse": sched,
             "GaussianMixture.from_dict": mixture, "GaussianMixture.from_json": mixture,
             "Optimizer.read_state": ays_state, "AYS.load_state_dict": ays_state,
             "NonUniform.load_state_dict": nu_state}
    crashes, outcomes = [], {}
    for i in range(CASES):
        name = list(readers)[i % len(readers)]
        doc = _mutate(bases[name], rng, rounds=rng.randint(1, 3))
        try:
            text = json.dumps(doc)
        except (ValueError, TypeError):
            text = str(doc)
        if name in ("Schedule.load", "parse", "GaussianMixture.from_json", "Optimizer.read_state"):
            text = _text_variants(text, rng)
        if rng.random() < 0.05 and name != "parse":
            text = bytes(rng.randrange(256) for _ in range(64)).decode("latin-1")     # binary junk
        r = _call(readers[name], doc, text)
        outcomes[r if r in ("ok", "error") else "crash"] = outcomes.get(r if r in ("ok", "error") else "crash", 0) + 1
        if r not in ("ok", "error"):
            crashes.append((name, i, r))
    # binary files straight from bytes (not through str): UnicodeDecodeError must not escape
    for path in (tmp_path / "bin.json",):
        path.write_bytes(bytes(range(256)) * 4)
        for fn in (Schedule.load, GaussianMixture.from_json, Optimizer.read_state):
            r = _call(fn, path)
            if r not in ("ok", "error"):
                crashes.append((fn.__qualname__, "binary", r))
    LAST.update(crashes=crashes, outcomes=outcomes)            # for a longer run's report (FUZZ_CASES)
    assert not crashes, f"{len(crashes)} crashes, e.g. {crashes[:5]}"
    # the fuzzer reached both sides: some inputs are accepted, most are refused
    assert outcomes.get("error", 0) > CASES // 3 and outcomes.get("ok", 0) > 0, outcomes


def _write(path, text: str):
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
    return path


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"sigmas": [' + "1" * 5000 + ", 0]}",
                                  '{"sigmas": [NaN, 0]}', '{"sigmas": [1e999, 0]}'])
def test_parse_limits(text):
    with pytest.raises(ScheduleLabError):
        parse(text)
