"""Inference-time alignment: Diffusion Tree Sampling (DTS, DTS*) and its baselines, best-of-N and FK steering,
under one reward protocol and one NFE accounting."""

from .chain import AlignResult, Chain
from .particles import best_of_n, fk_steering
from .rewards import ClassReward, CountedReward, get_reward
from .run import METHODS, AlignConfig, align_sample, run_align
from .tree import Tree, draw, dts, grow, soft_backup

__all__ = ["AlignResult", "Chain", "best_of_n", "fk_steering", "ClassReward", "CountedReward", "get_reward",
           "METHODS", "AlignConfig", "align_sample", "run_align", "Tree", "draw", "dts", "grow",
           "soft_backup"]
