"""Lightning callbacks that render the VAE's figures. They orchestrate: the maths is in
``vaelab.science.latent`` and the drawing in ``vaelab.evaluation.plotting``."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.compat.proto.summary_pb2 import Summary

from vaelab.errors import StorageError
from vaelab.evaluation.metrics import (
    ACTIVE_UNIT_THRESHOLD,
    ClassMeans,
    ElboMeans,
    LatentStats,
    NegativeLogLikelihood,
)
from vaelab.evaluation.plotting import (
    DRAWING,
    LatentSpacePlot,
    bar_figure,
    encode_png,
    grid_figure,
    image_grid,
    latent_space_figure,
    save_figure,
    training_curves_figure,
)
from vaelab.science.bounds import ElboTerms
from vaelab.science.distributions import flatten, unflatten
from vaelab.science.latent import describe_groups, encode_dataset, interpolate, project_2d

log = logging.getLogger(__name__)


def _first_line(err: BaseException) -> str:
    """``Type: first line of the message``, for a warning that stays one line."""
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"


def _first_loader(loaders):
    return loaders[0] if isinstance(loaders, (list, tuple)) else loaders


def _val_loader(trainer: L.Trainer):
    """The validation loader, from the datamodule when the Trainer has none
    (``limit_val_batches=0``)."""
    if trainer.val_dataloaders is not None:
        return _first_loader(trainer.val_dataloaders)
    return trainer.datamodule.val_dataloader() if trainer.datamodule is not None else None


def logging_step(trainer: L.Trainer) -> int:
    """The step Lightning's loggers give the values logged now (the global step, counted as
    Lightning's logger connector does), so images and histograms share the scalars' x axis."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def _tensorboards(trainer: L.Trainer):
    return [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


def add_png(writers, tag: str, png: bytes, shape, step: int) -> None:
    """An image summary of PNG bytes (an image [C, H, W] of ``shape``) at ``step`` to each
    of ``writers``: what ``SummaryWriter.add_image`` writes, from bytes encoded once."""
    channels, height, width = shape
    summary = Summary(
        value=[
            Summary.Value(
                tag=tag,
                image=Summary.Image(
                    height=height, width=width, colorspace=channels, encoded_image_string=png
                ),
            )
        ]
    )
    for writer in writers:
        writer._get_file_writer().add_summary(summary, step)  # (add_image's own path)


# The end of fit's PNGs are drawn by one worker thread while the run goes on (to its test
# stage): matplotlib takes about 2 s a run to draw them (docs/speed.md). A plain executor,
# not Lightning's: no Lightning hook runs after fit and before the test stage.
_WORKER: ThreadPoolExecutor | None = None
_PENDING: list[Future] = []


def write_later(job: Callable[..., None], *args) -> None:
    """Run ``job(*args)`` (it writes files: no Trainer, no module, no logger) in the output
    worker, after the jobs handed over before it. ``wait_for_outputs`` joins them; the
    interpreter also waits for them before it exits."""
    global _WORKER
    if _WORKER is None:
        _WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vaelab-outputs")
    _PENDING.append(_WORKER.submit(job, *args))


def wait_for_outputs() -> None:
    """Block until every job of ``write_later`` has finished; raise the first one's error
    (e.g. the one-line ``StorageError`` of a full disk)."""
    pending, _PENDING[:] = list(_PENDING), []
    errors = [f.exception() for f in pending]
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first


class VAEFigures(L.Callback):
    """Every ``every_n_epochs`` epochs and after the last, logs to TensorBoard (at the global
    step, the step of the scalars; the figures' titles name the epoch, counted from 1)
    ``val/reconstructions`` (a fixed batch, originals above reconstructions), ``val/samples``
    (a fixed z, so epochs compare), ``val/interpolation`` (between two test images of
    different digits) and ``val/latent_space`` (mu of the validation set coloured by digit,
    PCA when latent_dim > 2). At the end of fit, writes the same as PNGs into ``figure_dir``.
    The latent space reuses the posterior means the validation step computed (its
    ``posterior_mean`` output) and a figure built once and redrawn (``LatentSpacePlot``),
    which keeps the figures of an epoch under 1 % of its training time (``docs/speed.md``).
    A figure that fails to draw is one warning line; the run goes on. The PNGs are written
    at the end of fit, and on an interruption from the last epoch drawn.

    The projector: at the end of fit, and every ``projector_every_n_epochs`` epochs when > 0,
    the posterior means of the first ``projector_points`` validation images go to
    TensorBoard's embedding projector (``val/posterior_means``) with the digit as metadata and
    the images as a sprite, to explore in 3-d PCA, t-SNE or UMAP; a latent space of fewer than
    3 dimensions is padded with zeros to 3. ``projector_points=0`` writes none."""

    def __init__(
        self,
        figure_dir: str | None = None,
        num_reconstructions: int = 8,
        num_samples: int = 64,
        interpolation_steps: int = 10,
        max_latent_points: int = 5000,
        projector_points: int = 2000,
        projector_every_n_epochs: int = 0,
        seed: int = 0,
        every_n_epochs: int = 1,
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be at least 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self._logged_epoch = 0  # the last epoch whose figures went to TensorBoard
        self.figure_dir = Path(figure_dir) if figure_dir else None
        self.num_reconstructions = num_reconstructions
        self.num_samples = num_samples
        self.interpolation_steps = interpolation_steps
        self.max_latent_points = max_latent_points
        self.projector_points = projector_points
        self.projector_every_n_epochs = projector_every_n_epochs
        self.seed = seed
        self._fixed: dict[str, torch.Tensor] | None = None
        self._latent_plot: LatentSpacePlot | None = None  # its frame drawn once
        self._last_render: tuple[int, int, dict] | None = None  # (global step, epoch, render)
        # the posterior means and digits this validation computed, for the latent space
        self._val_means: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []
        self._val_step = 0  # the global step of the last validation's scalars

    def _fixed_inputs(self, trainer: L.Trainer, pl_module: L.LightningModule):
        """The reconstruction batch, the sample noise and the interpolation pair, chosen once."""
        if self._fixed is None:
            x_val, _ = next(iter(_val_loader(trainer)))
            dm = trainer.datamodule
            pair_loader = dm.test_dataloader() if dm is not None else _val_loader(trainer)
            x_test, y_test = next(iter(pair_loader))
            other = int((y_test != y_test[0]).nonzero()[0]) if (y_test != y_test[0]).any() else 1
            self._fixed = {
                "recon": x_val[: self.num_reconstructions].cpu(),
                "pair": torch.stack([x_test[0], x_test[other]]).cpu(),
            }
        return {k: v.to(pl_module.device) for k, v in self._fixed.items()}

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule):
        self._val_means, self._val_labels = [], []

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Keeps the posterior means the validation step computed (``posterior_mean`` in its
        outputs), up to ``max_latent_points``: the latent space is drawn from them instead of
        encoding the validation images a second time."""
        if trainer.sanity_checking or not trainer.is_global_zero or dataloader_idx:
            return
        if not isinstance(outputs, dict) or "posterior_mean" not in outputs:
            return
        need = self.max_latent_points - sum(len(m) for m in self._val_means)
        if need > 0:
            self._val_means.append(outputs["posterior_mean"][:need].float().cpu())
            self._val_labels.append(batch[1][:need].cpu())

    def _latent_points(self, trainer: L.Trainer, net) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior means [N, latent_dim] and digits [N] of the first
        ``max_latent_points`` validation images: those this validation kept, else encoded."""
        if self._val_means:
            return torch.cat(self._val_means), torch.cat(self._val_labels)
        return encode_dataset(net, _val_loader(trainer), self.max_latent_points)

    @torch.no_grad()
    def render(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        """Image grids [C, H, W] and the latent points of the current model."""
        net = pl_module.net
        fixed = self._fixed_inputs(trainer, pl_module)
        # the same draws of the prior every epoch, so that epochs compare
        generator = torch.Generator().manual_seed(self.seed)
        x = fixed["recon"]
        recon = net.decode(net.posterior(x).mean)
        pair = flatten(net.posterior(fixed["pair"]).mean)
        path = unflatten(interpolate(pair[0], pair[1], self.interpolation_steps), net.latent_sizes)
        mu, labels = self._latent_points(trainer, net)
        nrow = math.ceil(math.sqrt(self.num_samples))
        out = {
            "reconstructions": image_grid(torch.cat([x, recon]), nrow=len(x)),
            "samples": image_grid(net.sample(self.num_samples, generator), nrow=nrow),
            "interpolation": image_grid(net.decode(path), nrow=self.interpolation_steps),
            "latent_points": project_2d(mu),
            "latent_labels": labels,
        }
        # the likelihood's own picture, where it has one (Likelihood.picture)
        picture = getattr(net.likelihood, "picture", lambda: None)()
        if picture is not None:
            out["likelihood"] = image_grid(picture.cpu().unsqueeze(0), nrow=1)
            out["likelihood_title"] = net.likelihood.picture_title
        return out

    def _latent_title(self, pl_module: L.LightningModule, epoch: int | None) -> str:
        net = pl_module.net
        how = "latent dims 0-1" if net.latent_dim <= 2 else "PCA of q's means"
        if len(net.latent_sizes) > 1:  # a hierarchy: its layers side by side
            how += ": " + describe_groups(net.latent_sizes)
        return f"Latent space ({how})" + ("" if epoch is None else f", epoch {epoch}")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self._val_step = logging_step(trainer)  # the step of this validation's scalars
        epoch = trainer.current_epoch + 1  # epochs done, in the figures' titles
        max_epochs = trainer.max_epochs or -1  # -1: no limit
        last = 0 < max_epochs <= epoch or trainer.should_stop
        if _tensorboards(trainer) and (epoch % self.every_n_epochs == 0 or last):
            try:
                out = self.render(trainer, pl_module)
                # until the weights change, the PNGs (end of fit, or an interruption) reuse it
                self._last_render = (trainer.global_step, epoch, out)
                self._log_figures(trainer, pl_module, out, epoch)
            except Exception as err:  # noqa: BLE001 - a figure is never worth the run
                log.warning(
                    "The figures of epoch %d were not drawn (%s); training goes on",
                    epoch,
                    _first_line(err),
                )
                return
            finally:
                self._val_means = []  # used: a later render (the end of fit) encodes afresh

    def _log_figures(self, trainer: L.Trainer, pl_module, out: dict, epoch: int) -> None:
        writers = _tensorboards(trainer)
        if not writers:
            return
        step = logging_step(trainer)  # one step axis with the scalars
        if self._latent_plot is None:
            self._latent_plot = LatentSpacePlot(self._latent_title(pl_module, None))
        self._logged_epoch = epoch  # tried: never twice at one step
        for name in ("reconstructions", "samples", "interpolation", "likelihood"):
            if name in out:
                add_png(writers, f"val/{name}", encode_png(out[name]), out[name].shape, step)
        plot = self._latent_plot
        png = plot.png(out["latent_points"], out["latent_labels"])
        add_png(writers, "val/latent_space", png, plot.shape, step)

    @torch.no_grad()
    def write_projector(
        self, trainer: L.Trainer, pl_module: L.LightningModule, epochs: int, later: bool = False
    ):
        """The posterior means of the first ``projector_points`` validation images, their
        digits and their images, to each TensorBoard's projector, after ``epochs`` epochs
        (``later``: its files written by the output worker, ``write_later``)."""
        loader, writers = _val_loader(trainer), _tensorboards(trainer)
        if not self.projector_points or loader is None or not writers:
            return
        images, labels, seen = [], [], 0
        for x, y in loader:
            images.append(x[: self.projector_points - seen].cpu())
            labels.append(y[: self.projector_points - seen].cpu())
            seen += len(images[-1])
            if seen >= self.projector_points:
                break
        x, y = torch.cat(images), torch.cat(labels)
        was_training = pl_module.training
        pl_module.eval()
        net = pl_module.net
        mu = torch.cat(
            [flatten(net.posterior(b.to(pl_module.device)).mean).cpu() for b in x.split(1000)]
        )
        pl_module.train(was_training)
        mu = torch.nn.functional.pad(mu.float(), (0, max(0, 3 - mu.shape[1])))
        arguments = {"metadata": y.tolist(), "label_img": x.float(), "global_step": epochs}
        for writer in writers:
            if later and hasattr(writer, "embedding_job"):  # vaelab's SummaryWriter
                write_later(writer.embedding_job(mu, tag="val/posterior_means", **arguments))
            else:
                writer.add_embedding(mu, tag="val/posterior_means", **arguments)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The epoch's latent statistics per dimension, one histogram each (not a scalar per
        dimension): ``val/kl_per_dim`` (when the prior factorizes) and
        ``val/active_unit_variance``. Here because the module computes them after the
        callbacks' validation-end hooks."""
        every = self.projector_every_n_epochs
        if trainer.is_global_zero and every > 0 and (trainer.current_epoch + 1) % every == 0:
            self.write_projector(trainer, pl_module, trainer.current_epoch + 1)
        stats = getattr(pl_module, "val_latent_stats", None)
        if not trainer.is_global_zero or not stats or stats["epoch"] != trainer.current_epoch:
            return
        for writer in _tensorboards(trainer):
            for name, key in (
                ("kl_per_dim", "kl_per_dim"),
                ("active_unit_variance", "mu_variance"),
            ):
                if key in stats:
                    writer.add_histogram(f"val/{name}", stats[key], global_step=self._val_step)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.val_dataloaders is None:
            return  # (None: a resumed run that had no epoch left to train)
        every = self.projector_every_n_epochs
        if not (every > 0 and trainer.current_epoch % every == 0):  # not written just now
            self.write_projector(trainer, pl_module, trainer.current_epoch, later=True)
        epoch = trainer.current_epoch
        if self.figure_dir is None and self._logged_epoch == epoch:
            return
        pl_module.eval()
        last = self._last_render
        self._val_means = []  # kept by a validation at other weights, maybe: encode afresh
        try:
            if last and last[0] == trainer.global_step:
                out = last[2]
            else:
                out = self.render(trainer, pl_module)
                self._last_render = (trainer.global_step, epoch, out)
            if self._logged_epoch != epoch and epoch > 0:  # stopped early: the final figures too
                self._log_figures(trainer, pl_module, out, epoch)
        except Exception as err:  # noqa: BLE001 - a figure is never worth the run
            log.warning("The final figures were not drawn (%s)", _first_line(err))
        self._write_pngs(pl_module, later=True)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception) -> None:
        """Interrupted (SIGTERM, Ctrl-C) or failed: the PNGs of the last epoch drawn, before
        the process goes on to exit."""
        if trainer.is_global_zero:
            self._write_pngs(pl_module)

    def _write_pngs(self, pl_module: L.LightningModule, later: bool = False) -> None:
        """The last render as PNGs in ``figure_dir``, now or (``later``) in the output worker
        (``write_later``)."""
        if self.figure_dir is None or self._last_render is None:
            return
        _, epoch, out = self._last_render
        self._last_render = None
        title = self._latent_title(pl_module, epoch)
        if later:
            write_later(self._save_pngs, out, title)
        else:
            self._save_pngs(out, title)

    def _save_pngs(self, out: dict, latent_title: str) -> None:
        """The PNGs of one render; a failure to draw is one warning line (a full disk is
        still the one-line ``StorageError``)."""
        self.figure_dir.mkdir(parents=True, exist_ok=True)
        titles = {
            "reconstructions": "Originals (top) and reconstructions (bottom)",
            "samples": "Samples from the prior",
            "interpolation": "Interpolation between two test digits",
        }
        if "likelihood" in out:
            titles["likelihood"] = out["likelihood_title"]
        try:
            for name, title in titles.items():
                save_figure(grid_figure(out[name], title), self.figure_dir / f"{name}.png")
            figure = latent_space_figure(out["latent_points"], out["latent_labels"], latent_title)
            save_figure(figure, self.figure_dir / "latent_space.png")
        except StorageError:
            raise
        except Exception as err:  # noqa: BLE001 - a figure is never worth the run
            log.warning("The figures' PNGs were not written (%s)", _first_line(err))


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, showing the last training batch's ``loss``, ``recon`` and ``kl``
    (nats per image), read from the device only when the bar refreshes (every
    ``refresh_rate`` batches): values logged with ``prog_bar=True`` would be copied to the host
    after every step."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        steps = getattr(pl_module, "steps_per_call", 1)
        if steps > 1 and self.train_progress_bar is not None:  # it counts calls, not steps
            self.train_progress_bar.set_description(
                f"Epoch {trainer.current_epoch} (calls of {steps} steps)"
            )

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        terms = getattr(pl_module, "latest_train_terms", None)
        if trainer.training and terms is not None:
            values = terms.float().mean(1).tolist()  # one device-to-host copy
            items |= {f"train_step/{t}": v for t, v in zip(ElboMeans.TERMS, values, strict=True)}
        return items


