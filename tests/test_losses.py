"""The ELBO terms against closed forms and torch.distributions."""

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Normal
from torch.distributions import kl_divergence as td_kl

from vaelab.science.losses import elbo_loss, kl_divergence, reconstruction_loss


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 1, 28, 28, generator=gen) * 3
    x = torch.rand(5, 1, 28, 28, generator=gen)
    mu = torch.randn(5, 8, generator=gen)
    logvar = torch.randn(5, 8, generator=gen)
    return logits, x, mu, logvar


def test_bernoulli_recon_is_negative_log_likelihood(batch):
    logits, x, _, _ = batch
    x_binary = (x > 0.5).float()
    expected = -Bernoulli(logits=logits).log_prob(x_binary).flatten(1).sum(1)
    torch.testing.assert_close(reconstruction_loss(logits, x_binary), expected)


def test_bernoulli_recon_equals_bce_on_sigmoid_outputs(batch):
    """The logit path gives the reference's BCE(sigmoid(logits), x) summed over pixels."""
    logits, x, _, _ = batch
    reference = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").sum((1, 2, 3))
    torch.testing.assert_close(reconstruction_loss(logits, x), reference, rtol=1e-5, atol=1e-3)


def test_gaussian_recon_is_summed_squared_error(batch):
    logits, x, _, _ = batch
    expected = ((torch.sigmoid(logits) - x) ** 2).sum((1, 2, 3))
    torch.testing.assert_close(reconstruction_loss(logits, x, "gaussian"), expected)


def test_unknown_likelihood_is_rejected(batch):
    logits, x, _, _ = batch
    with pytest.raises(ValueError, match="likelihood must be one of"):
        reconstruction_loss(logits, x, "poisson")


def test_kl_matches_torch_distributions(batch):
    _, _, mu, logvar = batch
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(kl_divergence(mu, logvar), td_kl(q, p).sum(1))


def test_kl_is_zero_for_the_prior():
    assert torch.all(kl_divergence(torch.zeros(3, 4), torch.zeros(3, 4)) == 0)


@pytest.mark.parametrize("beta", [0.0, 1.0, 4.0])
def test_elbo_loss_is_recon_plus_beta_kl(batch, beta):
    logits, x, mu, logvar = batch
    terms = elbo_loss(logits, x, mu, logvar, beta=beta)
    assert terms.loss.shape == (5,)
    torch.testing.assert_close(terms.recon, reconstruction_loss(logits, x))
    torch.testing.assert_close(terms.kl, kl_divergence(mu, logvar))
    torch.testing.assert_close(terms.loss, terms.recon + beta * terms.kl)
