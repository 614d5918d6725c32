"""Any torch network -> EDM-form Denoiser (methods.md section 1).

A network trained on a noise process predicts eps, v or x0 from a scaled input and a time
value. `wrap_module` converts it once into

    D(x, sigma) ~= E[x0 | x = x0 + sigma * eps],   x in EDM space (unscaled), sigma > 0,

the way k-diffusion's `DiscreteEpsDDPMDenoiser` does, but for any parametrization, process
and time input. With alpha = 1/sqrt(1 + s^2), sigma_vp = s alpha (a VP model sees x_t = alpha x):

    eps:  D = x - s * F                               (F ~ E[eps | x])
    x0:   D = F
    v:    D = x / (1 + s^2) - s / sqrt(1 + s^2) * F   (F ~ E[v | x], v = alpha eps - sigma_vp x0,
                                                     Salimans & Ho 2022, Sec. 4)
    velocity (flow matching, u = eps - x0):  D = (x - s * F) / (1 + s)

The v line is EDM preconditioning (Karras et al. 2022, Table 1) with sigma_data = 1:
c_skip = 1/(1 + s^2), c_out = -s/sqrt(1 + s^2), c_in = 1/sqrt(1 + s^2) (c_out's sign is v's).
Derivation: x = x0 + s eps, v = alpha (x - x0)/s - s alpha x0 -> x0 = x/(1+s^2) - s v/sqrt(1+s^2);
it holds whatever the input scaling, since v is defined through (x0, eps) alone.

Noise processes (the network's time variable):
    discrete  a table sigma_i = sqrt((1 - abar_i)/abar_i), i = 0..N-1 (betas or alphas_cumprod,
              any N); sigma -> fractional step t by linear interpolation in log sigma between
              neighbouring sigma_i, clamped to [0, N-1] (k-diffusion DiscreteSchedule.sigma_to_t,
              diffusers EulerDiscreteScheduler._sigma_to_t).
    vp-linear continuous VP, t in [eps, 1]: sigma(t) = sqrt(exp(beta_d t^2/2 + beta_min t) - 1).
    vp-cosine continuous cosine VP (Nichol & Dhariwal 2021).
    edm       t = sigma (VE / EDM networks).      flow   t = sigma / (1 + sigma).
Time inputs: "index" (discrete: the integer step nearest to t in log sigma, i.e. round(t), as an
int64 tensor; the scalings still use the exact sigma, as k-diffusion does), "fractional"
(discrete: t as a float tensor), "continuous" (continuous processes: t as a float tensor), or a
callable sigma [B] -> time tensor.  `time_dtype` casts the time tensor (int64, float32, ...) and
`time_shape` reshapes it ("N" = [B], the default; "N,1" = [B, 1]; any shape with one N). `time_scale` multiplies fractional / continuous t (e.g. 999
for networks fed 999 t). Input scaling: "vp" x/sqrt(1+s^2) (= x_t), "none" (VE), "edm"
1/sqrt(s^2 + sigma_data^2), "flow" x/(1+s) -- the process's own by default.

Files: `core.models.user_model` loads "module.py:ClassName" + weights and image data;
`core.models.diffusers_loader` loads diffusers folders through `wrap_module`.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from core.errors import ScheduleLabError, unknown_name
from core.models.base import Denoiser, bcast
from core.processes import EDMProcess, FlowMatching, VPCosine, VPLinear

PARAMETRIZATIONS = {"eps": "eps", "epsilon": "eps", "v": "v", "v_prediction": "v", "x0": "x0",
                    "sample": "x0", "velocity": "velocity", "flow": "velocity"}
TIME_INPUTS = ("index", "fractional", "continuous")
INPUT_SCALINGS = ("vp", "none", "edm", "flow")
DISPLAY_MODES = ("clamp", "minmax")
TIME_DTYPES = {"int64": torch.int64, "long": torch.int64, "int32": torch.int32, "int": torch.int64,
               "float32": torch.float32, "float": torch.float32, "float64": torch.float64,
               "double": torch.float64, "float16": torch.float16, "half": torch.float16,
               "bfloat16": torch.bfloat16}


class DiscreteVP:
    """Discrete DDPM process (Ho et al. 2020) as an ascending EDM sigma table of any length N."""

    name = "discrete"

    def __init__(self, betas=None, alphas_cumprod=None):
        if (betas is None) == (alphas_cumprod is None):
            raise ScheduleLabError("a discrete process needs exactly one of betas or alphas_cumprod")
        if betas is not None:
            b = np.asarray(betas, dtype=np.float64).reshape(-1)
            if b.size < 2 or not np.all((b > 0) & (b < 1)):
                raise ScheduleLabError("betas must be >= 2 values in (0, 1)")
            abar = np.cumprod(1 - b)
        else:
            abar = np.asarray(alphas_cumprod, dtype=np.float64).reshape(-1)
            if abar.size < 2 or not np.all((abar > 0) & (abar < 1)) or not np.all(np.diff(abar) < 0):
                raise ScheduleLabError("alphas_cumprod must be >= 2 values in (0, 1), strictly decreasing")
        self.alphas_cumprod = abar
        self.sigmas = np.sqrt((1 - abar) / abar)                    # ascending in the step i
        self.log_sigmas = torch.tensor(np.log(self.sigmas), dtype=torch.float64)
        self._on_device = {}                                           # device -> log_sigmas copy

    @classmethod
    def from_config(cls, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                    beta_schedule="linear", trained_betas=None, rescale_betas_zero_snr=False, **_):
        """The betas a diffusers DDPM/DDIM/Euler scheduler config describes, in float64."""
        n = int(num_train_timesteps)
        if trained_betas is not None:
            b = np.asarray(trained_betas, dtype=np.float64)
        elif beta_schedule == "linear":
            b = np.linspace(beta_start, beta_end, n)
        elif beta_schedule == "scaled_linear":                        # latent diffusion
            b = np.linspace(beta_start ** 0.5, beta_end ** 0.5, n) ** 2
        elif beta_schedule == "squaredcos_cap_v2":                    # Nichol & Dhariwal 2021, Eq. 17
            f = lambda t: np.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
            i = np.arange(n)
            b = np.minimum(1 - f((i + 1) / n) / f(i / n), 0.999)
        elif beta_schedule == "sigmoid":                              # GeoDiff
            b = 1 / (1 + np.exp(-np.linspace(-6, 6, n))) * (beta_end - beta_start) + beta_start
        else:
            raise unknown_name("beta_schedule", beta_schedule,
                               ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"))
        if not rescale_betas_zero_snr:
            return cls(betas=b)
        # Lin et al. 2024, Alg. 1: shift/scale sqrt(abar) so the last step has SNR 0; the final
        # abar is then set to 2^-24 (as diffusers' Euler scheduler does) to keep sigma finite.
        sq = np.sqrt(np.cumprod(1 - b))
        sq = (sq - sq[-1]) * sq[0] / (sq[0] - sq[-1])
        abar = sq ** 2
        abar[-1] = 2.0 ** -24
        return cls(alphas_cumprod=abar)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def t_torch(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional step in [0, N-1] (float64): linear interpolation in log sigma, clamped."""
        ls = self._on_device.get(sigma.device)
        if ls is None:
            ls = self._on_device.setdefault(sigma.device, self.log_sigmas.to(sigma.device))
        log_s = sigma.to(torch.float64).clamp_min(1e-10).log()
        low = (torch.searchsorted(ls, log_s, right=True) - 1).clamp(0, ls.numel() - 2)
        w = ((log_s - ls[low]) / (ls[low + 1] - ls[low])).clamp(0, 1)
        return low.to(torch.float64) + w

    def t(self, sigma):
        return self.t_torch(torch.as_tensor(sigma, dtype=torch.float64)).numpy()

    def sigma(self, t):
        """Inverse of t(): sigma at a fractional step (log-linear between table entries)."""
        t = np.asarray(t, dtype=np.float64)
        return np.exp(np.interp(t, np.arange(self.sigmas.size), np.log(self.sigmas)))


