"""Intervals and comparisons against exact answers: coverage on Gaussian features with a known Fréchet distance and
a closed-form MMD, the paired test's false-positive rate, FID-infinity against the exact distance, determinism."""

import numpy as np
import pytest

from samplebench.errors import UsageError
from samplebench.metrics import intervals as I
from samplebench.metrics import scores

D = 8
LAM = np.linspace(1.0, 0.1, D)  # the reference N(0, diag(LAM)); generated data N(shift e_0, diag(LAM))


def _draw(rng, n, shift, scale=1.0):
    mu = np.zeros(D)
    mu[0] = shift
    return mu + rng.standard_normal((n, D)) * np.sqrt(LAM * scale)


def _expected_fid(n, shift, rng, draws=4000):
    """E[FID_n] by Monte Carlo (its standard error is ~1% of the interval widths tested here)."""
    ref = I._Ref(np.zeros(D), np.diag(LAM))
    return float(np.mean([I._fid(_draw(rng, n, shift), ref) for _ in range(draws)]))


def test_fast_fid_equals_clean_fid():
    rng = np.random.default_rng(0)
    for d in (3, 16, 64):
        x, y = rng.standard_normal((400, d)), rng.standard_normal((900, d)) * 1.3 + 0.1
        mu, sigma = scores.statistics(y)
        exact = scores.fid(*scores.statistics(x), mu, sigma)
        assert I._fid(x, I._Ref(mu, sigma)) == pytest.approx(exact, rel=1e-9, abs=1e-12)
        # a resample with all weights 1 is the sample itself
        assert I._resampled_fids(x, np.ones((1, 400)), I._Ref(mu, sigma))[0] == pytest.approx(exact, rel=1e-9)


def test_resampled_fid_equals_fid_of_the_resampled_rows():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((120, 6)), rng.standard_normal((300, 6))
    mu, sigma = scores.statistics(y)
    counts = I.bootstrap_counts(120, 5, seed=3)
    got = I._resampled_fids(x, counts, I._Ref(mu, sigma))
    for c, g in zip(counts, got):
        rows = np.repeat(x, c.astype(int), axis=0)
        assert g == pytest.approx(scores.fid(*scores.statistics(rows), mu, sigma), rel=1e-9)


@pytest.mark.parametrize("n, shift, lowest, highest", [
    (200, 0.0, 0.95, 1.0),   # FD = 0: FID_n is all bias; the interval is conservative there
    (500, 0.2, 0.91, 0.98),  # FD = 0.04, about the bias c / n
])
def test_fid_interval_covers_the_fid_at_its_sample_count(n, shift, lowest, highest):
    rng = np.random.default_rng(0)
    mu_r, sigma_r = np.zeros(D), np.diag(LAM)
    expected = _expected_fid(n, shift, rng)
    assert expected > shift ** 2  # biased upward: E[FID_n] = FD + c / n
    reps, covered, percentile = 300, 0, 0
    ref = I._Ref(mu_r, sigma_r)
    for r in range(reps):
        x = _draw(rng, n, shift)
        iv = I.fid_interval(x, mu_r, sigma_r, resamples=200, seed=r)
        assert iv.low <= iv.estimate <= iv.high
        covered += iv.low <= expected <= iv.high
        boot = I._resampled_fids(x, I.bootstrap_counts(n, 200, r), ref)
        lo, hi = np.quantile(boot, [0.025, 0.975])
        percentile += lo <= expected <= hi
    assert lowest <= covered / reps <= highest
    # the plain percentile interval, which carries the resamples' doubled bias, is what this test catches
    assert percentile / reps < 0.85


def _exact_kid(mu, cov, y):
    """E over generated x ~ N(mu, cov) of the unbiased KID against fixed reference features y (cubic kernel
    (x.y / d + 1)^3): E k(x, x') - 2 mean_j E k(x, y_j) + mean over pairs j != l of k(y_j, y_l)."""
    d = len(mu)
    a, b = mu @ mu, mu @ cov @ mu
    tr2, c2 = np.trace(cov @ cov), mu @ cov @ cov @ mu
    s1, s2 = a, a * a + 2 * b + tr2
    s3 = a ** 3 + 3 * a * b + 3 * a * (b + tr2) + 6 * c2
    kxx = s3 / d ** 3 + 3 * s2 / d ** 2 + 3 * s1 / d + 1
    m, v = y @ mu / d + 1, np.einsum("jd,de,je->j", y, cov, y) / d ** 2
    kxy = np.mean(m ** 3 + 3 * m * v)
    kyy = (y @ y.T / d + 1) ** 3
    m_ = len(y)
    return kxx - 2 * kxy + (kyy.sum() - np.trace(kyy)) / (m_ * (m_ - 1))


def test_kid_interval_covers_the_exact_mmd():
    rng = np.random.default_rng(2)
    y = rng.standard_normal((300, D)) * np.sqrt(LAM)  # the fixed reference features
    mu = np.zeros(D)
    mu[0] = 0.4
    cov = np.diag(LAM)
    exact = _exact_kid(mu, cov, y)
    # the U-statistic of a large sample agrees with the closed form
    big = I._resampled_kids(_draw(rng, 6000, 0.4), y, np.ones((1, 6000)))[0]
    assert big == pytest.approx(exact, rel=0.05)
    reps, covered = 200, 0
    for r in range(reps):
        iv = I.kid_interval(_draw(rng, 300, 0.4), y, resamples=200, seed=r)
        covered += iv.low <= exact <= iv.high
    assert 0.91 <= covered / reps <= 0.99


