"""A NaN/Inf training loss stops the run with a message naming epoch, batch and the last good
checkpoint, and no checkpoint with diverged weights is written."""

import pytest
import torch
from conftest import compose_train, synthetic_overrides

from vaelab.errors import NonFiniteLossError
from vaelab.runs.train import train

# After epoch 1, StepLR multiplies the learning rate by 1e30: epoch 2 diverges within a step.
DIVERGE_IN_EPOCH_2 = (
    "model.scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,"
    "step_size:1,gamma:1.0e30}"
)


# checked on every step, or only at the epoch's end (the loss is read from the device then)
@pytest.mark.parametrize("check_every", [1, 1000])
def test_nonfinite_loss_stops_training_and_keeps_the_good_checkpoint(
    synthetic_root, tmp_path, check_every
):
    overrides = synthetic_overrides(synthetic_root, tmp_path) + [
        f"callbacks.stop_on_nonfinite_loss.check_every_n_steps={check_every}",
        "model.hidden_dims=[32]",
        "model.latent_dim=4",
        "callbacks.figures=null",
        "callbacks.progress_bar=null",
        "trainer.max_epochs=3",
        DIVERGE_IN_EPOCH_2,
    ]
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as err:
        train(compose_train(overrides, run_dir))
    message = str(err.value)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert message.startswith("training stopped: the loss is ")
    # 8 batches an epoch; the first step of epoch 2 takes the huge learning rate, the second
    # batch's loss is the first that is not finite: named, however late it was read
    assert " at epoch 2, batch 2 (global step 10, " in message
    assert f"Last good checkpoint: {last}" in message
    assert "\n" not in message

    checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    assert [p.name for p in checkpoints] == ["epoch_000.ckpt", "last.ckpt"]
    for path in checkpoints:
        checkpoint = torch.load(path, weights_only=True)
        assert checkpoint["epoch"] == 0  # written after epoch 1, none after the divergence
        assert all(torch.isfinite(w).all() for w in checkpoint["state_dict"].values())
    assert not (run_dir / "metrics.json").exists()
