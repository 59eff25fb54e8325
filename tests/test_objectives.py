"""Objectives by name (vaelab.science.objectives): the registry, the checks of its names and
arguments, and the beta-TCVAE example against brute-force densities."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import compose_train, synthetic_overrides

from vaelab.errors import VaelabError
from vaelab.lit.module import VAELitModule
from vaelab.runs.config_checks import check_config
from vaelab.runs.train import train
from vaelab.science.bounds import log_normal, log_standard_normal
from vaelab.science.objectives import (
    OBJECTIVES,
    Objective,
    ObjectiveOutput,
    build_objective,
    register_objective,
)
from vaelab.science.objectives.beta_tcvae import decomposed_kl


class HalfKL(Objective):
    """An objective outside vaelab, named by its dotted path: recon + weight * KL."""

    def __init__(self, weight: float = 0.5) -> None:
        self.weight = weight

    def __call__(self, inputs):
        parts = inputs.elbo()
        loss = (parts.recon + self.weight * parts.kl).mean()
        return ObjectiveOutput(loss, inputs.elbo_terms(), {"half_kl": self.weight * parts.kl})


def test_the_shipped_objectives_are_registered_by_their_files():
    assert {"elbo", "iwae", "beta_tcvae"} <= set(OBJECTIVES)
    assert all(OBJECTIVES[name].name == name for name in OBJECTIVES)


def test_a_second_class_under_a_taken_name_is_refused():
    with pytest.raises(VaelabError, match="registered twice"):
        register_objective("elbo")(type("Other", (Objective,), {}))


def test_arguments_come_from_objective_args_then_the_model_keys():
    iwae = build_objective("iwae", {}, {"k": 7, "beta": 2.0})
    assert iwae.k == 7
    assert build_objective("iwae", {"k": 3}, {"k": 7}).k == 3
    with pytest.raises(VaelabError, match="model.objective_args.kk: objective 'iwae' has no"):
        build_objective("iwae", {"kk": 3}, {})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.objective=iwea"],
            "model.objective='iwea' must be one of beta_tcvae, elbo, iwae (or the dotted path "
            "of an Objective class)",
        ),
        (
            ["model.objective=nowhere.Objective"],
            "model.objective='nowhere.Objective' cannot be imported",
        ),
        (
            ["objective=beta_tcvae", "+model.objective_args.beta=4"],
            "model.objective_args.beta: objective 'beta_tcvae' has no argument 'beta' (its "
            "arguments: alpha, tc_weight, gamma, estimator)",
        ),
    ],
)
def test_a_bad_objective_is_one_line_before_anything_is_built(overrides, message):
    with pytest.raises(VaelabError) as err:
        check_config(compose_train(overrides))
    (line,) = str(err.value).splitlines()
    assert line.startswith(message)


def test_an_objective_outside_vaelab_by_its_dotted_path():
    torch.manual_seed(0)
    model = VAELitModule(
        hidden_dims=[16],
        latent_dim=3,
        objective="test_objectives.HalfKL",
        objective_args={"weight": 0.25},
    )
    check_config(compose_train(["model.objective=test_objectives.HalfKL"]))
    x = torch.rand(5, 1, 28, 28)
    torch.manual_seed(1)
    loss, terms = model.objective(x)
    torch.testing.assert_close(loss, (terms.recon + 0.25 * terms.kl).mean())


def _posterior_and_draws(n: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, d, generator=g, dtype=torch.float64) * 1.5
    logvar = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.3 - 1.0
    z = mu + torch.exp(0.5 * logvar) * torch.randn(n, d, generator=g, dtype=torch.float64)
    return mu, logvar, z, log_normal(z, mu, logvar)


def test_the_kl_parts_add_up_to_the_monte_carlo_kl():
    mu, logvar, z, log_q = _posterior_and_draws(16, 3, 0)
    for estimator in ("mss", "mws"):
        parts = decomposed_kl(z, log_q, mu, logvar, 1000, estimator)
        torch.testing.assert_close(sum(parts.values()), log_q - log_standard_normal(z))


def test_q_z_estimates_against_the_exact_mixture_over_a_data_set():
    # the batch is the whole data set of N images: q(z) = mean_n q(z|x_n) exactly
    n, d = 3000, 2
    mu, logvar, z, log_q = _posterior_and_draws(n, d, 1)
    pairs = log_normal(z[:, None, :, None], mu[None, :, :, None], logvar[None, :, :, None])
    exact_qz = torch.logsumexp(pairs.sum(2), 1) - math.log(n)
    exact_prod = (torch.logsumexp(pairs, 1) - math.log(n)).sum(1)
    exact_mi = log_q - exact_qz
    exact_tc = exact_qz - exact_prod
    # stratified sampling weighs one image of each row 1/(N M) instead of about 1/N: off by
    # that image's share of q(z_i), a few thousandths of a nat here
    mss = decomposed_kl(z, log_q, mu, logvar, n, "mss")
    torch.testing.assert_close(mss["mi"], exact_mi, atol=1e-2, rtol=0)
    torch.testing.assert_close(mss["tc"], exact_tc, atol=1e-2, rtol=0)
    # the paper's minibatch weighted sampling: offset by log N in log q(z) (docstring)
    mws = decomposed_kl(z, log_q, mu, logvar, n, "mws")
    torch.testing.assert_close(mws["mi"], exact_mi + math.log(n))
    torch.testing.assert_close(mws["tc"], exact_tc + (d - 1) * math.log(n))


def test_beta_tcvae_with_unit_weights_is_the_elbo_with_a_monte_carlo_kl():
    torch.manual_seed(2)
    model = VAELitModule(
        hidden_dims=[16],
        latent_dim=3,
        objective="beta_tcvae",
        objective_args={"alpha": 1.0, "tc_weight": 1.0, "gamma": 1.0},
    )
    model._dataset_size = 600
    x = torch.rand(8, 1, 28, 28)
    inputs = model.objective_input(x)
    out = model.objective_fn(inputs)
    z, log_q = inputs.draws()
    mc_kl = log_q["z"] - log_standard_normal(z["z"])
    torch.testing.assert_close(out.loss, (out.terms.recon + mc_kl).mean())
    assert set(out.logged) == {"mi", "tc", "dim_kl"}
    # the logged KL is the closed form of the same posterior
    q = inputs.posterior.gaussian
    torch.testing.assert_close(out.terms.kl, 0.5 * (q.mu**2 + q.logvar.exp() - 1 - q.logvar).sum(1))


def test_beta_tcvae_refuses_a_posterior_it_cannot_decompose():
    model = VAELitModule(
        net="vaelab.science.variants.iaf.IAF",
        hidden_dims=[16],
        latent_dim=2,
        objective="beta_tcvae",
    )
    model._dataset_size = 600
    with pytest.raises(VaelabError, match="needs a diagonal Gaussian posterior"):
        model.objective(torch.rand(4, 1, 28, 28))


def test_beta_tcvae_trains_and_logs_its_parts(synthetic_root, tmp_path):
    overrides = [*synthetic_overrides(synthetic_root, tmp_path), "trainer.max_epochs=1"]
    cfg = compose_train([*overrides, "objective=beta_tcvae"], tmp_path / "run")
    metrics = train(cfg)
    saved = json.loads(Path(tmp_path / "run" / "metrics.json").read_text())
    for name in ("train/mi_last", "train/tc_last", "train/dim_kl_last", "test/loss"):
        assert math.isfinite(saved[name]), name
    assert metrics["test/loss"] == saved["test/loss"]
