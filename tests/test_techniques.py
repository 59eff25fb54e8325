"""Training techniques of issue 5: each option's maths against a known answer."""

import math

import pytest
import torch
from conftest import make_synthetic_mnist

from vaelab.data import MNISTDataModule
from vaelab.lit.module import VAELitModule
from vaelab.science.bounds import (
    free_bits_kl,
    iwae_bound,
    kl_divergence,
    kl_per_dimension,
    log_normal,
    log_standard_normal,
)
from vaelab.science.likelihoods import get_likelihood
from vaelab.science.schedules import kl_weight
from vaelab.science.variants.vae import VAE


def test_constant_schedule_is_beta():
    assert kl_weight(0, beta=2.0) == kl_weight(10**6, beta=2.0) == 2.0


def test_linear_warm_up_reaches_beta_after_the_warm_up():
    values = [kl_weight(s, 2.0, "linear", warmup_steps=100) for s in (0, 25, 100, 500)]
    assert values == [0.0, 0.5, 2.0, 2.0]


def test_cyclical_schedule_at_known_steps():
    # 1000 steps, 4 cycles of 250 steps, rising over the first half (125 steps) of each
    def beta(step):
        return kl_weight(step, 1.0, "cyclical", total_steps=1000, cycles=4, ratio=0.5)

    assert [beta(s) for s in (0, 50, 125, 200, 250, 300, 999)] == pytest.approx(
        [0.0, 0.4, 1.0, 1.0, 0.0, 0.4, 1.0]
    )


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="kl_schedule must be one of"):
        kl_weight(0, schedule="sigmoid")


def test_free_bits_on_a_constructed_kl_vector():
    # per-dimension KL (batch mean) = 0.5 * mu_j^2 with logvar 0: [0.02, 0.5, 2.0]
    mu = torch.tensor([[0.2, 1.0, 2.0]]).repeat(4, 1)
    logvar = torch.zeros_like(mu)
    assert free_bits_kl(kl_per_dimension(mu, logvar), 0.1).item() == pytest.approx(0.1 + 0.5 + 2.0)
    assert free_bits_kl(kl_per_dimension(mu, logvar), 0.0).item() == pytest.approx(0.02 + 0.5 + 2)
    mu.requires_grad_(True)
    free_bits_kl(kl_per_dimension(mu, logvar), 0.1).backward()
    assert torch.all(mu.grad[:, 0] == 0) and torch.all(mu.grad[:, 1:] != 0)


def test_free_bits_objective_in_the_module():
    torch.manual_seed(0)
    model = VAELitModule(hidden_dims=[16], latent_dim=3, free_bits=5.0)
    x = torch.rand(8, 1, 28, 28)
    torch.manual_seed(1)
    loss, terms = model.objective(x)
    torch.manual_seed(1)
    q = model.net(x).posterior.gaussian
    torch.testing.assert_close(terms.kl, kl_divergence(q.mu, q.logvar))
    expected = terms.recon.mean() + free_bits_kl(kl_per_dimension(q.mu, q.logvar), 5.0)
    torch.testing.assert_close(loss, expected)
    assert expected.item() > (terms.recon + terms.kl).mean().item()  # KL below 5 nats/dim


def test_iwae_with_one_sample_is_the_single_sample_elbo():
    torch.manual_seed(2)
    net, x = VAE(hidden_dims=[32], latent_dim=4), torch.rand(6, 1, 28, 28)
    mu, logvar = net.encode(x)
    log_w = net.log_importance_weights(x, 1, generator=torch.Generator().manual_seed(0))
    # the same draw by hand
    eps = torch.randn(6, 1, 4, generator=torch.Generator().manual_seed(0))
    z = (mu.unsqueeze(1) + torch.exp(0.5 * logvar).unsqueeze(1) * eps)[:, 0]
    recon = -get_likelihood("bernoulli").log_prob(net.decode_logits({"z": z}), x)
    mc_kl = log_normal(z, mu, logvar) - log_standard_normal(z)
    torch.testing.assert_close(iwae_bound(log_w), -(recon + mc_kl))
    # and the Monte Carlo KL averages to the analytic one
    many = mu + torch.exp(0.5 * logvar) * torch.randn(20000, *mu.shape)
    mc = (log_normal(many, mu, logvar) - log_standard_normal(many)).mean(0)
    torch.testing.assert_close(mc, kl_divergence(mu, logvar), rtol=0.05, atol=0.05)


