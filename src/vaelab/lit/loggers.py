"""Lightning's loggers, adjusted: a CSV logger safe for resumed runs, and a TensorBoard logger
whose Scalars page opens on the losses."""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        """Keep an existing metrics.csv and continue its columns (Lightning deletes it)."""
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])


class CSVLogger(LightningCSVLogger):
    """``lightning.pytorch.loggers.CSVLogger``, except that a run resumed in its own dir
    appends to its ``metrics.csv`` instead of deleting the rows of the epochs before."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class TensorBoardLogger(LightningTensorBoardLogger):
    """``lightning.pytorch.loggers.TensorBoardLogger`` without the ``epoch`` scalar Lightning
    adds to every logged dict: a staircase chart that opened the Scalars page (the epochs are
    the x axis of every per-epoch chart already), and a custom-scalars layout (the CUSTOM
    SCALARS tab) with train and val of each ELBO term on one chart."""

    LAYOUT = {
        "ELBO terms, train and val (nats per image)": {
            term: ["Multiline", [f"train/{term}", f"val/{term}"]]
            for term in ("loss", "recon", "kl")
        }
    }

    def log_metrics(self, metrics, step=None) -> None:
        metrics = {k: v for k, v in metrics.items() if k != "epoch"}
        if metrics:
            super().log_metrics(metrics, step)

    @property
    @rank_zero_experiment
    def experiment(self):
        first = self._experiment is None
        experiment = super().experiment
        if first:
            experiment.add_custom_scalars(self.LAYOUT)
        return experiment
