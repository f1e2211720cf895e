"""Compute skipping and its accounting: early exit (DeeDiff), DeepCache, diffusers' FirstBlockCache.

Each method is a denoiser wrapper: during one call it changes how the network runs and records what ran in a
``ComputeMeter``. An early-exited or cached evaluation is still one NFE; the meter adds blocks evaluated out of
the full model's, estimated FLOPs (``torch.utils.flop_counter`` on one row, per block) and a per-step profile
(methods.md Sec. 3.3 and 3.5).

``--exit-threshold 0.9`` (or ``0.95@0.5,0.9``: 0.95 for t <= 0.5, 0.9 above) and ``--cache deepcache:N[:m]``
(a full step every N calls, branch m, default 1) or ``--cache fbcache:THR`` (transformers).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import UsageError
from .models.base import Conditioning, DiffusionModel
from .models.protocol import CFGDenoiser, Denoiser, Prediction, as_time

__all__ = ["ComputeMeter", "NetworkProfile", "ExitThreshold", "CacheSpec", "parse_cache", "parse_skipping",
           "network_profile", "flop_counts", "check_skipping", "metered_denoiser"]


@dataclass(frozen=True)
class NetworkProfile:
    """The blocks of a network in execution order and FLOPs per row: per block, and for the rest (stem/head)."""

    kind: str  # "dit" | "unet"
    block_names: tuple[str, ...]
    block_flops: tuple[float, ...]
    other_flops: float

    @property
    def full_flops(self) -> float:
        return self.other_flops + sum(self.block_flops)


@dataclass
class ComputeMeter:
    """What the network did over a run. ``rows`` counts network rows (a batched CFG call has two per sample)."""

    profile: NetworkProfile
    rows: int = 0
    full_rows: int = 0
    blocks: int = 0
    flops: float = 0.0
    by_call: dict[int, list[float]] = field(default_factory=dict)  # call index -> [t, rows, blocks]

    def record(self, call: int, t: float, blocks_per_row: torch.Tensor | list[int]) -> None:
        """A call in which row r ran the first ``blocks_per_row[r]`` blocks (early exit)."""
        b = torch.as_tensor(blocks_per_row, dtype=torch.long)
        ks, counts = torch.unique(b, return_counts=True)
        self._add(call, t, len(b), int((b == len(self.profile.block_names)).sum()), int(b.sum()),
                  sum(self._flops(int(k)) * int(n) for k, n in zip(ks, counts)))

    def record_blocks(self, call: int, t: float, rows: int, evaluated: list[bool]) -> None:
        """A call in which the same blocks ran for every row (``evaluated[j]`` for block j)."""
        self._add(call, t, rows, rows if all(evaluated) else 0, rows * sum(evaluated),
                  rows * (self.profile.other_flops + sum(f for f, e in zip(self.profile.block_flops, evaluated) if e)))

    def _add(self, call: int, t: float, rows: int, full_rows: int, blocks: int, flops: float) -> None:
        self.rows += rows
        self.full_rows += full_rows
        self.blocks += blocks
        self.flops += float(flops)
        entry = self.by_call.setdefault(call, [t, 0, 0])
        entry[1] += rows
        entry[2] += blocks

    def _flops(self, k: int) -> float:
        """A row that evaluated the first ``k`` blocks (early exit: the head runs once either way)."""
        return self.profile.other_flops + sum(self.profile.block_flops[:k])

    def summary(self) -> dict[str, Any]:
        total = len(self.profile.block_names)
        full = self.rows * total
        return {
            "blocks_per_forward": total, "network_rows": self.rows, "full_forwards": self.full_rows,
            "partial_forwards": self.rows - self.full_rows, "blocks_evaluated": self.blocks, "blocks_full": full,
            "block_fraction": self.blocks / full if full else None,
            "gflops": self.flops / 1e9, "gflops_full": self.rows * self.profile.full_flops / 1e9,
            "flop_fraction": self.flops / (self.rows * self.profile.full_flops) if self.rows else None,
            "mean_blocks_by_step": [{"t": round(v[0], 6), "mean_blocks": v[2] / v[1]}
                                    for _, v in sorted(self.by_call.items())],
        }


def _network_rows(inner: Denoiser, x: torch.Tensor) -> int:
    """Rows the network sees in one call: guidance runs a conditional and an unconditional row per sample."""
    return x.shape[0] * (2 if isinstance(inner, CFGDenoiser) else 1)


def flop_counts(model: DiffusionModel, shape: tuple[int, ...], cond: Conditioning = Conditioning()) -> dict[str, int]:
    """FLOPs of one evaluation of one sample of ``shape`` under ``cond`` (both halves of guidance), by module
    ("Global": all), counted with ``torch.utils.flop_counter`` on one forward. The one FLOP profiler: compute skipping
    (``network_profile``) and cascades (``cascade.gflops_per_eval``) both count through it."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, *shape, device=model.device)
    denoiser = model.denoiser(cond, 1)
    with FlopCounterMode(display=False) as counter:
        denoiser(x, 0.5)
    return {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}


