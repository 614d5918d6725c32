"""Resume that cannot lose or mix work.

- A state records the run's full settings (`config`), including content hashes of the data
  (`data_fingerprint`) and of the model (`core.cache.model_fingerprint`), so a different mixture
  file that calls itself "grid8x8" cannot resume grid8x8's state.
- `check_resume(state, config, keys)` compares them before anything is loaded: a state with no
  config, a missing key or a different value is refused, naming the key and both values.
- `claim_state_path(path, resume, force)` runs before any work: an existing state is never
  overwritten unless the run resumes it or --force is given, and a forced overwrite keeps a .bak.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch

from core.errors import ScheduleLabError

FINGERPRINT_SAMPLES = 256          # rows drawn from a sampler to fingerprint data we cannot read directly


def tensor_hash(*tensors, extra: str = "") -> str:
    """Short SHA-256 of tensors' shapes and float64 values (and an extra string)."""
    h = hashlib.sha256(extra.encode())
    for t in tensors:
        t = torch.as_tensor(t).detach().to("cpu", torch.float64).contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def data_fingerprint(sampler, mixture=None) -> str:
    """Content hash of the data an optimizer fits: the mixture's weights / means / covariances,
    the images of an ImageData, or else FINGERPRINT_SAMPLES draws of `sampler` from a fixed seed."""
    if mixture is None and all(hasattr(sampler, k) for k in ("weights", "means", "covariances")):
        mixture = sampler                                  # a GaussianMixture passed as the data
    if mixture is not None:
        return "mixture:" + tensor_hash(mixture.weights, mixture.means, mixture.covariances)
    images = getattr(sampler, "images", None)
    if isinstance(images, torch.Tensor):
        return "images:" + tensor_hash(images)
    draw = sampler if callable(sampler) else sampler.sample
    x = draw(FINGERPRINT_SAMPLES, torch.Generator().manual_seed(20240917))
    return "draws:" + tensor_hash(x)


def check_resume(state, config: dict, keys, what: str = "optimizer") -> dict:
    """Refuse a state whose settings differ from this run's (every key in `keys`); returns the
    state's config. Raises ScheduleLabError naming the first differing key and both values."""
    if not isinstance(state, dict):
        raise ScheduleLabError(f"the saved {what} state is not a JSON object; start a new run")
    theirs = state.get("config")
    if not isinstance(theirs, dict):
        raise ScheduleLabError(f"the saved {what} state records no settings ('config'), so it cannot be "
                               "checked against this run; start a new run (or --force to overwrite it)")
    missing = [k for k in keys if k not in theirs]
    if missing:
        raise ScheduleLabError(f"the saved {what} state does not record {missing[0]!r} (made by an older "
                               "version?); start a new run (or --force to overwrite it)")
    diff = [k for k in keys if _norm(theirs[k]) != _norm(config[k])]
    if diff:
        k = diff[0]
        more = f" (and {len(diff) - 1} more: {', '.join(diff[1:4])})" if len(diff) > 1 else ""
        raise ScheduleLabError(f"the saved {what} state was made with {k} = {_short(theirs[k])}, this run has "
                               f"{_short(config[k])}{more}; resume with the same settings or start a new run")
    return theirs


def changed_settings(state, config: dict, keys) -> list:
    """The keys whose value differs between a state's config and `config` ([] when none; every key
    when the state has no config) -- for a UI that must say why Resume starts a new run."""
    theirs = state.get("config") if isinstance(state, dict) else None
    if not isinstance(theirs, dict):
        return list(keys)
    return [k for k in keys if k not in theirs or _norm(theirs[k]) != _norm(config[k])]


def knob_changes(old: dict, new: dict) -> list:
    """[(knob, old value, new value)] for every knob of `new` whose value differs from `old` (a UI's
    Resume: a run continues with its own knobs, so changed ones must be refused or start a new run)."""
    return [(k, old.get(k), v) for k, v in new.items() if _norm(old.get(k)) != _norm(v)]