class TrainingCurves(L.Callback):
    """Keeps the per-epoch train and val metrics and writes ``training_curves.png`` at the end
    of fit. Epochs are counted from 1. An epoch is recorded once it is complete (when the next
    starts, or training ends),
    since the LightningModule logs its train means after the callbacks' epoch-end hooks."""

    def __init__(self, figure_dir: str | None = None, prefixes=("train/", "val/")) -> None:
        self.figure_dir = Path(figure_dir) if figure_dir else None
        self.prefixes = tuple(prefixes)
        self.history: list[dict[str, float]] = []

    def _record(self, trainer: L.Trainer, epochs_done: int) -> None:
        if epochs_done < 1 or any(h["epoch"] == epochs_done for h in self.history):
            return
        row = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(self.prefixes)
        }
        if row:
            self.history.append({"epoch": epochs_done, **row})

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, trainer.current_epoch)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, trainer.current_epoch)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.figure_dir is None or not trainer.is_global_zero or not self.history:
            return
        write_later(self._save_curves, [dict(row) for row in self.history])

    def _save_curves(self, history: list[dict[str, float]]) -> None:
        self.figure_dir.mkdir(parents=True, exist_ok=True)
        save_figure(training_curves_figure(history), self.figure_dir / "training_curves.png")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict:
        # a checkpoint saved between epochs (on interruption) must hold the epoch just ended
        trainer = getattr(self, "_trainer", None)
        if trainer is not None:
            self._record(trainer, trainer.fit_loop.epoch_progress.current.completed)
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))


