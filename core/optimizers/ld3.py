"""LD3: learning to discretize denoising diffusion ODEs (Tong et al. 2024, arXiv 2405.15506; reference
code vinhsuhi/LD3, trainer.py / utils.py; methods.md s.8).

The n levels are parameters and are learned by backpropagating through the solver (the model frozen)
to a teacher sample from the same noise:

1. Teacher: for each of `n_samples` noises x_T = sigma_max z (z ~ N(0, I)), a `teacher_steps`-level
   Heun solution on EDM's polynomial grid (core.optimizers.trajectory), then the final step to 0
   (D at sigma_min). Half the pairs train, half validate (reference num_train = num_valid = 50).
2. Levels (the reference's `time_mode = lambda`, `discretize_model_wrapper.model_lambda_fn`; for
   EDM-form models lambda = -log sigma): xi [n - 1] -> gaps softmax(xi) -> cumulative sums c_0 = 0 <
   ... < c_{n-1} = 1 -> log sigma_k = log sigma_max + c_k (log sigma_min - log sigma_max). xi = 0
   (the reference's `ones` start) is the log-linear schedule. The reference carries n + 1
   parameters for n gaps; its first is normalised away, so this is the same family.
3. Slack loss (the paper's "soft teacher forcing" surrogate): min over xi and x_T' in the ball
   ||z' - z|| <= r of d(Psi_xi(sigma_max z'), Psi*(sigma_max z)), d = the per-sample mean squared
   error (the reference's `L2` loss; LPIPS is not used here). As in the reference: z' takes one SGD
   step (lr `shift_lr` = 12 / n) per batch, is projected onto the ball (r = `prior_bound`, default
   0.001 d / n^2, `adjust_hyper`), and is kept only for the samples whose loss went down.
4. Training (reference `_train_one_round`): batches of 2 training pairs; per batch the gradient norm
   of xi is clipped to 1 and RMSprop (lr 5e-3, momentum 0.9; torch's alpha 0.99, eps 1e-8) steps;
   after each step the validation loss is computed; the best xi is kept; after `patience` (5)
   validations without improvement the best xi is restored and the lr decays by 0.8 (not below
   5e-5; the first time without decay, as the reference's switch from `eval_on_one`). Each round
   starts from the best xi, then moves the validation latents too (slack, no xi update); when none
   moved, shift_lr halves.

Left out of the reference: the second, shifted discretization (`params2`,
the "version 2" rounds: the model is told a level shifted within half the smallest gap; a Schedule
cannot express it, the product's solvers call the model at the levels they step to); the `time`
parametrization; LPIPS; `match_prior` (fitting xi to GITS levels first). The stop after the minimum
lr is hit `lr_patience` times applies to the xi lr here (in the reference to the shift lr).

Convention (methods.md s.2): n levels sigma_max = sigma_0 > ... > sigma_{n-1} = sigma_min, then 0;
NFE n (heun 2n - 1).
"""
from __future__ import annotations

import math
import time

import torch

from core.errors import ScheduleLabError
from core.optimizers.base import Optimizer, ProgressEvent
from core.optimizers.steppers import call_model
from core.optimizers.trajectory import check_common, polynomial_grid, teacher_trajectory
from core.sampling import initial_noise
from core.schedules import Schedule

RMS_ALPHA, RMS_EPS = 0.99, 1e-8          # torch.optim.RMSprop defaults (the reference's optimizer)


