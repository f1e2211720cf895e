"""DeepCache (Ma, Fang, Wang, CVPR 2024) for a diffusers ``UNet2DModel``: reuse the deep features across steps.

With branch m, the shallow path is ``conv_in`` + ``down_blocks[:m]`` + ``up_blocks[-m:]``; everything deeper is
the deep branch, whose result is the output of ``up_blocks[-m-1]``. A *cache step* runs the whole UNet and keeps
that output; a *retrieve step* runs only the shallow path and feeds it the cached feature (Sec. 3.2, Eq. 6). The
shallow up blocks consume only skip tensors the shallow down blocks produced. As in the reference code, the deep
blocks' ``forward`` is swapped for a stub during a retrieve step and restored right after, so the UNet and
diffusers' own forward are left untouched between calls.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from ..errors import UsageError

__all__ = ["DeepCacheUNet", "unet_blocks", "cache_steps"]


def cache_steps(steps: int, interval: int, kind: str = "uniform", center: float = 0.5,
                power: float = 1.4) -> list[int]:
    """The solver steps that run the full UNet and refresh the cache (DeepCache Sec. 3.3, N = ``interval``).

    ``uniform`` (1:N): steps 0, N, 2N, ... ``quad`` (non-uniform 1:N): the same count, ceil(steps / N), at
    c + sign(u) |u|^p for u evenly spaced in [-c^(1/p), (steps - c)^(1/p)], c = ``center`` x steps, so that full
    steps crowd around the centre step and thin out towards both ends; p starts at ``power`` and falls by 0.02
    until the rounded positions are distinct (the reference code's rule). Step 0 is always a full step."""
    n = -(-steps // interval)
    if kind == "uniform" or n >= steps:
        return list(range(0, steps, interval))
    c, p = center * steps, power
    while p > 1:
        u = np.linspace(-(c ** (1 / p)), (steps - c) ** (1 / p), n + 1)
        found = sorted({0, *np.floor(np.sign(u) * np.abs(u) ** p + c).astype(int)[:-1].tolist()})
        if len(found) == n and found[-1] < steps:
            return found
        p -= 0.02
    return [round(k * steps / n) for k in range(n)]  # p = 1: evenly spaced


def unet_blocks(unet) -> list[tuple[str, torch.nn.Module]]:
    """The UNet's blocks in execution order: down blocks, the mid block, up blocks."""
    blocks = [(f"down_blocks.{i}", b) for i, b in enumerate(unet.down_blocks)]
    if unet.mid_block is not None:
        blocks.append(("mid_block", unet.mid_block))
    return blocks + [(f"up_blocks.{i}", b) for i, b in enumerate(unet.up_blocks)]


class DeepCacheUNet:
    """The cache of one sampling batch: ``full`` runs everything and caches, ``retrieve`` runs the shallow path."""

    def __init__(self, unet, branch: int):
        n_down = len(unet.down_blocks)
        if not 1 <= branch <= n_down - 1:
            raise UsageError(f"DeepCache branch {branch} is out of range for this UNet; valid: 1..{n_down - 1}")
        if any(hasattr(b, "skip_conv") for b in [*unet.down_blocks, *unet.up_blocks]):
            raise UsageError("DeepCache does not support UNets with skip-sample blocks (SkipDownBlock2D)")
        self.unet, self.branch = unet, branch
        n_up = len(unet.up_blocks)
        self.deep = ([b for b in unet.down_blocks[branch:]] + ([unet.mid_block] if unet.mid_block is not None else [])
                     + [b for b in unet.up_blocks[:n_up - branch]])
        self.source = unet.up_blocks[n_up - branch - 1]  # its output is the cached deep feature
        self.feature: torch.Tensor | None = None
        # per block of ``unet_blocks``: whether a retrieve step runs it
        self.retrieve_runs = [all(b is not d for d in self.deep) for _, b in unet_blocks(unet)]

    def can_retrieve(self, x: torch.Tensor) -> bool:
        return self.feature is not None and self.feature.shape[0] == x.shape[0]

    @contextmanager
    def full(self):
        """Run everything and cache the deep feature."""
        def keep(module, args, output):
            self.feature = output

        handle = self.source.register_forward_hook(keep)
        try:
            yield
        finally:
            handle.remove()

    @contextmanager
    def retrieve(self):
        """Run only the shallow path; the deep blocks return placeholders and ``up_blocks[-m-1]`` the cache."""
        if self.feature is None:
            raise RuntimeError("DeepCache: a retrieve step needs a cache step first")
        feature = self.feature

        def stub(block):
            if block is self.source:
                return lambda *args, **kwargs: feature
            if block in self.unet.down_blocks:
                n_res = len(block.resnets) + (0 if getattr(block, "downsamplers", None) is None else 1)
                return lambda hidden_states, *args, **kwargs: (hidden_states, (hidden_states,) * n_res)
            return lambda hidden_states, *args, **kwargs: hidden_states

        for block in self.deep:
            block.forward = stub(block)
        try:
            yield
        finally:
            for block in self.deep:
                del block.forward  # the class's forward is visible again
