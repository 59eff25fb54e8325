"""The likelihood with a learned parameter (learned_gaussian) against torch.distributions, and
what the seam gives a likelihood: its input shape, its arguments, its place among the
network's parameters, its checks."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_train

from vaelab.errors import VaelabError
from vaelab.runs.config_checks import check_config
from vaelab.science.likelihoods import LIKELIHOODS, get_likelihood, register_likelihood
from vaelab.science.likelihoods.learned_gaussian import LearnedGaussian
from vaelab.science.variants.vae import VAE


def test_its_density_is_torchs_normal_with_the_learned_scale():
    torch.manual_seed(0)
    lik = get_likelihood("learned_gaussian", (1, 4, 5))
    with torch.no_grad():
        lik.raw_log_scale.copy_(torch.randn(1, 4, 5))
    logits, x = torch.randn(3, 1, 4, 5), torch.rand(3, 1, 4, 5)
    sigma = lik.log_scale().exp()
    expected = torch.distributions.Normal(torch.sigmoid(logits), sigma).log_prob(x)
    torch.testing.assert_close(lik.log_prob(logits, x), expected.flatten(1).sum(1))
    many = torch.randn(3, 6, 1, 4, 5)  # K decodings per image
    expected = torch.distributions.Normal(torch.sigmoid(many), sigma).log_prob(x[:, None])
    torch.testing.assert_close(lik.log_prob(many, x), expected.flatten(2).sum(2))


def test_the_scale_is_soft_clipped_from_below():
    lik = LearnedGaussian((1, 2, 2), min_log_scale=-3.0)
    with torch.no_grad():
        lik.raw_log_scale.fill_(-50.0)
    assert torch.all(lik.log_scale() >= -3.0) and torch.all(lik.log_scale() < -2.99)


def test_it_is_a_parameter_of_the_network_and_learns():
    net = VAE(hidden_dims=[16], latent_dim=2, likelihood="learned_gaussian")
    assert net.state_dict()["likelihood.raw_log_scale"].shape == (1, 28, 28)
    shared = VAE(
        hidden_dims=[16],
        latent_dim=2,
        likelihood="learned_gaussian",
        likelihood_args={"per_pixel": False},
    )
    assert shared.likelihood.raw_log_scale.shape == (1, 1, 1)
    parts = net.elbo(torch.rand(4, 1, 28, 28))
    (parts.recon.mean() + parts.kl.mean()).backward()
    assert net.likelihood.raw_log_scale.grad.abs().sum() > 0
    picture = net.likelihood.picture()
    assert picture.shape == (1, 28, 28) and float(picture.max()) == 1.0
    assert "per pixel" in net.likelihood.picture_title


def test_the_default_likelihoods_have_no_picture_and_no_parameters():
    for name in ("bernoulli", "gaussian", "continuous_bernoulli"):
        lik = get_likelihood(name)
        assert lik.picture() is None and not list(lik.parameters())


def test_bad_likelihood_arguments_are_one_line_before_anything_is_built():
    overrides = ["model.likelihood=learned_gaussian", "+model.likelihood_args.per_pixl=false"]
    with pytest.raises(VaelabError) as err:
        check_config(compose_train(overrides))
    (line,) = str(err.value).splitlines()
    assert line == (
        "model.likelihood_args.per_pixl: likelihood 'learned_gaussian' has no argument "
        "'per_pixl' (its arguments: per_pixel, init_log_scale, min_log_scale)"
    )
    with pytest.raises(VaelabError, match="likelihood must be one of"):
        get_likelihood("nope")


def test_a_second_class_under_a_taken_name_is_refused():
    assert {"bernoulli", "learned_gaussian"} <= set(LIKELIHOODS)
    with pytest.raises(VaelabError, match="registered twice"):
        register_likelihood("bernoulli")(type("Other", (LearnedGaussian,), {}))
