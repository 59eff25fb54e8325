"""No host sync on the hot path: a training step reads nothing back from the device except on
the steps where something is shown or checked (log steps, progress-bar refreshes, the
non-finite-loss check, the epoch's last batch).

On the CPU a "host read" is any conversion of a tensor to Python (``item``, ``bool``,
``float``, ``tolist``...), counted with a ``TorchFunctionMode`` around each step; on a GPU each
of them is a device-to-host copy that waits for the device (tests/test_gpu.py checks the same
with ``torch.cuda.set_sync_debug_mode("error")``)."""

from __future__ import annotations

import lightning as L
import pytest
from conftest import compose_train, synthetic_overrides
from torch.overrides import TorchFunctionMode

from vaelab.runs.train import build, runtime_settings

HOST_READS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy"}
HOST_READS |= {"cpu", "__format__", "__repr__"}


class CountHostReads(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


class HostReadsPerStep(L.Callback):
    """Host reads from one training batch's start to the next's (the step, its callbacks and
    Lightning's logging in between), by batch index."""

    def __init__(self) -> None:
        self.mode: CountHostReads | None = None
        self.reads: dict[int, list[str]] = {}

    def _close(self) -> None:
        if self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.reads[self.batch_idx] = self.mode.reads
            self.mode = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._close()
        self.batch_idx = batch_idx
        self.mode = CountHostReads()
        self.mode.__enter__()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._close()


@pytest.mark.parametrize("steps", [1, 4])
def test_a_training_step_reads_the_device_only_when_something_is_shown(
    synthetic_root, tmp_path, steps
):
    """With ``steps`` optimizer steps per call: a call reads the device only when one of its
    steps is logged, or when the bar refreshes or the NaN guard checks (every ``every``
    calls), or at the epoch's end."""
    every = 5
    overrides = synthetic_overrides(synthetic_root, tmp_path) + [
        "trainer.max_epochs=1",
        "data.batch_size=16",  # 500 training images: 32 batches
        f"trainer.log_every_n_steps={every}",
        f"callbacks.progress_bar.refresh_rate={every}",
        "callbacks.figures=null",
        f"model.steps_per_call={steps}",
    ]
    cfg = compose_train(overrides, tmp_path / "run")
    probe = HostReadsPerStep()
    with runtime_settings(cfg):
        datamodule, model, trainer = build(cfg)
        trainer.callbacks.append(probe)
        trainer.fit(model, datamodule=datamodule)

    calls = sorted(probe.reads)
    assert len(calls) == 32 // steps and trainer.global_step == 32
    logged = {
        c for c in calls if any((s + 1) % every == 0 for s in range(c * steps, (c + 1) * steps))
    }
    shown = logged | {c for c in calls if (c + 1) % every == 0} | {calls[-1]}
    quiet = {c: probe.reads[c] for c in calls if c not in shown}
    assert quiet and all(reads == [] for reads in quiet.values()), quiet
    # the probe does see reads: on log steps the loggers, the bar and the NaN check read
    assert all(probe.reads[c] for c in shown if c != calls[-1])
