"""The likelihoods p(x|z) and the KL terms against closed forms and torch.distributions."""

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Normal
from torch.distributions import kl_divergence as td_kl

from vaelab.errors import VaelabError
from vaelab.science.bounds import kl_divergence
from vaelab.science.likelihoods import (
    LIKELIHOODS,
    continuous_bernoulli_log_norm,
    get_likelihood,
)


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 1, 28, 28, generator=gen) * 3
    x = torch.rand(5, 1, 28, 28, generator=gen)
    mu = torch.randn(5, 8, generator=gen)
    logvar = torch.randn(5, 8, generator=gen)
    return logits, x, mu, logvar


def test_bernoulli_is_the_log_likelihood(batch):
    logits, x, _, _ = batch
    x_binary = (x > 0.5).float()
    expected = Bernoulli(logits=logits).log_prob(x_binary).flatten(1).sum(1)
    torch.testing.assert_close(get_likelihood("bernoulli").log_prob(logits, x_binary), expected)


def test_bernoulli_equals_minus_bce_on_sigmoid_outputs(batch):
    """The logit path gives the reference's -BCE(sigmoid(logits), x) summed over pixels."""
    logits, x, _, _ = batch
    reference = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").sum((1, 2, 3))
    log_p = get_likelihood("bernoulli").log_prob(logits, x)
    torch.testing.assert_close(-log_p, reference, rtol=1e-5, atol=1e-3)


def test_bernoulli_of_k_decodings_equals_bce_including_extreme_logits():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 784, generator=gen, dtype=torch.float64) * 30
    x = torch.rand(3, 784, generator=gen, dtype=torch.float64)
    x[0] = (x[0] > 0.5).double()
    expected = -F.binary_cross_entropy_with_logits(
        logits, x.unsqueeze(1).expand_as(logits), reduction="none"
    ).sum(-1)
    bernoulli = get_likelihood("bernoulli")
    torch.testing.assert_close(bernoulli.log_prob(logits, x), expected)
    close32 = bernoulli.log_prob(logits.float(), x.float()).double()
    torch.testing.assert_close(close32, expected, rtol=1e-5, atol=1e-2)


@pytest.mark.parametrize("name", list(LIKELIHOODS))
def test_k_decodings_equal_one_decoding_at_a_time(name):
    """The [B, K, *image] path (NLL, IWAE) is the [B, *image] path (training) per column."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 3, 1, 28, 28, generator=gen) * 5
    x = torch.rand(4, 1, 28, 28, generator=gen)
    likelihood = get_likelihood(name)
    many = likelihood.log_prob(logits, x)
    one_by_one = torch.stack([likelihood.log_prob(logits[:, j], x) for j in range(3)], 1)
    assert many.shape == (4, 3)
    torch.testing.assert_close(many, one_by_one, rtol=1e-5, atol=1e-3)


def test_gaussian_is_minus_summed_squared_error(batch):
    logits, x, _, _ = batch
    expected = -((torch.sigmoid(logits) - x) ** 2).sum((1, 2, 3))
    torch.testing.assert_close(get_likelihood("gaussian").log_prob(logits, x), expected)


def test_unknown_likelihood_is_rejected():
    with pytest.raises(VaelabError, match="likelihood must be one of"):
        get_likelihood("poisson")


def test_continuous_bernoulli_matches_torch_where_torch_is_exact():
    logits = torch.linspace(-8, 8, 41, dtype=torch.float64).view(41, 1)
    x = torch.rand(41, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours = get_likelihood("continuous_bernoulli").log_prob(logits, x)
    reference = torch.distributions.ContinuousBernoulli(logits=logits).log_prob(x).sum(1)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)


def test_continuous_bernoulli_integrates_to_one_in_float32_up_to_logit_100():
    """torch's ContinuousBernoulli clamps its probabilities, so beyond |logit| ~ 15 its float32
    density does not integrate to 1; ours does, for logits up to +-100."""
    logits = torch.tensor([-100.0, -40.0, -15.0, -3.0, -1e-3, 0.0, 1e-4, 0.05, 2.0, 20.0, 100.0])
    grid = torch.linspace(0, 1, 400_001, dtype=torch.float64)
    n, g = len(logits), len(grid)
    pixel_logits = logits.view(1, n).expand(g, n).reshape(-1, 1)  # float32
    values = grid.float().view(g, 1).expand(g, n).reshape(-1, 1)
    log_p = get_likelihood("continuous_bernoulli").log_prob(pixel_logits, values)
    assert log_p.dtype == torch.float32
    integral = torch.trapezoid(log_p.double().exp().view(g, n), grid, dim=0)
    torch.testing.assert_close(integral, torch.ones(n, dtype=torch.float64), atol=2e-3, rtol=0)
    # ...whereas the Bernoulli likelihood of grey pixels is not a density
    bernoulli = get_likelihood("bernoulli").log_prob(pixel_logits, values).double().exp()
    assert torch.all(torch.trapezoid(bernoulli.view(g, n), grid, dim=0)[3:-3] < 0.99)


def test_continuous_bernoulli_log_norm_is_smooth_across_the_series_switch():
    eta = torch.tensor([-0.1001, -0.0999, 0.0, 0.0999, 0.1001], dtype=torch.float64)
    exact = torch.log(eta / torch.tanh(eta / 2))
    exact[2] = torch.log(torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(continuous_bernoulli_log_norm(eta), exact, rtol=0, atol=1e-9)
    eta32 = torch.tensor([0.0, 0.5, 50.0], requires_grad=True)
    continuous_bernoulli_log_norm(eta32).sum().backward()
    assert torch.isfinite(eta32.grad).all()


def test_normalization_labels():
    assert get_likelihood("bernoulli").normalization(True)[0]
    ok, note = get_likelihood("bernoulli").normalization(False)
    assert not ok and "NOT" in note
    assert not get_likelihood("gaussian").normalization(True)[0]
    assert get_likelihood("continuous_bernoulli").normalization(False)[0]


def test_kl_matches_torch_distributions(batch):
    _, _, mu, logvar = batch
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(kl_divergence(mu, logvar), td_kl(q, p).sum(1))


def test_kl_is_zero_for_the_prior():
    assert torch.all(kl_divergence(torch.zeros(3, 4), torch.zeros(3, 4)) == 0)
