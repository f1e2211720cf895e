"""Uncertainty of FID and KID: bootstrap intervals with the reference fixed, paired differences, FID-infinity.

What an interval means. The FID of n samples is a biased estimator (Chong & Forsyth, CVPR 2020): its expectation is
about FID_inf + c / n, with c > 0 set by the generator and the feature space. So there are two targets:

- ``fid_interval``: the FID *at this sample count* against this reference, E[FID_n]; the number that n fresh seeds
  give on average. This is the quantity a reported "FID-2k" stands for. The interval is a seeded bootstrap over the
  generated samples, centred on its own bias: the quantiles of FID* - mean(FID*) placed around FID_n. The plain
  percentile interval would not do: a resample holds only about 63% distinct samples, so FID* carries about twice
  the bias of FID_n and its quantiles lie to the right of the estimate.
- ``fid_infinity``: the sample-count-free FID against this reference (Chong & Forsyth's FID-infinity), from FID on
  random subsets of sizes m <= n fitted linearly in 1 / m and extrapolated to 1 / m = 0.

KID (Binkowski et al. 2018) is an unbiased estimator of the squared MMD, so its expectation does not depend on n; its
interval (``kid_interval``) is the same centred bootstrap of the full U-statistic over the generated samples (pairs of
one sample with its own copy left out, the unbiased estimator's rule), placed around clean-fid's subset estimate.

The reference statistics are held fixed in every interval: they are one shared, cached set of numbers that every run
is scored against, so a comparison between runs does not vary with them, and resampling them would only widen each
interval by a term that cancels in every comparison on the same reference.

Comparisons (``compare``): two runs on the same seeds are compared by the bootstrap of the difference over shared seed
indices (one resample of indices for both runs), so the noise the two share, and most of the bias, cancels. Runs on
other seeds or counts are compared unpaired (independent resamples), and the result says so.

Every resample is drawn from ``numpy.random.default_rng(seed)``, so identical inputs give identical intervals. The
resampled statistics are computed in float64 from the stored features: no network evaluation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..errors import UsageError

__all__ = ["LEVEL", "RESAMPLES", "SEED", "check", "Interval", "Difference", "FidInfinity", "bootstrap_counts", "fid_batch",
           "fid_interval", "kid_interval", "fid_infinity", "compare", "pair_by_seed"]

LEVEL, RESAMPLES, SEED = 0.95, 1000, 0
_BLOCK = 2048  # rows of a kernel matrix at a time
_MEMORY = 2**28  # bytes for one batch of weighted products
_RESAMPLE_BLOCK = 100  # FID resamples at a time (a progress bar moves between blocks)


@dataclass(frozen=True)
class Interval:
    """A statistic with its interval: ``estimate`` on all ``n`` samples, [``low``, ``high``] at ``level``."""

    estimate: float
    low: float
    high: float
    level: float
    n: int
    resamples: int
    method: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.estimate:.4g} [{self.low:.4g}, {self.high:.4g}]"


@dataclass(frozen=True)
class Difference:
    """A - B of one metric with its interval; ``paired`` says whether shared seeds were resampled jointly."""

    metric: str
    a: float
    b: float
    estimate: float
    low: float
    high: float
    level: float
    n_a: int
    n_b: int
    resamples: int
    paired: bool

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self) | {"excludes_zero": self.excludes_zero}

    def __str__(self) -> str:
        verdict = ("A is lower" if self.high < 0 else "A is higher") if self.excludes_zero else "no difference shown"
        how = f"paired over {self.n_a} shared seeds" if self.paired else f"unpaired ({self.n_a} vs {self.n_b} samples)"
        return (f"{self.metric} A - B = {self.estimate:+.4g} [{self.low:+.4g}, {self.high:+.4g}] "
                f"({self.level:.0%}, {how}, {self.resamples} resamples): {verdict}")


MAX_RESAMPLES = 20_000


def check(level: float, resamples: int) -> None:
    """A one-line error for a level outside (0, 1), or fewer than 10 or more than ``MAX_RESAMPLES`` resamples."""
    if not 0 < level < 1:
        raise UsageError(f"the interval level must be in (0, 1), got {level}")
    if resamples < 10:
        raise UsageError(f"--resamples must be at least 10 (the bootstrap of each interval), got {resamples}")
    if resamples > MAX_RESAMPLES:
        raise UsageError(f"--resamples must be <= {MAX_RESAMPLES} (each resample is a row of sample counts in "
                         f"memory), got {resamples}")


def bootstrap_counts(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """How often each of n samples occurs in each resample (n draws with replacement): [resamples, n] float64."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    counts = np.zeros((resamples, n))
    np.add.at(counts, (np.arange(resamples)[:, None], idx), 1.0)
    return counts