def make_process(spec):
    """A process object from a name / dict / object.

    dict forms: {"kind": "discrete", "betas" | "alphas_cumprod" | beta_schedule keys},
    {"kind": "vp-linear", "beta_min", "beta_max", "eps"}, {"kind": "vp-cosine", "s", "eps"},
    {"kind": "edm", "sigma_min", "sigma_max"}, {"kind": "flow", "t_min", "t_max"}.
    """
    if isinstance(spec, (DiscreteVP, VPLinear, VPCosine, EDMProcess, FlowMatching)):
        return spec
    if isinstance(spec, str):
        spec = {"kind": spec}
    if not isinstance(spec, dict):
        raise ScheduleLabError(f"cannot read a noise process from {type(spec).__name__}; "
                               "give a dict such as {'kind': 'discrete', 'beta_schedule': 'linear'}")
    kw = dict(spec)
    kind = kw.pop("kind", "discrete")
    builders = {"discrete": _discrete, "vp-linear": VPLinear, "vp-cosine": VPCosine,
                "edm": EDMProcess, "flow": FlowMatching}
    if kind not in builders:
        raise unknown_name("noise process", kind, builders)
    try:
        return builders[kind](**kw)
    except TypeError as e:
        raise ScheduleLabError(f"bad parameters for noise process {kind!r}: {e}") from None


