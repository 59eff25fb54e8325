"""Every option of every config group composes, and instantiates where this machine allows."""

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import CONFIG_DIR, compose_train
from hydra.utils import instantiate

from vaelab.runs.train import instantiate_group

GROUPS = [
    "data",
    "model",
    "kl",
    "lr_schedule",
    "trainer",
    "callbacks",
    "logger",
    "experiment",
    "debug",
]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((Path(CONFIG_DIR) / g).glob("*.yaml"))]


def test_default_is_the_reference_configuration():
    cfg = compose_train()
    assert cfg.model.hidden_dims == [256, 256] and cfg.model.latent_dim == 32
    assert cfg.model.likelihood == "bernoulli" and cfg.model.beta == 1.0
    assert cfg.model.optimizer._target_ == "torch.optim.Adam" and cfg.model.optimizer.lr == 1e-3
    assert cfg.data.batch_size == 128 and cfg.data.val_size == 5000
    assert cfg.trainer.max_epochs == 20 and cfg.trainer.gradient_clip_val == 1.0
    assert cfg.trainer.gradient_clip_algorithm == "norm" and cfg.seed == 42


def test_seed_reference_trains_on_all_and_validates_on_test():
    assert compose_train(["experiment=seed_reference"]).data.val_size == 0


def test_data_root_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("DATA_ROOT", str(tmp_path))
    assert compose_train().paths.data_dir == str(tmp_path)
    monkeypatch.delenv("DATA_ROOT")
    assert compose_train().paths.data_dir == str(Path(CONFIG_DIR).parent / "data")


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_option_composes_and_instantiates(group, option, tmp_path):
    cfg = compose_train([f"{group}={option}"], output_dir=tmp_path)
    if group in ("data", "kl", "model", "experiment"):
        assert isinstance(instantiate(cfg.model, _convert_="all"), L.LightningModule)
    if group == "data":
        assert isinstance(instantiate(cfg.data), L.LightningDataModule)
    elif group == "model":
        assert isinstance(instantiate(cfg.model, _convert_="all"), L.LightningModule)
    elif group in ("callbacks", "logger"):
        objects = instantiate_group(cfg[group])
        assert all(isinstance(o, (L.Callback, L.pytorch.loggers.Logger)) for o in objects)
        assert len(objects) == len([v for v in cfg[group].values() if v is not None])
    elif group == "trainer" and cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        assert cfg.trainer.devices == 1  # composes; a Trainer needs the GPU to instantiate
    else:
        trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        assert isinstance(trainer, L.Trainer)