def _centred(estimate: float, replicates: np.ndarray, level: float) -> tuple[float, float]:
    """The interval for E[estimate]: estimate - (quantiles of replicates - their mean)."""
    lo, hi = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    mean = float(np.mean(replicates))
    return float(estimate - (hi - mean)), float(estimate - (lo - mean))


class _Ref:
    """The fixed side of the Fréchet distance: mu_r, Tr(Sigma_r) and Sigma_r^(1/2)."""

    def __init__(self, mu: np.ndarray, sigma: np.ndarray):
        self.mu = torch.as_tensor(np.asarray(mu, np.float64))
        sigma = torch.as_tensor(np.asarray(sigma, np.float64))
        lam, v = torch.linalg.eigh((sigma + sigma.T) / 2)
        self.sqrt = (v * lam.clamp_min(0).sqrt()) @ v.T
        self.trace = float(torch.trace(sigma))


def fid_batch(mus: torch.Tensor, sigmas: torch.Tensor, ref: _Ref) -> torch.Tensor:
    """Fréchet distances of a batch [B, d], [B, d, d] to the reference; Tr (S Sr)^(1/2) as the sum of the square
    roots of the eigenvalues of Sr^(1/2) S Sr^(1/2) (the same eigenvalues, and symmetric)."""
    m = ref.sqrt @ sigmas @ ref.sqrt
    ev = torch.linalg.eigvalsh((m + m.transpose(-1, -2)) / 2).clamp_min(0)
    return ((mus - ref.mu) ** 2).sum(-1) + torch.diagonal(sigmas, dim1=-2, dim2=-1).sum(-1) + ref.trace \
        - 2 * ev.sqrt().sum(-1)


def _fid(feats: np.ndarray, ref: _Ref) -> float:
    """The Fréchet distance of ``feats`` (mean, ddof-1 covariance) to the reference, in the fast form above."""
    x = torch.as_tensor(np.asarray(feats, np.float64))
    y = x - x.mean(0)
    return float(fid_batch(x.mean(0)[None], (y.T @ y / (len(x) - 1))[None], ref)[0])


