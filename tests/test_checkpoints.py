"""Checkpoints passed with ckpt_path= or resume=: clear errors for missing, foreign and
mismatched files, and loading that never runs code stored in the file."""

import csv
import json
import os

import pytest
import torch
from conftest import compose_train, synthetic_overrides

from vaelab.errors import VaelabError
from vaelab.runs.train import train

TINY = [
    "model.hidden_dims=[32]",
    "model.latent_dim=4",
    "callbacks.figures=null",
    "callbacks.progress_bar=null",
]


@pytest.fixture(scope="module")
def trained_run(synthetic_root, tmp_path_factory):
    """A run dir holding the checkpoints of one epoch of a tiny model."""
    log_dir = tmp_path_factory.mktemp("ckpt_logs")
    run_dir = log_dir / "run"
    overrides = synthetic_overrides(synthetic_root, log_dir) + TINY
    overrides += ["trainer.max_epochs=1", "logger=csv"]
    train(compose_train(overrides, run_dir))
    return run_dir, overrides


class CodeInPickle:
    """Unpickling this creates a directory: stands for any code a malicious file could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def bad_checkpoint(tmp_path, kind):
    path = tmp_path / f"{kind}.ckpt"
    if kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "state_dict_only":
        torch.save({"weight": torch.zeros(2)}, path)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "ckpt_path={path}: no such file; pass a .ckpt file written by train.py"),
        ("text", "ckpt_path={path}: not a PyTorch checkpoint, or truncated"),
        ("empty", "ckpt_path={path}: not a PyTorch checkpoint, or truncated"),
        ("state_dict_only", "ckpt_path={path}: a PyTorch file, but not a checkpoint written by"),
    ],
)
def test_unusable_checkpoint_fails_before_data_with_one_line(tmp_path, kind, message):
    path = bad_checkpoint(tmp_path, kind)
    cfg = compose_train(
        [f"paths.data_dir={tmp_path / 'empty'}", "data.download=false", f"ckpt_path={path}"],
        tmp_path / "run",
    )
    with pytest.raises(VaelabError) as err:
        train(cfg)
    assert str(err.value).startswith(message.format(path=path)), str(err.value)
    assert "\n" not in str(err.value)


def test_checkpoint_is_never_unpickled_with_code(synthetic_root, tmp_path, monkeypatch):
    # Lightning leaves weights_only to torch.load, whose default this variable turns off:
    # only an explicit weights_only=True keeps such a file from running code
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": CodeInPickle(marker)}, path)
    overrides = synthetic_overrides(synthetic_root, tmp_path) + TINY + [f"ckpt_path={path}"]
    with pytest.raises(VaelabError, match="could run arbitrary code, so it is refused"):
        train(compose_train(overrides, tmp_path / "run"))
    assert not marker.exists()


def test_checkpoint_of_another_architecture_names_the_disagreeing_keys(trained_run, tmp_path):
    run_dir, overrides = trained_run
    last = run_dir / "checkpoints" / "last.ckpt"
    cfg = compose_train(
        [*overrides, "model.latent_dim=8", "model.hidden_dims=[64]", f"ckpt_path={last}"],
        tmp_path / "run",
    )
    with pytest.raises(VaelabError) as err:
        train(cfg)
    message = str(err.value)
    assert message.startswith(f"ckpt_path={last} holds another architecture: ")
    assert "model.hidden_dims=[64] but the checkpoint has [32]" in message
    assert "model.latent_dim=8 but the checkpoint has 4" in message
    assert not (tmp_path / "run").exists()


def test_resume_with_another_architecture_says_resume_keeps_the_runs_own(trained_run, tmp_path):
    run_dir, overrides = trained_run
    cfg = compose_train([*overrides, "model.latent_dim=8", f"resume={run_dir}"], run_dir)
    with pytest.raises(VaelabError) as err:
        train(cfg)
    assert str(err.value) == (
        f"resume={run_dir} holds another architecture: model.latent_dim=8 but the checkpoint "
        "has 4; drop those overrides (resume= continues the run with its own model) or train "
        "a new model without resume"
    )


def test_resume_continues_the_run_from_its_newest_checkpoint(trained_run):
    run_dir, overrides = trained_run
    metrics = train(
        compose_train([*overrides, f"resume={run_dir}", "trainer.max_epochs=2"], run_dir)
    )
    assert metrics["epochs"] == 2
    assert metrics["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 2
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1 and last["global_step"] == 2 * 8  # 500 images in batches of 64
    with open(run_dir / "csv" / "metrics.csv") as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f) if row["train/loss"]]
    assert epochs == [0, 1]  # the rows of the first process are kept, none repeated


def test_seed_reference_tests_the_final_weights_not_the_best_by_test_data(synthetic_root, tmp_path):
    """With experiment=seed_reference validation runs on the test set, so picking the best
    epoch by val/loss would choose on test data: the test stage takes the final weights."""
    overrides = [*synthetic_overrides(synthetic_root, tmp_path), *TINY, "logger=[]"]
    default = train(compose_train(overrides, tmp_path / "default"))
    assert default["tested_checkpoint"] == default["best_checkpoint"] != ""
    cfg = compose_train([*overrides, "experiment=seed_reference"], tmp_path / "reference")
    metrics = train(cfg)
    assert metrics["tested_checkpoint"] == "final weights"
    # the test set is the validation set here: the final weights' test loss is their val loss
    assert metrics["test/loss"] == pytest.approx(metrics["val/loss_last"], abs=1.0)
