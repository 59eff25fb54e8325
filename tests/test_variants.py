"""The variant seam with a posterior (IAF), a hierarchy (HVAE) and a prior (VampPrior): each
distribution against torch.distributions or a closed form, the NLL against the exact log p(x)
of a small model, seeded draws, the checkpoint's architecture check and the one-line errors."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from conftest import run_script, synthetic_overrides
from torch.distributions import Independent, Normal, kl_divergence

from vaelab.errors import VaelabError
from vaelab.evaluation.metrics import dataset_log_likelihood
from vaelab.lit.module import VAELitModule
from vaelab.runs.checkpoints import check_architecture
from vaelab.science.bounds import kl_per_dimension
from vaelab.science.distributions import (
    DiagonalGaussian,
    GaussianPosterior,
    StandardNormalPrior,
    closed_form_kl,
    flatten,
    register_kl,
    unflatten,
)
from vaelab.science.variants.hvae import HVAE, HierarchicalPosterior, HierarchicalPrior
from vaelab.science.variants.iaf import IAF
from vaelab.science.variants.vae import VAE
from vaelab.science.variants.vampprior import VampPrior

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = {"input_shape": [1, 2, 2]}  # 4 binary pixels: log p(x) by quadrature over z


def perturbed(net, scale: float = 0.3, seed: int = 0):
    """``net`` with every parameter moved by Gaussian noise of ``scale``: a flow initialised at
    the identity (or a network at any symmetric start) is tested away from it."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in net.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            parameter.add_(scale * noise)
    return net


def tiny(name: str):
    torch.manual_seed(0)
    nets = {
        "vae": lambda: VAE(**TINY, hidden_dims=[8], latent_dim=2),
        "iaf": lambda: IAF(**TINY, hidden_dims=[8], latent_dim=2, flow_hidden=8, context_dim=4),
        "hvae": lambda: HVAE(**TINY, hidden_dims=[[8], [8]], latent_dim=[1, 1]),
        "hvae3": lambda: HVAE(**TINY, hidden_dims=[[8], [8], [8]], latent_dim=[1, 1, 1]),
        "vampprior": lambda: VampPrior(
            **TINY, hidden_dims=[8], latent_dim=2, num_pseudo_inputs=3, pseudo_input_std=0.5
        ),
    }
    return perturbed(nets[name]().double()).eval()


VARIANTS = ["vae", "iaf", "hvae", "hvae3", "vampprior"]


def exact_log_px(net, x: torch.Tensor, half_width: float = 7.0, points: int = 561):
    """log p(x) = log of the integral of p(x|z) p(z) over a two-dimensional z (all groups
    side by side), by a Riemann sum on a fine grid: [B] nats."""
    axis = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    cell = float(axis[1] - axis[0]) ** 2
    grid = torch.cartesian_prod(axis, axis)  # [G, 2]
    z = unflatten(grid, net.latent_sizes)
    log_pz = sum(net.prior().log_prob(z).values())  # [G]
    logits = net.decode_logits(z)  # [G, *image]
    out = []
    for xi in x:
        log_px_z = net.likelihood.log_prob(logits, xi.expand_as(logits))
        out.append(torch.logsumexp(log_px_z + log_pz, 0) + math.log(cell))
    return torch.stack(out)


