"""A diffusers scheduler that runs a USF solver schedule, for use as ``pipe.scheduler`` in existing pipelines.

    from samplebench.usf import SolverSchedule, USFScheduler
    pipe.scheduler = USFScheduler.from_scheduler(pipe.scheduler, SolverSchedule.load("s3/nfe6.json"))
    images = pipe(num_inference_steps=pipe.scheduler.num_evaluations, ...).images

    USFScheduler.install(pipe, schedule)          # also applies the schedule's Skip-Tuning to pipe.unet
    USFScheduler.for_solver(pipe.scheduler, "dpmpp-3m", nfe=8, time_grid="logsnr")  # any expressible registry solver

The pipeline evaluates the network at every entry of ``scheduler.timesteps`` and hands the output to ``step``,
which drives the same coroutine as ``usf_sample`` (``executor.usf_steps``): outputs equal the executor's. A pipeline
cannot skip its first network call, so a schedule with an analytical first step lists T first and ignores that
output: the samples are the executor's, at one network call more than the schedule's NFE. The schedule brings its
own times: the ``sigmas``, ``timesteps`` or ``mu`` (FLUX's shift) a pipeline passes to ``set_timesteps`` are
ignored. A schedule with Skip-Tuning coefficients needs the UNet's skips scaled, which a scheduler alone cannot do:
``install`` does it, and ``step`` refuses to run such a schedule without it (never silently another sampler).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin, SchedulerOutput

from ..models.protocol import convert_output
from ..schedules import FlowMatching, is_flow_config, schedule_from_config
from .executor import usf_steps
from .schedule import SolverSchedule

__all__ = ["USFScheduler"]


def _is_flow(config: dict) -> bool:
    """A flow-matching scheduler's config, or a USF scheduler's made from one."""
    return bool(config.get("flow")) or is_flow_config(config)


def _noise_schedule(config: dict, flow: bool):
    """A flow-matching pipeline's path x_t = (1 - t) x_0 + t eps, or the VP schedule of the config's betas."""
    return FlowMatching(timestep_scale=float(config.get("num_train_timesteps", 1000))) if flow else \
        schedule_from_config(config)


def _training_tensors(config: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``betas``, ``alphas`` and ``alphas_cumprod`` (float32) of the config's beta schedule, computed by diffusers."""
    import inspect

    from diffusers import DDPMScheduler

    accepted = set(inspect.signature(DDPMScheduler.__init__).parameters) - {"self"}
    ddpm = DDPMScheduler.from_config({k: v for k, v in config.items() if k in accepted})
    return ddpm.betas, ddpm.alphas, ddpm.alphas_cumprod


