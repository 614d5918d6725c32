"""Solver registry: name -> (function, NFE rule, stochastic?, order)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from core.errors import unknown_name
from core.solvers.ode import dpmpp_2m, dpmpp_3m, euler, heun, ipndm
from core.solvers.sde import ddim_sde, dpmpp_2m_sde


@dataclass(frozen=True)
class SolverSpec:
    name: str
    fn: Callable
    stochastic: bool
    order: int
    label: str
    nfe_per_step: int = 1   # Heun: 2 (minus one on the final Euler step)

    def nfe(self, steps: int) -> int:
        """Model calls for a schedule of `steps` steps (Heun: 2n - 1)."""
        return steps if self.nfe_per_step == 1 else 2 * steps - 1

    def steps_for_nfe(self, nfe: int) -> int:
        return nfe if self.nfe_per_step == 1 else (nfe + 1) // 2


SOLVERS = {s.name: s for s in (
    SolverSpec("euler", euler, False, 1, "Euler (DDIM)"),
    SolverSpec("heun", heun, False, 2, "Heun (EDM Alg. 1)", nfe_per_step=2),
    SolverSpec("dpmpp_2m", dpmpp_2m, False, 2, "DPM-Solver++(2M)"),
    SolverSpec("dpmpp_3m", dpmpp_3m, False, 3, "DPM-Solver++(3M), exact Lagrange weights"),
    SolverSpec("ipndm", ipndm, False, 4, "iPNDM"),
    SolverSpec("ddim_sde", ddim_sde, True, 1, "Stochastic DDIM (eta = 1)"),
    SolverSpec("dpmpp_2m_sde", dpmpp_2m_sde, True, 2, "SDE-DPM-Solver++(2M), midpoint"),
)}
ALIASES = {"ddim": "euler", "dpm++2m": "dpmpp_2m", "dpm++2m_sde": "dpmpp_2m_sde", "dpm++3m": "dpmpp_3m"}


def get_solver(name: str) -> SolverSpec:
    name = ALIASES.get(name, name)
    if name not in SOLVERS:
        raise unknown_name("solver", name, SOLVERS)
    return SOLVERS[name]


def solver_names() -> tuple:
    return tuple(SOLVERS)