def _discrete(betas=None, alphas_cumprod=None, **cfg):
    if betas is not None or alphas_cumprod is not None:
        if cfg:
            raise ScheduleLabError(f"give betas/alphas_cumprod or a beta schedule, not both ({sorted(cfg)})")
        return DiscreteVP(betas=betas, alphas_cumprod=alphas_cumprod)
    return DiscreteVP.from_config(**cfg)


def continuous_t(process, sigma: torch.Tensor) -> torch.Tensor:
    """t(sigma) for a continuous process, in torch (differentiable in sigma)."""
    s = sigma.to(torch.float64)
    if isinstance(process, VPLinear):
        bm, bd = process.beta_min, process.beta_d
        return ((bm ** 2 + 2 * bd * torch.log1p(s ** 2)).sqrt() - bm) / bd
    if isinstance(process, VPCosine):
        f0 = math.cos(process.s / (1 + process.s) * math.pi / 2) ** 2
        return torch.arccos((f0 / (1 + s ** 2)).sqrt()) * 2 / math.pi * (1 + process.s) - process.s
    if isinstance(process, EDMProcess):
        return s
    if isinstance(process, FlowMatching):
        return s / (1 + s)
    raise ScheduleLabError(f"no continuous time for process {getattr(process, 'name', process)!r}")


