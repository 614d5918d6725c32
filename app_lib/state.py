"""Session settings (the shared sidebar), cached model loading and cached engine results,
and the session's schedule library (kept on disk by app_lib.store: a reload or a new session
finds it again).

Every widget has a stable key; cached functions take plain hashable arguments (names, sigma
tuples) and rebuild engine objects inside, so st.cache_data can hash them.
"""
from __future__ import annotations

import json
import shlex
import warnings

import streamlit as st
import torch

from app_lib import store
from core.errors import ScheduleLabError
from core.models import TOY_KINDS, load_toy_model, toy_checkpoint
from core.schedules import PresetRangeWarning, Schedule, make_schedule, resample_loglinear, schedule_names
from core.solvers import solver_names
from toy_data import TOYS, get_toy
from toy_data.labelled import LABELLED_TOYS

DEFAULTS = {"sb_seed": 0, "sb_toy": "grid8x8", "sb_model_kind": "exact"}
USER_KIND = "user:"          # model kind of a user's own 2-D model: "user:" + JSON [spec, weights, params]
LIBRARY_KEY = "library"
STORE_MSG = "_store_message"          # a problem with the app's folder, shown in the sidebar
LIB_PREFIX = "lib:"
# heuristics whose parameter a user may want to set, with the default the app uses
SCHEDULE_PARAMS = {"karras": ("rho", 7.0), "polyexponential": ("rho", 1.0), "kl_optimal": ("c", 0.5)}


# ---------------------------------------------------------------- sidebar / settings
def devices() -> list:
    return (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]


def model_kinds(toy: str) -> list:
    """'exact' always; 'mlp' only when the shipped checkpoint for this toy exists."""
    return [k for k in TOY_KINDS if k == "exact" or toy_checkpoint(toy).is_file()]


def sidebar() -> dict:
    """Draw the shared sidebar (device, seed, toy, model kind) and return the settings."""
    sb = st.sidebar
    sb.header("Settings")
    init_widgets({"sb_device": devices()[0], **DEFAULTS})
    sb.selectbox("Device", devices(), key="sb_device", help="cuda when a GPU is present, else cpu")
    sb.number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key="sb_seed")
    sb.selectbox("Toy distribution", TOYS, key="sb_toy")
    kinds = model_kinds(st.session_state["sb_toy"])
    with sb.expander("Your own 2-D model"):
        init_widgets({"sb_user_spec": "", "sb_user_weights": "", "sb_user_params": ""})
        st.text_input("module.py:ClassName", key="sb_user_spec")
        st.text_input("Weights file", key="sb_user_weights")
        st.text_area("Parameters (key=value, one a line)", key="sb_user_params",
                     help="as --param on the command line: parametrization, process, time_input, shape=2, ... "
                          "(docs/models.md); the toy above is its data's density")
        user = user_kind(st.session_state.sb_user_spec, st.session_state.sb_user_weights,
                         st.session_state.sb_user_params)
        problem = None if user is None else user_path_problem(st.session_state.sb_user_spec,
                                                                st.session_state.sb_user_weights)
        if problem:
            st.error(problem)                       # next to the boxes, in the app's words
        elif user is not None:
            try:
                toy_model(st.session_state["sb_toy"], user, st.session_state["sb_device"])
                kinds.append(user)
            except ScheduleLabError as e:
                st.error(app_words(str(e)))
    if st.session_state.get("sb_model_kind") not in kinds:
        st.session_state["sb_model_kind"] = kinds[0]
    sb.selectbox("Toy model", kinds, key="sb_model_kind", format_func=kind_label,
                 help="exact: the closed-form mixture denoiser; mlp: the shipped trained network "
                      "(listed when checkpoints/toy_mlp/TOY.safetensors exists); your model: the one "
                      "loaded below")
    if st.session_state["sb_toy"] in LABELLED_TOYS and st.session_state["sb_model_kind"] == "exact":
        init_widgets({"sb_label": "none", "sb_cfg": 1.0})
        n_cls = len(set(LABELLED_TOYS[st.session_state["sb_toy"]]()))
        sb.selectbox("Class label (guidance)", ["none"] + [str(c) for c in range(n_cls)], key="sb_label",
                     help="a labelled toy: each class a group of components, with an exact conditional "
                          "denoiser; none = unconditional")
        sb.number_input("Guidance scale w", min_value=0.0, max_value=20.0, step=0.5, key="sb_cfg",
                        help="D = D_uncond + w (D_cond - D_uncond), exact at every sigma; 2 model calls per "
                             "evaluation unless w = 1. The guided ODE does not sample p(x) p(c|x)^w.")
    sb.caption("Models load once per session (cached); results are cached per input.")
    library()
    try:
        sb.caption(f"Library and optimizer runs are saved in `{store.home()}` (set {store.ENV} to move it).")
    except ScheduleLabError as e:
        st.session_state[STORE_MSG] = str(e)
    if st.session_state.get(STORE_MSG):
        sb.warning(st.session_state[STORE_MSG])
    return settings()


