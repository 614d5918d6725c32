"""The Tune page's logic: the model it tunes for (a toy from the sidebar, a shipped image model, a
diffusers folder or a `module.py:Class` network), the core.tune.Tuner built from the page's
settings, the session's run (app_lib.tune_run.TuneJob), and what the page shows once it is done:
the leaderboard rows, the side-by-side samples and the winner's exports with provenance.

    spec = {"source", "toy", "kind", "path", "weights", "params", "label", "cfg", "device",
            "solver", "steps", "methods", "budget_s", "n", "batches", "seed"}     (plain data)
"""
from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from app_lib.tune_run import TuneJob
from core.errors import ScheduleLabError

JOB = "tune_job"
SOURCES = {"toy": "the sidebar's toy model", "digits": "digits (shipped EDM UNet)",
           "digits-flow": "digits-flow (shipped class-conditional rectified flow)",
           "folder": "a diffusers folder ...", "module": "your network: module.py:Class ..."}
IMAGE_SOURCES = ("digits", "digits-flow", "folder", "module")
# held-out evaluation: samples per batch and batches (the engine's defaults are toys 2048 x 5, images
# 250 x 4; the page's image default keeps GITS + OSS + heuristics on digits within ~3 min on 2 cores)
EVAL_DEFAULTS = {"toy": {"n": 2048, "batches": 5}, "image": {"n": 100, "batches": 3}}
DEFAULT_METHODS = {"toy": ["nonuniform", "score_optimal", "gits", "oss", "ays"], "image": ["gits", "oss"]}
# image models: smaller trajectory optimizers than the engine's defaults, measured on digits at 10 steps
# (one core of the shared machine): OSS at 64 samples x 200 teacher steps > 240 s CPU (stopped there),
# at 32 x 100 ~ 92 s; here 32 x 60 (the grid size of GITS's default); GITS 128 teacher samples, ~14 s
IMAGE_METHOD_OPTIONS = {"gits": {"n_samples": 128}, "oss": {"n_samples": 32, "teacher_steps": 60}}
SLICE_S = 1.0                     # the fragment runs units for about this long per rerun
# CLI words in engine messages -> the page's fields (issue 15: messages written for the app)
APP_WORDS = (("--weights", "the Weights file field"), ("--param", "the Parameters field"),
             ("--model", "the Model choice"), ("--label / --cfg", "the class label and guidance scale"),
             ("--label", "the class label"), ("--cfg", "the guidance scale"), ("--data", "a data folder"),
             ("--toy", "the sidebar's toy"))


def app_message(e) -> str:
    """An engine error message with its command-line flags named as the page's fields."""
    msg = str(e)
    for cli, field in APP_WORDS:
        msg = msg.replace(cli, field)
    return msg


# ---------------------------------------------------------------- the model
@dataclass
class TuneModel:
    """What a Tuner needs: the Denoiser, its data, the --model spec (shipped AYS / digits metrics)."""
    model: object
    data: object
    toy: bool
    spec: str | None
    flow: bool
    name: str
    sigma_min: float
    sigma_max: float
    data_note: str | None = None
    warnings: tuple = ()


def is_flow(model) -> bool:
    """A flow-matching model (t exports): the shipped digits-flow, or a wrapped network on the flow process."""
    from core.models.digits_flow import FlowUNetDenoiser
    for m in (model, getattr(model, "base", None), getattr(getattr(model, "base", None), "inner", None),
              getattr(model, "inner", None)):
        if isinstance(m, FlowUNetDenoiser) or getattr(getattr(m, "process", None), "name", None) == "flow":
            return True
    return False


def model_spec_problem(ms: dict) -> tuple | None:
    """("info" | "error", why) when the page's model fields cannot load anything yet (checked before
    the engine is asked): "info" for a field still empty, "error" for a path that is wrong."""
    why = _problem(ms)
    return None if why is None else ("info" if why.startswith("Enter ") else "error", why)


def _problem(ms: dict) -> str | None:
    src = ms["source"]
    if src == "folder":
        p = Path(os.path.expanduser(ms["path"].strip()))
        if not ms["path"].strip():
            return "Enter the path of a local diffusers model folder (nothing is downloaded)."
        if not p.exists():
            return (f"The folder {str(p)!r} does not exist. Enter the path of a local diffusers model folder: one "
                    "saved with save_pretrained (config.json and scheduler_config.json, or unet/ and scheduler/).")
        if not p.is_dir():
            return f"{str(p)!r} is a file, not a folder. Enter the folder that holds the model's config.json."
    if src == "module":
        spec = ms["path"].strip()
        file, _, cls = spec.rpartition(":")
        if not spec:
            return "Enter your network as module.py:ClassName, with its weights file and parameters."
        if not file.endswith(".py") or not cls:
            return f"{spec!r} should look like /path/to/module.py:ClassName."
        if not Path(os.path.expanduser(file)).is_file():
            return f"The module file {file!r} does not exist; check the path."
        w = ms["weights"].strip()
        if w and not Path(os.path.expanduser(w)).is_file():
            return f"The weights file {w!r} does not exist; check the path."
    return None