def network_profile(model: DiffusionModel) -> NetworkProfile | None:
    """Blocks and per-row FLOPs of the model's network, counted on one forward (once per model object); None for
    a model without one."""
    from .models.deepcache import unet_blocks

    kind, net = model.network()
    if net is None:
        return None
    if getattr(model, "_network_profile", None) is not None:
        return model._network_profile
    names = ([f"transformer_blocks.{i}" for i in range(len(net.transformer_blocks))] if kind == "dit"
             else [n for n, _ in unet_blocks(net)])
    labels = torch.zeros(1, dtype=torch.long) if model.num_classes is not None else None
    counts = flop_counts(model, model.sample_shape, Conditioning(labels))
    total = counts.get("Global", 0)
    prefix = type(net).__name__ + "."
    block_flops = tuple(float(counts.get(prefix + n, 0)) for n in names)
    model._network_profile = NetworkProfile(kind, tuple(names), block_flops, float(total - sum(block_flops)))
    return model._network_profile


@dataclass(frozen=True)
class ExitThreshold:
    """A DeeDiff exit threshold, constant or piecewise constant in t: ((t_max, threshold), ...), t_max rising."""

    pieces: tuple[tuple[float, float], ...]

    @classmethod
    def parse(cls, text: str | float) -> ExitThreshold:
        """``0.9`` or ``0.95@0.5,0.9`` (threshold@t_max pieces, the last without @ covering up to t = 1)."""
        if isinstance(text, (int, float)):
            text = repr(float(text))
        pieces, bad = [], f"--exit-threshold {text!r} is not valid; give a number like 0.9, or pieces like 0.95@0.5,0.9"
        parts = [p.strip() for p in str(text).split(",")]
        for k, part in enumerate(parts):
            value, _, t_max = part.partition("@")
            try:
                thr = float(value)
                t = float(t_max) if t_max else 1.0
            except ValueError:
                raise UsageError(bad) from None
            if not math.isfinite(thr):
                raise UsageError(bad + " (thresholds are finite: above 1 never exits, below 0 exits at once)")
            if (not t_max) != (k == len(parts) - 1) or not 0 < t <= 1 or (pieces and t <= pieces[-1][0]):
                raise UsageError(bad + " (t_max rising in (0, 1], the last piece without @)")
            pieces.append((t, thr))
        return cls(tuple(pieces))

    def at(self, t: torch.Tensor) -> torch.Tensor:
        out = torch.full_like(t, self.pieces[-1][1], dtype=torch.float32)
        for t_max, thr in reversed(self.pieces[:-1]):
            out = torch.where(t <= t_max, torch.tensor(thr), out)
        return out


@dataclass(frozen=True)
class CacheSpec:
    kind: str  # "deepcache" | "fbcache"
    interval: int = 1
    branch: int = 1
    threshold: float = 0.0
    schedule: str = "uniform"  # DeepCache: "uniform" (1:N) or "quad" (non-uniform 1:N, ``models.deepcache``)

    def label(self) -> str:
        if self.kind == "deepcache":
            return f"deepcache:{self.interval}:{self.branch}" + (":quad" if self.schedule == "quad" else "")
        return f"fbcache:{self.threshold:g}"


def parse_cache(text: str) -> CacheSpec:
    """``deepcache:N[:BRANCH][:quad]`` or ``fbcache:THR``."""
    bad = (f"--cache {text!r} is not valid; valid: deepcache:N[:BRANCH][:quad] (a full step every N solver steps, "
           "N >= 1, BRANCH >= 1; quad: the same count crowded around the middle of the trajectory), "
           "fbcache:THRESHOLD (> 0)")
    kind, *args = text.split(":")
    try:
        if kind == "deepcache" and args and args[-1] == "quad":
            schedule, args = "quad", args[:-1]
        else:
            schedule = "uniform"
        if kind == "deepcache" and 1 <= len(args) <= 2:
            spec = CacheSpec("deepcache", int(args[0]), int(args[1]) if len(args) == 2 else 1, schedule=schedule)
            if spec.interval < 1 or spec.branch < 1:
                raise ValueError
            return spec
        if kind == "fbcache" and len(args) == 1 and 0 < float(args[0]) < math.inf:
            return CacheSpec("fbcache", threshold=float(args[0]))
    except ValueError:
        pass
    raise UsageError(bad)