class WrappedDenoiser(Denoiser):
    """A user's network F(scaled x, time) as an EDM-form Denoiser (formulas in the module docstring).

    Extra attributes for image code: `data_range` (lo, hi) of the data and `display`
    ("clamp" to data_range, or "minmax" per image), used by `to_display`.
    """

    def __init__(self, net, parametrization, process, time_input, event_shape, sigma_data=0.5,
                 input_scaling=None, time_scale=1.0, data_range=(-1.0, 1.0), display="clamp",
                 name="user-model", sigma_min=None, sigma_max=None, time_dtype=None, time_shape=None):
        super().__init__()
        self.net = net.eval()          # inference: BatchNorm running stats, no dropout (model.net.train() undoes)
        self.parametrization = PARAMETRIZATIONS.get(parametrization) if isinstance(parametrization, str) else None
        if self.parametrization is None:
            raise unknown_name("parametrization", parametrization, PARAMETRIZATIONS)
        self.process = make_process(process)
        discrete = isinstance(self.process, DiscreteVP)
        if not callable(time_input):
            if time_input not in TIME_INPUTS:
                raise unknown_name("time input", time_input, TIME_INPUTS)
            if discrete and time_input == "continuous":
                raise ScheduleLabError("time_input 'continuous' needs a continuous process (vp-linear, "
                                       "vp-cosine, edm, flow); a discrete table takes 'index' or 'fractional' "
                                       "(use time_scale for t = step / N)")
            if not discrete and time_input != "continuous":
                raise ScheduleLabError(f"time_input {time_input!r} needs a discrete process (betas or "
                                       "alphas_cumprod); a continuous process takes 'continuous'")
            if time_input == "index" and time_scale != 1:
                raise ScheduleLabError("time_scale applies to fractional / continuous time, not 'index'")
        self.time_input, self.time_scale = time_input, float(time_scale)
        self.time_dtype = _time_dtype(time_dtype)
        self.time_shape = _time_shape(time_shape)
        default_scaling = {"edm": "none", "flow": "flow"}.get(getattr(self.process, "name", ""), "vp")
        self.input_scaling = input_scaling or default_scaling
        if self.input_scaling not in INPUT_SCALINGS:
            raise unknown_name("input scaling", self.input_scaling, INPUT_SCALINGS)
        if display not in DISPLAY_MODES:
            raise unknown_name("display mode", display, DISPLAY_MODES)
        self.event_shape = _shape(event_shape)
        self.sigma_data, self.name, self.display = float(sigma_data), name, display
        try:
            lo, hi = data_range
            self.data_range = (float(lo), float(hi))
        except (TypeError, ValueError):
            raise ScheduleLabError(f"data_range must be two numbers lo,hi (e.g. -1,1); got {data_range!r}") from None
        if not (math.isfinite(self.data_range[0]) and math.isfinite(self.data_range[1])
                and self.data_range[0] < self.data_range[1]):
            raise ScheduleLabError(f"data_range must be (lo, hi) with lo < hi; got {data_range}")
        self.sigma_min = float(sigma_min if sigma_min is not None else self.process.sigma_min)
        self.sigma_max = float(sigma_max if sigma_max is not None else self.process.sigma_max)

    def net_time(self, sigma: torch.Tensor) -> torch.Tensor:
        """The time tensor the network receives at EDM noise level sigma [B]: [B] by default, cast to
        time_dtype and reshaped to time_shape when those are set."""
        if callable(self.time_input):
            t = self.time_input(sigma)
        elif self.time_input == "index":
            t = self.process.t_torch(sigma).round().to(torch.int64)
        else:
            t = self.process.t_torch(sigma) if self.time_input == "fractional" else continuous_t(self.process, sigma)
            t = (t * self.time_scale).to(torch.float32)
        if self.time_dtype is not None:
            t = t.to(self.time_dtype)
        if self.time_shape is not None:
            t = t.reshape([sigma.shape[0] if d == -1 else d for d in self.time_shape])
        return t

    def c_in(self, s: torch.Tensor) -> torch.Tensor:
        if self.input_scaling == "vp":
            return (1 + s ** 2).rsqrt()
        if self.input_scaling == "edm":
            return (s ** 2 + self.sigma_data ** 2).rsqrt()
        if self.input_scaling == "flow":
            return 1 / (1 + s)
        return torch.ones_like(s)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, net_kwargs: dict | None = None) -> torch.Tensor:
        """net_kwargs: extra keyword arguments of the network call (conditioning, core.models.guidance)."""
        s = bcast(sigma, x)
        dt = next((p.dtype for p in self.net.parameters()), torch.float32)
        try:
            raw = self.net((x * self.c_in(s)).to(dt), self.net_time(sigma), **(net_kwargs or {}))
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, TypeError, ValueError, IndexError) as e:   # the user's network refused the input
            raise ScheduleLabError(
                f"the network of {self.name} failed on a batch of shape {list(x.shape)} (event_shape "
                f"{list(self.event_shape)}; check --param shape and the model's options): "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:900]) from None
        out = _tensor_out(raw, x).to(x.dtype)
        if self.parametrization == "eps":
            return x - s * out
        if self.parametrization == "v":
            return x / (1 + s ** 2) - s * (1 + s ** 2).rsqrt() * out
        if self.parametrization == "velocity":
            return (x - s * out) / (1 + s)
        return out

    def describe(self) -> dict:
        d = super().describe()
        d.update(parametrization=self.parametrization, process=getattr(self.process, "name", "?"),
                 time_input=self.time_input if isinstance(self.time_input, str) else "callable",
                 input_scaling=self.input_scaling, data_range=list(self.data_range), display=self.display)
        return d