def claim_state_path(path, resume=None, force: bool = False) -> Path | None:
    """Check, before any work, that the state file `path` may be written by this run.

    Allowed: a new file in an existing writable folder; the file being resumed; an existing file
    with force=True (copied to PATH.bak first, whose path is returned). Anything else raises."""
    p = Path(path)
    check_writable(p, "--state")
    if not p.exists():
        return None
    if resume is not None and _same(p, Path(resume)):
        return None
    if not force:
        raise ScheduleLabError(f"the state file {str(p)!r} already exists; continue it with --resume {p}, "
                               "write elsewhere with --state FILE, or overwrite it with --force (keeps a .bak)")
    bak = p.with_name(p.name + ".bak")
    shutil.copy2(p, bak)
    return bak


def check_ays_state_fields(state: dict) -> None:
    """Types of an AYS state's fields (core.readers), so that a hand-edited or foreign file gives a
    clear error rather than a TypeError deep in the optimizer."""
    from core import readers as rd
    for k in ("levels", "stage", "stage_iter", "iteration", "rng", "history", "bad", "started", "done"):
        if k not in state:
            raise ScheduleLabError(f"the saved AYS state lacks {k!r}; it is incomplete: start a new run")
    rd.number_list(state["levels"], "AYS state 'levels'", 2, 100_001, lo=0.0, lo_open=True)
    for k in ("stage", "stage_iter", "iteration", "bad"):
        rd.integer(state[k], f"AYS state {k!r}", 0)
    rd.number_list(state["rng"], "AYS state 'rng'", 1, 100_000, lo=0, hi=255)
    for k in ("started", "done"):
        if not isinstance(state[k], bool):
            raise ScheduleLabError(f"AYS state {k!r} must be true or false; got {state[k]!r}")
    if not isinstance(state["history"], list):
        raise ScheduleLabError(f"AYS state 'history' must be a list of events; got {type(state['history']).__name__}")
    for i, h in enumerate(state["history"]):
        rd.mapping(h, f"AYS state 'history'[{i}]")
        rd.integer(h.get("iteration"), f"AYS state 'history'[{i}]['iteration']", 0)
        rd.number(h.get("objective"), f"AYS state 'history'[{i}]['objective']")
        if h.get("heldout") is not None:
            rd.number(h["heldout"], f"AYS state 'history'[{i}]['heldout']")
        rd.number_list(h.get("sigmas"), f"AYS state 'history'[{i}]['sigmas']", 2, 100_001, lo=0.0)
    best = state.get("best")
    if best is not None:
        rd.mapping(best, "AYS state 'best'")
        rd.number(best.get("heldout"), "AYS state 'best'['heldout']")
        rd.number_list(best.get("levels"), "AYS state 'best'['levels']", 2, 100_001, lo=0.0, lo_open=True)
        rd.integer(best.get("iteration"), "AYS state 'best'['iteration']", 0)
    if state.get("early_stopped_at") is not None:
        rd.integer(state["early_stopped_at"], "AYS state 'early_stopped_at'", 0)
    ss = state.get("stage_schedules", [])
    if not isinstance(ss, list):
        raise ScheduleLabError("AYS state 'stage_schedules' must be a list of sigma lists")
    for i, lv in enumerate(ss):
        rd.number_list(lv, f"AYS state 'stage_schedules'[{i}]", 2, 100_001, lo=0.0, lo_open=True)


def check_writable(path, flag: str = "--out") -> Path:
    """A file path we may create or replace: not a folder, its folder exists and is writable."""
    p = Path(path)
    if p.is_dir():
        raise ScheduleLabError(f"{flag} {str(p)!r} is a folder; give a file path such as {p / 'out.json'}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ScheduleLabError(f"{flag} {str(p)!r}: the folder {str(parent)!r} does not exist; create it first")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ScheduleLabError(f"{flag} {str(p)!r} is not writable (check the permissions of {str(parent)!r})")
    return p


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _norm(v):
    """JSON round-trip form (tuples -> lists, ints and floats compared as JSON would store them)."""
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2 ** 53:
        return float(v)                                   # 3 == 3.0, as after a JSON round trip
    return v


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:60] + f"... ({len(v)} values)" if isinstance(v, list) else r[:77] + "..."