def parse_skipping(exit_threshold: str | None, cache: str | None) -> tuple[ExitThreshold | None, CacheSpec | None]:
    """``--exit-threshold`` and ``--cache`` as given on the command line (at most one of them)."""
    if exit_threshold is not None and cache is not None:
        raise UsageError("give --exit-threshold or --cache, not both")
    return (None if exit_threshold is None else ExitThreshold.parse(exit_threshold),
            None if cache is None else parse_cache(cache))


class _Metered:
    """Base of the wrappers: counts calls, passes NFE accounting through, records into the meter."""

    def __init__(self, inner: Denoiser, meter: ComputeMeter):
        self.inner, self.meter = inner, meter
        self.schedule = inner.schedule
        self.nfe_per_call = getattr(inner, "nfe_per_call", 1)
        self.call = 0
        self.step = 0  # solver steps completed (``step_done``)

    def step_done(self) -> None:
        """The solver finished a step (its step callback)."""
        self.step += 1

    def __call__(self, x: torch.Tensor, t: float | torch.Tensor) -> Prediction:
        t_rows = as_time(t, x)
        with self._active(x, t_rows) as record:
            out = self.inner(x, t)
        record(self.call, float(t_rows.mean()))
        self.call += 1
        return out

    def close(self) -> None:
        """End of the batch: undo anything installed on the network."""

    @contextlib.contextmanager
    def _active(self, x, t):
        rows = _network_rows(self.inner, x)
        n = len(self.meter.profile.block_names)
        yield lambda call, tm: self.meter.record_blocks(call, tm, rows, [True] * n)


