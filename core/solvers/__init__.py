"""Solver registry: name -> (function, NFE rule, stochastic?, order, label naming the source).

A name shared with k-diffusion / ComfyUI (`sample_<name>`) is their sampler, reproduced to 1e-10
in float64 from the same noise (tests/test_samplers_reference.py); our own variants carry their
own names (`dpmpp_3m_lagrange`, `ddim_sde`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from core.errors import unknown_name
from core.solvers.deis import deis
from core.solvers.ode import dpm_2, dpmpp_2m, dpmpp_3m_lagrange, euler, heun, ipndm, lms
from core.solvers.sde import (ddim_sde, dpmpp_2m_sde, dpmpp_2s_ancestral, dpmpp_3m, dpmpp_3m_sde, dpmpp_sde,
                              er_sde, euler_ancestral, res_multistep, res_multistep_ancestral)
from core.solvers.unipc import uni_pc, uni_pc_bh2


@dataclass(frozen=True)
class SolverSpec:
    name: str
    fn: Callable
    stochastic: bool
    order: int
    label: str
    nfe_per_step: int = 1   # 2-stage samplers: 2 (minus one on the final Euler step to sigma = 0)
    min_steps: int = 1      # fewer steps raise ScheduleLabError (uni_pc: 2)

    def nfe(self, steps: int) -> int:
        """Model calls for a schedule of `steps` steps ending in 0 (2-stage samplers: 2n - 1)."""
        return steps if self.nfe_per_step == 1 else 2 * steps - 1

    def steps_for_nfe(self, nfe: int) -> int:
        return nfe if self.nfe_per_step == 1 else (nfe + 1) // 2


KD = "k-diffusion / ComfyUI"
SOLVERS = {s.name: s for s in (
    SolverSpec("euler", euler, False, 1, f"Euler (DDIM); {KD} sample_euler"),
    SolverSpec("heun", heun, False, 2, f"Heun (EDM Alg. 1); {KD} sample_heun", nfe_per_step=2),
    SolverSpec("dpmpp_2m", dpmpp_2m, False, 2, f"DPM-Solver++(2M); {KD} sample_dpmpp_2m"),
    SolverSpec("dpmpp_3m_lagrange", dpmpp_3m_lagrange, False, 3,
               "3rd-order exact-Lagrange multistep (DM-NonUniform's modelled solver; ours)"),
    SolverSpec("ipndm", ipndm, False, 4, "iPNDM; ComfyUI sample_ipndm (with its denoising last step)"),
    SolverSpec("ddim_sde", ddim_sde, True, 1, "Stochastic DDIM (eta = 1; ours, AYS' solver)"),
    SolverSpec("dpmpp_2m_sde", dpmpp_2m_sde, True, 2,
               f"SDE-DPM-Solver++(2M), midpoint, eta = 1; {KD} sample_dpmpp_2m_sde"),
    SolverSpec("dpmpp_3m", dpmpp_3m, False, 3, f"DPM-Solver++(3M); {KD} sample_dpmpp_3m_sde, eta = 0"),
    SolverSpec("dpmpp_3m_sde", dpmpp_3m_sde, True, 3, f"DPM-Solver++(3M) SDE (eta = 1); {KD} sample_dpmpp_3m_sde"),
    SolverSpec("euler_ancestral", euler_ancestral, True, 1, f"Euler ancestral (eta = 1); {KD} sample_euler_ancestral"),
    SolverSpec("dpmpp_2s_ancestral", dpmpp_2s_ancestral, True, 2,
               f"DPM-Solver++(2S) ancestral (eta = 1); {KD} sample_dpmpp_2s_ancestral", nfe_per_step=2),
    SolverSpec("dpmpp_sde", dpmpp_sde, True, 2, f"DPM-Solver++ SDE (eta = 1, r = 1/2); {KD} sample_dpmpp_sde",
               nfe_per_step=2),
    SolverSpec("dpm_2", dpm_2, False, 2, f"DPM-Solver-2; {KD} sample_dpm_2", nfe_per_step=2),
    SolverSpec("lms", lms, False, 4, f"Linear multistep (order 4); {KD} sample_lms"),
    SolverSpec("deis", deis, False, 3, "DEIS-tAB(3); ComfyUI sample_deis ('tab')"),
    SolverSpec("uni_pc_bh2", uni_pc_bh2, False, 3,
               "UniPC, B(h) = e^h - 1 (UniP-3 + UniC); ComfyUI sample_unipc_bh2 (ends at sigma 0.001)", min_steps=2),
    SolverSpec("uni_pc", uni_pc, False, 3,
               "UniPC, B(h) = h (UniP-3 + UniC); ComfyUI sample_unipc (ends at sigma 0.001)", min_steps=2),
    SolverSpec("res_multistep", res_multistep, False, 2, "RES 2nd-order multistep; ComfyUI sample_res_multistep"),
    SolverSpec("res_multistep_ancestral", res_multistep_ancestral, True, 2,
               "RES multistep ancestral (eta = 1); ComfyUI sample_res_multistep_ancestral"),
    SolverSpec("er_sde", er_sde, True, 3, "ER-SDE-Solver-3 (VE / EDM); ComfyUI sample_er_sde"),
)}
ALIASES = {"ddim": "euler", "dpm++2m": "dpmpp_2m", "dpm++2m_sde": "dpmpp_2m_sde", "dpm++3m": "dpmpp_3m",
           "dpm++3m_sde": "dpmpp_3m_sde", "dpm++sde": "dpmpp_sde", "dpm++2s_a": "dpmpp_2s_ancestral",
           "euler_a": "euler_ancestral"}


def get_solver(name: str) -> SolverSpec:
    name = ALIASES.get(name, name)
    if name not in SOLVERS:
        raise unknown_name("solver", name, SOLVERS)
    return SOLVERS[name]


def solver_names() -> tuple:
    return tuple(SOLVERS)
