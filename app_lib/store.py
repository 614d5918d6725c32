"""The app's files on disk: the schedule library and the last optimizer run, in one folder under
the user's cache ($SCHEDULE_LAB_HOME, else $XDG_CACHE_HOME/schedule_lab/app, else
~/.cache/schedule_lab/app). No Streamlit here: the worker thread of a run writes through it.

Every file is written atomically (a temporary file in the same folder, fsync, then rename), so a
crash leaves the old file or the new one, never half of one. Every file is read through
`read_json` (size limit, strict UTF-8, JSON, top-level type) and then validated field by field.

    library.json   {"format": LIBRARY_FORMAT, "schedules": [{"label": str, "schedule": Schedule.to_dict()}]}
    run.json       {"format": RUN_FORMAT, "run_id", "method", "knobs", "spec", "status", "message",
                    "history", "state", "progress", "saved_label", "saved_solver"}
    tune/*.json    `tune` results (core.tune.TuneResult.write: a schedule JSON with the leaderboard
                   under "tune"); the Images page offers them for their model (core.tune.known)
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from core.errors import ScheduleLabError
from core.optimizers.progress import Progress
from core.schedules import Schedule

ENV = "SCHEDULE_LAB_HOME"
LIBRARY_FILE, RUN_FILE, TUNE_DIR = "library.json", "run.json", "tune"
LIBRARY_FORMAT = "schedule-lab/library/1"
RUN_FORMAT = "schedule-lab/app-run/1"
MAX_LIBRARY_BYTES = 8 << 20          # ~40 000 schedules of 20 steps; far above any real library
MAX_RUN_BYTES = 64 << 20             # an AYS state keeps every sweep's sigmas
MAX_SCHEDULES = 2000
MAX_LABEL = 200
MAX_EVENTS = 1_000_000
RUN_STATUSES = ("running", "stopping", "stopped", "done", "failed")
PROGRESS_KEYS = set(Progress.__dataclass_fields__)


def home() -> Path:
    """The folder of the app's files (created on first use)."""
    env = os.environ.get(ENV, "").strip()
    if env:
        p = Path(env).expanduser()
    else:
        cache = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
        p = Path(cache).expanduser() / "schedule_lab" / "app"
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ScheduleLabError(f"cannot create the app's folder {str(p)!r} ({e}); set {ENV} to a writable "
                               "folder") from None
    return p


def tune_dir(root: Path | None = None) -> Path:
    """The folder of saved `tune` results, home()/tune (or root/tune; created on first use)."""
    p = (Path(root) if root is not None else home()) / TUNE_DIR
    p.mkdir(exist_ok=True)
    return p


def save_tune_result(result, name: str | None = None, root: Path | None = None) -> Path:
    """Write a core.tune.TuneResult into tune_dir() as NAME.json (default: model_solver_STEPS, made
    file-name safe), atomically; the Images page then offers its best optimizer for that model."""
    import re
    s = result.schedule
    base = name or f"{s.params.get('model', 'model')}_{s.params.get('solver', s.solver)}_{s.steps}"
    safe = re.sub(r"[^A-Za-z0-9._=-]+", "_", str(base)).strip("._") or "tune"
    p = tune_dir(root) / f"{safe[:120]}.json"
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    result.write(tmp)
    os.replace(tmp, p)
    return p


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_json(source, what: str, max_bytes: int, kind=dict):
    """The one hardened JSON reader of the app's files and uploads: `source` is a path, bytes or a
    str; refuses more than max_bytes, invalid UTF-8, invalid JSON and a top level that is not
    `kind`, each with a ScheduleLabError that names `what`. (To be pointed at core.readers once
    that lands.)"""
    if isinstance(source, Path):
        try:
            size = source.stat().st_size
        except OSError as e:
            raise ScheduleLabError(f"{what} {str(source)!r} cannot be read ({e})") from None
        if size > max_bytes:
            raise ScheduleLabError(f"{what} {str(source)!r} is {size} bytes, over the {max_bytes}-byte limit")
        source = source.read_bytes()
    if isinstance(source, str):
        source = source.encode("utf-8")
    if len(source) > max_bytes:
        raise ScheduleLabError(f"{what} is {len(source)} bytes, over the {max_bytes}-byte limit")
    try:
        obj = json.loads(source.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ScheduleLabError(f"{what} is not UTF-8 text ({e})") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise ScheduleLabError(f"{what} is not valid JSON ({str(e)[:200]})") from None
    if not isinstance(obj, kind):
        raise ScheduleLabError(f"{what} must hold a JSON {'object' if kind is dict else kind.__name__}; "
                               f"got {type(obj).__name__}")
    return obj


# ---------------------------------------------------------------- the schedule library
def library_to_json(lib: dict) -> str:
    """{label: Schedule} -> the library file's text (labels keep their order)."""
    return json.dumps({"format": LIBRARY_FORMAT, "schedules": [{"label": k, "schedule": s.to_dict()}
                                                               for k, s in lib.items()]}, indent=1)


def is_library_json(text) -> bool:
    """Whether a text looks like a library file (the Schedules page's import tells it from a schedule)."""
    head = (text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text))[:200]
    return LIBRARY_FORMAT in head