class _EarlyExit(_Metered):
    """DeeDiff early exit: the transformer's forward is the per-row exit forward during the call."""

    def __init__(self, inner, meter, transformer, heads, threshold: ExitThreshold):
        super().__init__(inner, meter)
        self.transformer, self.heads, self.threshold = transformer, heads, threshold

    @contextlib.contextmanager
    def _active(self, x, t):
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        from .models.deediff import early_exit_forward

        thr = self.threshold.at(t.float())
        traces = []

        def forward(hidden_states, timestep=None, class_labels=None, cross_attention_kwargs=None, return_dict=True):
            rows_thr = thr.repeat(hidden_states.shape[0] // thr.shape[0]).to(hidden_states.device)
            out, trace = early_exit_forward(self.transformer, self.heads, hidden_states, timestep, class_labels,
                                            rows_thr)
            traces.append(trace.blocks)
            return Transformer2DModelOutput(sample=out) if return_dict else (out,)

        self.transformer.forward = forward
        try:
            yield lambda call, tm: [self.meter.record(call, tm, b) for b in traces]
        finally:
            del self.transformer.forward


class _DeepCache(_Metered):
    """DeepCache on a UNet2DModel: the first call of every scheduled solver step (``models.deepcache.cache_steps``)
    runs the full UNet and refreshes the cache; every other call, a 2-NFE solver's second call included, runs the
    shallow path on it."""

    def __init__(self, inner, meter, unet, spec: CacheSpec, steps: int | None = None):
        from .models.deepcache import DeepCacheUNet, cache_steps

        super().__init__(inner, meter)
        self.cache = DeepCacheUNet(unet, spec.branch)
        if spec.schedule != "uniform" and steps is None:
            raise ValueError("a non-uniform DeepCache schedule needs the number of solver steps")
        self.full_steps = (set(cache_steps(steps, spec.interval, spec.schedule)) if steps is not None else None)
        self.interval, self.refreshed = spec.interval, -1

    def _refresh(self) -> bool:
        scheduled = (self.step % self.interval == 0 if self.full_steps is None else self.step in self.full_steps)
        return scheduled and self.refreshed != self.step

    @contextlib.contextmanager
    def _active(self, x, t):
        full = self._refresh() or not self.cache.can_retrieve(x)
        if full:
            self.refreshed = self.step
        runs = self.cache.retrieve_runs
        with self.cache.full() if full else self.cache.retrieve():
            yield lambda call, tm: self.meter.record_blocks(call, tm, x.shape[0], [True] * len(runs) if full else runs)


class _FirstBlockCache(_Metered):
    """diffusers' FirstBlockCache (``diffusers.hooks.apply_first_block_cache``) for one batch's calls: the rest of
    the blocks are skipped while the first block's residual changed by less than the threshold (relative L1)."""

    def __init__(self, inner, meter, transformer, spec: CacheSpec):
        from diffusers.hooks import FirstBlockCacheConfig, HookRegistry, apply_first_block_cache
        from diffusers.hooks.first_block_cache import _FBC_LEADER_BLOCK_HOOK

        super().__init__(inner, meter)
        self.transformer = transformer
        apply_first_block_cache(transformer, FirstBlockCacheConfig(threshold=spec.threshold))
        registry = HookRegistry.check_if_exists_or_initialize(transformer)
        registry.invalidate_child_registries_cache()
        self.state = HookRegistry.check_if_exists_or_initialize(
            transformer.transformer_blocks[0]).get_hook(_FBC_LEADER_BLOCK_HOOK).state_manager

    @contextlib.contextmanager
    def _active(self, x, t):
        from diffusers.hooks.hooks import CacheContext, _set_cache_context

        rows = _network_rows(self.inner, x)
        n = len(self.transformer.transformer_blocks)
        ran = []
        _set_cache_context(self.transformer, CacheContext("samplebench", step_index=self.call))
        try:
            yield lambda call, tm: self.meter.record_blocks(call, tm, rows, [True] + [ran[0]] * (n - 1))
            ran.append(bool(self.state.get_state().should_compute))
        finally:
            _set_cache_context(self.transformer, None)

    def close(self) -> None:
        from diffusers.hooks import HookRegistry
        from diffusers.hooks.first_block_cache import _FBC_BLOCK_HOOK, _FBC_LEADER_BLOCK_HOOK

        registry = HookRegistry.check_if_exists_or_initialize(self.transformer)
        registry.remove_hook(_FBC_LEADER_BLOCK_HOOK, recurse=True)
        registry.remove_hook(_FBC_BLOCK_HOOK, recurse=True)
        registry.invalidate_child_registries_cache()


def check_skipping(model: DiffusionModel, exit_threshold: ExitThreshold | None, cache: CacheSpec | None) -> None:
    """A one-line error when the model cannot run the chosen compute skipping."""
    from .models.deepcache import DeepCacheUNet

    kind, net = model.network()
    if exit_threshold is not None and cache is not None:
        raise UsageError("give --exit-threshold or --cache, not both")
    if exit_threshold is not None and (kind != "dit" or model.uncertainty_heads() is None):
        raise UsageError(f"--exit-threshold needs a DiT with DeeDiff uncertainty heads (such as digits-dit); "
                         f"model {model.name!r} has none")
    if cache is not None and cache.kind == "deepcache":
        if kind != "unet":
            raise UsageError(f"--cache deepcache needs a UNet2DModel; model {model.name!r} is not one "
                             "(transformers: --cache fbcache:THRESHOLD)")
        DeepCacheUNet(net, cache.branch)  # checks the branch
    if cache is not None and cache.kind == "fbcache" and kind != "dit":
        raise UsageError(f"--cache fbcache needs a transformer; model {model.name!r} is not one "
                         "(UNet2DModel: --cache deepcache:N)")


def metered_denoiser(model: DiffusionModel, denoiser: Denoiser, meter: ComputeMeter,
                     exit_threshold: ExitThreshold | None = None, cache: CacheSpec | None = None,
                     steps: int | None = None) -> _Metered:
    """Wrap one batch's denoiser with the chosen compute skipping (or none) recording into ``meter``; call
    ``step_done()`` after every solver step of a run of ``steps`` steps, and ``close()`` at the end of the
    batch."""
    check_skipping(model, exit_threshold, cache)
    kind, net = model.network()
    if exit_threshold is not None:
        return _EarlyExit(denoiser, meter, net, model.uncertainty_heads(), exit_threshold)
    if cache is not None and cache.kind == "deepcache":
        return _DeepCache(denoiser, meter, net, cache, steps)
    if cache is not None:
        return _FirstBlockCache(denoiser, meter, net, cache)
    return _Metered(denoiser, meter)
