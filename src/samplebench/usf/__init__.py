"""USF: solver schedules as plain data and one executor that runs them (Liu et al., ICLR 2024)."""

from .executor import ddim_schedule, dpmpp_2m_schedule, phi, relaxation_factor, unipc_schedule, usf_sample
from .schedule import Corrector, Derivative, SolverSchedule, Step

__all__ = ["SolverSchedule", "Step", "Derivative", "Corrector", "usf_sample", "phi", "relaxation_factor",
           "ddim_schedule", "dpmpp_2m_schedule", "unipc_schedule"]
