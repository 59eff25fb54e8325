"""Bad config values are rejected by ``train()`` before any data is read or model built, one
line each naming the key, the value and what is allowed."""

import sys

import pytest
from conftest import ROOT, compose_train, synthetic_overrides
from hydra.errors import ConfigCompositionException
from omegaconf import open_dict

from vaelab.errors import VaelabError
from vaelab.runs.config_checks import (
    NamesFrom,
    Rule,
    accelerator_problems,
    check_config,
    int_at_least,
    value_problems,
)
from vaelab.runs.train import train

# (override, the line train() must raise); the data dir is empty, so a check that ran after
# the data were looked up would fail with a missing-file error instead
BAD_VALUES = [
    ("model.latent_dim=0", "model.latent_dim=0 must be an integer >= 1"),
    ("model.latent_dim=2.5", "model.latent_dim=2.5 must be an integer >= 1"),
    (
        "model.hidden_dims=[256,0]",
        "model.hidden_dims=[256,0] must be a non-empty list of integers >= 1",
    ),
    ("model.hidden_dims=[]", "model.hidden_dims=[] must be a non-empty list of integers >= 1"),
    ("model.hidden_dims=256", "model.hidden_dims=256 must be a non-empty list of integers >= 1"),
    ("data.batch_size=0", "data.batch_size=0 must be an integer >= 1"),
    (
        "callbacks.figures.every_n_epochs=0",
        "callbacks.figures.every_n_epochs=0 must be an integer >= 1",
    ),
    (
        "callbacks.stop_on_nonfinite_loss.check_every_n_steps=0",
        "callbacks.stop_on_nonfinite_loss.check_every_n_steps=0 must be null "
        "(trainer.log_every_n_steps) or an integer >= 1",
    ),
    ("data.eval_batch_size=-5", "data.eval_batch_size=-5 must be an integer >= 1"),
    ("model.optimizer.lr=0", "model.optimizer.lr=0 must be a finite number > 0"),
    ("model.optimizer.lr=-1e-3", "model.optimizer.lr=-0.001 must be a finite number > 0"),
    ("model.optimizer.lr=nan", "model.optimizer.lr=nan must be a finite number > 0"),
    ("model.beta=-1", "model.beta=-1 must be a finite number >= 0"),
    ("model.beta=inf", "model.beta=inf must be a finite number >= 0"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0 must be an integer >= 1, or -1 for no limit"),
    ("data.val_size=-1", "data.val_size=-1 must be an integer >= 0"),
    ("model.likelihood=bernouli", "model.likelihood='bernouli' must be one of bernoulli, gaussian"),
    (
        "+model.foo=1",
        "model.foo: vaelab.lit.module.VAELitModule with net=vaelab.science.variants.vae.VAE "
        "has no argument 'foo'; remove it",
    ),
    ("model.net=vaelab.nowhere.VAE", "model.net='vaelab.nowhere.VAE': cannot be imported"),
    (
        "+model.optimizer.momentum=0.9",
        "model.optimizer.momentum: torch.optim.Adam has no argument 'momentum'; remove it",
    ),
    ("+data.shuffle=true", "data.shuffle: vaelab.data.MNISTDataModule has no argument 'shuffle'"),
]


@pytest.mark.parametrize(("override", "message"), BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_bad_value_is_rejected_before_data_or_model(tmp_path, override, message):
    cfg = compose_train(
        [f"paths.data_dir={tmp_path / 'empty'}", "data.download=false", override], tmp_path
    )
    with pytest.raises(VaelabError) as err:
        train(cfg)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "empty").exists() and not (tmp_path / "checkpoints").exists()


def test_conv_architecture_needs_two_channel_counts(tmp_path):
    overrides = [f"paths.data_dir={tmp_path / 'empty'}", "model=conv_vae", "model.hidden_dims=[32]"]
    with pytest.raises(VaelabError) as err:
        train(compose_train(overrides, tmp_path))
    assert str(err.value) == (
        "model.hidden_dims=[32] must be two channel counts, e.g. [32,64], "
        "with model.architecture='conv'"
    )
    assert not (tmp_path / "empty").exists()


def test_every_bad_value_gets_its_own_line(tmp_path):
    cfg = compose_train(["model.latent_dim=0", "model.beta=-1", "data.batch_size=0"], tmp_path)
    with pytest.raises(VaelabError) as err:
        train(cfg)
    lines = str(err.value).splitlines()
    assert [line.split(" ")[0] for line in lines] == [
        "model.latent_dim=0",
        "model.beta=-1",
        "data.batch_size=0",
    ]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model.k", 0, "model.k=0 must be an integer >= 1"),
        ("model.free_bits", -0.5, "model.free_bits=-0.5 must be a finite number >= 0"),
        ("model.kl_cycles", 0, "model.kl_cycles=0 must be an integer >= 1"),
        ("model.kl_cycle_ratio", 0.0, "model.kl_cycle_ratio=0.0 must be a number in (0, 1]"),
        ("model.kl_warmup_steps", 1.5, "model.kl_warmup_steps=1.5 must be an integer >= 0"),
    ],
)
def test_keys_of_later_features_are_checked_when_present(key, value, message):
    cfg = compose_train([])
    assert value_problems(cfg) == []  # absent keys are skipped
    with open_dict(cfg):
        section, name = key.split(".")
        cfg[section][name] = value
    (problem,) = value_problems(cfg)
    assert problem.startswith(message)


