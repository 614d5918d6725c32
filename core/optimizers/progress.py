"""Progress over a whole optimizer run: stage k of K, iterations within the stage against its cap,
the early-stopping state, compute time so far and an estimate of the time left.

The app's run indicator and the CLI's progress bar both read `progress_of(optimizer)`, so they
agree. The fraction is work-weighted: an AYS sweep of an n-step stage costs about n units (one
KLUB term per interval and candidate, one held-out sample run of n steps), the stages not reached
yet count at their iteration caps, so the fraction is a lower bound and the time left an upper
bound (a stage that converges or stops early skips the rest of its cap).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Progress:
    """Where a run stands.

    Attributes:
        method: "ays" | "nonuniform" | "score_optimal".
        stage, stages: the current stage, 1-based, of `stages` (AYS hierarchy; DM-NonUniform starts;
            score-optimal has one).
        step, cap: iterations done in this stage and its cap (cap None when unknown).
        unit: what an iteration is ("sweep", "iteration", "level").
        fraction: share of the run's work done, in [0, 1] (remaining stages at their caps).
        elapsed_s: compute seconds so far (stopped periods excluded; survives stop / resume).
        remaining_s: estimated seconds left (an upper bound), None until a rate is known.
        early_stop: the early-stopping state in words ("" when the method has none).
        done: the run has finished.
    """

    method: str
    stage: int
    stages: int
    step: int
    cap: int | None
    unit: str
    fraction: float
    elapsed_s: float
    remaining_s: float | None
    early_stop: str = ""
    done: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def short(self) -> str:
        """'stage 2/3, 41 %' (the run indicator)."""
        return f"stage {self.stage}/{self.stages}, {100 * self.fraction:.0f} %"

    def text(self) -> str:
        """One line: stage, iterations against the cap, percent, early stopping, time."""
        cap = f"/{self.cap}" if self.cap else ""
        parts = [f"stage {self.stage}/{self.stages}", f"{self.unit} {self.step}{cap}", f"{100 * self.fraction:.0f} %"]
        if self.early_stop:
            parts.append(self.early_stop)
        parts.append(f"{_duration(self.elapsed_s)} elapsed")
        if not self.done and self.remaining_s is not None:
            parts.append(f"at most ~{_duration(self.remaining_s)} left")
        return ", ".join(parts)


def _duration(s: float) -> str:
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def _rate_left(done_work: float, left_work: float, elapsed: float):
    """Seconds left at the run's own rate so far (None before any work was timed)."""
    if done_work <= 0 or elapsed <= 0:
        return None
    return elapsed / done_work * left_work


def ays_progress(opt) -> Progress:
    """core.optimizers.ays.AYSOptimizer: stage k of K, sweeps of this stage against its cap, the
    held-out patience (first stage) or the sweep early stopping kept; weights: stages[k] per sweep."""
    K = len(opt.stages)
    caps = list(opt.max_iters) if isinstance(opt.max_iters, list) else [opt.max_iters] * K
    hist = opt.history
    k = min(opt._stage, K - 1)
    done_work = sum(opt.stages[h["stage"]] for h in hist)
    if opt.done:
        left = 0
    else:
        left = (0 if opt._started else opt.stages[0]) + max(caps[k] - opt._stage_iter, 0) * opt.stages[k]
        left += sum(caps[j] * opt.stages[j] for j in range(k + 1, K))
    elapsed = sum(float(h.get("seconds") or 0.0) for h in hist)
    if opt.heldout is None:
        early = "early stopping off"
    elif opt._early_stopped_at is not None:
        early = f"stage 1 kept sweep {opt._early_stopped_at}"
    else:
        best = (opt._best or {}).get("iteration")
        early = f"held-out: {opt._bad}/{opt.patience} sweeps without gain"
        early += "" if best is None else f" (best: sweep {best})"
    total = done_work + left
    return Progress("ays", k + 1, K, opt._stage_iter, caps[k], "sweep",
                    1.0 if opt.done else (done_work / total if total else 0.0), elapsed,
                    _rate_left(done_work, left, elapsed), early, bool(opt.done))


def nonuniform_progress(opt, elapsed_s: float, finished: bool = False) -> Progress:
    """core.optimizers.nonuniform.NonUniformOptimizer: start k of K, trust-constr iterations of
    this start against maxiter (a start usually converges well before it)."""
    K = len(opt.starts)
    n_done = len(opt.done)
    step = opt.iteration - opt._iteration_done
    frac = 1.0 if finished else min(1.0, (n_done + min(step / max(opt.maxiter, 1), 1.0)) / K)
    return Progress("nonuniform", min(n_done + 1, K), K, step, opt.maxiter, "iteration", frac, elapsed_s,
                    None, "", bool(finished))


def score_optimal_progress(opt, finished: bool = False) -> Progress:
    """core.optimizers.score_optimal.ScoreOptimalOptimizer: levels of the Stein density estimated."""
    n, k = int(opt.grid.size), int(opt.levels_done)
    elapsed = float(opt.seconds)
    frac = 1.0 if finished else k / max(n, 1)
    return Progress("score_optimal", 1, 1, k, n, "level", frac, elapsed, _rate_left(k, n - k, elapsed), "",
                    bool(finished))


def progress_of(opt, elapsed_s: float = 0.0, finished: bool = False) -> Progress | None:
    """The Progress of any of the app's optimizers (None for another kind). elapsed_s: compute
    seconds, for the methods that do not time themselves (DM-NonUniform); finished: the last event
    has been taken (AYS knows it itself)."""
    m = getattr(opt, "method", None)
    if m == "ays":
        return ays_progress(opt)
    if m == "nonuniform":
        return nonuniform_progress(opt, elapsed_s, finished)
    if m == "score_optimal":
        return score_optimal_progress(opt, finished)
    return None