def _toy_mixture(toy: str, kind: str):
    from toy_data import get_toy
    if kind.startswith("exact|"):                       # the guided labelled toy: its class's mixture
        from toy_data.labelled import get_labelled_toy
        return get_labelled_toy(toy).conditional(int(kind.split("|")[1]))
    return get_toy(toy)


@st.cache_resource(show_spinner="Loading the image model ...", max_entries=4)
def image_base_model(source: str, path: str, weights: str, params: str, device: str):
    """The unguided image model of the page's model fields (errors in the page's words)."""
    from core.cli import parse_params
    from core.models.registry import load_model
    spec = source if source in ("digits", "digits-flow") else os.path.expanduser(path.strip())
    try:
        if source == "module":
            return load_model(spec, device, weights=os.path.expanduser(weights.strip()) or None,
                              params=parse_params(shlex.split(params)))
        return load_model(spec, device)
    except ScheduleLabError as e:
        raise ScheduleLabError(app_message(e)) from None


def num_classes(ms: dict) -> int:
    """Classes of the page's image model (0: unconditional or a toy)."""
    if ms["source"] not in IMAGE_SOURCES:
        return 0
    return int(getattr(image_base_model(ms["source"], ms["path"], ms["weights"], ms["params"], ms["device"]),
                       "num_classes", 0) or 0)


@st.cache_resource(show_spinner="Preparing the model and its data ...", max_entries=8)
def _tune_model(key: str) -> TuneModel:
    ms = json.loads(key)
    if ms["source"] == "toy":
        from app_lib.state import toy_model
        from core.cli.model_args import TOY_RANGE
        model = toy_model(ms["toy"], ms["kind"], ms["device"])
        return TuneModel(model, _toy_mixture(ms["toy"], ms["kind"]), True, None, False, getattr(model, "name", "toy"),
                         *TOY_RANGE)
    import warnings

    from core.models.guidance import guided, parse_label
    from core.models.registry import model_data
    from core.models.user_model import OwnSamplesWarning
    base = image_base_model(ms["source"], ms["path"], ms["weights"], ms["params"], ms["device"])
    try:
        model = base if ms["label"] == "none" else guided(base, parse_label(ms["label"]), float(ms["cfg"]))
        spec = ms["source"] if ms["source"] in ("digits", "digits-flow") else os.path.expanduser(ms["path"].strip())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OwnSamplesWarning)           # shown on the page from .warnings
            data = model_data(spec, model, label=getattr(model, "cond", None))
    except ScheduleLabError as e:
        raise ScheduleLabError(app_message(e)) from None
    note = data.source + (" — the optimizers then fit the model's own samples, not data" if data.generated else "")
    return TuneModel(model, data, False, spec, is_flow(model), getattr(model, "name", spec), float(model.sigma_min),
                     float(model.sigma_max), note, tuple(getattr(data, "warnings", ()) or ()))


def tune_model(ms: dict) -> TuneModel:
    keys = ("source", "toy", "kind", "path", "weights", "params", "label", "cfg", "device")
    return _tune_model(json.dumps({k: ms[k] for k in keys}, sort_keys=True))


@st.cache_resource(max_entries=8)
def _refs(key: str) -> dict:
    """Reference solutions shared by the runs on one model (core.tune.scoring's `refs`)."""
    return {}


def make_tuner(spec: dict, tm: TuneModel, state_path):
    """A core.tune.Tuner of the page's settings (it resumes the state file when there is one)."""
    from core.tune import Tuner
    try:
        return Tuner(tm.model, spec["solver"], int(spec["steps"]), methods=list(spec["methods"]) or ["heuristics"],
                     budget_s=spec["budget_s"] or None, seed=int(spec["seed"]), data=tm.data, state_path=state_path,
                     spec=tm.spec, n=int(spec["n"]), batches=int(spec["batches"]), sigma_min=tm.sigma_min,
                     sigma_max=tm.sigma_max, refs=_refs(tm.name),
                     method_options=None if tm.toy else IMAGE_METHOD_OPTIONS)
    except ScheduleLabError as e:
        raise ScheduleLabError(app_message(e)) from None


def _match(tuner, result):
    from core.tune.match import steps_to_match
    return steps_to_match(tuner, result)


# ---------------------------------------------------------------- the session's run
def current_job() -> TuneJob | None:
    """The session's run; in a new session, the last one saved on disk (stopped, or done)."""
    ss = st.session_state
    if JOB not in ss:
        ss[JOB] = TuneJob.restore()
    return ss[JOB]


def attach(job: TuneJob, spec: dict, tm: TuneModel) -> None:
    job.make_tuner = lambda path: make_tuner(spec, tm, path)
    job.match_fn = _match