def ld3_levels(xi: torch.Tensor, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """xi [n - 1] -> n descending levels [n] (float64, differentiable, endpoints exact)."""
    c = torch.cumsum(torch.softmax(xi.to(torch.float64), 0), 0)
    c = c / c[-1]
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    inner = torch.exp(hi + c[:-1] * (lo - hi))                    # levels 1 .. n - 2
    return torch.cat([inner.new_tensor([sigma_max]), inner, inner.new_tensor([sigma_min])])


def ld3_solve(model, stepper, levels: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The solver over levels [n] (tensor, may carry grad) then 0, from x [B, *event] -> x at 0.
    Differentiable in levels and x (the steppers are torch ops)."""
    n = levels.shape[0]
    lv = list(levels.unbind()) + [levels.new_zeros(())]
    hist = stepper.empty(x)
    for k in range(n):
        D = call_model(model, x, lv[k])
        x, hist = stepper.step(model, x, lv[k], lv[k + 1], D, hist, k, n)
    return x


def sample_loss(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error [B] (reference `compute_distance_between_two`)."""
    return (x - target).pow(2).flatten(1).mean(1)


def _int(v, lo):
    return not isinstance(v, bool) and isinstance(v, int) and v >= lo


class LD3Optimizer(Optimizer):
    """LD3 as an Optimizer: one event per xi update (and one per round's validation-slack pass).

    Args:
        model: any Denoiser (frozen; gradients go to the levels and the latents only).
        steps: n >= 3 levels before the final 0 (n - 2 free levels).
        solver: euler | heun | dpmpp_2m | ipndm | dpmpp_3m (core.optimizers.steppers).
        n_samples: teacher pairs, half train, half validate.
        iters: cap on xi updates (default: rounds x training batches).
        rounds: passes over the training pairs (reference 2 + 5 rounds).
        prior_bound: slack radius r on the unit-normal latent (default 0.001 d / n^2; 0 = no slack).
        Other arguments: the reference's names and defaults (module docstring).
    """

    method = "ld3"

    def __init__(self, model, steps: int, solver: str = "dpmpp_2m", *, sigma_min=None, sigma_max=None,
                 n_samples: int = 100, iters=None, rounds: int = 7, batch_size: int = 2, lr: float = 5e-3,
                 min_lr: float = 5e-5, momentum: float = 0.9, lr_decay: float = 0.8, patience: int = 5,
                 lr_patience: int = 5, prior_bound=None, shift_lr=None, shift_lr_decay: float = 0.5,
                 teacher: str = "heun", teacher_steps: int = 100, seed: int = 0):
        self.stepper, self.sigma_min, self.sigma_max = check_common(model, steps, solver, sigma_min, sigma_max,
                                                                    n_samples, teacher_steps, "teacher steps")
        self.teacher_stepper = check_common(model, steps, teacher, sigma_min, sigma_max, 1, teacher_steps)[0]
        if steps < 3:
            raise ScheduleLabError(f"LD3 learns the n - 2 inner levels: steps must be >= 3; got {steps}")
        if n_samples < 2:
            raise ScheduleLabError(f"n_samples must be >= 2 (half train, half validate); got {n_samples}")
        for name, v in (("rounds", rounds), ("batch_size", batch_size), ("patience", patience),
                        ("lr_patience", lr_patience)):
            if not _int(v, 1):
                raise ScheduleLabError(f"{name} must be a positive integer; got {v!r}")
        if iters is not None and not _int(iters, 1):
            raise ScheduleLabError(f"iters must be a positive integer or None; got {iters!r}")
        for name, v in (("lr", lr), ("min_lr", min_lr), ("lr_decay", lr_decay), ("shift_lr_decay", shift_lr_decay)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ScheduleLabError(f"{name} must be a positive number; got {v!r}")
        if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
            raise ScheduleLabError(f"momentum must be in [0, 1); got {momentum!r}")
        d = math.prod(model.event_shape)
        pb = 0.001 * d / steps ** 2 if prior_bound is None else prior_bound
        sl = 12.0 / steps if shift_lr is None else shift_lr
        for name, v in (("prior_bound", pb), ("shift_lr", sl)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ScheduleLabError(f"{name} must be a number >= 0; got {v!r}")
        self.model, self.steps, self.n_samples, self.seed = model, int(steps), int(n_samples), int(seed)
        self.rounds, self.batch_size, self.lr0, self.min_lr = rounds, batch_size, float(lr), float(min_lr)
        self.momentum, self.lr_decay = float(momentum), float(lr_decay)
        self.patience, self.lr_patience = patience, lr_patience
        self.prior_bound, self.shift_lr0, self.shift_lr_decay = float(pb), float(sl), float(shift_lr_decay)
        self.teacher_steps = int(teacher_steps)
        self.n_train = self.n_samples // 2
        self.n_batches = -(-self.n_train // self.batch_size)
        self.iters = int(iters) if iters is not None else self.rounds * self.n_batches
        # training state (state_dict)
        self.xi = torch.zeros(self.steps - 1, dtype=torch.float64)
        self.best_xi = self.xi.clone()
        self.sq, self.buf = torch.zeros_like(self.xi), torch.zeros_like(self.xi)
        self.lr, self.shift_lr = self.lr0, self.shift_lr0
        self.best_loss, self.val_loss = math.inf, math.nan
        self.count_worse, self.min_hits, self.decays_armed = 0, 0, False
        self.round, self.pos, self.iteration, self.no_change, self.done = 0, 0, 0, True, False
        self.seconds, self.z_cur = 0.0, None
        self._data = None

    def _config(self) -> dict:
        return {"steps": self.steps, "solver": self.stepper.name, "sigma_min": self.sigma_min,
                "sigma_max": self.sigma_max, "n_samples": self.n_samples, "iters": self.iters,
                "rounds": self.rounds, "batch_size": self.batch_size, "lr": self.lr0, "min_lr": self.min_lr,
                "momentum": self.momentum, "lr_decay": self.lr_decay, "patience": self.patience,
                "lr_patience": self.lr_patience, "prior_bound": self.prior_bound, "shift_lr": self.shift_lr0,
                "shift_lr_decay": self.shift_lr_decay, "teacher": self.teacher_stepper.name,
                "teacher_steps": self.teacher_steps, "seed": self.seed,
                "model": getattr(self.model, "name", "model")}

    # -- data ---------------------------------------------------------------------------------------
    def _teacher(self):
        """(z [N, *event] unit-normal latents, targets [N, *event]) from the seed (recomputed on resume)."""
        if self._data is None:
            z = initial_noise(self.model, self.n_samples, 1.0, self.seed, dtype=torch.float64)
            grid = polynomial_grid(self.teacher_steps, self.sigma_min, self.sigma_max)
            states, _ = teacher_trajectory(self.model, self.teacher_stepper, grid, self.sigma_max * z)
            with torch.no_grad():
                target = call_model(self.model, states[-1], self.sigma_min)   # the final step to 0
            self._data = (z, target)
            if self.z_cur is None:
                self.z_cur = z.clone()
        return self._data

    def _loss(self, xi, idx, zc=None) -> torch.Tensor:
        """[B] loss of the student from latents zc (default the current z'[idx]) to the teacher targets."""
        target = self._teacher()[1][idx]
        zc = self.z_cur[idx] if zc is None else zc
        lv = ld3_levels(xi, self.sigma_min, self.sigma_max)
        return sample_loss(ld3_solve(self.model, self.stepper, lv, self.sigma_max * zc), target)

    @torch.no_grad()
    def _validate(self) -> float:
        loss = float(self._loss(self.xi, slice(self.n_train, None)).mean())
        if not math.isfinite(loss):
            raise ScheduleLabError("the LD3 validation loss is NaN or inf (the model failed on the student's "
                                   "path); check the model and its sigma range")
        return loss

    def _examine(self) -> None:
        """Reference `_examine_checkpoint`: validate, keep the best, patience -> restore best and decay lr."""
        self.val_loss = self._validate()
        if self.val_loss < self.best_loss:
            self.best_loss, self.best_xi, self.count_worse = self.val_loss, self.xi.clone(), 0
            return
        self.count_worse += 1
        if self.count_worse < self.patience:
            return
        self.xi, self.count_worse = self.best_xi.clone(), 0
        if not self.decays_armed:             # reference: first hit switches eval_on_one off, no decay
            self.decays_armed = True
            self.best_loss = self._validate()
            return
        self.lr = max(self.lr_decay * self.lr, self.min_lr)
        if self.lr <= self.min_lr:
            self.min_hits += 1

    def _slack(self, idx, grad_z, ref) -> bool:
        """SGD step on z', projection onto the ball around z, accept where the loss went down."""
        z, _ = self._teacher()
        with torch.no_grad():
            zn = self.z_cur[idx] - self.shift_lr * grad_z
            diff = zn - z[idx]
            norm = diff.flatten(1).norm(dim=1).reshape(-1, *([1] * (diff.ndim - 1)))
            zn = torch.where(norm > self.prior_bound, z[idx] + self.prior_bound * diff / norm.clamp_min(1e-300), zn)
            new = self._loss(self.xi, idx, zn)
            keep = (new < ref).reshape(-1, *([1] * (zn.ndim - 1)))
            self.z_cur[idx] = torch.where(keep, zn, self.z_cur[idx])
        return bool(keep.any())

    def _grads(self, idx, want_xi: bool):
        xi = self.xi.clone().requires_grad_(want_xi)
        zc = self.z_cur[idx].clone().requires_grad_(True)
        lv = self._loss(xi, idx, zc)
        g = torch.autograd.grad(lv.mean(), [xi, zc] if want_xi else [zc])   # the model's parameters untouched
        return lv.detach(), g

    def _rmsprop(self, g: torch.Tensor) -> None:
        """clip_grad_norm_(1.0) then torch.optim.RMSprop(lr, momentum) on xi."""
        norm = float(g.norm())
        g = g * min(1.0, 1.0 / (norm + 1e-6))
        self.sq = RMS_ALPHA * self.sq + (1 - RMS_ALPHA) * g * g
        self.buf = self.momentum * self.buf + g / (self.sq.sqrt() + RMS_EPS)
        self.xi = self.xi - self.lr * self.buf

    def _event(self, msg, done=False) -> ProgressEvent:
        return ProgressEvent(self.method, self.iteration, self.result(), self.best_loss, heldout=self.val_loss,
                             stage=self.round, done=done, message=msg,
                             extra={"iteration": self.iteration, "iters": self.iters, "lr": self.lr,
                                    "best_loss": self.best_loss, "val_loss": self.val_loss})

    def events(self):
        t0 = time.perf_counter()
        self._teacher()
        while not self.done:
            if self.round >= self.rounds or self.iteration >= self.iters or self.min_hits >= self.lr_patience:
                self.done = True
                self.seconds += time.perf_counter() - t0
                yield self._event(f"LD3: {self.iteration} updates, best validation loss {self.best_loss:.4g} "
                                  f"({self.seconds:.2f} s)", done=True)
                return
            if self.pos == 0:                                  # round start: best xi, then validate
                if self.round > 0:
                    self.xi, self.count_worse = self.best_xi.clone(), 0
                self._examine()
            if self.pos < self.n_batches:                      # one training batch
                perm = torch.randperm(self.n_train, generator=torch.Generator().manual_seed(
                    self.seed * 100003 + self.round))
                idx = perm[self.pos * self.batch_size:(self.pos + 1) * self.batch_size]
                ref, (g_xi, g_z) = self._grads(idx, True)
                self._rmsprop(g_xi)
                self.iteration += 1
                self._examine()
                if self.prior_bound > 0:
                    self._slack(idx, g_z, ref)
                self.pos += 1
                msg = f"round {self.round} update {self.iteration}: validation {self.val_loss:.4g}"
            else:                                              # validation latents: slack only
                if self.prior_bound > 0:
                    for s in range(self.n_train, self.n_samples, self.batch_size):
                        idx = torch.arange(s, min(s + self.batch_size, self.n_samples))
                        ref, (g_z,) = self._grads(idx, False)
                        if self._slack(idx, g_z, ref):
                            self.no_change = False
                    if self.no_change:
                        self.shift_lr *= self.shift_lr_decay
                self.round, self.pos, self.no_change = self.round + 1, 0, True
                msg = f"round {self.round} done"
            self.seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            yield self._event(msg)

    def result(self) -> Schedule:
        with torch.no_grad():
            lv = ld3_levels(self.best_xi, self.sigma_min, self.sigma_max)
        return Schedule(tuple(float(s) for s in lv) + (0.0,), name="ld3",
                        params={**self._config(), "validation_loss": self.best_loss}, solver=self.stepper.name)

    def info(self) -> dict:
        return {"iterations": self.iteration, "best_loss": self.best_loss, "lr": self.lr, "seconds": self.seconds,
                **self._config()}

    def state_dict(self) -> dict:
        return {"method": self.method, "config": self._config(),
                "xi": self.xi.tolist(), "best_xi": self.best_xi.tolist(), "sq": self.sq.tolist(),
                "buf": self.buf.tolist(), "lr": self.lr, "shift_lr": self.shift_lr, "best_loss": self.best_loss,
                "val_loss": self.val_loss, "count_worse": self.count_worse, "min_hits": self.min_hits,
                "decays_armed": self.decays_armed, "round": self.round, "pos": self.pos,
                "iteration": self.iteration, "no_change": self.no_change, "done": self.done,
                "seconds": self.seconds, "z_cur": None if self.z_cur is None else self.z_cur.tolist()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("method") != self.method or state.get("config") != self._config():
            raise ScheduleLabError("this state belongs to a different LD3 run (steps, solver, range, samples, "
                                   "training settings, seed or model differ); start afresh")
        t = lambda k: torch.tensor(state[k], dtype=torch.float64)  # noqa: E731
        self.xi, self.best_xi, self.sq, self.buf = t("xi"), t("best_xi"), t("sq"), t("buf")
        for k in ("lr", "shift_lr", "best_loss", "val_loss", "count_worse", "min_hits", "decays_armed", "round",
                  "pos", "iteration", "no_change", "done", "seconds"):
            setattr(self, k, state[k])
        self.z_cur = None if state["z_cur"] is None else t("z_cur")


def optimize_ld3(model, steps, solver="dpmpp_2m", *, sigma_min=None, sigma_max=None, n_samples=100, iters=None,
                 seed=0, progress=None, **kw) -> Schedule:
    """LD3 schedule "ld3" for `solver` (see LD3Optimizer for kw). progress: optional callable(ProgressEvent)."""
    opt = LD3Optimizer(model, steps, solver, sigma_min=sigma_min, sigma_max=sigma_max, n_samples=n_samples,
                       iters=iters, seed=seed, **kw)
    for ev in opt.events():
        if progress is not None:
            progress(ev)
    return opt.result()
