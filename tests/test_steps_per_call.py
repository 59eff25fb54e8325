"""``model.steps_per_call``: several optimizer steps per ``training_step`` call are the same
computation as one step per call, and everything that counts steps still counts optimizer
steps."""

from __future__ import annotations

import csv
import signal

import lightning as L
import pytest
import torch
from conftest import compose_train, synthetic_overrides

from vaelab.errors import NonFiniteLossError, VaelabError
from vaelab.lit.fault_tolerance import SaveOnInterrupt
from vaelab.runs.train import build, runtime_settings

# 500 training images (600 - 100 held out) in batches of 64: 8 batches an epoch, the last of
# 52; with 3 steps per call an epoch is calls of 3, 3 and 2 steps.
N = 3


def overrides(root, log_dir, *extra: str) -> list[str]:
    """A small model on the synthetic data; no callbacks (unless ``extra`` names some)."""
    plain = [o for o in synthetic_overrides(root, log_dir) if not o.startswith("callbacks.")]
    callbacks = [] if any(e.startswith("callbacks") for e in extra) else ["callbacks=none"]
    return [*plain, *callbacks, "logger=[]", "model.hidden_dims=[32]", *extra]


def fit(root, log_dir, steps: int, *extra: str, callbacks=(), ckpt_path=None):
    cfg = compose_train(
        overrides(root, log_dir, f"model.steps_per_call={steps}", *extra), output_dir=log_dir
    )
    with runtime_settings(cfg):
        datamodule, model, trainer = build(cfg)
        trainer.callbacks.extend(callbacks)
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    return model, trainer