def test_names_rule_is_skipped_while_its_module_is_missing():
    rule = Rule("model.likelihood", NamesFrom("vaelab.not_yet_written", "NAMES"))
    assert value_problems(compose_train(["model.likelihood=anything"]), (rule,)) == []
    rule = Rule("model.likelihood", NamesFrom("vaelab.science.likelihoods", "LIKELIHOODS"))
    assert value_problems(compose_train(["model.likelihood=anything"]), (rule,)) != []


def test_a_new_rule_is_one_line(tmp_path):
    rule = Rule("data.split_seed", int_at_least(0), "an integer >= 0")
    cfg = compose_train(["data.split_seed=-3"])
    assert value_problems(cfg, (rule,)) == ["data.split_seed=-3 must be an integer >= 0"]


def test_val_size_must_leave_training_data_before_the_model_is_built(synthetic_root, tmp_path):
    overrides = synthetic_overrides(synthetic_root, tmp_path) + ["data.val_size=600"]
    cfg = compose_train(overrides, tmp_path / "run")
    with pytest.raises(VaelabError, match=r"data.val_size=600 must be between 0 and 599") as err:
        train(cfg)
    assert "train-images-idx3-ubyte.gz has 600 images" in str(err.value)
    assert not (tmp_path / "run").exists()  # no logger, checkpoint or figure dir was made


def test_unknown_key_names_the_key_and_the_fix():
    with pytest.raises(ConfigCompositionException) as err:
        compose_train(["model.foo=1"])
    message = str(err.value)
    assert "Could not override 'model.foo'" in message
    assert "+model.foo=1" in message  # and +model.foo is caught by the check above


def test_cli_prints_one_error_line_per_bad_value(capsys):
    # train.py's handler (its exit status 2 is tested with the core's CLI tests)
    sys.path.insert(0, str(ROOT))
    from train import print_error

    print_error(VaelabError("model.latent_dim=0 must be ...\nmodel.beta=-1 must be ..."))
    assert capsys.readouterr().err.splitlines() == [
        "error: model.latent_dim=0 must be ...",
        "error: model.beta=-1 must be ...",
    ]


def test_gpu_without_a_gpu_is_one_line_before_anything_is_built(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # as on a CPU-only machine
    cfg = compose_train([f"paths.data_dir={tmp_path / 'empty'}", "trainer=gpu"], tmp_path)
    with pytest.raises(VaelabError) as err:
        train(cfg)
    assert str(err.value).startswith("trainer.accelerator='gpu': this torch (")
    assert "use trainer=cpu" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "empty").exists()
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert accelerator_problems(cfg) == []  # with a GPU the same config passes


def test_a_variants_arguments_are_checked_with_its_base_classes(tmp_path):
    """model=vampprior accepts VampPrior's own keys and, through its **vae_args, VAE's; a typo
    is one line that names the variant."""
    base = [f"paths.data_dir={tmp_path / 'empty'}", "data.download=false", "model=vampprior"]
    check_config(compose_train([*base, "model.num_pseudo_inputs=3", "model.latent_dim=4"]))
    with pytest.raises(VaelabError) as err:
        train(compose_train([*base, "+model.num_pseudo=3"], tmp_path))
    assert str(err.value).startswith(
        "model.num_pseudo: vaelab.lit.module.VAELitModule with "
        "net=vaelab.science.variants.vampprior.VampPrior has no argument 'num_pseudo'"
    )