def library_from_json(source, what: str = "library file") -> dict:
    """The library file's text (or path) -> {label: Schedule}; every entry validated."""
    d = read_json(source, what, MAX_LIBRARY_BYTES)
    if d.get("format") != LIBRARY_FORMAT:
        raise ScheduleLabError(f"{what} is not a schedule library (format {d.get('format')!r}, expected "
                               f"{LIBRARY_FORMAT!r}); a single schedule is imported with Import instead")
    items = d.get("schedules")
    if not isinstance(items, list):
        raise ScheduleLabError(f"{what}: 'schedules' must be a list")
    if len(items) > MAX_SCHEDULES:
        raise ScheduleLabError(f"{what} holds {len(items)} schedules, over the limit of {MAX_SCHEDULES}")
    out = {}
    for i, it in enumerate(items):
        if not isinstance(it, dict) or not isinstance(it.get("label"), str) or not isinstance(it.get("schedule"), dict):
            raise ScheduleLabError(f"{what}: entry {i} needs a 'label' string and a 'schedule' object")
        label = it["label"].strip()
        if not label or len(label) > MAX_LABEL:
            raise ScheduleLabError(f"{what}: entry {i} has an empty label or one over {MAX_LABEL} characters")
        s = it["schedule"]
        if not isinstance(s.get("params", {}) or {}, dict) or not isinstance(s.get("solver") or "", str):
            raise ScheduleLabError(f"{what}: entry {i} ({label!r}) has bad 'params' or 'solver'")
        try:
            out[label] = Schedule.from_dict(s)
        except ScheduleLabError as e:
            raise ScheduleLabError(f"{what}: entry {i} ({label!r}): {e}") from None
    return out


def save_library(lib: dict) -> Path:
    p = home() / LIBRARY_FILE
    write_atomic(p, library_to_json(lib))
    return p


def load_library() -> dict | None:
    """The saved library, or None when there is none. A corrupt file raises ScheduleLabError after
    being moved aside to library.json.bad (so the next save does not destroy it)."""
    p = home() / LIBRARY_FILE
    if not p.is_file():
        return None
    try:
        return library_from_json(p, f"library file {str(p)!r}")
    except ScheduleLabError as e:
        bad = p.with_name(p.name + ".bad")
        os.replace(p, bad)
        raise ScheduleLabError(f"{e}; it was moved to {str(bad)!r} and the library starts from the defaults") from None


# ---------------------------------------------------------------- the last optimizer run
def save_run(record: dict) -> Path:
    p = home() / RUN_FILE
    write_atomic(p, json.dumps({"format": RUN_FORMAT, **record}))
    return p


def validate_run(d: dict, what: str = "run file") -> dict:
    """Check a run record's fields and types (the optimizer's own load_state_dict checks its state)."""
    if d.get("format") != RUN_FORMAT:
        raise ScheduleLabError(f"{what} is not an optimizer run (format {d.get('format')!r})")
    checks = {"run_id": str, "method": str, "knobs": dict, "spec": dict, "status": str, "message": str,
              "history": list}
    for k, t in checks.items():
        if not isinstance(d.get(k), t):
            raise ScheduleLabError(f"{what}: {k!r} must be a {t.__name__}")
    if d["status"] not in RUN_STATUSES:
        raise ScheduleLabError(f"{what}: unknown status {d['status']!r}")
    if d.get("state") is not None and not isinstance(d["state"], dict):
        raise ScheduleLabError(f"{what}: 'state' must be an object or null")
    if len(d["history"]) > MAX_EVENTS:
        raise ScheduleLabError(f"{what}: {len(d['history'])} events, over the limit of {MAX_EVENTS}")
    for i, h in enumerate(d["history"]):
        if not (isinstance(h, dict) and _int(h.get("iteration")) and _int(h.get("stage"))
                and isinstance(h.get("group"), str) and isinstance(h.get("sigmas"), list)
                and all(_num(x) for x in h["sigmas"]) and all(h.get(k) is None or _num(h[k]) for k in
                                                                ("objective", "heldout"))
                and (h.get("early_stopped_at") is None or _int(h["early_stopped_at"]))):
            raise ScheduleLabError(f"{what}: history entry {i} is malformed")
    spec = d["spec"]
    if spec and not (isinstance(spec.get("knobs"), dict)
                     and all(isinstance(spec.get(k), str) for k in ("method", "toy", "model_kind", "device"))):
        raise ScheduleLabError(f"{what}: 'spec' needs method, toy, model_kind and device strings and a knobs object")
    for k in ("saved_label", "saved_solver"):
        if d.get(k) is not None and not isinstance(d[k], str):
            raise ScheduleLabError(f"{what}: {k!r} must be a string or null")
    p = d.get("progress")
    if p is not None and not (isinstance(p, dict) and set(p) == PROGRESS_KEYS
                              and all(p[k] is None or isinstance(p[k], (int, float, str)) for k in p)):
        raise ScheduleLabError(f"{what}: 'progress' must be a Progress record (core.optimizers.progress) or null")
    return d


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_run() -> dict | None:
    """The last run's record, or None (no file, or a corrupt one, which is moved aside to run.json.bad)."""
    p = home() / RUN_FILE
    if not p.is_file():
        return None
    try:
        return validate_run(read_json(p, f"run file {str(p)!r}", MAX_RUN_BYTES), f"run file {str(p)!r}")
    except ScheduleLabError:
        os.replace(p, p.with_name(p.name + ".bad"))
        return None
