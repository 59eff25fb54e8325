"""vaelab.evaluation.metrics on cases with known answers: a linear-Gaussian VAE whose log p(x)
is exact, reference densities from torch.distributions, and constructed latents and features."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import MultivariateNormal, Normal

from vaelab.evaluation import metrics as M
from vaelab.science.bounds import kl_divergence, kl_per_dimension
from vaelab.science.distributions import GaussianPosterior, StandardNormalPrior
from vaelab.science.variants.base import LatentVariableModel
from vaelab.science.variants.vae import VAE


class LinearGaussian(LatentVariableModel):
    """p(z) = N(0, I_d), p(x|z) = N(Wz + b, s^2 I_p) with orthogonal columns of W, so that the
    exact posterior N(m, S) has a diagonal S and can be an encoder's (mu, logvar). A variant
    of the seam: the bounds below go through its generic path."""

    def __init__(self, p: int = 6, d: int = 3, noise: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        self.latent_sizes = {"z": d}
        gen = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(p, d, generator=gen, dtype=torch.float64))
        self.scales = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)[:d]
        self.W = q * self.scales  # W^T W = diag(scales^2)
        self.b = torch.randn(p, generator=gen, dtype=torch.float64)
        self.noise = noise
        self.shift, self.log_scale = 0.0, 0.0  # perturbation of the encoder

    def log_px(self, x: torch.Tensor) -> torch.Tensor:
        """The exact marginal: x ~ N(b, W W^T + s^2 I)."""
        cov = self.W @ self.W.T + self.noise**2 * torch.eye(len(self.b), dtype=torch.float64)
        return MultivariateNormal(self.b, cov).log_prob(x)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact posterior (perturbed by ``shift`` and ``log_scale`` when set)."""
        var = 1.0 / (1.0 + self.scales**2 / self.noise**2)
        mu = (x - self.b) @ self.W * var / self.noise**2
        logvar = var.log().expand_as(mu)
        return mu + self.shift, logvar + 2 * self.log_scale

    def posterior(self, x: torch.Tensor) -> GaussianPosterior:
        return GaussianPosterior(*self.encode(x))

    def prior(self) -> StandardNormalPrior:
        return StandardNormalPrior(self.latent_sizes, self.b)

    def log_px_given_z(self, z, x: torch.Tensor) -> torch.Tensor:
        mean = z["z"] @ self.W.T + self.b
        x = x if mean.dim() == x.dim() else x.unsqueeze(1)
        return Normal(mean, self.noise).log_prob(x).sum(-1)

    def sample_x(self, n: int, seed: int = 1) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.W.shape[1], generator=gen, dtype=torch.float64)
        eps = torch.randn(n, len(self.b), generator=gen, dtype=torch.float64)
        return z @ self.W.T + self.b + self.noise * eps