def assert_same_weights(a: L.LightningModule, b: L.LightningModule) -> None:
    """Bit for bit: the same batches, draws of z and updates in the same order."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize(
    "extra",
    [
        [],  # the default run's recipe: clipping 1.0, constant beta
        ["trainer.accumulate_grad_batches=2", "kl=cyclical"],
        ["trainer.limit_train_batches=5", "lr_schedule=cosine", "trainer.max_epochs=3"],
        ["trainer.limit_train_batches=0.5", "trainer.accumulate_grad_batches=3"],
        ["+trainer.max_steps=7", "kl=linear_warmup", "model.kl_warmup_steps=5"],
        ["trainer.gradient_clip_val=0.01"],
    ],
    ids=["default", "accumulate", "limit-cosine", "fraction", "max-steps-warmup", "tight-clip"],
)
def test_several_steps_per_call_train_the_same_weights_bit_for_bit(synthetic_root, tmp_path, extra):
    one, one_trainer = fit(synthetic_root, tmp_path / "one", 1, *extra)
    several, trainer = fit(synthetic_root, tmp_path / "several", N, *extra)
    assert trainer.global_step == one_trainer.global_step  # optimizer steps, not calls
    assert_same_weights(one, several)
    assert float(trainer.callback_metrics["train/loss"]) == float(
        one_trainer.callback_metrics["train/loss"]
    )


def test_clipping_is_still_the_trainers_knob(synthetic_root, tmp_path):
    tight, _ = fit(synthetic_root, tmp_path / "tight", N, "trainer.gradient_clip_val=0.01")
    loose, _ = fit(synthetic_root, tmp_path / "loose", N, "trainer.gradient_clip_val=null")
    a, b = tight.state_dict(), loose.state_dict()
    assert any(not torch.equal(a[key], b[key]) for key in a)


def test_a_plateau_scheduler_follows_the_validation_loss(synthetic_root, tmp_path):
    """ReduceLROnPlateau with patience 0 and a huge threshold halves the learning rate after
    every epoch, as with one step per call."""
    plateau = (
        "model.scheduler={_target_:torch.optim.lr_scheduler.ReduceLROnPlateau,_partial_:true,"
        "patience:0,threshold:1.0e9,factor:0.5}"
    )
    lrs = {}
    for steps in (1, N):
        _, trainer = fit(
            synthetic_root, tmp_path / str(steps), steps, plateau, "trainer.max_epochs=3"
        )
        lrs[steps] = [g["lr"] for g in trainer.optimizers[0].param_groups]
    assert lrs[N] == lrs[1] == [1.25e-4]


def logged(log_dir) -> list[dict]:
    with open(log_dir / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_logged_steps_are_optimizer_steps(synthetic_root, tmp_path):
    """train_step/* every log_every_n_steps optimizer steps and the epoch means at the same
    steps as with one step per call."""
    runs = {}
    for steps in (1, N):
        log_dir = tmp_path / str(steps)
        fit(
            synthetic_root,
            log_dir,
            steps,
            "trainer.log_every_n_steps=2",
            "logger=csv",
            "model.kl_schedule=linear",  # beta is logged when it varies
        )
        rows = logged(log_dir)
        runs[steps] = {
            key: [(r["step"], r[key]) for r in rows if r.get(key)]
            for key in ("train_step/loss", "train_step/beta", "train/loss", "val/loss")
        }
    assert runs[1]["train_step/loss"] and runs[1]["train_step/beta"]  # logged at all
    assert runs[N] == runs[1]


class CountsBackward(L.Callback):
    """A callback with a per-step hook: it must be called at every optimizer step."""

    def __init__(self) -> None:
        self.calls = 0

    def on_after_backward(self, trainer, pl_module) -> None:
        self.calls += 1


def test_per_step_hooks_are_called_when_a_callback_has_them_and_skipped_otherwise(
    synthetic_root, tmp_path
):
    counter = CountsBackward()
    hooked, trainer = fit(synthetic_root, tmp_path / "hooked", N, callbacks=[counter])
    assert not hooked._direct  # Lightning's manual_backward and LightningOptimizer.step
    steps = trainer.global_step
    assert counter.calls == steps == 16  # 8 steps an epoch, 2 epochs
    direct, trainer = fit(synthetic_root, tmp_path / "direct", N)
    assert direct._direct and trainer.global_step == steps  # counted all the same
    assert_same_weights(hooked, direct)


@pytest.mark.parametrize("steps", [1, N])
def test_a_constant_kl_weight_is_not_logged(synthetic_root, tmp_path, steps):
    """No flat ``train_step/beta`` chart when the weight does not vary."""
    fit(synthetic_root, tmp_path, steps, "trainer.log_every_n_steps=2", "logger=csv")
    rows = logged(tmp_path)
    assert any(r.get("train_step/loss") for r in rows)
    assert not any(r.get("train_step/beta") for r in rows)


def test_nonfinite_loss_names_the_first_nonfinite_step(synthetic_root, tmp_path):
    """As tests/test_nan_guard.py: the learning rate jumps after epoch 1; step 10 is the first
    non-finite one, in the middle of the call of steps 10-12."""
    diverge = (
        "model.scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,"
        "step_size:1,gamma:1.0e30}"
    )
    with pytest.raises(NonFiniteLossError) as err:
        fit(
            synthetic_root,
            tmp_path,
            N,
            diverge,
            "trainer.max_epochs=3",
            "callbacks.stop_on_nonfinite_loss.check_every_n_steps=1000",  # read at epoch end
            "callbacks.figures=null",
            "callbacks.progress_bar=null",
        )
    assert " at epoch 2, batch 2 (global step 10, " in str(err.value)


class InterruptAt(L.Callback):
    """SIGTERM after training call ``call``: Lightning stops at the next call boundary."""

    def __init__(self, call: int) -> None:
        self.call = call

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == self.call:
            signal.raise_signal(signal.SIGTERM)


def test_resumed_mid_epoch_continues_at_the_same_step_and_batches(synthetic_root, tmp_path):
    """Interrupted in epoch 2 after its first call (3 steps), resumed: the same weights as the
    uninterrupted run with one step per call."""
    reference, _ = fit(synthetic_root, tmp_path / "reference", 1)
    run = tmp_path / "run"
    saver = SaveOnInterrupt(run / "saved")
    with pytest.raises(BaseException):  # Lightning's SIGTERMException  # noqa: B017
        fit(synthetic_root, run, N, callbacks=[saver, InterruptAt(call=0)])
    saved = run / "saved" / "interrupted.ckpt"
    assert torch.load(saved, weights_only=True)["global_step"] == 8 + N
    resumed, trainer = fit(synthetic_root, run, N, ckpt_path=saved)
    assert trainer.global_step == 16
    assert_same_weights(reference, resumed)


def test_a_validation_interval_that_calls_cannot_hold_is_refused(synthetic_root, tmp_path):
    with pytest.raises(VaelabError, match="trainer.val_check_interval=4 counts batches"):
        fit(synthetic_root, tmp_path, N, "+trainer.val_check_interval=4")


def test_the_progress_bar_says_it_counts_calls(synthetic_root, tmp_path):
    _, trainer = fit(
        synthetic_root,
        tmp_path,
        N,
        "callbacks.progress_bar.refresh_rate=1",
        "callbacks.figures=null",
        "trainer.max_epochs=1",
    )
    bar = trainer.progress_bar_callback._train_progress_bar
    assert bar.desc.startswith(f"Epoch 0 (calls of {N} steps)")
    assert bar.total == 3  # calls of 3, 3 and 2 steps