def start(spec: dict, tm: TuneModel) -> TuneJob:
    old = st.session_state.get(JOB)
    if old is not None and old.active:
        old.stop()
    job = TuneJob(spec)
    attach(job, spec, tm)
    st.session_state[JOB] = job
    return job.start()


def settings_changes(job: TuneJob, spec: dict) -> list:
    """[(setting, then, now)] between the run's settings and the page's."""
    from core.optimizers.resume import knob_changes
    return knob_changes(job.spec, spec)


def resume(spec: dict, tm: TuneModel) -> None:
    """Resume the session's stopped run; refused (ScheduleLabError) when a setting changed since Stop."""
    job = current_job()
    if job is None or job.status != "stopped":
        raise ScheduleLabError("nothing to resume: start a run first")
    changed = settings_changes(job, spec)
    if changed:
        raise ScheduleLabError("not resumed: " + ", ".join(f"{k} changed from {a!r} to {b!r}" for k, a, b in changed)
                               + " since Stop. Set them back to resume this run, or press Start for a new run "
                               "with them")
    attach(job, spec, tm)
    job.resume()


# ---------------------------------------------------------------- results
def leaderboard_rows(res) -> list:
    """One row per candidate for the page's table: mean +- 95 % on held-out noise, the paired
    difference to the best heuristic, and its role (winner / best heuristic)."""
    m, out = res.metric, []
    for r in res.table:
        role = ", ".join(x for x, on in (("winner", r["name"] == res.winner),
                                         ("best heuristic", r["name"] == res.best_heuristic)) if on)
        out.append({"candidate": r["name"], "role": role, "kind": r["kind"], f"held-out {m}": r.get(m),
                    "± 95 %": r.get(m + "_ci"), f"vs {res.best_heuristic}": r.get("diff"),
                    "± 95 % (paired)": r.get("diff_ci"), "status": r["status"],
                    "why": r.get("why") or r.get("reason") or "", "optimize s": round(float(r.get("seconds") or 0), 2)})
    return out


def candidate_sigmas(res) -> dict:
    """{candidate: sigmas} of every candidate that produced a schedule, in the table's order."""
    return {r["name"]: tuple(r["sigmas"]) for r in res.table if r.get("sigmas")}


def samples(job: TuneJob, n: int) -> dict:
    """core.tune.match.paired_samples of the finished run (computed once per n, kept on the job)."""
    from core.tune.match import paired_samples
    cache = job.__dict__.setdefault("_samples", {})
    if n not in cache:
        if job.tuner is None:
            job.tuner = job.make_tuner(job.state_path)
        cache[n] = paired_samples(job.tuner, job.ensure_result(), n=n)
    return cache[n]


def winner_schedule(res, spec: dict, tm: TuneModel):
    """The winner with its provenance: model, solver, steps, guidance, seeds, metric (in params)."""
    guidance = {"label": spec["label"], "cfg": float(spec["cfg"])} if spec["label"] != "none" else {}
    if spec["source"] == "toy" and spec["kind"].startswith("exact|"):
        _, lab, w = spec["kind"].split("|")
        guidance = {"label": lab, "cfg": float(w)}
    return res.schedule.with_name(res.schedule.name, model=tm.name, **guidance,
                                  optimization_seeds=list(res.seeds["optimization"]))


EXPORTS = {  # format -> (title, file suffix, mime)
    "json": ("Schedule Lab JSON", ".json", "application/json"),
    "comfyui": ("ComfyUI ManualSigmas", "_comfyui.txt", "text/plain"),
    "comfyui_tensor": ("ComfyUI SIGMAS tensor", "_comfyui_sigmas.py", "text/x-python"),
    "diffusers": ("diffusers sigmas=", "_diffusers.py", "text/x-python"),
    "diffusers_edm": ("diffusers EDMEuler", "_diffusers_edm.py", "text/x-python"),
    "diffusers_timesteps": ("diffusers timesteps=", "_diffusers_timesteps.py", "text/x-python"),
    "kdiffusion": ("k-diffusion", "_kdiffusion.py", "text/x-python"),
    "list": ("List", "_list.json", "application/json"),
}
FLOW_EXPORTS = {"flow_diffusers": ("flow t: diffusers FlowMatchEuler", "_flow_diffusers.py", "text/x-python"),
                "flow_comfyui": ("flow t: ComfyUI", "_flow_comfyui.txt", "text/plain")}


def exports(schedule, model_name: str, flow: bool, table: str = "sd15") -> tuple:
    """({format: text}, {format: why not}) of the winner in every format (core.schedules exports;
    flow t too for a flow model)."""
    from core.schedules import export
    from core.schedules.flow import export_flow
    texts, problems = {}, {}
    for fmt in EXPORTS:
        try:
            texts[fmt] = export(schedule, fmt, table=table if fmt == "diffusers_timesteps" else None, model=model_name)
        except ScheduleLabError as e:
            problems[fmt] = str(e)
    if flow:
        for fmt in FLOW_EXPORTS:
            texts[fmt] = export_flow(schedule, fmt.removeprefix("flow_"))
    return texts, problems
