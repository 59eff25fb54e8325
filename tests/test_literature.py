"""The options the literature's recipes need (gated layers, Burda et al.'s learning-rate
stages, a KL warm-up in epochs, early stopping), the literature rows' configs, and
scripts/literature_table.py end to end on the synthetic data set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import compose_train, run_script, synthetic_overrides
from hydra.utils import instantiate
from torch import nn

from vaelab.errors import VaelabError
from vaelab.lit.module import VAELitModule
from vaelab.runs.train import instantiate_group
from vaelab.science.networks import Gate, encoder_decoder, mlp
from vaelab.science.schedules import lr_stages

BURDA_ROWS = ["burda_vae_1l", "burda_iwae5_1l", "burda_iwae50_1l", "burda_vae_2l",
              "burda_iwae5_2l"]  # fmt: skip
ROWS = [*BURDA_ROWS, "tomczak_vampprior", "speedrun"]


def stage(factor: float) -> int:
    return round(-7 * math.log10(factor))


def test_lr_stages_are_burdas_3_to_the_i_epochs():
    # stage i covers epochs [(3^i - 1) / 2, (3^(i+1) - 1) / 2): 0 | 1-3 | 4-12 | ... | 1093-3279
    starts = [(3**i - 1) // 2 for i in range(8)]
    for i, first in enumerate(starts):
        assert stage(lr_stages(first)) == i
        assert i == 0 or stage(lr_stages(first - 1)) == i - 1
    assert lr_stages(3279) == pytest.approx(10 ** (-7 / 7)) == lr_stages(10_000)
    # compressed into the paper's own length: the paper's schedule
    assert all(lr_stages(e, epochs=3280) == lr_stages(e) for e in range(0, 3280, 7))


def test_lr_stages_compress_or_truncate_a_shorter_run():
    compressed = [stage(lr_stages(e, epochs=60)) for e in range(60)]
    assert compressed[0] == 0 and compressed[-1] == 7  # every stage down to 1e-4 is reached
    assert compressed == sorted(compressed)
    # the last stage's share is the paper's: 2187 / 3280 of the epochs
    assert compressed.count(7) == pytest.approx(60 * 2187 / 3280, abs=1)
    truncated = [stage(lr_stages(e, stages=5)) for e in range(200)]
    assert max(truncated) == 4 and truncated.index(4) == 40  # 1 + 3 + 9 + 27
    with pytest.raises(ValueError, match="trainer.max_epochs"):
        lr_stages(0, epochs=-1)


def test_gated_layer_is_value_times_sigmoid_gate():
    torch.manual_seed(0)
    layer = mlp([5, 3], activation="gated")
    linear, gate = layer
    assert isinstance(gate, Gate) and linear.out_features == 6
    x = torch.randn(4, 5)
    w1, w2 = linear.weight[:3], linear.weight[3:]
    b1, b2 = linear.bias[:3], linear.bias[3:]
    expected = (x @ w1.T + b1) * torch.sigmoid(x @ w2.T + b2)
    torch.testing.assert_close(layer(x), expected)
    with pytest.raises(VaelabError, match="mlp"):
        encoder_decoder("conv", (1, 28, 28), [8, 16], 4, activation="gated")


@pytest.mark.parametrize("model", ["vae", "vampprior", "iaf", "hvae"])
def test_every_mlp_variant_takes_gated_layers(model):
    overrides = [f"model={model}", "model.activation=gated", "model.onednn_linear=false"]
    if model == "vampprior":
        overrides.append("model.num_pseudo_inputs=7")
    module = instantiate(compose_train(overrides).model, _convert_="all")
    assert any(isinstance(m, Gate) for m in module.net.modules())
    x = (torch.rand(3, 1, 28, 28) < 0.5).float()
    loss = module.net.elbo(x, generator=torch.Generator().manual_seed(0))
    total = (loss.recon + loss.kl).mean()
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for p in module.net.parameters() if p.requires_grad)


def test_kl_warmup_in_epochs_follows_the_steps_per_epoch():
    module = VAELitModule(kl_schedule="linear", kl_warmup_epochs=2.5, kl_warmup_steps=7)
    module._steps_per_epoch = 40
    assert module.warmup_steps() == 100
    assert VAELitModule(kl_schedule="linear", kl_warmup_steps=7).warmup_steps() == 7


@pytest.mark.parametrize("row", ROWS)
def test_literature_row_keeps_the_protocol(row, tmp_path):
    cfg = compose_train([f"experiment={row}"], output_dir=tmp_path)
    # the papers' data: Burda et al. and the speedrun dynamically binarized MNIST, Tomczak &
    # Welling's 85.57 static MNIST; the test images are one fixed draw in both
    paper_data = "static" if row == "tomczak_vampprior" else "dynamic"
    assert cfg.data.binarize == paper_data and cfg.model.likelihood == "bernoulli"
    assert cfg.data.val_size > 0  # validation held out of the training set, never the test set
    assert cfg.test_checkpoint == "best"
    assert (
        cfg.callbacks.test_metrics.nll_k == 5000 and cfg.callbacks.test_metrics.nll_images is None
    )
    assert isinstance(instantiate(cfg.model, _convert_="all"), L.LightningModule)


@pytest.mark.parametrize("row", BURDA_ROWS)
def test_burda_rows_are_the_papers_setup(row):
    cfg = compose_train([f"experiment={row}", "trainer.max_epochs=3280"])
    model = cfg.model
    assert cfg.data.batch_size == 20 and cfg.data.val_size == 400 and model.activation == "tanh"
    assert model.optimizer.lr == 1e-3 and model.optimizer.eps == 1e-4
    assert cfg.trainer.gradient_clip_val is None
    two = row.endswith("2l")
    assert model.latent_dim == ([100, 50] if two else 50)
    assert model.hidden_dims == ([[200, 200], [100, 100]] if two else [200, 200])
    assert model.objective == ("elbo" if "vae" in row else "iwae")
    # one override gives the paper's length and its stages
    factor = instantiate(model.scheduler.lr_lambda)
    assert [stage(factor(e)) for e in (0, 1, 4, 13, 40, 121, 364, 1093)] == list(range(8))


def test_vampprior_row_is_the_papers_setup(tmp_path):
    cfg = compose_train(["experiment=tomczak_vampprior"], output_dir=tmp_path)
    model = cfg.model
    assert model.net.endswith("VampPrior") and model.num_pseudo_inputs == 500
    assert model.hidden_dims == [300, 300] and model.latent_dim == 40
    assert model.activation == "gated" and model.optimizer.lr == 5e-4
    assert model.kl_schedule == "linear" and model.kl_warmup_epochs == 100
    assert cfg.data.batch_size == 100 and cfg.data.val_size == 10000
    (stopper,) = [
        c
        for c in instantiate_group(cfg.callbacks)
        if isinstance(c, L.pytorch.callbacks.EarlyStopping)
    ]
    assert stopper.monitor == "val/loss" and stopper.patience == 50


def test_scheduler_options_instantiate():
    for option in ("burda_stages", "cosine"):
        cfg = compose_train([f"lr_schedule={option}", "trainer.max_epochs=30"])
        optimizer = torch.optim.Adam(nn.Linear(2, 2).parameters(), lr=1e-3)
        scheduler = instantiate(cfg.model.scheduler)(optimizer=optimizer)
        for _ in range(30):
            optimizer.step()
            scheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert compose_train(["lr_schedule=constant"]).model.scheduler is None


def test_literature_table_runs_a_row_and_writes_its_table(synthetic_root, tmp_path):
    out = tmp_path / "results.md"
    out.write_text("# results\n\n## literature\n\n<!-- literature-table:start -->\nold\n"
                   "<!-- literature-table:end -->\n\n## kept\n\nthis stays\n")  # fmt: skip
    tiny = [
        o for o in synthetic_overrides(Path(), Path()) if not o.startswith(("paths.", "trainer."))
    ]
    result = run_script(
        "scripts/literature_table.py",
        ["--rows", "burda_vae_1l", "--epochs", "1", "--calibrate-steps", "2",
         "--data-root", str(synthetic_root), "--log-dir", str(tmp_path / "logs"),
         "--out", str(out), "--figure", str(tmp_path / "literature.png"), "--override", *tiny,
         "trainer.limit_train_batches=2", "callbacks.test_metrics.nll_k=10"],
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    report = out.read_text()
    assert "old" not in report and "## kept\n\nthis stays" in report
    metrics = json.loads((tmp_path / "logs" / "burda_vae_1l" / "0" / "metrics.json").read_text())
    (row,) = [ln for ln in report.splitlines() if ln.startswith("| `burda_vae_1l`")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "86.76" and cells[3] == f"{metrics['test/nll']:.2f} (k=10)"
    assert cells[4] == f"{metrics['test/nll'] - 86.76:+.2f}" and cells[5] == "1"
    assert "experiment=burda_vae_1l" in cells[9] and "trainer.max_epochs=1" in cells[9]
    assert report.count("not run yet") == len(ROWS) - 1
    # full length: 3280 epochs of the row's 2 steps (limit_train_batches), with a verdict
    assert "`burda_vae_1l`: 3280 epochs = 6560 steps" in report, report
    assert "in one 10-minute call" in report
    assert (tmp_path / "literature.png").exists() and "(literature.png)" in report


def test_reproduce_results_keeps_the_literature_section(tmp_path):
    out = tmp_path / "results.md"
    out.write_text("# old\n\n## literature\n\n<!-- literature-table:start -->\ntable\n"
                   "<!-- literature-table:end -->\n")  # fmt: skip
    result = run_script(
        "scripts/reproduce_results.py",
        ["--report-only", "--log-dir", str(tmp_path / "logs"), "--out", str(out)],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "## literature\n\n<!-- literature-table:start -->\ntable\n" in out.read_text()


def literature_script():
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location(
        "literature", ROOT / "scripts/literature_table.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_budget_is_planned_from_the_step_and_epoch_times_without_start_up(monkeypatch, tmp_path):
    from types import SimpleNamespace

    script = literature_script()
    # one epoch of 300 steps: 10 s; of 600: 16 s; two epochs of 300: 17 s. So 0.02 s a
    # step, 1 s at each epoch's end and 3 s once per run
    seconds = {(300, 1): 10.0, (600, 1): 16.0, (300, 2): 17.0}
    monkeypatch.setattr(
        script, "calibration_run", lambda row, base, steps, epochs, out: seconds[steps, epochs]
    )
    monkeypatch.setattr(script, "steps_per_epoch", lambda row, base: 1000)
    args = SimpleNamespace(calibrate_steps=300, log_dir=tmp_path, full=False, epochs=None,
                           budget_minutes=30)  # fmt: skip
    cal = script.plan("burda_vae_1l", [], args)["calibration"]
    assert cal["seconds_per_step"] == pytest.approx(0.02)
    assert cal["seconds_per_epoch_end"] == pytest.approx(1.0)
    assert cal["fixed_seconds"] == pytest.approx(3.0)
    # (1800 s - 3 s) over epochs of 1000 steps of 0.02 s and 1 s: 85 epochs (the one-epoch
    # 600-step run alone, 0.0267 s a step, would plan 67; steps alone, 89)
    info = script.plan("burda_vae_1l", [], args)
    assert info["epochs"] == 85 and info["max_time"] == "00:00:30:00"
    seconds[600, 1] = 9.0  # too short to time: the longer run's seconds per step
    assert script.plan("burda_vae_1l", [], args)["calibration"]["seconds_per_step"] == 0.015


def test_validation_curve_is_read_once_per_events_folder(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    folder = tmp_path / "run" / "tensorboard"
    with SummaryWriter(folder) as writer:
        for step, value in enumerate([150.0, 120.0, 100.0]):
            writer.add_scalar("val/loss", value, step)
    with SummaryWriter(folder) as writer:  # a second events file in the same folder
        writer.add_scalar("val/loss_best", 100.0, 0)
    assert len(list(folder.glob("events.out.tfevents*"))) == 2
    times, values = literature_script().val_curve(tmp_path / "run")
    assert values == [150.0, 120.0, 100.0] and times == sorted(times)


def test_the_speedrun_row_runs_as_its_header_says_with_its_own_budget(monkeypatch, tmp_path):
    from types import SimpleNamespace

    script = literature_script()
    bases = []

    def calibration_run(row, base, steps, epochs, out):
        bases.append(base)
        return {(300, 1): 10.0, (600, 1): 16.0, (300, 2): 17.0}[steps, epochs]

    monkeypatch.setattr(script, "calibration_run", calibration_run)
    monkeypatch.setattr(script, "steps_per_epoch", lambda row, base: 1000)
    args = SimpleNamespace(calibrate_steps=300, log_dir=tmp_path, full=False, epochs=None,
                           budget_minutes=30)  # fmt: skip
    info = script.plan("speedrun", [], args)
    # the row sizes its epochs itself (callbacks.time_budget) to its own 30 minutes
    assert info["epochs"] is None and info["max_time"] is None and info["own_budget"]
    # its calibration runs are short runs of fixed epochs, without the budget
    assert all(b[-2:] == script.NO_BUDGET for b in bases)
    args.budget_minutes = 10
    assert script.plan("speedrun", [], args)["max_time"] == "00:00:10:00"
    assert script.own_budget("burda_vae_1l", []) is None