def user_path_problem(spec: str, weights: str) -> str | None:
    """A message for the sidebar's "your own 2-D model" boxes when a path in them is not there (or the
    spec is not module.py:ClassName / package.module:ClassName), written for the app: where paths are
    read and what the box takes. None when the paths are there."""
    from pathlib import Path
    spec, weights = spec.strip(), weights.strip()
    where = f"on the machine that runs the app (a relative path starts in {str(Path.cwd())!r})"
    file, sep, cls = spec.rpartition(":")
    if not sep or not file or not cls or "/" in cls or "\\" in cls:
        what = "a folder" if Path(spec).is_dir() else "a file" if Path(spec).is_file() else None
        found = f"{spec!r} is {what}" if what else f"there is no file or folder {spec!r} {where}"
        return (f"{found}. This box takes a Python class: the path of the .py file that defines your 2-D model, "
                "a colon, and the class name, e.g. my_models/toy.py:Net. (Image models, a diffusers folder "
                "or a .safetensors UNet, are for the command line and the Images page.)")
    if (file.endswith(".py") or "/" in file or "\\" in file) and not Path(file).is_file():   # (else package.module)
        return (f"there is no Python file {file!r} {where}. Give the path of the .py file that defines "
                f"{cls}, then ':{cls}'.")
    if weights and not Path(weights).is_file():
        what = "a folder, not a weights file" if Path(weights).is_dir() else f"not there {where}"
        return (f"the weights file {weights!r} is {what}. Give the .safetensors / .pt file of the state "
                "dict, or leave the box empty for a model without weights.")
    return None


def app_words(message: str) -> str:
    """An engine message with the command line's flags put as the sidebar's boxes."""
    import re
    message = re.sub(r"--param (\w+=\S+)", r"the line \1 under Parameters", message)
    message = re.sub(r"--weights( FILE)?", "the Weights file box", message)
    return message.replace("--param key=value", "key=value lines under Parameters")


def init_widgets(defaults: dict) -> None:
    """Give keyed widgets their first value through session state (never also through the
    widget's own default), so a value set by a test or another page is kept.

    Streamlit drops the state of a widget that a run does not draw (e.g. on another page); a
    shadow copy under "_keep_KEY" brings the user's last value back when they return."""
    ss = st.session_state
    for k, v in defaults.items():
        if k not in ss:
            ss[k] = ss.get("_keep_" + k, v)
        ss["_keep_" + k] = ss[k]


def settings() -> dict:
    """The sidebar settings with defaults (pages may run before the sidebar, e.g. in tests)."""
    ss = st.session_state
    toy, kind = ss.get("sb_toy") or DEFAULTS["sb_toy"], ss.get("sb_model_kind") or DEFAULTS["sb_model_kind"]
    if kind == "exact" and toy in LABELLED_TOYS and ss.get("sb_label", "none") != "none":
        kind = guided_kind(int(ss["sb_label"]), float(ss.get("sb_cfg", 1.0)))
    return {"device": ss.get("sb_device") or devices()[0], "seed": int(ss.get("sb_seed") or 0),
            "toy": toy, "model_kind": kind}


def guided_kind(label: int, w: float) -> str:
    """The model-kind string of the exact guided denoiser of a labelled toy: 'exact|LABEL|W'."""
    return f"exact|{int(label)}|{float(w):g}"


def _parse_kind(kind: str):
    """'exact|3|4' -> ('exact', 3, 4.0); 'exact' / 'mlp' -> (kind, None, None)."""
    if "|" not in kind:
        return kind, None, None
    k, label, w = kind.split("|")
    return k, int(label), float(w)


# ---------------------------------------------------------------- cached engine calls
def user_kind(spec: str, weights: str, params: str) -> str | None:
    """The model kind of a user's own model (None when no spec is given)."""
    if not spec.strip():
        return None
    return USER_KIND + json.dumps([spec.strip(), weights.strip() or None, params.strip()])