def _resampled_fids(feats: np.ndarray, counts: np.ndarray, ref: _Ref, progress=None) -> np.ndarray:
    """FID of every resample (``counts`` rows) of ``feats``: weighted means and covariances (ddof 1, as np.cov).

    The weighted second moments of all resamples are one matrix product, counts @ [y_i y_i^T]_i, over the upper
    triangles of the outer products, taken in blocks of samples and of resamples to bound the memory."""
    x = torch.as_tensor(np.asarray(feats, np.float64))
    n, d = x.shape
    centre = x.mean(0)
    y = x - centre  # centred once: the covariance is shift-invariant, and this keeps float64 sums small
    iu, ju = torch.triu_indices(d, d)
    p = len(iu)
    rows = max(1, min(len(counts), _MEMORY // (8 * p), _RESAMPLE_BLOCK))
    block = max(1, min(n, _MEMORY // (8 * p)))
    out = []
    for lo in range(0, len(counts), rows):
        w = torch.as_tensor(counts[lo:lo + rows])
        second = torch.zeros(len(w), p, dtype=torch.float64)
        for s in range(0, n, block):
            ys = y[s:s + block]
            second += w[:, s:s + block] @ (ys[:, iu] * ys[:, ju])
        ybar = w @ y / n
        sigmas = torch.zeros(len(w), d, d, dtype=torch.float64)
        sigmas[:, iu, ju] = second
        sigmas[:, ju, iu] = second
        sigmas = (sigmas - n * ybar[:, :, None] * ybar[:, None, :]) / (n - 1)
        out.append(fid_batch(ybar + centre, sigmas, ref))
        if progress is not None:
            progress(min(lo + rows, len(counts)), len(counts))
    return torch.cat(out).numpy()


def fid_interval(feats: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray, *, estimate: float | None = None,
                 level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED, progress=None) -> Interval:
    """FID of ``feats`` against fixed reference statistics, with the centred bootstrap interval of E[FID_n].

    ``estimate`` is the reported FID (clean-fid's ``frechet_distance``); without it, the fast form here is used.
    ``progress(done, total)`` after each block of resamples."""
    check(level, resamples)
    feats = np.asarray(feats)
    n = len(feats)
    if n < 2:
        raise UsageError(f"an FID interval needs at least 2 samples, got {n}")
    ref = _Ref(mu_ref, sigma_ref)
    if estimate is None:
        estimate = _fid(feats, ref)
    replicates = _resampled_fids(feats, bootstrap_counts(n, resamples, seed), ref, progress)
    low, high = _centred(estimate, replicates, level)
    return Interval(float(estimate), max(low, 0.0), high, level, n, resamples, "centred bootstrap, reference fixed")


def _kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """clean-fid's KID kernel, (a b^T / d + 1)^3."""
    return (a @ b.T / a.shape[1] + 1) ** 3


def _resampled_kids(feats: np.ndarray, ref_feats: np.ndarray, counts: np.ndarray, progress=None) -> np.ndarray:
    """The unbiased MMD^2 estimate (clean-fid's kernel) of each resample of the generated samples against the fixed
    reference: generated pairs of distinct samples (a sample and its own copy are not a pair), the cross term and the
    reference pairs. The kernel matrix is built in row blocks, never whole."""
    x = torch.as_tensor(np.asarray(feats, np.float64))
    y = torch.as_tensor(np.asarray(ref_feats, np.float64))
    w = torch.as_tensor(counts)
    n, m = w.sum(1), len(y)
    wk = torch.zeros_like(w)  # w K_xx with the diagonal left out
    cross = torch.zeros(len(x), dtype=torch.float64)
    for lo in range(0, len(x), _BLOCK):
        kxx = _kernel(x[lo:lo + _BLOCK], x)
        kxx[:, lo:lo + _BLOCK].fill_diagonal_(0)
        wk += w[:, lo:lo + _BLOCK] @ kxx
        cross[lo:lo + _BLOCK] = _kernel(x[lo:lo + _BLOCK], y).mean(1)
        if progress is not None:
            progress(min(lo + _BLOCK, len(x)), len(x))
    kyy = sum(float(_kernel(y[lo:lo + _BLOCK], y).sum()) for lo in range(0, m, _BLOCK))
    kyy -= float(((y * y).sum(1) / y.shape[1] + 1).pow(3).sum())  # the self-pairs
    pairs = (wk * w).sum(1) / (n * n - (w * w).sum(1))
    return (pairs - 2 * (w @ cross) / n + kyy / (m * (m - 1))).numpy()


def kid_interval(feats: np.ndarray, ref_feats: np.ndarray, *, estimate: float | None = None, level: float = LEVEL,
                 resamples: int = RESAMPLES, seed: int = SEED, progress=None) -> Interval:
    """KID with the centred bootstrap interval of the generated side, the reference features fixed
    (``progress(done, total)`` after each block of samples).

    ``estimate`` is the reported KID (clean-fid's subset estimate); without it, the full U-statistic is used. A
    resample that draws a single image n times has no pair of distinct images, so no KID: it is left out (with few
    images only; at n = 4, 1 in 64)."""
    check(level, resamples)
    n = len(feats)
    if n < 3 or len(ref_feats) < 2:
        raise UsageError(f"a KID interval needs at least 3 generated samples, got {n} (a resample of 2 is the pair "
                         "itself or one image repeated, which has no KID: no spread to measure)" if n < 3 else
                         "a KID interval needs at least 2 reference samples")
    both = np.concatenate([np.ones((1, n)), bootstrap_counts(n, resamples, seed)])
    full, *replicates = _resampled_kids(feats, ref_feats, both, progress)
    replicates = np.asarray(replicates)
    replicates = replicates[np.isfinite(replicates)]  # a resample of one image repeated has no pair: undefined
    low, high = _centred(full, replicates, level)
    shift = (full if estimate is None else float(estimate)) - full
    return Interval(full + shift, low + shift, high + shift, level, n, resamples,
                    "centred bootstrap of the U-statistic, reference fixed")


@dataclass(frozen=True)
class FidInfinity:
    """FID-infinity (Chong & Forsyth 2020, Sec. 3.2): the mean FID over random subsets at each size, the line
    FID(m) = fid_inf + slope / m fitted to them, and the bias at the full count, slope / n."""

    fid_inf: float
    slope: float
    sizes: tuple[int, ...]
    fids: tuple[float, ...]
    n: int

    @property
    def bias_at_n(self) -> float:
        return self.slope / self.n

    def to_dict(self) -> dict[str, object]:
        return asdict(self) | {"bias_at_n": self.bias_at_n}


def fid_infinity(feats: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray, *, points: int = 8,
                 smallest: float = 0.25, repeats: int = 8, seed: int = SEED) -> FidInfinity:
    """FID-infinity from ``repeats`` random subsets (without replacement) at ``points`` sizes evenly spaced in 1 / m
    from ``smallest`` * n to n, fitted linearly in 1 / m."""
    feats = np.asarray(feats)
    n = len(feats)
    if points < 2 or not 0 < smallest < 1 or repeats < 1:
        raise UsageError(f"fid_infinity needs points >= 2, 0 < smallest < 1 and repeats >= 1, got {points}, "
                         f"{smallest}, {repeats}")
    inv = np.linspace(1 / n, 1 / (smallest * n), points)
    sizes = sorted({max(2, int(round(1 / v))) for v in inv})
    if len(sizes) < 2:
        raise UsageError(f"fid_infinity needs more samples than {n}")
    ref = _Ref(mu_ref, sigma_ref)
    rng = np.random.default_rng(seed)
    fids = [float(np.mean([_fid(feats[rng.permutation(n)[:m]], ref) for _ in range(1 if m == n else repeats)]))
            for m in sizes]
    slope, intercept = np.polyfit(1 / np.asarray(sizes, float), fids, 1)
    return FidInfinity(float(intercept), float(slope), tuple(sizes), tuple(fids), n)


def pair_by_seed(seeds_a: np.ndarray, seeds_b: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Row orders that align two runs by seed, or None unless both hold exactly the same seeds."""
    seeds_a, seeds_b = np.asarray(seeds_a), np.asarray(seeds_b)
    if len(seeds_a) != len(seeds_b) or len(np.unique(seeds_a)) != len(seeds_a):
        return None
    ia, ib = np.argsort(seeds_a, kind="stable"), np.argsort(seeds_b, kind="stable")
    if not np.array_equal(seeds_a[ia], seeds_b[ib]):
        return None
    return ia, ib


def compare(feats_a: np.ndarray, feats_b: np.ndarray, *, metric: str = "fid", seeds_a: np.ndarray | None = None,
            seeds_b: np.ndarray | None = None, mu_ref: np.ndarray | None = None, sigma_ref: np.ndarray | None = None,
            ref_feats: np.ndarray | None = None, estimates: tuple[float, float] | None = None,
            level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED) -> Difference:
    """A - B of ``metric`` (fid or kid) with its bootstrap interval: paired when both runs hold the same seeds
    (one resample of seed indices for both), unpaired otherwise. ``estimates`` are the reported values of A and B
    (without them, the fast forms here)."""
    check(level, resamples)
    if metric not in ("fid", "kid"):
        raise UsageError(f"unknown metric {metric!r} to compare; valid: fid, kid")
    feats_a, feats_b = np.asarray(feats_a), np.asarray(feats_b)
    order = None if seeds_a is None or seeds_b is None else pair_by_seed(seeds_a, seeds_b)
    if order is not None:
        feats_a, feats_b = feats_a[order[0]], feats_b[order[1]]
    if metric == "fid":
        if mu_ref is None or sigma_ref is None:
            raise UsageError("an FID comparison needs the reference's mu and sigma")
        ref = _Ref(mu_ref, sigma_ref)
        stat = lambda f, c: _resampled_fids(f, c, ref)  # noqa: E731
        full = lambda f: _fid(f, ref)  # noqa: E731
    else:
        if ref_feats is None:
            raise UsageError("a KID comparison needs the reference's features")
        stat = lambda f, c: _resampled_kids(f, ref_feats, c)  # noqa: E731
        full = lambda f: float(stat(f, np.ones((1, len(f))))[0])  # noqa: E731
    na, nb = len(feats_a), len(feats_b)
    a, b = estimates if estimates is not None else (full(feats_a), full(feats_b))
    counts_a = bootstrap_counts(na, resamples, seed)
    counts_b = counts_a if order is not None else bootstrap_counts(nb, resamples, seed + 1)
    replicates = stat(feats_a, counts_a) - stat(feats_b, counts_b)
    low, high = _centred(a - b, replicates, level)
    return Difference(metric, float(a), float(b), float(a - b), low, high, level, na, nb, resamples, order is not None)
