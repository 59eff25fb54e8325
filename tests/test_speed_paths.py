"""Speed options leave the maths unchanged: fused Adam, torch.compile, the logit BCE path."""

import copy

import pytest
import torch
import torch.nn.functional as F

from vaelab.losses import elbo_loss
from vaelab.models import VAE
from vaelab.module import VAELitModule


def one_adam_step(net, x, **adam_kwargs):
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, **adam_kwargs)
    torch.manual_seed(0)
    out = net(x)
    elbo_loss(out.logits, x, out.mu, out.logvar).loss.mean().backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    optimizer.step()
    return net


def test_fused_adam_step_equals_the_plain_step():
    torch.manual_seed(1)
    net, x = VAE(hidden_dims=[64, 64], latent_dim=8), torch.rand(32, 1, 28, 28)
    plain = one_adam_step(copy.deepcopy(net), x, foreach=False)
    fused = one_adam_step(copy.deepcopy(net), x, fused=True)
    for a, b in zip(plain.parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_logit_path_equals_the_sigmoid_bce_of_the_reference_on_a_batch():
    torch.manual_seed(2)
    net, x = VAE(), torch.rand(128, 1, 28, 28)
    torch.manual_seed(3)
    out = net(x)
    ours = elbo_loss(out.logits, x, out.mu, out.logvar).loss.mean()
    probs = torch.sigmoid(out.logits).view(-1, 784)
    bce = F.binary_cross_entropy(probs, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + out.logvar - out.mu.pow(2) - out.logvar.exp())
    torch.testing.assert_close(ours, (bce + kld) / len(x), rtol=1e-5, atol=0)


@pytest.mark.slow
def test_compiled_module_gives_the_same_loss_and_checkpoint_keys(monkeypatch):
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)  # eager's RNG draws
    torch.manual_seed(4)
    eager = VAELitModule(hidden_dims=[64], latent_dim=4)
    compiled = VAELitModule(hidden_dims=[64], latent_dim=4, compile=True)
    compiled.load_state_dict(eager.state_dict())
    compiled.configure_model()
    x = torch.rand(16, 1, 28, 28)
    torch.manual_seed(5)
    a = eager.elbo_terms(x).loss
    torch.manual_seed(5)
    b = compiled.elbo_terms(x).loss
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    assert list(compiled.state_dict()) == list(eager.state_dict())