def _tensor_out(out, x):
    """Network output -> tensor shaped like x (diffusers `.sample`, tuples, learned-variance halves)."""
    out = getattr(out, "sample", out)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ScheduleLabError(f"the network returned {type(out).__name__}, expected a tensor")
    if out.shape != x.shape and out.ndim == x.ndim and out.shape[1] == 2 * x.shape[1]:
        out = out[:, : x.shape[1]]            # learned variance (Nichol & Dhariwal 2021): mean half
    if out.shape != x.shape:
        raise ScheduleLabError(f"the network returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
    return out


def _time_dtype(spec):
    if spec is None or isinstance(spec, torch.dtype):
        return spec
    key = str(spec).replace("torch.", "").lower()
    if key not in TIME_DTYPES:
        raise unknown_name("time_dtype", spec, TIME_DTYPES)
    return TIME_DTYPES[key]


def _time_shape(spec):
    """"N" / None -> None ([B]); "N,1", ["N", 1], (-1, 1) -> (-1, 1): one batch entry (N, B or -1), the
    rest positive integers."""
    if spec is None:
        return None
    parts = spec.replace("x", ",").split(",") if isinstance(spec, str) else list(spec)
    out = []
    for p in parts:
        p = p.strip() if isinstance(p, str) else p
        if p in ("N", "n", "B", "b", -1, "-1"):
            out.append(-1)
        else:
            try:
                out.append(int(p))
            except (TypeError, ValueError):
                out.append(0)
    if out.count(-1) != 1 or any(d == 0 or d < -1 for d in out):
        raise ScheduleLabError(f"bad time_shape {spec!r}: give the time tensor's shape with N for the batch, "
                               "e.g. N (the default, [B]) or N,1 ([B, 1])")
    return None if out == [-1] else tuple(out)


def _shape(event_shape) -> tuple:
    if event_shape is None:
        raise ScheduleLabError("event_shape is needed (the shape of one sample, e.g. 1,28,28)")
    if isinstance(event_shape, str):
        event_shape = [p for p in event_shape.replace("x", ",").split(",") if p.strip()]
    try:
        shape = tuple(int(d) for d in (event_shape if not isinstance(event_shape, int) else [event_shape]))
    except (TypeError, ValueError):
        raise ScheduleLabError(f"bad event_shape {event_shape!r}; give integers like 1,28,28") from None
    if not shape or min(shape) < 1:
        raise ScheduleLabError(f"bad event_shape {shape}; every dimension must be >= 1")
    return shape


def wrap_module(module, parametrization="eps", process="discrete", time_input="index", *,
                event_shape, **kw) -> WrappedDenoiser:
    """Wrap `module(x_in, t) -> F` as an EDM-form Denoiser.

    Args:
        module: torch network called as module(scaled x [B, *event_shape], time [B]).
        parametrization: "eps" | "v" | "x0" (aliases epsilon, v_prediction, sample) | "velocity".
        process: noise process spec for `make_process` (default: DDPM linear betas, 1000 steps).
        time_input: "index" | "fractional" | "continuous" | callable(sigma [B]) -> time [B].
        event_shape: shape of one sample, e.g. (1, 28, 28).
        kw: sigma_data, input_scaling, time_scale, time_dtype, time_shape, data_range, display, name,
            sigma_min, sigma_max; conditional networks: cond_kwarg (the keyword the network takes its
            conditioning by, e.g. "class_labels"), null_cond (its null / unconditional value, e.g. the null
            label), num_classes (labels 0..num_classes-1), guidance_kwarg (a guidance-distilled network's
            keyword for w: one call per evaluation) -> a ConditionalDenoiser
            (core.models.guidance: guide it with GuidedDenoiser(model, label, w)).
    The module is put in eval() mode (BatchNorm uses its running statistics; no dropout).
    """
    cond = {k: kw.pop(k) for k in ("cond_kwarg", "null_cond", "num_classes", "guidance_kwarg") if k in kw}
    m = WrappedDenoiser(module, parametrization, process, time_input, event_shape, **kw)
    if cond.get("cond_kwarg"):
        from core.models.guidance import ConditionalWrapped
        return ConditionalWrapped(m, **cond)
    return m


def to_display(x: torch.Tensor, mode: str = "clamp", data_range=(-1.0, 1.0)) -> torch.Tensor:
    """Images [B, C, H, W] in data units -> [0, 1] for display: clamp to data_range, or per-image min-max
    (for models whose samples drift in brightness)."""
    if mode == "clamp":
        lo, hi = data_range
        return ((x - lo) / (hi - lo)).clamp(0, 1)
    if mode == "minmax":
        flat = x.reshape(x.shape[0], -1)
        lo, hi = flat.min(1).values, flat.max(1).values
        return ((flat - lo[:, None]) / (hi - lo).clamp_min(1e-12)[:, None]).reshape(x.shape)
    raise unknown_name("display mode", mode, DISPLAY_MODES)
