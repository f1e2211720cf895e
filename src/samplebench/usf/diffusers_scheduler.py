"""A diffusers scheduler that runs a USF solver schedule, for use as ``pipe.scheduler`` in existing pipelines.

    from samplebench.usf import SolverSchedule, USFScheduler
    pipe.scheduler = USFScheduler.from_scheduler(pipe.scheduler, SolverSchedule.load("s3/nfe6.json"))
    images = pipe(num_inference_steps=pipe.scheduler.num_evaluations, ...).images

The pipeline evaluates the network at every entry of ``scheduler.timesteps`` and hands the output to ``step``,
which drives the same coroutine as ``usf_sample`` (``executor.usf_steps``): outputs equal the executor's. A pipeline
cannot skip its first network call, so a schedule with an analytical first step lists T first and ignores that
output: the samples are the executor's, at one network call more than the schedule's NFE.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from ..models.protocol import convert_output
from ..schedules import FlowMatching, is_flow_config, schedule_from_config
from .executor import usf_steps
from .schedule import SolverSchedule

__all__ = ["USFScheduler"]


class USFScheduler(SchedulerMixin, ConfigMixin):
    """Runs ``usf_schedule`` (a ``SolverSchedule.to_dict()``) on the training schedule of the config's betas."""

    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas: Any = None, prediction_type: str = "epsilon",
                 usf_schedule: dict | None = None, data_mean: list | None = None, flow: bool = False):
        if usf_schedule is None:
            raise ValueError("USFScheduler needs usf_schedule (a SolverSchedule.to_dict())")
        # a flow-matching pipeline: the path x_t = (1 - t) x_0 + t eps and a velocity-predicting network
        self.noise_schedule = (FlowMatching(timestep_scale=float(num_train_timesteps)) if flow
                               else schedule_from_config(dict(self.config)))
        self.prediction = "flow" if flow else prediction_type
        self.schedule = SolverSchedule.from_dict(usf_schedule)
        self.data_mean = None if data_mean is None else torch.tensor(data_mean)
        self.init_noise_sigma = self.noise_schedule.prior_std()
        self._steps = None
        self.set_timesteps()

    @classmethod
    def from_scheduler(cls, scheduler, schedule: SolverSchedule, data_mean: torch.Tensor | None = None
                       ) -> "USFScheduler":
        """Replace a pipeline's scheduler, keeping its training noise schedule and prediction type (a
        flow-matching scheduler's path and velocity prediction too)."""
        return cls.from_config(scheduler.config, usf_schedule=schedule.to_dict(), flow=is_flow_config(
            dict(scheduler.config)), data_mean=None if data_mean is None else data_mean.tolist())

    @property
    def num_evaluations(self) -> int:
        """Network calls the pipeline makes: the schedule's NFE, plus the ignored first call with an AFS."""
        return len(self.timesteps)

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None):
        sched = self.schedule
        indices = [0]  # the pipeline's first call, at T (ignored with an analytical first step)
        for i, st in enumerate(sched.steps[:-1]):
            indices.append(i + 1)
            if st.corrector.kind == "implicit":
                indices.append(i + 1)
        if num_inference_steps is not None and num_inference_steps != len(indices):
            raise ValueError(f"this USF schedule makes {len(indices)} network calls; call the pipeline with "
                             f"num_inference_steps={len(indices)}, not {num_inference_steps}")
        ts = torch.tensor(sched.timesteps, dtype=torch.float64)
        self._tables = (self.noise_schedule.alpha(ts).tolist(), self.noise_schedule.sigma(ts).tolist(),
                        self.noise_schedule.lambda_(ts).tolist())
        model_times = self.noise_schedule.model_time(ts[indices]).to(torch.float32)
        self.timesteps = model_times.to(device) if device is not None else model_times
        self.num_inference_steps = len(indices)
        self._steps = None

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True, **kwargs) -> SchedulerOutput | tuple:
        a, s, lam = self._tables
        if self._steps is None:  # the first call of a run: sample is x_T
            self._steps = usf_steps(sample, self.schedule, a, s, lam, data_mean=self.data_mean)
            self._request = next(self._steps)
            if self.schedule.afs != "none":  # the output at x_T is not used
                return self._out(self._request[0], return_dict)
        x, i = self._request
        pred = convert_output(model_output.to(x.dtype), x, torch.tensor([a[i]], dtype=torch.float64),
                              torch.tensor([s[i]], dtype=torch.float64), self.prediction)
        try:
            self._request = self._steps.send((pred.eps, pred.denoised))
            return self._out(self._request[0], return_dict)
        except StopIteration as done:
            self._steps = None
            return self._out(done.value, return_dict)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = alpha_t x_0 + sigma_t eps at the pipeline's (model) timesteps, as diffusers' schedulers do for
        img2img and training; timestep n of the N training steps is t = (n + 1) / N (t = n / N on a flow path)."""
        n = self.config.num_train_timesteps
        steps = torch.as_tensor(timesteps, dtype=torch.float64).flatten()
        t = steps / n if self.config.flow else (steps + 1.0) / n  # flow: timestep = t x N
        a = self.noise_schedule.alpha(t).to(original_samples.device, original_samples.dtype)
        s = self.noise_schedule.sigma(t).to(original_samples.device, original_samples.dtype)
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        return a.view(shape) * original_samples + s.view(shape) * noise

    @staticmethod
    def _out(x: torch.Tensor, return_dict: bool):
        return SchedulerOutput(prev_sample=x) if return_dict else (x,)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