def test_iwae_bound_of_equal_weights_is_that_weight():
    log_w = torch.full((3, 7), -2.5)
    torch.testing.assert_close(iwae_bound(log_w), torch.full((3,), -2.5))
    log_w = torch.log(torch.tensor([[1.0, 3.0]]))
    assert iwae_bound(log_w).item() == pytest.approx(math.log(2.0))


def test_iwae_objective_trains_and_tightens_with_k():
    torch.manual_seed(3)
    model = VAELitModule(hidden_dims=[32], latent_dim=4, objective="iwae", k=1)
    x = (torch.rand(16, 1, 28, 28) > 0.5).float()
    bounds = {}
    for k in (1, 50):
        model.objective_fn.k = k
        torch.manual_seed(4)
        bounds[k] = torch.stack([model.objective(x)[0] for _ in range(20)]).mean().item()
    assert bounds[50] < bounds[1]  # the k=50 loss is a tighter (smaller) bound


def test_conv_vae_and_batch_norm_shapes():
    net = VAE([1, 28, 28], [8, 16], latent_dim=5, architecture="conv", batch_norm=True)
    out = net(torch.rand(3, 1, 28, 28))
    assert net.decode_logits(out.posterior.mean).shape == (3, 1, 28, 28)
    assert out.posterior.mean["z"].shape == (3, 5)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    mlp = VAE([1, 28, 28], [64, 32, 16], 4, batch_norm=True)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in mlp.modules()) == 6
    parts = mlp.elbo(torch.rand(4, 1, 28, 28))
    assert torch.isfinite(parts.recon + parts.kl).all()


@pytest.fixture(scope="module")
def grey_root(tmp_path_factory):
    return make_synthetic_mnist(tmp_path_factory.mktemp("grey"), n_train=200, n_test=50)


def test_dynamic_binarization_draws_fresh_training_pixels(grey_root):
    dm = MNISTDataModule(grey_root, val_size=50, binarize="dynamic", download=False, checksums=None)
    dm.setup()
    dm.data_train.images[:] = 128  # grey: each draw is a coin flip
    a, b = dm.data_train[list(range(100))][0], dm.data_train[list(range(100))][0]
    assert set(a.unique().tolist()) == {0.0, 1.0} and not torch.equal(a, b)
    assert abs(a.mean().item() - 128 / 255) < 0.01
    test_a, test_b = dm.data_test[list(range(50))][0], dm.data_test[list(range(50))][0]
    assert set(test_a.unique().tolist()) <= {0.0, 1.0} and torch.equal(test_a, test_b)


def test_static_binarization_is_one_seeded_draw(grey_root):
    def setup():
        dm = MNISTDataModule(grey_root, val_size=50, binarize="static", download=False)
        dm.setup()
        return dm

    a, b = setup(), setup()
    assert torch.equal(a.data_train.images, b.data_train.images)
    assert set(a.data_train.images.unique().tolist()) <= {0, 255}
    assert torch.equal(a.data_train[[0, 1]][0], a.data_train[[0, 1]][0])


def test_static_and_dynamic_binarization_share_the_evaluation_images(grey_root):
    # the literature rows differ in how training images are binarized; their val and test
    # images must be the same draw, or their NLLs would not compare
    static, dynamic = (
        MNISTDataModule(grey_root, val_size=50, binarize=mode, download=False)
        for mode in ("static", "dynamic")
    )
    static.setup(), dynamic.setup()
    assert torch.equal(static.data_test.images, dynamic.data_test.images)
    assert torch.equal(static.data_val.images, dynamic.data_val.images)
    assert set(static.data_test.images.unique().tolist()) == {0, 255}
