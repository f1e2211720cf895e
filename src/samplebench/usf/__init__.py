"""USF: solver schedules as plain data and one executor that runs them (Liu et al., ICLR 2024)."""

from .executor import (KNOWN_SCHEDULES, NOT_EXPRESSIBLE, ddim_schedule, deis_schedule, dpmpp_2m_schedule,
                       dpmpp_3m_schedule, known_schedule, phi, relaxation_factor, unipc_schedule, usf_sample)
from .schedule import Corrector, Derivative, SolverSchedule, Step


def __getattr__(name: str):
    if name == "USFScheduler":  # imports diffusers: only on demand
        from .diffusers_scheduler import USFScheduler

        return USFScheduler
    raise AttributeError(name)

__all__ = ["SolverSchedule", "Step", "Derivative", "Corrector", "usf_sample", "phi", "relaxation_factor",
           "ddim_schedule", "dpmpp_2m_schedule", "dpmpp_3m_schedule", "unipc_schedule", "deis_schedule",
           "known_schedule", "KNOWN_SCHEDULES", "NOT_EXPRESSIBLE", "USFScheduler"]
