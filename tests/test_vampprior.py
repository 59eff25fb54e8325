"""VampPrior (Tomczak & Welling 2018) through the variant seam: its mixture prior against
torch.distributions, its Monte Carlo KL, and the objectives and NLL that use them."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from vaelab.evaluation.metrics import iwae_log_likelihood
from vaelab.lit.module import VAELitModule
from vaelab.science.bounds import log_normal
from vaelab.science.variants.vampprior import MixturePrior, VampPrior


def small(**kwargs) -> VampPrior:
    torch.manual_seed(0)
    args = {"hidden_dims": [16], "latent_dim": 3, "num_pseudo_inputs": 7, **kwargs}
    return VampPrior(**args).double()


def mixture(net: VampPrior) -> MixtureSameFamily:
    """The prior by torch.distributions: (1/K) sum_k N(mu_k, diag exp(logvar_k))."""
    mu, logvar = net.components()
    normal = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
    return MixtureSameFamily(Categorical(logits=torch.zeros(len(mu), dtype=mu.dtype)), normal)


def test_log_prior_is_the_mixture_of_the_pseudo_inputs_posteriors():
    net = small()
    net.pseudo_inputs.data.uniform_(0, 1)  # spread components
    z = torch.randn(4, 5, 3, dtype=torch.float64) * 2
    torch.testing.assert_close(net.prior().log_prob({"z": z})["z"], mixture(net).log_prob(z))


@pytest.mark.parametrize(
    ("low", "high", "spread"),
    [(-8.0, -5.0, 1.0), (-10.0, -8.0, 1.0), (-10.0, -8.0, 0.01), (-1.0, 0.0, 0.01)],
)
def test_log_prior_stays_accurate_in_float32_for_narrow_components(low, high, spread):
    """Narrow components apart, narrow ones that overlap (spread 0.01) and wide ones."""
    tolerance = 3e-4
    gen = torch.Generator().manual_seed(0)
    mu = spread * torch.randn(50, 16, generator=gen, dtype=torch.float64)
    logvar = low + (high - low) * torch.rand(50, 16, generator=gen, dtype=torch.float64)
    # points near the components, where the density is high and the terms cancel most
    near = torch.exp(0.5 * logvar[torch.randint(50, (400,), generator=gen)])
    z = mu[torch.randint(50, (400,), generator=gen)] + near * torch.randn(400, 16, generator=gen)
    reference = MixturePrior(mu, logvar).log_prob({"z": z})["z"]
    expected = MixtureSameFamily(
        Categorical(logits=torch.zeros(50, dtype=torch.float64)),
        Independent(Normal(mu, torch.exp(0.5 * logvar)), 1),
    ).log_prob(z)
    torch.testing.assert_close(reference, expected)
    single = MixturePrior(mu.float(), logvar.float()).log_prob({"z": z.float()})["z"]
    assert single.dtype == torch.float32
    assert float((single.double() - expected).abs().max()) < tolerance


def test_pseudo_inputs_are_learned_images_in_the_unit_interval():
    net = small()
    assert net.pseudo_inputs.shape == (7, 1, 28, 28)
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    parts = net.elbo(x)
    (parts.recon + parts.kl).sum().backward()
    assert net.pseudo_inputs.grad is not None and net.pseudo_inputs.grad.abs().sum() > 0
    with torch.no_grad():
        net.pseudo_inputs.fill_(3.0)
    pseudo = net.pseudo_activation(net.pseudo_inputs)
    assert float(pseudo.detach().max()) == 1.0


def test_monte_carlo_kl_averages_to_the_expected_log_ratio():
    net = small()
    net.pseudo_inputs.data.uniform_(0, 1)
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    parts = net.elbo(x, 40000, torch.Generator().manual_seed(0))
    assert not parts.closed_form and parts.kl_per_dimension() is None
    q = parts.posterior.gaussian.to_torch()
    z = q.sample((40000,))
    expected = (q.log_prob(z) - mixture(net).log_prob(z)).mean(0)  # [B]
    torch.testing.assert_close(parts.kl, expected, rtol=0, atol=0.03)
    one = net.elbo(x, None, torch.Generator().manual_seed(1))  # one draw each, by hand
    eps = torch.randn(2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mu, logvar = net.encode(x)
    z1 = mu + torch.exp(0.5 * logvar) * eps
    torch.testing.assert_close(one.kl, log_normal(z1, mu, logvar) - mixture(net).log_prob(z1))


def test_samples_come_from_the_mixture():
    net = small()
    net.pseudo_inputs.data.uniform_(0, 1)
    z = net.prior().sample(50000, torch.Generator().manual_seed(0))["z"]
    prior = mixture(net)
    torch.testing.assert_close(z.mean(0), prior.mean, rtol=0, atol=0.03)
    torch.testing.assert_close(z.var(0), prior.variance, rtol=0.05, atol=0.01)


def test_nll_uses_the_mixture_prior():
    net = small().eval()
    x = (torch.rand(3, 1, 28, 28, dtype=torch.float64) > 0.5).double()
    k = 6
    estimate = iwae_log_likelihood(net, x, k, generator=torch.Generator().manual_seed(1))
    mu, logvar = net.encode(x)
    eps = torch.randn(3, k, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = mu.unsqueeze(1) + torch.exp(0.5 * logvar).unsqueeze(1) * eps
    logits = net.decode_logits({"z": z.flatten(0, 1)}).view(3, k, -1)
    log_px_z = torch.distributions.Bernoulli(logits=logits).log_prob(x.flatten(1).unsqueeze(1))
    log_q = Normal(mu.unsqueeze(1), torch.exp(0.5 * logvar).unsqueeze(1)).log_prob(z).sum(-1)
    log_w = log_px_z.sum(-1) + mixture(net).log_prob(z) - log_q
    torch.testing.assert_close(estimate, torch.logsumexp(log_w, 1) - math.log(k))


@pytest.mark.parametrize("objective", [{}, {"free_bits": 0.5}, {"objective": "iwae", "k": 4}])
def test_every_objective_trains_the_vampprior(objective):
    torch.manual_seed(0)
    net = "vaelab.science.variants.vampprior.VampPrior"
    model = VAELitModule(net, hidden_dims=[16], latent_dim=3, num_pseudo_inputs=5, **objective)
    loss, terms = model.objective(torch.rand(8, 1, 28, 28))
    loss.backward()
    assert torch.isfinite(loss) and terms.kl.shape == (8,)
    assert model.net.pseudo_inputs.grad is not None


def test_bad_number_of_pseudo_inputs_is_one_line():
    with pytest.raises(ValueError, match=r"^model.num_pseudo_inputs=0 must be an integer >= 1$"):
        VampPrior(num_pseudo_inputs=0)


def test_log_prior_of_overlapping_components_is_recomputed_in_float64():
    """Like a trained VampPrior: 500 components that overlap in 10 active latents of 40 (the
    others N(0, 1)), one far out. float32's rounding bound flags many draws; float64 must
    settle them to the exact value."""
    gen = torch.Generator().manual_seed(0)
    mu, logvar = (
        torch.zeros(500, 40, dtype=torch.float64),
        torch.zeros(500, 40, dtype=torch.float64),
    )
    mu[:, :10] = torch.randn(500, 10, generator=gen, dtype=torch.float64)
    logvar[:, :10] = -2.5 + 2.5 * torch.rand(500, 10, generator=gen, dtype=torch.float64)
    mu[0, :10] = 8.0
    pick = torch.randint(500, (2000,), generator=gen)
    noise = torch.randn(2000, 40, generator=gen, dtype=torch.float64)
    z = mu[pick] + torch.exp(0.5 * logvar[pick]) * noise
    expected = torch.logsumexp(MixturePrior(mu, logvar)._exact(z), -1) - math.log(500)
    prior = MixturePrior(mu.float(), logvar.float())
    _, flagged = prior._log_prob_expanded(z.float())
    assert flagged.float().mean() > 0.1  # the float64 pass is exercised
    single = prior.log_prob({"z": z.float()})["z"]
    assert single.dtype == torch.float32
    assert float((single.double() - expected).abs().max()) < 3e-4


@pytest.mark.parametrize("dim", [1, 4])
@pytest.mark.parametrize("low", [-20.0, -30.0, -40.0])
def test_log_prior_of_narrow_overlapping_components_is_within_1e_4_of_float64(dim, low):
    """Components as narrow as log-variance -40 that overlap (means within a few of their
    standard deviations, at a large offset where float32 cancels most): within 1e-4 nats of
    float64 differences on the same float32 values, also where the expanded form is off by
    hundreds of nats and the others' share rounds to 0 (the case of issue 31: 167.97 nats
    against 8.84)."""
    gen = torch.Generator().manual_seed(0)
    k = 6
    logvar = (low + torch.rand(k, dim, generator=gen, dtype=torch.float64)).float()
    std = torch.exp(0.5 * logvar.double())
    mu = (3.15 + 3 * std * torch.randn(k, dim, generator=gen, dtype=torch.float64)).float()
    pick = torch.randint(k, (300,), generator=gen)
    z = (
        mu[pick].double()
        + 2 * std[pick] * torch.randn(300, dim, generator=gen, dtype=torch.float64)
    ).float()
    expected = MixtureSameFamily(
        Categorical(logits=torch.zeros(k, dtype=torch.float64)),
        Independent(Normal(mu.double(), torch.exp(0.5 * logvar.double())), 1),
    ).log_prob(z.double())
    got = MixturePrior(mu, logvar).log_prob({"z": z})["z"]
    assert got.dtype == torch.float32 and bool(torch.isfinite(got).all())
    assert float((got.double() - expected).abs().max()) < 1e-4
    # the pair of the issue
    pair = MixturePrior(
        torch.tensor([[3.15012264], [3.15015817]]), torch.tensor([[-20.0], [-19.9]])
    )
    assert pair.log_prob({"z": torch.tensor([[3.15011263]])})["z"].item() == pytest.approx(
        8.84494, abs=1e-4
    )
