"""Speed options leave the maths unchanged: fused Adam, clipping inside the fused step,
torch.compile, the logit BCE path, oneDNN linear layers."""

import copy
import functools
import json
import logging

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import compose_train

from vaelab.data import MNISTDataModule
from vaelab.errors import VaelabError
from vaelab.lit.module import VAELitModule
from vaelab.runs.config_checks import check_config
from vaelab.science import fast_linear
from vaelab.science.fast_linear import OneDNNLinear
from vaelab.science.variants.vae import VAE

needs_onednn = pytest.mark.skipif(
    fast_linear._ONEDNN_LINEAR is None, reason="torch built without oneDNN"
)


def elbo_mean(net, out, x):
    """The negative ELBO of a forward pass ``out`` of ``net`` on x, averaged over images."""
    return (out.recon + out.kl).mean()


def one_adam_step(net, x, **adam_kwargs):
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, **adam_kwargs)
    torch.manual_seed(0)
    out = net(x)
    elbo_mean(net, out, x).backward()
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


def test_clipping_inside_the_fused_step_equals_clip_then_step():
    torch.manual_seed(1)
    net, x = VAE(hidden_dims=[64, 64], latent_dim=8), torch.rand(32, 1, 28, 28)
    plain = one_adam_step(copy.deepcopy(net), x, fused=True)  # clip_grad_norm_, then the step
    module = VAELitModule(hidden_dims=[64, 64], latent_dim=8)
    module.net = copy.deepcopy(net)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3, fused=True)
    torch.manual_seed(0)
    out = module.net(x)
    elbo_mean(net, out, x).backward()
    norm = torch.nn.utils.get_total_norm([p.grad for p in module.parameters()])
    assert norm > 1.0  # the clip is active
    module.configure_gradient_clipping(optimizer, 1.0, "norm")
    optimizer.step()
    for a, b in zip(plain.parameters(), module.net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-9)  # clipped grads kept
    assert torch.nn.utils.get_total_norm([p.grad for p in module.parameters()]) < 1.0 + 1e-5


@pytest.fixture(scope="module")
def synthetic_datamodule(synthetic_root):
    dm = MNISTDataModule(synthetic_root, val_size=100, batch_size=64, download=False)
    dm.setup()
    return dm


def trained_weights(datamodule, optimizer):
    torch.manual_seed(5)
    model = VAELitModule(hidden_dims=[32], latent_dim=4, optimizer=optimizer)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=5,
        gradient_clip_val=0.5,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=datamodule)
    return model.net.state_dict()


def test_trainer_clipping_of_the_fused_adam_equals_lightnings_clipping(synthetic_datamodule):
    # the unfused Adam takes Lightning's own clip_grad_norm_; the fused one clips in its step
    # (gradient norms here are in the hundreds: every step is clipped); a large eps makes
    # Adam's update depend on the gradients' scale, so a missed clip shows
    adam = functools.partial(torch.optim.Adam, lr=1e-2, eps=1.0)
    ours = trained_weights(synthetic_datamodule, functools.partial(adam, fused=True))
    lightning = trained_weights(synthetic_datamodule, functools.partial(adam, foreach=False))
    for name, value in ours.items():
        torch.testing.assert_close(value, lightning[name], rtol=1e-5, atol=1e-6)


