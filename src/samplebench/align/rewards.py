"""Rewards for inference-time alignment: ``reward(x0, cond) -> tensor[B]`` on decoded images in [-1, 1].

Built-ins score with the shipped digits classifier (DTS, Jain et al. 2025, Sec. 5 / App. E):

* ``class:K``: log p(c = K | x);
* ``even`` / ``odd``: max over K in {0, 2, 4, 6, 8} / {1, 3, 5, 7, 9} of log p(c = K | x) (a multimodal target);
* ``module:function``: any importable callable with the same signature.

Images of another size or channel count are averaged to one channel and resized to the classifier's 16x16.
``CountedReward`` checks every answer's shape and counts scored images and time apart from the NFE.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence

import torch

from ..errors import UsageError, unknown

__all__ = ["Reward", "ClassReward", "CountedReward", "get_reward", "REWARD_NAMES"]

Reward = Callable[[torch.Tensor, object], torch.Tensor]
REWARD_NAMES = ("class:K", "even", "odd", "module:function")
EVEN, ODD = (0, 2, 4, 6, 8), (1, 3, 5, 7, 9)


class ClassReward:
    """max over ``classes`` of log p(c | x) under the digits classifier."""

    def __init__(self, classes: Sequence[int], classifier=None):
        from ..models.classifier import load_classifier

        self.classes = list(classes)
        self.classifier = classifier if classifier is not None else load_classifier()

    def __call__(self, x0: torch.Tensor, cond: object = None) -> torch.Tensor:
        device = next(self.classifier.parameters()).device
        x = x0.float().mean(1, keepdim=True) if x0.shape[1] != 1 else x0.float()
        if x.shape[-2:] != (16, 16):
            x = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", antialias=True,
                                                align_corners=False)
        with torch.inference_mode():
            logp = torch.log_softmax(self.classifier(x.clamp(-1, 1).to(device)).double(), 1)
        return logp[:, self.classes].amax(1).cpu()


def get_reward(spec: str) -> Reward:
    """A reward by name: ``class:K``, ``even``, ``odd`` or ``module:function``."""
    if spec in ("even", "odd"):
        return ClassReward(EVEN if spec == "even" else ODD)
    if spec.startswith("class:"):
        k = spec[len("class:"):]
        if not k.isdigit() or not 0 <= int(k) <= 9:
            raise UsageError(f"reward {spec!r}: the class must be an integer in 0..9")
        return ClassReward([int(k)])
    module, _, name = spec.partition(":")
    if not module or not name:
        raise unknown("reward", spec, REWARD_NAMES)
    if not all(part.isidentifier() for part in module.split(".")) or not name.isidentifier():
        raise UsageError(f"reward {spec!r}: give an absolute module path and a function, e.g. mypkg.rewards:sharpness "
                         f"(relative modules are not supported); or one of {', '.join(REWARD_NAMES)}")
    fn = _import_function(spec, module, name)
    if not callable(fn):
        raise UsageError(f"reward {spec!r} is not callable")
    return fn


def _import_function(spec: str, module: str, name: str):
    """``module:name``, importable from the working folder too (as ``python -m`` would find it)."""
    import os
    import sys

    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise UsageError(f"reward {spec!r} cannot be loaded ({e}); valid: {', '.join(REWARD_NAMES)}, or "
                         "module:function importable from the working folder or PYTHONPATH") from None
    except Exception as e:  # the user's module failed while importing
        raise UsageError(f"reward {spec!r}: importing {module!r} failed ({type(e).__name__}: {e})") from None
    finally:
        if added:
            sys.path.remove(cwd)


class CountedReward:
    """A reward with its answers checked (shape [B], finite) and its calls counted and timed."""

    def __init__(self, reward: Reward, name: str = "reward"):
        self.reward, self.name = reward, name
        self.calls = 0  # images scored
        self.time_s = 0.0

    def __call__(self, x0: torch.Tensor, cond: object = None) -> torch.Tensor:
        start = time.perf_counter()
        try:
            r = self.reward(x0, cond)
        except UsageError:
            raise
        except Exception as e:  # a user's callable: one line, not a traceback
            raise UsageError(f"reward {self.name!r} failed: {type(e).__name__}: {e}") from e
        self.time_s += time.perf_counter() - start
        self.calls += x0.shape[0]
        r = torch.as_tensor(r)
        if r.shape != (x0.shape[0],):
            raise UsageError(f"reward {self.name!r} returned shape {tuple(r.shape)} for a batch of {x0.shape[0]} "
                             f"images; a reward must return shape ({x0.shape[0]},)")
        r = r.detach().to("cpu", torch.float64)
        if not bool(torch.isfinite(r).all()):
            raise UsageError(f"reward {self.name!r} returned a non-finite value; rewards must be finite")
        return r
