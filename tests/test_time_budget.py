"""``callbacks.time_budget`` (vaelab.lit.budget.TimeBudget): a run sized to trainer.max_time,
its cosine ending with it. The clock is a fake one that each epoch advances, so the plans
are exact."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import compose_train, synthetic_overrides
from lightning.pytorch.callbacks import ModelCheckpoint, Timer

from vaelab.errors import VaelabError
from vaelab.lit.budget import TimeBudget
from vaelab.runs.config_checks import check_config
from vaelab.runs.train import build, runtime_settings

BUDGET = [
    "+callbacks.time_budget._target_=vaelab.lit.budget.TimeBudget",
    "trainer.max_time=00:00:01:00",  # 60 s of (fake) training time
    "trainer.max_epochs=1000",
    "lr_schedule=cosine",
]


class Ticker(L.Callback):
    """Each training epoch lasts ``seconds(epoch)`` on the fake clock, which the budget and
    Lightning's Timer read."""

    def __init__(self, seconds) -> None:
        self.seconds, self.now, self.start = seconds, 0.0, 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = self.now
        timer = next(c for c in trainer.callbacks if isinstance(c, Timer))
        timer.time_elapsed = lambda stage="train": timer._offset + self.now - self.start

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.now += self.seconds(trainer.current_epoch)


def fit(root, out, seconds, *extra, ckpt_path=None, callbacks=()):
    plain = [o for o in synthetic_overrides(root, out) if not o.startswith("callbacks.")]
    cfg = compose_train(
        [*plain, "callbacks=none", "logger=[]", "model.hidden_dims=[16]", *BUDGET, *extra],
        output_dir=out,
    )
    check_config(cfg)
    with runtime_settings(cfg):
        datamodule, model, trainer = build(cfg)
        ticker = Ticker(seconds)
        budget = next(c for c in trainer.callbacks if isinstance(c, TimeBudget))
        budget._now = lambda: ticker.now
        trainer.callbacks.insert(0, ticker)
        trainer.callbacks.extend(callbacks)
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)
    return model, trainer, budget


def lr_and_horizon(trainer):
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    return trainer.optimizers[0].param_groups[0]["lr"], scheduler.T_max, scheduler.eta_min


@pytest.mark.parametrize("steps", [1, 3])
def test_the_epochs_fit_the_budget_and_the_schedules_end_with_them(synthetic_root, tmp_path, steps):
    # 10 s an epoch: after two, (0.98 x 60 - 20) // 10 = 3 more, 5 in all
    model, trainer, budget = fit(
        synthetic_root, tmp_path, lambda epoch: 10.0, f"model.steps_per_call={steps}", "kl=cyclical"
    )
    assert trainer.current_epoch == 5 and trainer.max_epochs == 5
    lr, horizon, eta_min = lr_and_horizon(trainer)
    assert horizon == 5 and lr == pytest.approx(eta_min)  # not the 1000-epoch cosine's 1e-3
    assert budget.planned_epochs == 5
    # 5 epochs of 8 steps: 4 KL cycles of 10 steps, the last step at the top of the last one
    # (over 1000 epochs it would still be rising in the first: 39 / 1000)
    assert trainer.global_step == 40 and model._beta_at(39) == 1.0


def test_a_machine_that_slows_down_ends_sooner(synthetic_root, tmp_path):
    # 10 s, 10 s, then 15 s: the plan of 5 epochs becomes 4 when the third takes 15 s
    # ((0.98 x 60 - 35) // 15 = 1 more), and the cosine still ends at its last epoch
    _, trainer, _ = fit(synthetic_root, tmp_path, lambda epoch: 10.0 if epoch < 2 else 15.0)
    assert trainer.current_epoch == 4
    lr, horizon, eta_min = lr_and_horizon(trainer)
    assert horizon == 4 and lr == pytest.approx(eta_min)


def test_a_resumed_run_keeps_its_plan(synthetic_root, tmp_path):
    last = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="last")
    fit(synthetic_root, tmp_path, lambda epoch: 10.0, callbacks=[last])
    state = torch.load(last.last_model_path if last.last_model_path else last.best_model_path,
                       weights_only=False)  # fmt: skip
    saved = next(v for k, v in state["callbacks"].items() if k.startswith("TimeBudget"))
    assert saved["planned_epochs"] == 5
    # resumed with max_epochs=1000 in its config: the plan, not the config, ends it
    _, trainer, budget = fit(
        synthetic_root, tmp_path / "again", lambda epoch: 10.0, ckpt_path=last.best_model_path
    )
    assert trainer.current_epoch == 5 and budget.planned_epochs == 5


def test_the_budget_needs_max_time_and_a_schedule_that_can_follow(synthetic_root, tmp_path):
    base = [*synthetic_overrides(synthetic_root, tmp_path), *BUDGET]
    with pytest.raises(VaelabError) as err:
        check_config(compose_train([*base, "trainer.max_time=null"], output_dir=tmp_path))
    assert str(err.value).startswith("callbacks.time_budget sizes the run to trainer.max_time")
    with pytest.raises(VaelabError) as err:
        check_config(compose_train([*base, "lr_schedule=burda_stages"], output_dir=tmp_path))
    assert "cannot follow it; use lr_schedule=cosine" in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_the_speedrun_is_sized_by_its_own_budget():
    cfg = compose_train(["experiment=speedrun"])
    check_config(cfg)
    assert cfg.callbacks.time_budget._target_ == "vaelab.lit.budget.TimeBudget"
    assert cfg.trainer.max_time == "00:00:30:00"
    assert cfg.model.scheduler.T_max == cfg.trainer.max_epochs  # the horizon it resizes


def test_a_max_time_that_is_not_a_duration_is_one_line(synthetic_root, tmp_path):
    base = synthetic_overrides(synthetic_root, tmp_path)
    with pytest.raises(VaelabError) as err:
        check_config(compose_train([*base, "trainer.max_time=30min"], output_dir=tmp_path))
    assert str(err.value) == (
        "trainer.max_time='30min' must be null or DD:HH:MM:SS (e.g. 00:00:30:00: 30 minutes)"
    )
    check_config(compose_train([*base, "trainer.max_time=00:00:30:00"], output_dir=tmp_path))
