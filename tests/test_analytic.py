import torch

from samplebench.models import AnalyticDenoiser, GaussianMixture
from samplebench.models.embedded import ddpm_linear_schedule
from samplebench.noise import SampleGenerators


def _random_mixture(k=3, d=6, rotated=True):
    g = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(k, d, d, generator=g, dtype=torch.float64))[0] if rotated else None
    return GaussianMixture(torch.rand(k, generator=g) + 0.5, torch.randn(k, d, generator=g),
                           torch.rand(k, d, generator=g, dtype=torch.float64) + 0.05, u, (d,))


def _log_marginal(m, x, alpha, sigma):
    comps = []
    for k in range(m.weights.numel()):
        cov = alpha**2 * (m.eigvecs[k] @ torch.diag(m.eigvals[k]) @ m.eigvecs[k].T) + sigma**2 * torch.eye(m.dim,
                                                                                                          dtype=torch.float64)
        dist = torch.distributions.MultivariateNormal(alpha * m.means[k], covariance_matrix=cov)
        comps.append(dist.log_prob(x) + m.weights[k].log())
    return torch.logsumexp(torch.stack(comps), 0)


def test_posterior_mean_is_tweedie():
    """E[x0 | xt] = (xt + sigma^2 grad log p_t(xt)) / alpha, with the score from autograd of the exact marginal."""
    m = _random_mixture()
    s = ddpm_linear_schedule()
    d = AnalyticDenoiser(m, s)
    for t in (0.05, 0.4, 0.9):
        a, sg = s.alpha(t), s.sigma(t)
        x = torch.randn(5, m.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
        score = torch.autograd.grad(_log_marginal(m, x, a, sg).sum(), x)[0]
        expected = (x + sg**2 * score) / a
        got = d(x.detach(), t)
        assert torch.allclose(got.denoised, expected, atol=1e-8)
        assert torch.allclose(got.eps, -sg * score, atol=1e-8)


def test_exact_samples_have_the_mixture_moments():
    m = _random_mixture(k=2, d=3)
    x = m.sample(SampleGenerators(range(20000)), dtype=torch.float64)
    mean = (m.weights[:, None] * m.means).sum(0)
    assert torch.allclose(x.mean(0), mean, atol=0.05)
    assert m.sample(SampleGenerators([3])).shape == (1, 3)


def test_save_load_round_trip(tmp_path):
    m = _random_mixture()
    m.save(tmp_path)
    m2 = GaussianMixture.load(tmp_path)
    assert torch.allclose(m2.means, m.means.float().double()) and m2.shape == m.shape