def test_full_u_statistic_is_clean_fids_kid_on_one_whole_subset():
    rng = np.random.default_rng(8)
    x, y = _draw(rng, 300, 0.3), _draw(rng, 300, 0.0)
    whole = scores.kid(x, y, num_subsets=1, max_subset_size=300)  # one subset holding every sample on both sides
    assert I.kid_interval(x, y).estimate == pytest.approx(whole, rel=1e-9, abs=1e-12)


def test_kid_interval_is_centred_on_clean_fids_estimate():
    rng = np.random.default_rng(3)
    x, y = _draw(rng, 400, 0.3), _draw(rng, 500, 0.0)
    k = scores.kid(x, y)
    iv = I.kid_interval(x, y, estimate=k)
    assert iv.estimate == k and iv.low < k < iv.high
    # the full U-statistic and clean-fid's subset estimate are both unbiased for one quantity
    assert abs(I.kid_interval(x, y).estimate - k) < (iv.high - iv.low) / 4


def test_paired_comparison_false_positive_rate():
    """Two runs from one distribution on shared seeds (each sample = shared part + its own noise): the paired
    interval excludes zero about 5% of the time."""
    rng = np.random.default_rng(4)
    mu_r, sigma_r = np.zeros(D), np.diag(LAM + 0.05)
    reps, positives = 300, 0
    for r in range(reps):
        shared = _draw(rng, 300, 0.2)
        a = shared + 0.22 * rng.standard_normal(shared.shape)
        b = shared + 0.22 * rng.standard_normal(shared.shape)
        seeds = np.arange(300)
        diff = I.compare(a, b, seeds_a=seeds, seeds_b=rng.permutation(seeds), mu_ref=mu_r, sigma_ref=sigma_r,
                         resamples=200, seed=r)
        assert not diff.paired or diff.n_a == 300
        positives += diff.excludes_zero
    assert positives / reps <= 0.09


def test_pairing_aligns_by_seed_and_gains_power():
    rng = np.random.default_rng(5)
    mu_r, sigma_r = np.zeros(D), np.diag(LAM)
    seeds = np.arange(1000, 1600)
    shared = _draw(rng, 600, 0.0)
    a = shared + 0.05 * rng.standard_normal(shared.shape)
    b = shared * 1.06 + 0.05 * rng.standard_normal(shared.shape)  # B is a little worse, on the same noise
    order = rng.permutation(600)
    paired = I.compare(a, b[order], seeds_a=seeds, seeds_b=seeds[order], mu_ref=mu_r, sigma_ref=sigma_r)
    again = I.compare(a, b, seeds_a=seeds, seeds_b=seeds, mu_ref=mu_r, sigma_ref=sigma_r)
    assert paired.paired and paired == again  # rows are matched by seed, whatever their order
    unpaired = I.compare(a, b, seeds_a=seeds, seeds_b=seeds + 10_000, mu_ref=mu_r, sigma_ref=sigma_r)
    assert not unpaired.paired and unpaired.estimate == pytest.approx(paired.estimate)
    assert paired.high < 0 and paired.excludes_zero  # A is lower, and the paired interval shows it
    assert paired.high - paired.low < (unpaired.high - unpaired.low) / 2 and not unpaired.excludes_zero
    assert "paired over 600 shared seeds" in str(paired) and "unpaired" in str(unpaired)
    kid = I.compare(a, b, metric="kid", seeds_a=seeds, seeds_b=seeds, ref_feats=_draw(rng, 400, 0.0))
    assert kid.paired and kid.low < kid.estimate < kid.high


def test_identical_inputs_give_identical_intervals():
    rng = np.random.default_rng(6)
    x, y = _draw(rng, 300, 0.1), _draw(rng, 400, 0.0)
    mu, sigma = scores.statistics(y)
    assert I.fid_interval(x, mu, sigma) == I.fid_interval(x.copy(), mu, sigma)
    assert I.kid_interval(x, y) == I.kid_interval(x.copy(), y)
    assert I.fid_interval(x, mu, sigma, seed=1) != I.fid_interval(x, mu, sigma, seed=2)
    assert np.array_equal(I.bootstrap_counts(50, 4, 7), I.bootstrap_counts(50, 4, 7))
    assert (I.bootstrap_counts(50, 4, 7).sum(1) == 50).all()


def test_fid_infinity_removes_the_bias():
    rng = np.random.default_rng(7)
    mu_r, sigma_r = np.zeros(D), np.diag(LAM)
    shift = 0.3
    errors_n, errors_inf = [], []
    for r in range(80):
        x = _draw(rng, 600, shift)
        f = I.fid_infinity(x, mu_r, sigma_r, seed=r)
        assert f.sizes[-1] == 600 and f.fids[-1] == pytest.approx(I._fid(x, I._Ref(mu_r, sigma_r)))
        assert f.slope > 0 and f.bias_at_n == pytest.approx(f.slope / 600)
        errors_n.append(f.fids[-1] - shift ** 2)
        errors_inf.append(f.fid_inf - shift ** 2)
    assert np.mean(errors_n) > 0.01  # FID_600 reads high
    # unbiased within its Monte Carlo error (the mean of 80 draws), while FID_600 is off by many of those
    se = np.std(errors_inf) / np.sqrt(len(errors_inf))
    assert abs(np.mean(errors_inf)) < 3 * se < np.mean(errors_n) / 2


def test_bad_arguments():
    x = np.zeros((10, 3))
    with pytest.raises(UsageError, match="--resamples must be at least 10"):
        I.fid_interval(x, np.zeros(3), np.eye(3), resamples=5)
    with pytest.raises(UsageError, match="level"):
        I.fid_interval(x, np.zeros(3), np.eye(3), level=1.5)
    with pytest.raises(UsageError, match="unknown metric 'is'"):
        I.compare(x, x, metric="is")
    with pytest.raises(UsageError, match="at least 2 samples"):
        I.fid_interval(x[:1], np.zeros(3), np.eye(3))