class EpochThroughput(L.Callback):
    """Times the training batches of each epoch (validation and figures excluded) and logs
    ``train/samples_per_sec``. ``records`` keeps (epoch, samples, seconds) for benchmarks.

    Not Lightning's ``ThroughputMonitor``: that one synchronizes CUDA after every training
    batch to time windows of steps (a host sync per step); this one waits once per epoch."""

    def __init__(self) -> None:
        self.records: list[tuple[int, int, float]] = []
        self._start = 0.0
        self._samples = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._samples = 0
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._samples += len(batch[0])
        if trainer.is_last_batch:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)  # the epoch's kernels, not their launch
            seconds = time.perf_counter() - self._start
            self.records.append((trainer.current_epoch, self._samples, seconds))
            pl_module.log("train/samples_per_sec", self._samples / seconds, logger=True)


class EvaluationMetrics(L.Callback):
    """The evaluation metrics of ``vaelab.evaluation.metrics`` over the test stage: the one
    evaluation path of the end of training (``callbacks.test_metrics``) and of eval.py.

    Every test stage: active units and the KL per latent dimension (``LatentStats``) and, when
    ``nll_k`` > 0, -log p(x) importance sampled with ``nll_k`` samples per image
    (``NegativeLogLikelihood``), over the first ``nll_images`` test images (all: None; the
    end of training estimates it on 1000 to keep the test stage to seconds). With
    ``elbo_samples`` > 0 also the ELBO's terms averaged over that many z per image and the
    reconstruction loss per digit (what eval.py reports).
    ``max_images`` limits the test images used (the first ones).

    Logged like the module's metrics: ``test/active_units`` and, with the NLL, ``test/nll``
    (nats per image). The settings of that estimate, ``test/nll_k``, ``test/nll_images`` and
    ``test/nll_normalized`` (whether the likelihood is a normalized density of the test
    pixels), are no measurements: they go to ``test_metrics`` (train.py adds them to
    metrics.json and HParams), not to the scalars. The per-dimension values go to TensorBoard
    as a bar chart (``test/kl_per_dim``) and a histogram (``test/active_unit_variance``) and,
    as lists, to ``test_metrics``. ``results`` holds
    everything computed, as plain numbers and lists.
    """

    def __init__(
        self,
        nll_k: int = 100,
        max_rows: int = 4096,
        nll_batch_size: int = 100,
        nll_workers: int | None = None,
        nll_images: int | None = None,
        elbo_samples: int = 0,
        active_unit_threshold: float = ACTIVE_UNIT_THRESHOLD,
        max_images: int | None = None,
        seed: int = 0,
    ) -> None:
        self.nll_k = nll_k
        self.max_rows = max_rows
        self.nll_batch_size = nll_batch_size
        self.nll_workers = nll_workers
        self.nll_images = nll_images
        self.elbo_samples = elbo_samples
        self.threshold = active_unit_threshold
        self.max_images = max_images
        self.seed = seed
        self.test_metrics: dict[str, list[float]] = {}
        self.results: dict = {}

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # torchmetrics gathers across processes under DDP, like the module's own means
        device = pl_module.device
        self._latent = LatentStats(pl_module.net.latent_dim, self.threshold).to(device)
        self._nll = NegativeLogLikelihood(
            self.nll_k, self.max_rows, self.nll_batch_size, self.nll_workers
        ).to(device)
        self._elbo, self._per_class = ElboMeans().to(device), ClassMeans().to(device)
        self._generator = torch.Generator(device).manual_seed(self.seed)
        self._seen = 0

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        x, y = batch
        if self.max_images is not None:
            x, y = x[: self.max_images - self._seen], y[: self.max_images - self._seen]
            if not len(x):
                return
        before, self._seen = self._seen, self._seen + len(x)
        net = pl_module.net
        if self.elbo_samples > 0:
            parts = net.elbo(x, self.elbo_samples, self._generator)
            self._latent.update(flatten(parts.posterior.mean), parts.kl_per_dimension())
            beta = pl_module.hparams.beta
            terms = ElboTerms(parts.recon + beta * parts.kl, parts.recon, parts.kl)
            self._elbo.update(torch.stack(terms))
            self._per_class.update(terms.recon, y)
        else:
            q = net.posterior(x)
            self._latent.update(flatten(q.mean), net.kl_per_dimension(q))
        nll_x = x if self.nll_images is None else x[: max(0, self.nll_images - before)]
        if self.nll_k > 0 and len(nll_x):
            seed = (self.seed * 7919 + batch_idx) * 131 + trainer.global_rank
            self._nll.update(net, nll_x, seed)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._latent.update_count:
            return
        stats = self._latent.compute()
        results: dict = {
            "num_test_images": int(self._latent.count),
            "test/active_units": int(stats["active_units"]),
            "active_unit_threshold": self.threshold,
            "test/active_unit_variance": stats["mu_variance"].tolist(),
        }
        if "kl_per_dim" in stats:
            results["test/kl_per_dim"] = stats["kl_per_dim"].tolist()
        sizes = pl_module.net.latent_sizes
        if len(sizes) > 1:  # a hierarchy: the active units of each latent group too
            active = (stats["mu_variance"] > self.threshold).split(list(sizes.values()))
            results["test/active_units_per_group"] = {
                g: int(a.sum()) for g, a in zip(sizes, active, strict=True)
            }
        if self.elbo_samples > 0:
            means = self._elbo.compute()
            results |= {f"test/{term}": float(value) for term, value in means.items()}
            results["test/elbo"] = -(results["test/recon"] + results["test/kl"])
            results["elbo_samples"] = self.elbo_samples
            results["test/recon_per_class"] = self._per_class.compute().tolist()
        pl_module.log("test/active_units", stats["active_units"])
        if self.nll_k > 0 and self._nll.count > 0:
            nll, binary = self._nll.compute()
            normalized, note = pl_module.net.likelihood.normalization(binary)
            results |= {
                "test/nll": float(nll),
                "nll_k": self.nll_k,
                "nll_images": int(self._nll.count),
                "data_binary": binary,
                "nll_normalized": normalized,
                "nll_note": note,
            }
            pl_module.log("test/nll", nll)
        self.results = results
        # vectors, and the settings of the NLL estimate: to metrics.json (and HParams), not
        # to the scalars nor the printed table of test results
        vectors = ("test/kl_per_dim", "test/active_unit_variance")
        self.test_metrics = {k: results[k] for k in vectors if k in results}
        for group, units in results.get("test/active_units_per_group", {}).items():
            self.test_metrics[f"test/active_units/{group}"] = units  # a hierarchy's layers
        if "test/nll" in results:
            self.test_metrics |= {
                "test/nll_k": self.nll_k,
                "test/nll_images": results["nll_images"],
                "test/nll_normalized": results["nll_normalized"],
            }
        for writer in _tensorboards(trainer) if trainer.is_global_zero else []:
            # one histogram, not a scalar per dimension (the KL per dimension: a bar chart below)
            variances = torch.tensor(results["test/active_unit_variance"])
            writer.add_histogram(vectors[1], variances, global_step=trainer.global_step)
        if trainer.is_global_zero and "test/kl_per_dim" in results:
            kl = results["test/kl_per_dim"]
            fig = bar_figure(
                kl,
                range(len(kl)),
                "KL per latent dimension (test mean)",
                "latent dimension",
                "KL (nats per image)",
            )
            with DRAWING:  # (add_figure draws it)
                for writer in _tensorboards(trainer):
                    writer.add_figure("test/kl_per_dim", fig, global_step=trainer.global_step)