@pytest.mark.parametrize(("k", "max_rows"), [(1, 8192), (10, 3), (10, 25), (64, 1000)])
def test_iwae_with_exact_posterior_equals_log_px_for_any_k(k, max_rows):
    model = LinearGaussian()
    x = model.sample_x(7)
    estimate = M.iwae_log_likelihood(
        model, x, k, max_rows=max_rows, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(estimate, model.log_px(x), rtol=0, atol=1e-9)


def test_elbo_with_exact_posterior_is_log_px():
    # log w is constant under the exact posterior, but the ELBO here has the closed-form KL
    # and a sampled reconstruction term: equal to log p(x) in expectation
    model = LinearGaussian()
    x = model.sample_x(5)
    parts = model.elbo(x, 20000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(-(parts.recon + parts.kl), model.log_px(x), rtol=0, atol=0.05)


def test_iwae_with_perturbed_encoder_approaches_log_px_from_below():
    model = LinearGaussian()
    model.shift, model.log_scale = 0.4, 0.5
    x = model.sample_x(200)
    exact = model.log_px(x).mean()
    gen = torch.Generator().manual_seed(0)
    gaps = [
        float(exact - M.iwae_log_likelihood(model, x, k, max_rows=4096, generator=gen).mean())
        for k in (1, 10, 100, 1000)
    ]  # fmt: skip
    assert gaps[0] > 0.5  # the perturbed encoder's ELBO is clearly below log p(x)
    assert all(a > b for a, b in zip(gaps, gaps[1:], strict=False))  # tighter as k grows
    assert 0 <= gaps[-1] < 0.05 * gaps[0]
    parts = model.elbo(x, 2000, generator=gen)
    elbo = -(parts.recon + parts.kl).mean()
    # k=1 is the ELBO in expectation (one draw per image: the standard error is ~0.15)
    assert float(exact - elbo) == pytest.approx(gaps[0], abs=0.4)


def test_iwae_of_the_vae_matches_torch_distributions():
    torch.manual_seed(0)
    net = VAE(latent_dim=4, hidden_dims=(16,)).double().eval()
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    k = 5
    estimate = M.iwae_log_likelihood(net, x, k, generator=torch.Generator().manual_seed(3))
    # the same draws, by hand: z = mu + sigma * eps with eps drawn as [B, k, D]
    eps = torch.randn(3, k, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    mu, logvar = net.encode(x)
    std = torch.exp(0.5 * logvar)
    z = mu.unsqueeze(1) + std.unsqueeze(1) * eps
    logits = net.decode_logits({"z": z.flatten(0, 1)}).view(3, k, -1)
    log_px_z = -F.binary_cross_entropy_with_logits(
        logits, x.flatten(1).unsqueeze(1).expand_as(logits), reduction="none"
    ).sum(-1)
    log_w = (
        log_px_z
        + Normal(0.0, 1.0).log_prob(z).sum(-1)
        - Normal(mu.unsqueeze(1), std.unsqueeze(1)).log_prob(z).sum(-1)
    )
    torch.testing.assert_close(estimate, torch.logsumexp(log_w, 1) - math.log(k))


def test_elbo_averaged_over_draws_matches_the_closed_form_of_a_linear_decoder():
    model = LinearGaussian()
    model.shift, model.log_scale = 0.3, -0.2
    x = model.sample_x(4)
    terms = model.elbo(x, 20000, generator=torch.Generator().manual_seed(0))
    mu, logvar = model.encode(x)
    # E_q[-log N(x; Wz + b, s^2)] = (|x - W mu - b|^2 + sum_j var_j |W_j|^2) / 2s^2 + const
    s2, p = model.noise**2, x.shape[1]
    spread = (logvar.exp() * model.scales**2).sum(1)
    residual = (x - mu @ model.W.T - model.b).square().sum(1)
    recon = (residual + spread) / (2 * s2) + 0.5 * p * math.log(2 * math.pi * s2)
    torch.testing.assert_close(terms.recon, recon, rtol=0, atol=0.05)
    torch.testing.assert_close(terms.kl, kl_divergence(mu, logvar))
    assert terms.closed_form
    torch.testing.assert_close(terms.kl_per_dimension(), kl_per_dimension(mu, logvar))


def test_latent_stats_kl_per_dimension_known_values():
    mu = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 2.0]])
    logvar = torch.tensor([[0.0, 0.0, 0.0], [0.0, math.log(2.0), 0.0]])
    expected = torch.tensor([0.5, 0.25 * (1 - math.log(2.0)), 1.0])
    stats = M.LatentStats(3)
    stats.update(mu[:1], kl_per_dimension(mu[:1], logvar[:1]))
    stats.update(mu[1:], kl_per_dimension(mu[1:], logvar[1:]))  # two batches
    out = stats.compute()
    torch.testing.assert_close(out["kl_per_dim"], expected)
    assert float(out["kl_per_dim"].sum()) == pytest.approx(float(kl_divergence(mu, logvar).mean()))
    without = M.LatentStats(3)
    without.update(mu, None)  # a prior that does not factorize: no KL per dimension
    assert "kl_per_dim" not in without.compute()


