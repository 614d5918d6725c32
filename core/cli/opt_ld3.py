"""LD3: levels learned by backpropagating through the solver to a many-step teacher, with the
paper's slack on x_T (Tong et al. 2024; methods.md s.8).

    python -m core optimize ld3 --toy grid8x8 --steps 10 --solver dpmpp_2m --out ld3_10.json
    python -m core optimize ld3 --toy moons --model mlp --steps 6 --out l.json --resume l.state.json

Needs model calls (and gradients through the model) but no data. The state is written after every
update (to --state, else to the --resume file, else to OUT with `.state.json` in place of `.json`);
a killed run continues with --resume.
"""
from __future__ import annotations

import sys
from pathlib import Path

from core.cli.opt_gits import add_common, finish, load


def add_arguments(p):
    add_common(p, 100)
    p.add_argument("--iters", type=int, default=None, help="cap on level updates (default: rounds x batches)")
    p.add_argument("--rounds", type=int, default=7, help="passes over the training pairs (reference 2 + 5)")
    p.add_argument("--lr", type=float, default=5e-3, help="RMSprop lr of the level parameters (reference 5e-3)")
    p.add_argument("--batch-size", type=int, default=2, help="training pairs per update (reference 2)")
    p.add_argument("--patience", type=int, default=5, help="validations without gain before lr decay (reference 5)")
    p.add_argument("--prior-bound", type=float, default=None,
                   help="slack radius on the unit-normal latent (default 0.001 d / steps^2; 0 = off)")
    p.add_argument("--teacher-steps", type=int, default=100, help="teacher Heun levels (polynomial grid)")
    p.add_argument("--resume", default=None, metavar="FILE", help="continue from a saved state")
    p.add_argument("--state", default=None, metavar="FILE", help="where to write the state after every update")


def run(a) -> int:
    from tqdm import tqdm

    from core.device import resolve_device
    from core.optimizers.base import Optimizer
    from core.optimizers.ld3 import LD3Optimizer

    model, label = load(a, resolve_device(a.device))
    opt = LD3Optimizer(model, a.steps, a.solver, sigma_min=a.sigma_min, sigma_max=a.sigma_max,
                       n_samples=a.n_samples, iters=a.iters, rounds=a.rounds, lr=a.lr,
                       batch_size=a.batch_size, patience=a.patience, prior_bound=a.prior_bound,
                       teacher_steps=a.teacher_steps, seed=a.seed)
    out = Path(a.out)
    state_path = Path(a.state or a.resume or out.with_name(out.stem + ".state.json"))
    if a.resume:
        opt.load_state_dict(Optimizer.read_state(a.resume))
    with tqdm(total=opt.iters, initial=opt.iteration, desc="ld3 (updates)", disable=a.json, file=sys.stderr) as bar:
        for ev in opt.events():
            opt.save_state(state_path)
            bar.update(ev.iteration - bar.n)
    sched = opt.result().with_name("ld3", **label)
    return finish(a, sched, {**opt.info(), **label, "state": str(state_path), "resumed": bool(a.resume)},
                  f"LD3, best validation loss {opt.best_loss:.4g}")