def kind_label(kind: str) -> str:
    if kind.startswith(USER_KIND):
        return f"your model ({json.loads(kind[len(USER_KIND):])[0]})"
    base, label, w = _parse_kind(kind)
    return kind if label is None else f"{base}, guided to class {label} at w = {w:g}"


@st.cache_resource(show_spinner="Loading model ...")
def toy_model(toy: str, kind: str, device: str):
    """The toy's Denoiser (exact mixture or shipped MLP; `guided_kind`: the exact guided denoiser of
    the labelled toy), or a user's 2-D model (kind USER_KIND + JSON [module.py:Class, weights,
    "key=value" lines], loaded by core.models.registry), once per (toy, kind, device)."""
    if kind.startswith(USER_KIND):
        from core.cli import parse_params
        from core.models.registry import load_model
        spec, weights, params = json.loads(kind[len(USER_KIND):])
        model = load_model(spec, device, weights=weights, params=parse_params(shlex.split(params)))
        dim = get_toy(toy).dim
        if tuple(model.event_shape) != (dim,):
            raise ScheduleLabError(f"the pages show {dim}-D models; {spec} makes samples of shape "
                                   f"{tuple(model.event_shape)} (add the line shape={dim} under Parameters)")
        return model
    base, label, w = _parse_kind(kind)
    if label is None:
        return load_toy_model(toy, kind, device)
    from core.models.guidance import GuidedDenoiser
    from core.models.mixture import LabelledMixtureDenoiser
    from toy_data.labelled import get_labelled_toy
    return GuidedDenoiser(LabelledMixtureDenoiser(get_labelled_toy(toy)), label, w)


@st.cache_data(show_spinner=False, max_entries=32)
def toy_density(toy: str, n: int = 160, sigma: float = 0.0) -> dict:
    from core.viz_data import density_grid
    return density_grid(get_toy(toy), n=n, sigma=sigma)


@st.cache_data(show_spinner="Sampling ...", max_entries=64)
def toy_samples(toy: str, kind: str, device: str, sigmas: tuple, solver: str, n: int, seed: int,
                keep: int = 0) -> dict:
    """Samples (numpy [n, 2]) and the first `keep` trajectories ([steps + 1, keep, 2])."""
    from core.sampling import generate
    with torch.no_grad():
        r = generate(toy_model(toy, kind, device), Schedule(sigmas), n, solver=solver, seed=seed,
                     keep_trajectory=keep)
    return {"x": r.x.detach().double().cpu().numpy(), "nfe": r.nfe, "seconds": r.seconds,
            "trajectory": None if r.trajectory is None else r.trajectory.double().numpy(),
            "denoised": None if r.denoised is None else r.denoised.double().numpy()}


@st.cache_data(show_spinner="Scoring against the exact density ...", max_entries=64)
def toy_metrics(toy: str, kind: str, device: str, sigmas: tuple, solver: str, n: int, seeds: tuple) -> dict:
    """core.evaluate.evaluate_toy: NLL, sliced W2, MMD with 95 % intervals over seeds."""
    from core.evaluate import evaluate_toy
    with torch.no_grad():
        out = evaluate_toy(toy_model(toy, kind, device), get_toy(toy), Schedule(sigmas), solver=solver,
                           n=n, seeds=seeds, mmd_n=min(n, 1000))
    return {k: v for k, v in out.items() if k != "per_seed"}


def toy_sampler(toy: str, kind: str = "exact"):
    """The data sampler the objectives take: (n, generator) -> [n, d] samples of the toy (of the
    class p(x | c) for a guided kind)."""
    _, label, _ = _parse_kind(kind)
    if label is None:
        mixture = get_toy(toy)
    else:
        from toy_data.labelled import get_labelled_toy
        mixture = get_labelled_toy(toy).conditional(label)
    return lambda n, g: mixture.sample(n, g)


# ---------------------------------------------------------------- schedule library
def _default_library() -> dict:
    lib = {}
    for name, params in (("karras", {}), ("loglinear", {}), ("kl_optimal", {"c": 0.5}),
                         ("ays_sd15", {})):
        with warnings.catch_warnings():                 # the published SD 1.5 preset, shown as published
            warnings.simplefilter("ignore", PresetRangeWarning)
            s = make_schedule(name, 10, **params)
        lib[s.label()] = s
    return lib


def library() -> dict:
    """{label: Schedule}, the session's schedule library: the saved one (app_lib.store), else a
    few heuristics."""
    ss = st.session_state
    if LIBRARY_KEY not in ss:
        try:
            saved = store.load_library()
        except ScheduleLabError as e:
            saved, ss[STORE_MSG] = None, str(e)
        ss[LIBRARY_KEY] = saved if saved is not None else _default_library()
    return ss[LIBRARY_KEY]