class USFScheduler(SchedulerMixin, ConfigMixin):
    """Runs ``usf_schedule`` (a ``SolverSchedule.to_dict()``) on the training schedule of the config's betas."""

    order = 1
    # configs that carry over both ways (``pipe.scheduler.compatibles``, ``from_config``): every DDPM-family scheduler's
    # and the flow-matching Euler scheduler's; a USF config keeps its schedule through theirs
    _compatibles = [e.name for e in KarrasDiffusionSchedulers] + ["FlowMatchEulerDiscreteScheduler"]

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas: Any = None, prediction_type: str = "epsilon",
                 usf_schedule: dict | None = None, data_mean: list | None = None, flow: bool = False):
        if usf_schedule is None:
            raise ValueError("USFScheduler needs usf_schedule (a SolverSchedule.to_dict())")
        # a flow-matching pipeline: the path x_t = (1 - t) x_0 + t eps and a velocity-predicting network
        self.noise_schedule = _noise_schedule(dict(self.config), flow)
        if not flow:  # the training schedule's tensors, as diffusers' DDPM-family schedulers expose them
            self.betas, self.alphas, self.alphas_cumprod = _training_tensors(dict(self.config))
        self.prediction = "flow" if flow else prediction_type
        self.schedule = SolverSchedule.from_dict(usf_schedule)
        self.data_mean = None if data_mean is None else torch.tensor(data_mean)
        self.init_noise_sigma = self.noise_schedule.prior_std()
        self._steps = None
        self.skip_hooks: list | None = None  # Skip-Tuning hooks on the pipeline's UNet (``install``)
        self._begin_index = 0
        self.set_timesteps()

    @classmethod
    def from_scheduler(cls, scheduler, schedule: SolverSchedule, data_mean: torch.Tensor | None = None
                       ) -> "USFScheduler":
        """Replace a pipeline's scheduler, keeping its training noise schedule and prediction type (a
        flow-matching scheduler's path and velocity prediction too)."""
        if schedule.afs == "mean" and data_mean is None:
            raise ValueError("this schedule's analytical first step 'mean' needs the model's mean training image: "
                             "pass data_mean (a model folder's data_mean.npy; USFScheduler.install reads it)")
        import inspect

        config = dict(scheduler.config)
        kept = {k: v for k, v in config.items() if k in inspect.signature(cls.__init__).parameters}
        return cls.from_config(kept, usf_schedule=schedule.to_dict(), flow=_is_flow(config),
                               data_mean=None if data_mean is None else data_mean.tolist())

    @classmethod
    def install(cls, pipe, schedule: SolverSchedule, data_mean: torch.Tensor | None = None) -> "USFScheduler":
        """``pipe.scheduler = `` the USF scheduler of ``schedule``, with its Skip-Tuning coefficients (if any)
        applied to ``pipe.unet`` by forward pre-hooks (``remove_skip_tuning`` takes them off); returns it. The mean
        image of an analytical first step 'mean' is ``data_mean``, else the pipeline folder's ``data_mean.npy``."""
        from ..models.diffusers_models import _read_data_mean
        from ..models.skip_tuning import apply_skip_tuning

        if data_mean is None and schedule.afs == "mean":
            data_mean = _read_data_mean(Path(str(getattr(pipe.config, "_name_or_path", "") or ".")), torch.float32)
        scheduler = cls.from_scheduler(pipe.scheduler, schedule, data_mean)
        if schedule.skip_coefficients is not None:
            unet = getattr(pipe, "unet", None)
            if unet is None or not hasattr(unet, "up_blocks"):
                raise ValueError("this schedule has Skip-Tuning coefficients, which need a UNet with skip "
                                 f"connections; {type(pipe).__name__} has none")
            scheduler.skip_hooks = apply_skip_tuning(unet, schedule.skip_coefficients)
        pipe.scheduler = scheduler
        return scheduler

    def remove_skip_tuning(self) -> None:
        for hook in self.skip_hooks or []:
            hook.remove()
        self.skip_hooks = None

    @classmethod
    def for_solver(cls, scheduler, solver: str, nfe: int, time_grid: str = "logsnr") -> "USFScheduler":
        """A registry solver (``executor.KNOWN_SCHEDULES``: DDIM, DPM-Solver++ 2M/3M, UniPC bh1/bh2, DEIS log-rho)
        at ``nfe`` on ``time_grid`` of the scheduler's noise schedule, as a scheduler for any pipeline."""
        from ..samplers import make_grid
        from .executor import known_schedule

        config = dict(scheduler.config)
        grid = make_grid(_noise_schedule(config, _is_flow(config)), time_grid, nfe)
        return cls.from_scheduler(scheduler, known_schedule(solver, grid.tolist()))

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Pipelines (FLUX, SD3) call this before the loop; a USF run always starts at its first time."""
        self._begin_index = begin_index

    @property
    def begin_index(self) -> int:
        return self._begin_index

    @property
    def num_evaluations(self) -> int:
        """Network calls the pipeline makes: the schedule's NFE, plus the ignored first call with an AFS."""
        return len(self.timesteps)

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      sigmas=None, timesteps=None, mu: float | None = None, **kwargs):
        """The schedule's own times; ``sigmas``, ``timesteps`` and ``mu`` from a pipeline are ignored."""
        sched = self.schedule
        indices = [0]  # the pipeline's first call, at T (ignored with an analytical first step)
        last = sched.num_steps - 1
        for i, st in enumerate(sched.steps):
            if i < last or st.corrector.kind != "none":  # a corrector on the last step evaluates at its end
                indices.append(i + 1)
            if i < last and st.corrector.kind == "implicit":
                indices.append(i + 1)
        if num_inference_steps is not None and num_inference_steps != len(indices):
            raise ValueError(f"this USF schedule makes {len(indices)} network calls; call the pipeline with "
                             f"num_inference_steps={len(indices)}, not {num_inference_steps}")
        ts = torch.tensor(sched.timesteps, dtype=torch.float64)
        self._tables = (self.noise_schedule.alpha(ts).tolist(), self.noise_schedule.sigma(ts).tolist(),
                        self.noise_schedule.lambda_(ts).tolist())
        seen = torch.tensor(sched.network_times, dtype=torch.float64)  # LD3's input times where the schedule has them
        self._seen = (self.noise_schedule.alpha(seen).tolist(), self.noise_schedule.sigma(seen).tolist())
        model_times = self.noise_schedule.model_time(seen[indices]).to(torch.float32)
        self.timesteps = model_times.to(device) if device is not None else model_times
        self.num_inference_steps = len(indices)
        self._steps = None

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True, **kwargs) -> SchedulerOutput | tuple:
        a, s, lam = self._tables
        if self._steps is None:  # the first call of a run: sample is x_T
            if self.schedule.skip_coefficients is not None and self.skip_hooks is None:
                raise ValueError("this USF schedule scales the UNet's skip connections (Skip-Tuning), which a "
                                 "scheduler cannot do alone; use USFScheduler.install(pipe, schedule)")
            self._steps = usf_steps(sample, self.schedule, a, s, lam, data_mean=self.data_mean)
            self._request = next(self._steps)
            if self.schedule.afs != "none":  # the output at x_T is not used
                return self._out(self._request[0], return_dict)
        x, i = self._request
        a_seen, s_seen = self._seen  # the output is the network's at its input time
        pred = convert_output(model_output.to(x.dtype), x, torch.tensor([a_seen[i]], dtype=torch.float64),
                              torch.tensor([s_seen[i]], dtype=torch.float64), self.prediction)
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
