"""The VAE nn.Module: shapes, ranges, configurability, no Lightning."""

import math
import subprocess
import sys

import torch

from vaelab.science.distributions import DiagonalGaussian
from vaelab.science.variants.vae import VAE


def test_default_architecture_is_784_256_256_32():
    net = VAE()

    def shapes(module):
        return [
            (m.in_features, m.out_features)
            for m in module.modules()
            if isinstance(m, torch.nn.Linear)
        ]

    assert shapes(net.encoder) == [(784, 256), (256, 256)]
    assert shapes(net.to_posterior) == [(256, 64)]  # mu and logvar
    assert shapes(net.decoder) == [(32, 256), (256, 256), (256, 784)]


def test_forward_shapes_and_decode_range():
    net = VAE(hidden_dims=[64, 32], latent_dim=4)
    x = torch.rand(7, 1, 28, 28)
    parts = net(x)  # the ELBO's terms, one draw per image
    assert parts.recon.shape == parts.kl.shape == (7,)
    assert net.decode_logits({"z": torch.zeros(7, 4)}).shape == (7, 1, 28, 28)
    mean = parts.posterior.mean
    assert list(mean) == ["z"] and mean["z"].shape == (7, 4)
    images = net.decode(mean)
    assert images.shape == (7, 1, 28, 28)
    assert images.min() >= 0 and images.max() <= 1


def test_gaussian_draws_use_mu_and_sigma():
    mu, logvar = torch.full((1, 1), 3.0), torch.full((1, 1), 2 * math.log(0.5))
    z, log_q = DiagonalGaussian(mu, logvar).rsample(20000, torch.Generator().manual_seed(0))
    assert z.shape == (1, 20000, 1) and log_q.shape == (1, 20000)
    assert abs(z.mean().item() - 3.0) < 0.02
    assert abs(z.std().item() - 0.5) < 0.02


def test_sample_is_reproducible_with_a_generator():
    net = VAE(latent_dim=3)
    a = net.sample(5, generator=torch.Generator().manual_seed(1))
    b = net.sample(5, generator=torch.Generator().manual_seed(1))
    assert a.shape == (5, 1, 28, 28)
    torch.testing.assert_close(a, b)


def test_science_package_imports_neither_lightning_nor_hydra():
    code = (
        "import sys, pkgutil, importlib, vaelab.science as s\n"
        "for m in pkgutil.walk_packages(s.__path__, 'vaelab.science.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted(n for n in ('lightning', 'hydra', 'omegaconf') if n in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
