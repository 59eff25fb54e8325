"""VAELitModule: exact per-image epoch means, optimizer from config, checkpoint-only rebuild."""

import functools

import lightning as L
import pytest
import torch

from vaelab.data import MNISTDataModule
from vaelab.lit.module import VAELitModule


@pytest.fixture(scope="module")
def datamodule(synthetic_root):
    # 100 val images in batches of 64: the last batch (36) would be overweighted by batch means
    dm = MNISTDataModule(
        synthetic_root, val_size=100, batch_size=64, eval_batch_size=64, download=False
    )
    dm.setup()
    return dm


def quiet_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def test_validation_loss_is_the_exact_mean_over_images(datamodule):
    torch.manual_seed(4)  # a fixed model whose batch means differ clearly from the exact mean
    model = VAELitModule(hidden_dims=[32], latent_dim=4)
    torch.manual_seed(123)
    logged = quiet_trainer().validate(model, datamodule=datamodule, verbose=False)[0]

    # same z draws, batch by batch: the module's generator is seeded from the global seed
    model.noise = torch.Generator().manual_seed(123)
    per_image = {"loss": [], "recon": [], "kl": []}
    with torch.no_grad():
        for x, _ in datamodule.val_dataloader():
            terms = model.elbo_terms(x)
            for name in per_image:
                per_image[name].append(getattr(terms, name))
    for name, values in per_image.items():
        exact = torch.cat(values).mean().item()
        batch_means = torch.stack([v.mean() for v in values]).mean().item()
        assert logged[f"val/{name}"] == pytest.approx(exact, rel=1e-5)
        if name == "loss":
            assert abs(batch_means - exact) > 2e-5 * exact  # beyond the tolerance above


def test_optimizer_and_scheduler_factories_are_used():
    model = VAELitModule(
        hidden_dims=[8],
        latent_dim=2,
        optimizer=functools.partial(torch.optim.SGD, lr=0.5),
        scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1),
    )
    config = model.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.SGD)
    assert config["optimizer"].param_groups[0]["lr"] == 0.5
    assert config["lr_scheduler"]["monitor"] == "val/loss"


def test_default_optimizer_is_adam_1e_3():
    optimizer = VAELitModule(hidden_dims=[8], latent_dim=2).configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["lr"] == 1e-3


def test_checkpoint_alone_rebuilds_the_model(datamodule, tmp_path):
    model = VAELitModule(
        hidden_dims=[48, 24],
        latent_dim=5,
        likelihood="gaussian",
        beta=2.0,
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
    )
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, datamodule=datamodule)
    trainer.save_checkpoint(tmp_path / "m.ckpt")

    loaded = VAELitModule.load_from_checkpoint(tmp_path / "m.ckpt")
    assert loaded.hparams.hidden_dims == [48, 24] and loaded.hparams.latent_dim == 5
    assert loaded.hparams.likelihood == "gaussian" and loaded.hparams.beta == 2.0
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_bf16_mixed_with_clipping_trains_with_the_default_fused_adam(datamodule):
    # Lightning refuses to clip a fused optimizer's gradients under mixed precision
    fused = functools.partial(torch.optim.Adam, lr=1e-3, fused=True)
    model = VAELitModule(hidden_dims=[32], latent_dim=4, optimizer=fused)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = quiet_trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        precision="bf16-mixed",
        gradient_clip_val=1.0,
    )
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 2
    assert not trainer.optimizers[0].defaults["fused"]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # without a Trainer's mixed precision the fused step stays
    alone = VAELitModule(hidden_dims=[32], latent_dim=4, optimizer=fused)
    assert alone.configure_optimizers().defaults["fused"]
