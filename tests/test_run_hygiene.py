"""Runs that never fool their user: no silent resume, no litter from refused commands, one
line for a mistyped key, and TensorBoard events without a step twice after a resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import pytest
from conftest import CONFIG_DIR, run_script, synthetic_overrides
from lightning.pytorch.trainer.states import TrainerFn

from vaelab.errors import VaelabError
from vaelab.lit.fault_tolerance import SaveOnInterrupt
from vaelab.runs.preflight import check_command
from vaelab.runs.resume import discard_refused_run
from vaelab.runs.tensorboard import job_name, sortable_texts


def files(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_a_new_fit_never_picks_a_checkpoint_lying_in_its_folder(tmp_path):
    """With an OnExceptionCheckpoint among the callbacks, Lightning turns fit(ckpt_path=None)
    into 'last' and resumes the newest checkpoint it finds: SaveOnInterrupt is none."""
    saver = SaveOnInterrupt(tmp_path)
    saver.path.write_bytes(b"an earlier run's state")
    trainer = L.Trainer(callbacks=[saver], logger=False, enable_progress_bar=False)
    trainer.state.fn = TrainerFn.FITTING
    chosen = trainer._checkpoint_connector._parse_ckpt_path(
        TrainerFn.FITTING, None, model_provided=True, model_connected=False
    )
    assert chosen is None


def test_a_new_run_into_a_run_dir_with_checkpoints_is_refused(trained_run, synthetic_root):
    before = files(trained_run)
    result = run_script(
        "train.py",
        synthetic_overrides(synthetic_root, trained_run.parent) + [f"hydra.run.dir={trained_run}"],
    )
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: hydra.run.dir={trained_run} holds the checkpoints")
    assert f"resume={trained_run}" in line and "hydra.run.dir=" in line
    assert files(trained_run) == before  # nothing written, .hydra/ included


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["model.latnt_dim=4"], "model.latnt_dim=4"),
        (["-m", "model.latnt_dim=4,8", "trainer.max_epochs=1"], "model.latnt_dim=4,8"),
    ],
)
def test_an_unknown_key_names_the_closest(args, shown):
    with pytest.raises(VaelabError) as err:
        check_command(["train.py", *args], CONFIG_DIR)
    assert str(err.value) == (
        f"{shown}: the config has no key model.latnt_dim; did you mean model.latent_dim?"
    )


def test_an_unknown_option_of_a_group_names_the_closest():
    with pytest.raises(VaelabError) as err:
        check_command(["train.py", "model=vaee"], CONFIG_DIR)
    options = ", ".join(sorted(p.stem for p in (Path(CONFIG_DIR) / "model").glob("*.yaml")))
    assert str(err.value) == (
        f"model=vaee: the group model has no option vaee; did you mean model=vae? its "
        f"options: {options}"
    )


@pytest.mark.parametrize("script", ["eval", "sample"])
@pytest.mark.parametrize("arg", ["+model.flow_steps=2", "model.flow_steps=2", "model=iaf"])
def test_eval_and_sample_refuse_a_model_override_with_or_without_plus(script, arg):
    with pytest.raises(VaelabError) as err:
        check_command([f"{script}.py", "ckpt_path=x.ckpt", arg], CONFIG_DIR, script)
    assert str(err.value) == (
        f"{arg}: {script}.py takes the model, its architecture included, from ckpt_path; "
        f"drop it, or train that model with python train.py {arg.lstrip('+')}"
    )


def test_refused_commands_leave_no_run_dir(tmp_path):
    # a typo (before Hydra), a bad value (before Hydra), missing data (after Hydra made the
    # dir: it is removed again)
    empty = tmp_path / "no data"
    empty.mkdir()
    base = [f"paths.log_dir={tmp_path}", f"paths.data_dir={empty}", "data.download=false"]
    for extra, message in (
        (["model.latnt_dim=4"], "did you mean model.latent_dim?"),
        (["model.latent_dim=0"], "model.latent_dim=0 must be an integer >= 1"),
        ([], "MNIST"),
    ):
        result = run_script("train.py", [*base, *extra])
        assert result.returncode == 2, result.stderr[-3000:]
        (error,) = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
        assert message in error
        assert "Traceback" not in result.stderr
        runs = tmp_path / "train" / "runs"
        assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())


def test_a_refused_resume_drops_only_its_own_record(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra" / "resume-001").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    discard_refused_run(run, ".hydra/resume-001")
    assert (run / ".hydra").is_dir() and not (run / ".hydra" / "resume-001").exists()
    discard_refused_run(run, ".hydra")  # the run has checkpoints: kept
    assert run.is_dir()
    (run / "checkpoints").rmdir()
    (run / "train.log").write_text("")
    discard_refused_run(run, ".hydra")  # nothing but Hydra's record and the log
    assert not run.exists()


def test_sweep_values_sort_by_name_in_numeric_order():
    assert sortable_texts(["2", "16", "8"]) == {"2": "02", "16": "16", "8": "08"}
    assert sortable_texts(["0.5", "1", "10"]) == {"0.5": "00.5", "1": "01", "10": "10"}
    assert sortable_texts(["1e-4", "3e-4", "1e-3"]) == {
        "1e-4": "0.0001",
        "3e-4": "0.0003",
        "1e-3": "0.001",
    }
    assert sortable_texts(["vae", "vampprior"]) == {"vae": "vae", "vampprior": "vampprior"}
    assert sortable_texts(["-1", "2"]) == {"-1": "-1", "2": "2"}
    # lists (a hierarchy's latent_dim) element by element: [8,4] before [16,8]
    assert sortable_texts(["[16,8]", "[8,4]", "[8]"]) == {
        "[16,8]": "[16,8]",
        "[8,4]": "[08,4]",
        "[8]": "[08]",
    }
    assert sortable_texts(["[[1,2]]", "[3]"]) == {"[[1,2]]": "[[1,2]]", "[3]": "[3]"}
    for values in (["2", "16", "8"], ["0.5", "1", "10"], ["1e-4", "3e-4", "1e-3"]):
        texts = sortable_texts(values)
        assert sorted(values, key=float) == sorted(values, key=texts.get)
    name = job_name(
        ["model.latent_dim=8", "model.beta=4"],
        ["model.latent_dim", "model.beta"],
        {"model.latent_dim": ["2", "8", "16"], "model.beta": ["4"]},
    )
    assert name == "latent_dim=08,beta=4"


def test_a_resumed_run_logs_no_step_twice(synthetic_root, tmp_path):
    """A run continued from an earlier checkpoint logs again what came after it: TensorBoard
    must show each step once (purge_step), images and histograms on the scalars' steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = synthetic_overrides(synthetic_root, tmp_path) + [
        "model.hidden_dims=[32]",
        "callbacks.model_checkpoint.save_top_k=-1",  # keep epoch 1's checkpoint
        "callbacks.figures.every_n_epochs=1",
        "callbacks.figures.projector_points=0",
        "callbacks.test_metrics.nll_k=2",
    ]
    first = run_script("train.py", args)
    assert first.returncode == 0, first.stderr[-3000:]
    (run,) = (tmp_path / "train" / "runs").iterdir()
    earlier = run / "checkpoints" / "epoch_000.ckpt"
    # as if killed after epoch 2's events: continue from epoch 1's checkpoint
    again = run_script("train.py", [f"ckpt_path={earlier}"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "exists and is not empty" not in again.stderr + again.stdout

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"histograms": 0})
    events.Reload()
    tags = events.Tags()
    steps = {}
    for tag in tags["scalars"]:
        steps[tag] = [e.step for e in events.Scalars(tag)]
        assert len(steps[tag]) == len(set(steps[tag])), (tag, steps[tag])
    assert len(steps["val/loss"]) == 2 and len(steps["train/loss"]) == 2
    for tag in [t for t in tags["images"] if t.startswith("val/")]:
        image_steps = [e.step for e in events.Images(tag)]
        assert image_steps == steps["val/loss"], (tag, image_steps)
    for tag in ("val/kl_per_dim", "val/active_unit_variance"):
        assert [e.step for e in events.Histograms(tag)] == steps["val/loss"]
    # measurements only: the NLL's settings are in metrics.json, not scalars
    assert not {"test/nll_k", "test/nll_images", "test/nll_normalized"} & set(tags["scalars"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/nll_k"] == 2 and isinstance(metrics["test/nll_normalized"], bool)
    assert metrics["resumed_from"] == str(earlier)
    assert len(list((run / ".hydra").glob("resume-*"))) == 1
    shutil.rmtree(run)
