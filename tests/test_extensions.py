"""The shipped extension examples, one per kind, run as a user runs them, with the default
settings: an objective (objective=beta_tcvae), a LightningModule subclass with a second
optimizer (model=vaegan), a data module of one .npz file (data=npz) and a likelihood with a
learned parameter (likelihood=learned_gaussian). Each trains, evaluates, samples and resumes
after SIGTERM with the result of an uninterrupted run; the four together sweep; and what the
machinery reads of a configured class, it reads of that class."""

from __future__ import annotations

import json
import logging
import math
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import CONFIG_DIR, compose_train, run_script, synthetic_overrides
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vaelab.data.npz import write_npz
from vaelab.errors import TrainingInterrupted, VaelabError
from vaelab.lit.vaegan import VAEGAN
from vaelab.runs.checkpoints import net_shapes
from vaelab.runs.config_checks import check_config
from vaelab.runs.evaluate import evaluate, load_model
from vaelab.runs.generate import generate
from vaelab.runs.linear_path import model_linear_shapes, resolve_onednn_linear
from vaelab.runs.train import train
from vaelab.science.variants.vae import VAE

KINDS = ["objective", "module", "data", "likelihood"]
SMALL = ["model.hidden_dims=[32]", "model.latent_dim=4", "callbacks.figures.every_n_epochs=1"]


@pytest.fixture(scope="module")
def npz_file(synthetic_root, tmp_path_factory) -> Path:
    return write_npz(synthetic_root / "MNIST" / "raw", tmp_path_factory.mktemp("npz") / "d.npz")


def example_overrides(kind: str, npz_file: Path) -> list[str]:
    return {
        "objective": ["objective=beta_tcvae"],
        "module": ["model=vaegan", "model.disc_hidden=32"],
        "data": ["data=npz", f"data.path={npz_file}", "data.val_size=100", "data.batch_size=64"],
        "likelihood": ["likelihood=learned_gaussian"],
    }[kind]


def compose_example(kind, synthetic_root, npz_file, out: Path, *extra: str):
    overrides = [*synthetic_overrides(synthetic_root, out / "logs"), *SMALL]
    if kind == "data":  # keys of MNISTDataModule that the npz module does not have
        overrides = [o for o in overrides if not o.startswith("data.")]
    return compose_train([*overrides, *example_overrides(kind, npz_file), *extra], out / "run")


class SigtermInValidation(L.Callback):
    """SIGTERM during the first validation of epoch ``epoch`` (it takes effect when the
    validation ends)."""

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args):
        if trainer.current_epoch == self.epoch and batch_idx == 0 and not trainer.sanity_checking:
            signal.raise_signal(signal.SIGTERM)


def compose_eval(name: str, overrides: list[str], out: Path):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