def save_library() -> None:
    """Write the session's library to disk (atomically); a failure is shown in the sidebar."""
    try:
        store.save_library(library())
    except (OSError, ScheduleLabError) as e:
        st.session_state[STORE_MSG] = f"the library could not be saved: {e}"


def add_to_library(schedule: Schedule, label: str | None = None, save: bool = True) -> str:
    """Add a schedule under a unique label (suffix ' #2', ' #3' ... on clashes) and save the
    library; returns the label."""
    lib = library()
    base = label or schedule.label()
    label, i = base, 2
    while label in lib and lib[label] != schedule:
        label, i = f"{base} #{i}", i + 1
    lib[label] = schedule
    if save:
        save_library()
    return label


def remove_from_library(labels) -> None:
    lib = library()
    for label in labels or []:
        lib.pop(label, None)
    save_library()


def merge_library(text) -> list:
    """Add every schedule of a library file's text (store.library_from_json validates it); returns
    the labels they got."""
    added = [add_to_library(s, label, save=False) for label, s in store.library_from_json(text).items()]
    save_library()
    return added


def library_json() -> str:
    """The library as a downloadable file (the format store.library_from_json reads back)."""
    return store.library_to_json(library())


def schedule_options() -> list:
    """Options for a schedule picker: named heuristics / presets, then library entries."""
    return list(schedule_names()) + [LIB_PREFIX + k for k in library()]


def option_label(opt: str) -> str:
    return f"library: {opt[len(LIB_PREFIX):]}" if opt.startswith(LIB_PREFIX) else opt


def picked_label(opt: str, steps: int) -> str:
    """option_label, with a library schedule's "(N steps)" saying when it is resampled to `steps`."""
    import re
    label = option_label(opt)
    if opt.startswith(LIB_PREFIX):
        label = re.sub(r"\((\d+) steps\)$", lambda m: m.group(0) if int(m.group(1)) == int(steps)
                       else f"({m.group(1)} steps, resampled to {int(steps)})", label)
    return label


def build_schedule(opt: str, steps: int, sigma_min: float, sigma_max: float) -> Schedule:
    """A picker option at `steps` steps: a heuristic built over [sigma_min, sigma_max] (AYS
    presets keep their published range), or a library schedule interpolated log-linearly."""
    if opt.startswith(LIB_PREFIX):
        s = library()[opt[len(LIB_PREFIX):]]
        return s if s.steps == steps else resample_loglinear(s, steps)
    params = dict([SCHEDULE_PARAMS[opt]]) if opt in SCHEDULE_PARAMS else {}
    return make_schedule(opt, int(steps), sigma_min=sigma_min, sigma_max=sigma_max, **params)


def fit_warnings(schedules: dict, model, solver: str | None = None) -> list:
    """Sentences (core.schedules.provenance) for {label: Schedule} used where they were not made for: sampled
    with another solver than their own (when `solver` is given), optimized for another model than
    `model` (a Denoiser), or leaving the model's sigma range."""
    from core.schedules import range_mismatch
    from core.schedules.provenance import model_mismatch, solver_mismatch
    out = []
    for label, s in schedules.items():
        for w in (solver_mismatch(s, solver, label=label) if solver else None,
                  model_mismatch(s, str(getattr(model, "name", "")), label=label),
                  range_mismatch(s, model.sigma_min, model.sigma_max, "the sidebar's model")):
            if w:
                out.append(w)
    return out


def solver_options() -> tuple:
    return solver_names()


def guidance_widgets(cols, n_classes: int, label_key: str, cfg_key: str, over: str = "samples",
                     cfg_help: str = "D = D_uncond + w (D_cond - D_uncond): 2 model calls per evaluation unless w = 1") -> tuple:
    """A class-label picker and a guidance scale in cols[0], cols[1] for a conditional model with
    `n_classes` classes; a label the model does not have falls back to "none". Returns (label, w)."""
    ss = st.session_state
    labels = ["none", "all"] + [str(c) for c in range(int(n_classes))]
    if ss[label_key] not in labels:
        ss[label_key] = "none"
    cols[0].selectbox("Class label", labels, key=label_key,
                      help=f"none: the unconditional model; all: labels 0, 1, 2, ... cycled over the {over}")
    cols[1].number_input("Guidance scale w", 0.0, 20.0, step=0.5, key=cfg_key, disabled=ss[label_key] == "none",
                         help=cfg_help)
    return ss[label_key], ss[cfg_key]

