"""Diffusion Tree Sampling, DTS and DTS* (Jain, Sareen, Pedramfar & Ravanbakhsh 2025, Alg. 1 and 2).

The tree holds partial denoising states at the branch steps of the chain: the root is a dummy x_{T+1} whose
children are x_T ~ N(0, I), a node at level l >= 1 is a state at ``branch_steps[l - 1]``, terminal nodes are
samples x_0. Each iteration selects nodes to expand (Boltzmann over soft values for DTS, UCT for DTS*), stops at
a node whose children are fewer than the progressive-widening bound C N^alpha, rolls a new child out to x_0 with
p_theta adding every state it passes to the tree, scores the sample, and backs the soft value
v(x) = (1/lambda) log mean_children exp(lambda v(child)) up to the root. Selections are gathered into batches of
``batch`` rollouts that run together. Drawing samples from the built tree (Alg. 2) makes no network call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..noise import SampleGenerators
from .chain import AlignResult, Chain, finish, stream_seed

__all__ = ["soft_backup", "Tree", "grow", "draw", "dts"]


def soft_backup(values: Sequence[float], lam: float) -> float:
    """(1/lambda) log mean exp(lambda v) over children (DTS Alg. 1, backup): the mean as lambda -> 0, the max
    as lambda -> inf."""
    v = np.asarray(values, dtype=np.float64)
    if lam == 0:
        return float(v.mean())
    if math.isinf(lam):
        return float(v.max())
    m = float(v.max())
    return m + float(np.log(np.mean(np.exp(lam * (v - m))))) / lam


class Tree:
    """Nodes in flat lists (index 0 is the root): parent, level, soft value v, visit count N, children, state."""

    def __init__(self, terminal_level: int, *, widen_c: float = 2.0, widen_alpha: float = 0.8, offload: bool = True):
        self.terminal_level = terminal_level
        self.widen_c, self.widen_alpha, self.offload = widen_c, widen_alpha, offload
        self.parent, self.level, self.value, self.visits = [-1], [0], [0.0], [0]
        self.children: list[list[int]] = [[]]
        self.state: list[torch.Tensor | None] = [None]
        self.opening = [0]  # expansions selected in the current batch, not yet rolled out
        self.rollouts = self.rollout_nfe = 0  # rollouts so far and their network evaluations

    def __len__(self) -> int:
        return len(self.parent)

    def add(self, parent: int, state: torch.Tensor) -> int:
        n = len(self.parent)
        self.parent.append(parent)
        self.level.append(self.level[parent] + 1)
        self.value.append(0.0)
        self.visits.append(1)
        self.children.append([])
        self.state.append(state.detach().to("cpu" if self.offload else state.device, copy=True))
        self.opening.append(0)
        self.children[parent].append(n)
        return n

    def bound(self, n: int) -> float:
        """Progressive widening: at most C N(n)^alpha children."""
        return self.widen_c * self.visits[n] ** self.widen_alpha

    def can_widen(self, n: int) -> bool:
        return self.level[n] < self.terminal_level and len(self.children[n]) + self.opening[n] < self.bound(n)

    def state_bytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.state if s is not None)

    def path(self, n: int) -> list[int]:
        out = [n]
        while self.parent[out[-1]] >= 0:
            out.append(self.parent[out[-1]])
        return out


def boltzmann(tree: Tree, kids: list[int], lam: float, rng: np.random.Generator) -> int:
    """A child drawn with probability proportional to exp(lambda v)."""
    v = lam * np.array([tree.value[c] for c in kids])
    p = np.exp(v - v.max())
    return kids[int(rng.choice(len(kids), p=p / p.sum()))]


def uct(tree: Tree, parent: int, kids: list[int], c_uct: float) -> int:
    """argmax v + c sqrt(log N(parent) / N(child)) (DTS*, UCT selection)."""
    log_n = math.log(max(tree.visits[parent], 1))
    scores = [tree.value[c] + c_uct * math.sqrt(log_n / tree.visits[c]) for c in kids]
    return kids[int(np.argmax(scores))]


def grow(chain: Chain, *, budget: int, lam: float = 1.0, star: bool = False, c_uct: float = 1.0,
         widen_c: float = 2.0, widen_alpha: float = 0.8, batch: int = 16, seed: int = 0, offload: bool = True,
         backup: Callable[[Tree, int, float], float] | None = None) -> Tree:
    """Alg. 1: build a tree with at most ``budget`` network evaluations (``tree.rollouts`` rollouts costing
    ``tree.rollout_nfe``). ``backup(tree, node, lambda)`` replaces the soft backup (tests use it to show that other
    backups are wrong)."""
    branch = chain.branch_steps
    terminal = len(branch) + 1
    index = branch + [chain.steps]  # grid index of the states at levels 1 .. terminal
    tree = Tree(terminal, widen_c=widen_c, widen_alpha=widen_alpha, offload=offload)
    rng = np.random.default_rng([seed, 0])

    def cost(n: int) -> int:  # NFE of a rollout that expands node n
        return chain.steps - index[max(tree.level[n] - 1, 0)]

    def select() -> tuple[list[int], int | None] | None:
        """Descend from the root counting visits; the node to expand, None at a leaf, or no path (all blocked)."""
        n, path = 0, [0]
        while True:
            tree.visits[n] += 1
            if tree.level[n] == terminal:
                return path, None
            if tree.can_widen(n):
                return path, n
            kids = tree.children[n]
            if not kids:  # every open slot is being expanded in this batch
                for m in path:
                    tree.visits[m] -= 1
                return None
            n = uct(tree, n, kids, c_uct) if star else boltzmann(tree, kids, lam, rng)
            path.append(n)

    while True:
        plan, planned = [], 0
        for _ in range(100 * batch):
            if len(plan) == batch:
                break
            picked = select()
            if picked is None:
                break
            path, n = picked
            if n is None:  # reached a sample: the visit counts, the values are unchanged
                continue
            if chain.evaluations + planned + cost(n) > budget:
                for m in path:
                    tree.visits[m] -= 1
                break
            tree.opening[n] += 1
            plan.append(n)
            planned += cost(n)
        if not plan:
            return tree
        seeds = [stream_seed(seed, tree.rollouts + k) for k in range(len(plan))]
        leaves = _rollout(chain, tree, plan, index, seeds)
        tree.rollouts += len(plan)
        tree.rollout_nfe += planned
        _backup(tree, leaves, lam, backup or _soft)


def dts(chain: Chain, *, budget: int, num: int, lam: float = 1.0, star: bool = False, seed: int = 0,
        **options) -> AlignResult:
    """DTS / DTS*: grow a tree with at most ``budget`` network evaluations (``options`` as ``grow``), then draw
    ``num`` samples from it (Alg. 2: Boltzmann descent for DTS, greedy descent on v for DTS*, distinct leaves)."""
    start = time.perf_counter()
    tree = grow(chain, budget=budget, lam=lam, star=star, seed=seed, **options)
    leaves = draw(tree, num, lam=lam, star=star, rng=np.random.default_rng([seed, 1]))
    x = torch.stack([tree.state[n] for n in leaves]).to(chain.model.device)
    rewards = torch.tensor([tree.value[n] for n in leaves], dtype=torch.float64)
    return finish("dts-star" if star else "dts", chain, x, rewards, start, rollouts=tree.rollouts,
                  rollout_nfe=tree.rollout_nfe, nodes=len(tree), root_children=len(tree.children[0]),
                  state_bytes=tree.state_bytes(), max_children=max(len(c) for c in tree.children))


def _rollout(chain: Chain, tree: Tree, plan: list[int], index: list[int], seeds: list[int]) -> list[int]:
    """Expand every planned node and roll the new child out to x_0, in one batch per level; every state becomes
    a node. Returns the new leaves, scored."""
    gens = SampleGenerators(seeds)
    device = chain.model.device
    current = list(plan)  # the node each rollout has reached
    roots = [k for k, n in enumerate(plan) if tree.level[n] == 0]
    if roots:
        x = chain.prior(gens.select(roots))
        for k, row in zip(roots, x):
            current[k] = tree.add(plan[k], row)
    for level in range(1, tree.terminal_level):
        active = [k for k, n in enumerate(current) if tree.level[n] == level]
        if not active:
            continue
        x = torch.stack([tree.state[current[k]] for k in active]).to(device)
        x = chain.run(x, index[level - 1], index[level], gens.select(active))
        for k, row in zip(active, x):
            current[k] = tree.add(current[k], row)
    for n in plan:
        tree.opening[n] -= 1
    rewards = chain.score(torch.stack([tree.state[n] for n in current]).to(device))
    for n, r in zip(current, rewards.tolist()):
        tree.value[n] = r
    return current


def _soft(tree: Tree, n: int, lam: float) -> float:
    return soft_backup([tree.value[c] for c in tree.children[n]], lam)


def _backup(tree: Tree, leaves: list[int], lam: float, backup) -> None:
    """Recompute v of every ancestor of the new leaves, deepest first (each from all its children)."""
    touched = {m for n in leaves for m in tree.path(n)[1:]}
    for m in sorted(touched, key=lambda m: -tree.level[m]):
        tree.value[m] = backup(tree, m, lam)


def draw(tree: Tree, num: int, *, lam: float, star: bool, rng: np.random.Generator) -> list[int]:
    """Alg. 2: ``num`` leaves by descent from the root, with no network call. DTS draws a child with probability
    proportional to exp(lambda v). DTS* descends greedily on the soft value of what is still undrawn: after each
    drawn leaf, the values along its path are backed up again over the children that keep undrawn leaves, so a
    node whose good leaf is taken falls behind siblings elsewhere (the paper takes a single argmax path; drawing
    many distinct leaves this way is our extension). Once every leaf is drawn, all are available again."""
    if not star:
        out = []
        for _ in range(num):
            n = 0
            while tree.level[n] < tree.terminal_level:
                n = boltzmann(tree, tree.children[n], lam, rng)
            out.append(n)
        return out
    order = sorted(range(len(tree)), key=lambda m: -tree.level[m])
    left = [0] * len(tree)  # undrawn leaves under each node
    value = list(tree.value)  # soft value over the undrawn leaves
    out = []
    while len(out) < num:
        for m in order:  # deepest first: every leaf undrawn again, the tree's own values
            left[m] = 1 if tree.level[m] == tree.terminal_level else sum(left[c] for c in tree.children[m])
            value[m] = tree.value[m]
        while len(out) < num and left[0] > 0:
            n = 0
            while tree.level[n] < tree.terminal_level:
                n = max((c for c in tree.children[n] if left[c] > 0), key=lambda c: value[c])
            out.append(n)
            for m in tree.path(n):
                left[m] -= 1
                if m != n and left[m] > 0:
                    value[m] = soft_backup([value[c] for c in tree.children[m] if left[c] > 0], lam)
    return out