@pytest.mark.parametrize("kind", KINDS)
def test_each_example_trains_evaluates_samples_and_resumes(
    kind, synthetic_root, npz_file, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    whole = train(compose_example(kind, synthetic_root, npz_file, tmp_path / "whole"))
    assert math.isfinite(whole["test/loss"])
    if kind == "module":
        assert "trainer.gradient_clip_val=1.0 set aside: VAEGAN optimizes manually" in caplog.text
        assert math.isfinite(whole["train/d_loss_last"])
    if kind == "objective":
        assert math.isfinite(whole["train/tc_last"])
    if kind == "likelihood":  # its own picture, every epoch and as a PNG
        run = tmp_path / "whole" / "run"
        assert (run / "figures" / "likelihood.png").stat().st_size > 0
        events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
        events.Reload()
        images = [e.step for e in events.Images("val/likelihood")]
        assert len(images) == 2 and images == [e.step for e in events.Scalars("val/loss")]
    if kind in ("module", "data"):  # several steps per call step aside, in one line
        assert "model.steps_per_call=16: one optimizer step per training_step call" in caplog.text

    # SIGTERM in epoch 0's validation, then resume=: the uninterrupted run's result
    out = tmp_path / "parts"
    sigterm = "+callbacks.sigterm._target_=test_extensions.SigtermInValidation"
    with pytest.raises(TrainingInterrupted):
        train(compose_example(kind, synthetic_root, npz_file, out, sigterm))
    run_dir = out / "run"
    assert (run_dir / "checkpoints" / "interrupted.ckpt").is_file()
    resumed = train(compose_example(kind, synthetic_root, npz_file, out, f"resume={run_dir}"))
    assert resumed["test/loss"] == pytest.approx(whole["test/loss"], rel=1e-6, abs=1e-4)
    assert resumed["epochs"] == whole["epochs"] == 2

    # eval.py and sample.py on the checkpoint alone: its classes and data come from it
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    args = [f"ckpt_path={ckpt}", "nll.k=2", "elbo_samples=1", "sample_quality.enabled=false"]
    if kind != "data":
        args += [f"paths.data_dir={synthetic_root}", "data.download=false", "data.checksums=null"]
    metrics = evaluate(compose_eval("eval", args, tmp_path / "eval"))
    assert math.isfinite(metrics["test/nll"]) and metrics["num_test_images"] == 200
    if kind == "module":
        assert isinstance(load_model(str(ckpt), torch.device("cpu")), VAEGAN)
    sample_args = [a for a in args if not a.startswith(("nll", "elbo", "sample_quality"))]
    paths = generate(compose_eval("sample", sample_args, tmp_path / "sample"))
    assert all(p.stat().st_size > 0 for p in paths.values())


@pytest.mark.slow
def test_the_examples_sweep_together(synthetic_root, npz_file, tmp_path):
    """A 2-job sweep of one model that is all four examples at once: a VAEGAN trained on
    beta-TCVAE with a learned likelihood, on the .npz data."""
    overrides = [
        o for o in synthetic_overrides(synthetic_root, tmp_path) if not o.startswith("data.")
    ]
    examples = [o for kind in KINDS for o in example_overrides(kind, npz_file)]
    result = run_script(
        "train.py",
        ["-m", "model.latent_dim=2,3", "trainer.max_epochs=1", "model.hidden_dims=[32]"]
        + [*overrides, *examples],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted((tmp_path / "train" / "multiruns").glob("*/*/metrics.json"))
    assert len(jobs) == 2
    for job in jobs:
        metrics = json.loads(job.read_text())
        assert math.isfinite(metrics["test/loss"]) and math.isfinite(metrics["train/tc_last"])
        assert math.isfinite(metrics["train/d_loss_last"])
        assert (job.parent / "figures" / "likelihood.png").is_file()


def test_a_subclass_is_checked_by_its_own_arguments():
    check_config(compose_train(["model=vaegan"]))
    with pytest.raises(VaelabError) as err:
        check_config(compose_train(["model=vaegan", "+model.adv_wieght=2"]))
    (line,) = str(err.value).splitlines()
    assert line.startswith(
        "model.adv_wieght: vaelab.lit.vaegan.VAEGAN with net=vaelab.science.variants.vae.VAE "
        "has no argument 'adv_wieght'; remove it (its arguments: net, adv_weight, disc_hidden,"
    )


def test_the_linear_path_probe_splits_a_subclass_by_its_own_arguments():
    # VAEGAN's adv_weight etc. are the module's, not the network's
    shapes = model_linear_shapes(compose_train(["model=vaegan"]).model)
    assert (784, 256) in shapes and (256, 64) in shapes


def test_a_checkpoint_of_a_class_that_cannot_be_built_is_one_line(tmp_path):
    model = VAEGAN(hidden_dims=[8], latent_dim=2)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(model)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path, weights_only=False)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["module_class"] == "vaelab.lit.vaegan.VAEGAN"
    assert isinstance(load_model(str(path), torch.device("cpu")), VAEGAN)

    checkpoint["module_class"] = "nowhere.Module"
    torch.save(checkpoint, path)
    with pytest.raises(VaelabError) as err:
        load_model(str(path), torch.device("cpu"))
    assert str(err.value).startswith(f"ckpt_path={path} was saved from nowhere.Module, which ")

    checkpoint["module_class"] = "vaelab.lit.vaegan.VAEGAN"
    checkpoint["hyper_parameters"]["not_an_argument"] = 1
    torch.save(checkpoint, path)
    with pytest.raises(VaelabError) as err:
        load_model(str(path), torch.device("cpu"))
    (line,) = str(err.value).splitlines()
    assert line.startswith(f"ckpt_path={path}: VAEGAN cannot be rebuilt from it (")


def test_eval_and_sample_errors_name_their_own_help():
    result = run_script("eval.py", ["nll.num_image=3"])
    assert result.returncode == 2
    assert "python eval.py --help lists them" in result.stderr


class ComputesOnBuild(VAE):
    """A variant whose constructor computes with a tensor, so it cannot run on the meta
    device (as zuko's masked networks do)."""

    def __init__(self, **vae_args) -> None:
        super().__init__(**vae_args)
        self.register_buffer("count", torch.tensor(int(torch.arange(3).sum().item())))


def test_a_variant_that_cannot_be_built_on_the_meta_device_is_probed_on_the_cpu(tmp_path):
    cfg = compose_train(["model.net=test_extensions.ComputesOnBuild", "model.hidden_dims=[16]"])
    check_config(cfg)
    assert (784, 16) in model_linear_shapes(cfg.model)
    assert resolve_onednn_linear(cfg) in ({"onednn_linear": True}, {"onednn_linear": False})
    shapes = net_shapes({"net": "test_extensions.ComputesOnBuild", "hidden_dims": [16]})
    assert shapes["count"] == ()