def test_logit_path_equals_the_sigmoid_bce_of_the_reference_on_a_batch():
    torch.manual_seed(2)
    net, x = VAE(), torch.rand(128, 1, 28, 28)
    out = net.elbo(x, generator=torch.Generator().manual_seed(3))
    ours = elbo_mean(net, out, x)
    mu, logvar = net.encode(x)  # the same draw by hand
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(3))
    logits = net.decode_logits({"z": mu + torch.exp(0.5 * logvar) * eps})
    probs = torch.sigmoid(logits).view(-1, 784)
    bce = F.binary_cross_entropy(probs, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
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


def loss_and_grads(net, x):
    torch.manual_seed(0)
    out = net(x)
    loss = elbo_mean(net, out, x)
    loss.backward()
    return loss, [p.grad for p in net.parameters()]


@needs_onednn
def test_onednn_linear_gives_the_loss_and_gradients_of_nn_linear():
    torch.manual_seed(6)
    plain = VAE(hidden_dims=[128, 64], latent_dim=8, onednn_linear=False)
    fast = VAE(hidden_dims=[128, 64], latent_dim=8, onednn_linear=True)
    fast.load_state_dict(plain.state_dict())  # the same parameters and state-dict keys
    assert list(fast.state_dict()) == list(plain.state_dict())
    assert any(type(m) is OneDNNLinear for m in fast.modules())
    assert not any(type(m) is OneDNNLinear for m in plain.modules())
    x = torch.rand(50, 1, 28, 28)
    loss_plain, grads_plain = loss_and_grads(plain, x)
    loss_fast, grads_fast = loss_and_grads(fast, x)
    torch.testing.assert_close(loss_fast, loss_plain, rtol=1e-5, atol=0)
    for a, b in zip(grads_fast, grads_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@needs_onednn
def test_onednn_linear_takes_strided_inputs_and_falls_back_off_its_path():
    torch.manual_seed(7)
    layer = OneDNNLinear(6, 5)
    reference = torch.nn.Linear(6, 5)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(6, 3).t()  # [3, 6], column-major
    assert not x.is_contiguous()
    torch.testing.assert_close(layer(x), reference(x), rtol=1e-6, atol=1e-6)
    batched = torch.randn(2, 3, 6)  # 3-d input: nn.Linear's own path
    torch.testing.assert_close(layer(batched), reference(batched))
    double = layer.double()
    assert double(torch.randn(4, 6, dtype=torch.float64)).dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.float()(torch.randn(4, 6)).dtype == torch.bfloat16


# --- model.onednn_linear=auto: the linear path chosen for the machine --------------------

SHAPES = [(784, 64), (64, 16), (8, 64), (64, 784)]


@needs_onednn
def test_the_probe_times_both_paths_quickly_and_leaves_the_random_state_alone():
    state = torch.random.get_rng_state()
    verdict = fast_linear.probe_onednn_linear(SHAPES, 32)
    assert torch.equal(state, torch.random.get_rng_state())
    assert isinstance(verdict["onednn"], bool) and verdict["ratio"] > 0
    assert verdict["onednn"] == (verdict["ratio"] < fast_linear.ONEDNN_MARGIN)
    assert verdict["seconds"] < 5  # about 0.3 s; generous for a loaded machine


@needs_onednn
def test_the_verdict_is_cached_per_machine_and_layer_sizes(tmp_path, monkeypatch):
    monkeypatch.setenv("VAELAB_CACHE_DIR", str(tmp_path))
    probes = []

    def probe(shapes, batch_size):
        probes.append((shapes, batch_size))
        return {"onednn": True, "ratio": 0.8, "steps": 1, "rounds": 1, "seconds": 0.1}

    monkeypatch.setattr(fast_linear, "probe_onednn_linear", probe)
    first, why = fast_linear.choose_onednn_linear(SHAPES, 32)
    assert first is True and "probed" in why and "0.80x" in why
    again, why = fast_linear.choose_onednn_linear(SHAPES, 32)
    assert again is True and "cached in" in why and len(probes) == 1
    fast_linear.choose_onednn_linear(SHAPES, 64)  # another batch size: another probe
    assert len(probes) == 2
    (key,) = [k for k in json.loads((tmp_path / "linear_path.json").read_text()) if "batch 32" in k]
    assert fast_linear.cpu_name() in key and torch.__version__ in key and "784x64" in key


@needs_onednn
def test_auto_builds_the_same_parameters_as_either_path(monkeypatch):
    torch.manual_seed(8)
    plain = VAE(hidden_dims=[64], latent_dim=4, onednn_linear=False)
    monkeypatch.setattr(fast_linear, "probe_onednn_linear", lambda s, b: {
        "onednn": True, "ratio": 0.5, "steps": 1, "rounds": 1, "seconds": 0.0})  # fmt: skip
    torch.manual_seed(8)
    auto = VAE(hidden_dims=[64], latent_dim=4, onednn_linear="auto")
    assert any(type(m) is OneDNNLinear for m in auto.modules())
    for a, b in zip(plain.state_dict().values(), auto.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_train_resolves_auto_for_the_run_and_says_so_in_the_log_file(tmp_path, caplog):
    from vaelab.runs.linear_path import resolve_onednn_linear

    cfg = compose_train(["model.hidden_dims=[32]", "model.latent_dim=4"], tmp_path)
    assert cfg.model.onednn_linear == "auto"
    log_file = logging.FileHandler(tmp_path / "train.log")
    logging.getLogger().addHandler(log_file)
    try:
        with caplog.at_level(logging.INFO):
            chosen = resolve_onednn_linear(cfg)
            on_gpu = resolve_onednn_linear(compose_train(["trainer=gpu"], tmp_path))
            bf16 = resolve_onednn_linear(compose_train(["trainer.precision=bf16-mixed"]))
            forced = resolve_onednn_linear(compose_train(["model.onednn_linear=false"]))
    finally:
        logging.getLogger().removeHandler(log_file)
        log_file.close()
    assert chosen["onednn_linear"] in (True, False) and set(chosen) == {"onednn_linear"}
    assert on_gpu == bf16 == {"onednn_linear": False} and forced == {}
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert len(lines) == 3 and all("model.onednn_linear=auto: " in line for line in lines)
    assert "batch 128" in lines[0] and "not on the CPU" in lines[1]
    assert not caplog.records  # not through the root logger: no terminal line


def test_the_config_checks_take_auto_true_and_false_only(tmp_path):
    for value in ("auto", "true", "false"):
        check_config(compose_train([f"model.onednn_linear={value}"], tmp_path))
    with pytest.raises(VaelabError, match=r"model.onednn_linear='fast' must be auto, true or"):
        check_config(compose_train(["model.onednn_linear=fast"], tmp_path))


def test_several_processes_take_no_per_rank_probe():
    from omegaconf import OmegaConf

    from vaelab.runs.linear_path import resolve_onednn_linear, several_processes

    assert not several_processes(OmegaConf.create({"devices": 1}))
    assert several_processes(OmegaConf.create({"devices": 2}))
    assert several_processes(OmegaConf.create({"devices": 1, "strategy": "ddp"}))
    cfg = OmegaConf.create(
        {
            "model": {"onednn_linear": "auto"},
            "trainer": {"accelerator": "cpu", "strategy": "ddp", "devices": 2},
            "data": {"batch_size": 64},
        }
    )
    assert resolve_onednn_linear(cfg) == {"onednn_linear": False}
