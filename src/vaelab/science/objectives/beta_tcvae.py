"""beta-TCVAE (Chen, Li, Grosse & Duvenaud 2018, "Isolating Sources of Disentanglement in
VAEs"): the KL term split into index-code mutual information, total correlation and
dimension-wise KL, each with its own weight; the total correlation's weight is the paper's
beta. An example of an objective that needs the draws of z, their log q and the data set's
size (``configs/objective/beta_tcvae.yaml``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vaelab.errors import VaelabError
from vaelab.science.bounds import log_normal, log_standard_normal
from vaelab.science.distributions import GaussianPosterior, StandardNormalPrior, total
from vaelab.science.objectives.base import (
    Objective,
    ObjectiveInput,
    ObjectiveOutput,
    register_objective,
)

ESTIMATORS = ("mss", "mws")


def log_importance_matrix(batch_size: int, dataset_size: int, like: Tensor) -> Tensor:
    """log weights [B, B] of minibatch stratified sampling (the paper's appendix C.2, as in
    its official code): row i weighs the batch's images as a stratified sample of the data
    set for estimating q(z_i)."""
    n, m = dataset_size, batch_size - 1
    weights = torch.full((batch_size, batch_size), 1 / m, dtype=like.dtype, device=like.device)
    flat = weights.view(-1)
    flat[:: m + 1] = 1 / n
    flat[1 :: m + 1] = (n - m) / (n * m)
    weights[m - 1, 0] = (n - m) / (n * m)
    return weights.log()


def decomposed_kl(
    z: Tensor, log_q: Tensor, mu: Tensor, logvar: Tensor, dataset_size: int, estimator: str
) -> dict[str, Tensor]:
    """Per-image estimates [B] (nats) of the three parts of KL(q(z|x) || p(z)) under a
    standard normal prior, from draws z [B, D] of q(z|x_i) = N(mu_i, exp(logvar_i)) and their
    log q [B]: ``mi`` (log q(z|x) - log q(z)), ``tc`` (log q(z) - sum_d log q(z_d)) and
    ``dim_kl`` (sum_d log q(z_d) - log p(z)); the three add up to log q(z|x) - log p(z).

    q(z), the posterior averaged over the data set of ``dataset_size`` images, is estimated
    from the batch. ``mss``: minibatch stratified sampling (consistent: the weights of a row
    sum to about 1; batches of fewer than 3 images take the batch mean). ``mws``: minibatch
    weighted sampling as the paper and its code write it, log of the sum over the batch
    divided by batch size x data set size: that is log q(z) - log N on average, so its
    ``mi`` is high by log N, ``tc`` by (D - 1) log N and ``dim_kl`` low by D log N (the
    gradients are the same)."""
    batch = z.shape[0]
    # log q(z_i,d | x_j) for every pair of images: [B, B, D]
    per_pair = log_normal(z[:, None, :, None], mu[None, :, :, None], logvar[None, :, :, None])
    if estimator == "mws":
        weights = torch.full((batch, batch), -math.log(batch * dataset_size)).to(z)
    elif batch > 2:
        weights = log_importance_matrix(batch, dataset_size, z)
    else:
        weights = torch.full((batch, batch), -math.log(batch)).to(z)
    log_qz = torch.logsumexp(weights + per_pair.sum(2), 1)
    log_prod = torch.logsumexp(weights[:, :, None] + per_pair, 1).sum(1)
    log_pz = log_standard_normal(z)
    return {"mi": log_q - log_qz, "tc": log_qz - log_prod, "dim_kl": log_prod - log_pz}


@register_objective("beta_tcvae")
class BetaTCVAE(Objective):
    """recon + alpha * MI + tc_weight * TC + gamma * dimension-wise KL, mean over the batch
    (nats per image), from one draw of z per image; alpha = tc_weight = gamma = 1 is the
    ELBO (with a Monte Carlo KL). Logs the three parts as ``train/mi``, ``train/tc`` and
    ``train/dim_kl``. Needs the standard VAE's posterior and prior (``model=vae``)."""

    def __init__(
        self,
        alpha: float = 1.0,
        tc_weight: float = 6.0,
        gamma: float = 1.0,
        estimator: str = "mss",
    ) -> None:
        if estimator not in ESTIMATORS:
            raise VaelabError(
                f"model.objective_args.estimator={estimator!r} must be one of "
                f"{', '.join(ESTIMATORS)}"
            )
        self.alpha, self.tc_weight, self.gamma, self.estimator = alpha, tc_weight, gamma, estimator

    def __call__(self, inputs: ObjectiveInput) -> ObjectiveOutput:
        q, p = inputs.posterior, inputs.prior
        if not isinstance(q, GaussianPosterior) or type(p) is not StandardNormalPrior:
            raise VaelabError(
                f"model.objective=beta_tcvae needs a diagonal Gaussian posterior and the "
                f"standard normal prior (model=vae); {type(inputs.net).__name__} has "
                f"{type(q).__name__} and {type(p).__name__}"
            )
        if inputs.dataset_size is None:
            raise VaelabError(
                "model.objective=beta_tcvae needs the training set's size; give the data "
                "module a train_dataloader whose dataset has a length"
            )
        z, log_q = inputs.draws()
        parts = decomposed_kl(
            z[q.group],
            total(log_q),
            q.gaussian.mu,
            q.gaussian.logvar,
            inputs.dataset_size,
            self.estimator,
        )
        recon = inputs.elbo().recon
        penalty = self.alpha * parts["mi"] + self.tc_weight * parts["tc"]
        loss = (recon + penalty + self.gamma * parts["dim_kl"]).mean()
        logged = {name: value.detach() for name, value in parts.items()}
        return ObjectiveOutput(loss, inputs.elbo_terms(), logged)