def prior_sampling_log_px(net, x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """log p(x) estimated with the prior as proposal, log mean_i p(x|z_i) over n ancestral
    draws z_i ~ p(z): [B] nats. Independent of q(z|x), so it checks the posterior's log
    density that the generic path uses; fine for 4-pixel images, whatever the latent size."""
    z = net.prior().sample(n, torch.Generator().manual_seed(seed))
    logits = net.decode_logits(z)
    return torch.stack(
        [
            torch.logsumexp(net.likelihood.log_prob(logits, xi.expand_as(logits)), 0) - math.log(n)
            for xi in x
        ]
    )


def replicates(estimate, seeds: range) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean [B] of ``estimate(seed)`` over independent seeds, and its standard error
    from their spread (an honest error bar for a heavy-tailed estimator, which one draw's
    variance understates)."""
    values = torch.stack([estimate(seed) for seed in seeds])
    return values.mean(0), values.std(0) / math.sqrt(len(seeds))


@pytest.mark.parametrize("name", VARIANTS)
@torch.no_grad()
def test_nll_converges_to_log_px_through_the_generic_path(name):
    """The importance-sampled NLL of the generic path (q, p and p(x|z) of the seam) against
    log p(x): exact by quadrature where all latents together are two-dimensional, else by an
    independent estimator (prior sampling). Both sides' error bars come from independent
    replicates, so the test holds for any correct variant, however good its posterior."""
    net = tiny(name)
    x = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 1]], dtype=torch.float64)
    x = x.view(3, 1, 2, 2)
    seeds = range(1, 7)
    estimate, estimate_se = replicates(
        lambda seed: dataset_log_likelihood(net, x, 40_000, seed=seed), seeds
    )
    if net.latent_dim == 2:
        reference, reference_se = exact_log_px(net, x), torch.full((3,), 1e-3)  # quadrature
    else:
        reference, reference_se = replicates(
            lambda seed: prior_sampling_log_px(net, x, 200_000, 100 + seed), seeds
        )
    bound = 6 * torch.sqrt(estimate_se**2 + reference_se**2)
    assert bool(((reference - estimate).abs() < bound).all()), (reference - estimate, bound)


@pytest.mark.parametrize("name", VARIANTS)
def test_every_draw_takes_the_generator(name):
    net = tiny(name)
    x = torch.rand(4, 1, 2, 2, dtype=torch.float64).bernoulli()

    def draws(seed: int):
        gen = torch.Generator().manual_seed(seed)
        parts = net.elbo(x, 3, gen)
        return (
            parts.recon,
            parts.kl,
            net.log_importance_weights(x, 5, generator=gen),
            net.sample(4, gen),
        )

    torch.manual_seed(5)
    a = draws(1)
    torch.manual_seed(6)  # the global generator plays no part
    b = draws(1)
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=0)
    assert not torch.equal(a[0], draws(2)[0])


def test_iaf_log_q_is_the_base_density_minus_the_flow_log_determinant():
    net = tiny("iaf")
    net.latent_sizes = {"z": 2}
    x = torch.tensor([[0.0, 1, 1, 0]], dtype=torch.float64).view(1, 1, 2, 2)
    q = net.posterior(x)
    gen = torch.Generator().manual_seed(0)
    z, log_q = q.rsample(None, gen)
    gen = torch.Generator().manual_seed(0)
    z0, log_q0 = q.base.rsample(None, gen)  # the same base draw
    torch.testing.assert_close(log_q0, q.base.to_torch().log_prob(z0))

    def flow(v):
        return q._flow(v.view(1, -1), q.h)[0].view(-1)

    jacobian = torch.autograd.functional.jacobian(flow, z0.view(-1))
    # autoregressive: step 1 in order (0, 1), step 2 reversed, so each step is triangular
    torch.testing.assert_close(log_q["z"], log_q0 - torch.logdet(jacobian).view(1))
    torch.testing.assert_close(z["z"].view(-1), flow(z0.view(-1)))


def test_iaf_steps_are_autoregressive_in_alternating_orders():
    torch.manual_seed(0)
    net = IAF(hidden_dims=[8], latent_dim=5, flow_steps=2, flow_hidden=16, context_dim=3)
    for t, step in enumerate(net.flow):
        h = torch.randn(3)
        jacobian = torch.autograd.functional.jacobian(
            lambda v, step=step, h=h: step(v, h)[0], torch.randn(5)
        )
        # z_new_i depends on z_i (the gate) and on z_<i in the step's order, never on z_>i
        strict = jacobian.triu(1) if t % 2 == 0 else jacobian.tril(-1)
        assert torch.count_nonzero(strict) == 0
        assert torch.count_nonzero(jacobian) > 5


def test_hvae_distributions_match_torch_distributions():
    torch.manual_seed(0)
    net = HVAE(hidden_dims=[[16], [8]], latent_dim=[4, 2]).double()
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    q = net.posterior(x)
    z, log_q = q.rsample(None, torch.Generator().manual_seed(0))
    assert set(z) == {"z1", "z2"} and z["z1"].shape == (3, 4) and z["z2"].shape == (3, 2)

    def gaussian(params):
        mu, logvar = params.chunk(2, dim=-1)
        return Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)

    q1 = gaussian(net.encoders[0](x.flatten(1)))
    torch.testing.assert_close(log_q["z1"], q1.log_prob(z["z1"]))
    torch.testing.assert_close(log_q["z2"], gaussian(net.encoders[1](z["z1"])).log_prob(z["z2"]))
    log_p = net.prior().log_prob(z)
    torch.testing.assert_close(log_p["z1"], gaussian(net.decoders[0](z["z2"])).log_prob(z["z1"]))
    standard = Independent(Normal(torch.zeros(2).double(), torch.ones(2).double()), 1)
    torch.testing.assert_close(log_p["z2"], standard.log_prob(z["z2"]))
    # the KL per group: log q - log p of the draw; none per dimension
    parts = net.elbo(x, None, torch.Generator().manual_seed(0))
    assert not parts.closed_form and parts.kl_per_dimension() is None
    torch.testing.assert_close(parts.kl, sum(log_q[g] - log_p[g] for g in ("z1", "z2")))


def test_hvae_prior_draws_are_ancestral():
    torch.manual_seed(0)
    net = HVAE(hidden_dims=[[16], [8]], latent_dim=[3, 2]).double()
    z = net.prior().sample(40000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(z["z2"].mean(0), torch.zeros(2).double(), rtol=0, atol=0.03)
    # z1 given z2 is the decoder's Gaussian: its standardized residuals are N(0, 1)
    mu, logvar = net.decoders[0](z["z2"]).chunk(2, dim=-1)
    residual = (z["z1"] - mu) * torch.exp(-0.5 * logvar)
    torch.testing.assert_close(residual.mean(0), torch.zeros(3).double(), rtol=0, atol=0.03)
    torch.testing.assert_close(residual.var(0), torch.ones(3).double(), rtol=0, atol=0.03)


def test_closed_form_kl_is_torch_distributions_and_only_where_it_exists():
    gen = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    q = GaussianPosterior(mu, logvar)
    p = StandardNormalPrior({"z": 3}, mu)
    expected = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0))
    torch.testing.assert_close(closed_form_kl(q, p)["z"], expected)
    assert closed_form_kl(q, tiny("vampprior").prior()) is None
    iaf = tiny("iaf")
    assert closed_form_kl(iaf.posterior(torch.zeros(1, 1, 2, 2).double()), iaf.prior()) is None


def test_flatten_and_unflatten_are_inverse():
    z = {"z1": torch.randn(4, 3), "z2": torch.randn(4, 2)}
    flat = flatten(z)
    assert flat.shape == (4, 5)
    back = unflatten(flat, {"z1": 3, "z2": 2})
    assert all(torch.equal(back[g], z[g]) for g in z)


def test_free_bits_apply_to_every_latent_group():
    torch.manual_seed(0)
    net = "vaelab.science.variants.hvae.HVAE"
    model = VAELitModule(net, hidden_dims=[[16], [8]], latent_dim=[4, 2], free_bits=3.0)
    x = torch.rand(6, 1, 28, 28)
    model.noise = torch.Generator().manual_seed(0)
    loss, terms = model.objective(x)
    model.noise = torch.Generator().manual_seed(0)
    parts = model.net.elbo(x, generator=model.noise)
    # no closed form: each group's batch-mean KL against free_bits times its size
    kl_term = sum(
        parts.kl_parts[g].mean(0).clamp(min=3.0 * size).sum() for g, size in (("z1", 4), ("z2", 2))
    )
    torch.testing.assert_close(loss, parts.recon.mean() + kl_term)


def test_architecture_check_covers_every_argument_of_any_variant():
    model = VAELitModule(
        "vaelab.science.variants.hvae.HVAE", hidden_dims=[[16], [8]], latent_dim=[4, 2]
    )
    checkpoint = {"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}
    config = {**dict(model.hparams), "latent_dim": [4, 3], "beta": 2.0}
    with pytest.raises(VaelabError, match=r"model.latent_dim=\[4, 3\] but the checkpoint has") as e:
        check_architecture(checkpoint, config, "x.ckpt")
    assert "beta" not in str(e.value)  # beta changes no weight
    iaf = VAELitModule("vaelab.science.variants.iaf.IAF", hidden_dims=[8], latent_dim=2)
    checkpoint = {"hyper_parameters": dict(iaf.hparams), "state_dict": iaf.state_dict()}
    with pytest.raises(VaelabError, match="model.flow_steps=3 but the checkpoint has 2"):
        check_architecture(checkpoint, {**dict(iaf.hparams), "flow_steps": 3}, "x.ckpt")
    check_architecture(checkpoint, dict(iaf.hparams), "x.ckpt")  # the same: no error


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model=hvae", "model.hidden_dims=[[32]]"], "one list of widths per layer"),
        (  # the key changed is named first; either way out is offered
            ["model=hvae", "model.latent_dim=8"],
            "model.latent_dim=[8] has 1 stochastic layer(s) but model.hidden_dims=[[200,200],"
            "[100,100]] has widths for 2: give one list of widths per layer (e.g. "
            "model.hidden_dims=[[200,200]]) or one size per list (e.g. model.latent_dim=[8,4])",
        ),
        (["model=iaf", "model.flow_steps=0"], "model.flow_steps=0 must be an integer >= 1"),
        (["model=vae", "model.activation=swish"], "model.activation='swish' must be one of"),
    ],
)
def test_a_bad_variant_argument_is_one_error_line_before_training(
    args, message, synthetic_root, tmp_path
):
    result = run_script("train.py", [*synthetic_overrides(synthetic_root, tmp_path), *args])
    assert result.returncode == 2, result.stderr[-2000:]
    # refused before anything runs: no "Seed set to 42" before it
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], errors
    assert "Epoch" not in result.stdout
    assert not list((tmp_path / "train" / "runs").glob("*/checkpoints"))


@pytest.mark.parametrize("name", ["iaf", "hvae", "vampprior"])
def test_each_variant_is_named_in_one_python_file_of_the_package(name):
    # as a whole word: a variant called nsf is not named by "transform"
    word = re.compile(rf"(?<![a-z0-9_]){re.escape(name)}(?![a-z0-9_])")
    files = [
        p.relative_to(SRC).as_posix()
        for p in SRC.rglob("*.py")
        if word.search(p.read_text().lower())
    ]
    assert files == [f"vaelab/science/variants/{name}.py"]


class HouseholderPosterior:
    """q(z|x): a diagonal Gaussian draw reflected by I - 2 u u^T (|u| = 1), a volume-
    preserving flow; the reflection keeps N(0, I), so KL(q || N(0, I)) is the base's."""

    def __init__(self, mu, logvar, direction, group="z"):
        self.base = DiagonalGaussian(mu, logvar)
        self.u, self.group = direction / direction.norm(), group

    def reflect(self, z):
        return z - 2 * (z * self.u).sum(-1, keepdim=True) * self.u

    @property
    def mean(self):
        return {self.group: self.reflect(self.base.mu)}

    def rsample(self, k=None, generator=None):
        z, log_q = self.base.rsample(k, generator)  # |det| = 1: log q unchanged
        return {self.group: self.reflect(z)}, {self.group: log_q}


class HouseholderVAE(VAE):
    def __init__(self, **args):
        super().__init__(**args)
        self.direction = torch.nn.Parameter(torch.randn(self.latent_dim))

    def posterior(self, x):
        return HouseholderPosterior(*self.encode(x), self.direction)


class UnregisteredHouseholder(HouseholderPosterior):
    pass


@register_kl(HouseholderPosterior, StandardNormalPrior)
def _householder_kl(q, p):
    if type(q) is UnregisteredHouseholder:
        return None  # declines: a Monte Carlo estimate instead
    return {q.group: kl_per_dimension(q.base.mu, q.base.logvar)}


@torch.no_grad()
def test_a_registered_exact_kl_is_used_by_the_elbo_and_the_per_dimension_statistics():
    torch.manual_seed(0)
    net = HouseholderVAE(**TINY, hidden_dims=[8], latent_dim=3).double()
    x = torch.rand(5, 1, 2, 2, dtype=torch.float64).bernoulli()
    q = net.posterior(x)
    exact = kl_per_dimension(q.base.mu, q.base.logvar)  # [5, 3]
    parts = net.elbo(x, generator=torch.Generator().manual_seed(1))
    assert parts.closed_form and parts.kl_parts["z"].shape == (5, 3)
    torch.testing.assert_close(parts.kl, exact.sum(1))
    torch.testing.assert_close(parts.kl_per_dimension(), exact)
    torch.testing.assert_close(net.kl_per_dimension(q), exact)
    # the registration is right: the Monte Carlo estimate of the same KL converges to it
    unregistered = UnregisteredHouseholder(q.base.mu, q.base.logvar, net.direction)
    net.posterior = lambda x: unregistered
    mc = net.elbo(x, k=200_000, generator=torch.Generator().manual_seed(2))
    assert not mc.closed_form and mc.kl_parts["z"].shape == (5, 1)
    torch.testing.assert_close(mc.kl, exact.sum(1), atol=0.02, rtol=0)


class ExactTopPosterior(HierarchicalPosterior):
    """HVAE's bottom-up posterior, for a registration that knows its top layer's KL given the
    layer below: KL(q(z_L | z_{L-1}) || N(0, I)) at the drawn z_{L-1}."""


class ExactTopHVAE(HVAE):
    def posterior(self, x):
        q = super().posterior(x)
        return ExactTopPosterior(q.first, q.nets, q.names)


@register_kl(ExactTopPosterior, HierarchicalPrior, per_dimension=False, given_draws=True)
def _exact_top_kl(q, p, z):
    below, top = q.names[-2], q.names[-1]
    mu, logvar = q.nets[-1](z[below]).chunk(2, dim=-1)
    kl = kl_per_dimension(mu, logvar).sum(-1, keepdim=True)  # [B, 1] or [B, k, 1]
    return {top: kl if kl.dim() == 2 else kl.mean(1)}


@torch.no_grad()
def test_a_kl_exact_given_the_draws_of_the_layers_above_is_used_with_those_draws():
    torch.manual_seed(0)
    net = ExactTopHVAE(**TINY, hidden_dims=[[8], [8]], latent_dim=[2, 2]).double()
    x = torch.rand(4, 1, 2, 2, dtype=torch.float64).bernoulli()
    parts = net.elbo(x, generator=torch.Generator().manual_seed(1))
    z, log_q = net.posterior(x).rsample(None, torch.Generator().manual_seed(1))  # the same draws
    torch.testing.assert_close(parts.z["z1"], z["z1"])
    mu, logvar = net.encoders[1](z["z1"]).chunk(2, dim=-1)
    torch.testing.assert_close(parts.kl_parts["z2"], kl_per_dimension(mu, logvar).sum(1, True))
    log_p = net.prior().log_prob(z)  # z1's group: Monte Carlo from the same draws
    torch.testing.assert_close(parts.kl_parts["z1"], (log_q["z1"] - log_p["z1"]).unsqueeze(1))
    assert not parts.closed_form  # one group is estimated
    # unbiased: the mean over many draws is the Monte Carlo KL's of the plain HVAE
    plain = HVAE(**TINY, hidden_dims=[[8], [8]], latent_dim=[2, 2]).double()
    plain.load_state_dict(net.state_dict())
    many = net.elbo(x, k=100_000, generator=torch.Generator().manual_seed(2))
    mc = plain.elbo(x, k=100_000, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(many.kl, mc.kl, atol=0.02, rtol=0)