def test_active_units_counts_dimensions_whose_mean_varies_above_threshold():
    n = 1000
    signs = torch.tensor([1.0, -1.0]).repeat(n // 2)
    # population variances exactly 0, 0.005, 0.02, 1 (values +-sqrt(v))
    variances = torch.tensor([0.0, 0.005, 0.02, 1.0])
    mu = 3.0 + signs.unsqueeze(1) * variances.sqrt()
    stats = M.LatentStats(4)
    for part in mu.split(300):  # batches of a split: the same as one pass
        stats.update(part)
    out = stats.compute()
    assert int(out["active_units"]) == 2
    torch.testing.assert_close(out["mu_variance"], variances, rtol=0, atol=1e-6)
    low = M.LatentStats(4, threshold=0.001)
    low.update(mu)
    assert int(low.compute()["active_units"]) == 3


def test_class_means_over_batches():
    values = torch.tensor([1.0, 3.0, 10.0, 5.0])
    labels = torch.tensor([0, 0, 2, 2])
    means = M.ClassMeans(num_classes=4)
    means.update(values[:3], labels[:3])
    means.update(values[3:], labels[3:])
    out = means.compute()
    torch.testing.assert_close(out[[0, 2]], torch.tensor([2.0, 7.5]))
    assert out[1].isnan() and out[3].isnan()


def test_nll_metric_is_the_mean_of_the_importance_sampled_estimates():
    torch.manual_seed(0)
    net = VAE(latent_dim=4, hidden_dims=(16,)).eval()
    x = (torch.rand(6, 1, 28, 28) > 0.5).float()
    metric = M.NegativeLogLikelihood(k=5, batch_size=3, workers=1)
    with torch.inference_mode():
        metric.update(net, x[:4], seed=1)
        metric.update(net, x[4:], seed=2)
        expected = torch.cat(
            [-M.dataset_log_likelihood(net, x[:4], 5, batch_size=3, seed=1, workers=1),
             -M.dataset_log_likelihood(net, x[4:], 5, batch_size=3, seed=2, workers=1)]
        )  # fmt: skip
    nll, binary = metric.compute()
    torch.testing.assert_close(nll, expected.mean())
    assert binary
    metric.update(net, torch.full((1, 1, 28, 28), 0.5), seed=3)
    assert not metric.compute()[1]


def test_class_histogram_entropy_and_confidence():
    uniform = torch.eye(10).repeat(3, 1) * 0.9 + 0.01  # 30 items, 3 per class
    hist = M.class_histogram(uniform)
    torch.testing.assert_close(hist, torch.full((10,), 0.1, dtype=torch.float64))
    assert M.entropy(hist) == pytest.approx(math.log(10))
    assert M.mean_top_confidence(uniform) == pytest.approx(0.91)
    one_class = torch.zeros(5, 10)
    one_class[:, 7] = 1.0
    assert M.entropy(M.class_histogram(one_class)) == 0.0
    assert M.entropy(torch.tensor([0.5, 0.5, 0.0])) == pytest.approx(math.log(2))


def test_frechet_distance_exact_cases():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 4, generator=gen, dtype=torch.float64) @ torch.randn(
        4, 4, generator=gen, dtype=torch.float64
    )
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    # a shift moves the mean only: the distance is |shift|^2
    assert M.frechet_distance(x, x + shift) == pytest.approx(5.25, rel=1e-4)
    # y = 2 (x - m): covariance 4 S, so tr(S + 4S - 2 * 2S) = tr(S), plus |m|^2
    m = x.mean(0)
    expected = float(m.square().sum() + torch.cov(x.T).trace())
    assert M.frechet_distance(x, 2 * (x - m)) == pytest.approx(expected, rel=1e-4)


def test_frechet_distance_of_two_gaussians_matches_the_closed_form():
    gen = torch.Generator().manual_seed(1)
    n = 20000
    m1, m2 = torch.tensor([0.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, -1.0])
    v1, v2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([4.0, 1.0, 0.25])
    a = m1 + v1.sqrt() * torch.randn(n, 3, generator=gen)
    b = m2 + v2.sqrt() * torch.randn(n, 3, generator=gen)
    # diagonal covariances: |m1 - m2|^2 + sum (sqrt v1 - sqrt v2)^2 = 2 + 1 + 1
    assert M.frechet_distance(a, b) == pytest.approx(4.0, abs=0.1)


def test_dataset_log_likelihood_is_the_same_for_any_worker_count():
    torch.manual_seed(0)
    net = VAE(latent_dim=4, hidden_dims=(16,)).eval()
    x = torch.rand(7, 1, 28, 28)
    seen = []
    threads = torch.get_num_threads()
    one = M.dataset_log_likelihood(net, x, k=6, batch_size=3, seed=5, workers=1)
    two = M.dataset_log_likelihood(
        net, x, k=6, batch_size=3, seed=5, workers=2, on_batch=seen.append
    )
    torch.testing.assert_close(one, two, rtol=0, atol=0)
    assert sorted(seen) == [1, 3, 3]
    # batch i draws from its own generator seeded with (seed, i)
    third = M.iwae_log_likelihood(
        net, x[6:], 6, generator=torch.Generator().manual_seed(5 * 1_000_003 + 6)
    )
    torch.testing.assert_close(one[6:], third)
    assert torch.get_num_threads() == threads  # the workers' single thread is undone
