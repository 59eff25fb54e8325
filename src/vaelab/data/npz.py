"""A data module for images in one ``.npz`` file, written as Lightning's docs write one: an
example of bringing your own LightningDataModule (``configs/data/npz.yaml``).

The file holds ``x_train``, ``y_train``, ``x_test`` and ``y_test`` (the layout of Keras'
``mnist.npz``): images uint8 [N, H, W] (grey levels 0-255) or [N, C, H, W], labels [N].
Write one from MNIST's IDX files with
``python -m vaelab.data.npz <folder of MNIST/raw> data/mnist.npz``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset, random_split

from vaelab.errors import VaelabError

ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def as_images(array: np.ndarray) -> torch.Tensor:
    """uint8 images [N, H, W] or [N, C, H, W] -> float [N, C, H, W] in [0, 1]."""
    x = torch.from_numpy(np.asarray(array)).float().div_(255.0)
    return x.unsqueeze(1) if x.dim() == 3 else x


class NpzDataModule(L.LightningDataModule):
    """Train, validation and test splits from ``path`` (module docstring); ``val_size``
    images of the training arrays, chosen with ``split_seed``, validate. Batches are
    (x [B, C, H, W] in [0, 1], y [B]). The training order is shuffled anew each epoch from
    ``shuffle_seed`` and the epoch (``DistributedSampler``, one share per rank), so a run
    resumed at an epoch boundary sees the batches an uninterrupted one sees."""

    def __init__(
        self,
        path: str = "data/mnist.npz",
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        split_seed: int = 42,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()

    def prepare_data(self) -> None:
        path = Path(self.hparams.path).expanduser()
        if not path.is_file():
            raise VaelabError(
                f"data.path={path}: no such file; write one with python -m vaelab.data.npz "
                "<folder of MNIST/raw> <file.npz>, or numpy.savez(path, x_train=..., "
                "y_train=..., x_test=..., y_test=...)"
            )
        with np.load(path) as arrays:
            missing = [name for name in ARRAYS if name not in arrays]
        if missing:
            raise VaelabError(
                f"data.path={path} has no {', '.join(missing)}; it needs {', '.join(ARRAYS)}"
            )

    def setup(self, stage: str) -> None:
        with np.load(Path(self.hparams.path).expanduser()) as arrays:
            self.data_test = TensorDataset(
                as_images(arrays["x_test"]), torch.from_numpy(arrays["y_test"])
            )
            if stage == "test":
                return
            train = TensorDataset(as_images(arrays["x_train"]), torch.from_numpy(arrays["y_train"]))
        val_size = self.hparams.val_size
        if not 0 < val_size < len(train):
            raise VaelabError(
                f"data.val_size={val_size} must be between 1 and {len(train) - 1} (the "
                f"training arrays of {self.hparams.path} hold {len(train)} images)"
            )
        generator = torch.Generator().manual_seed(self.hparams.split_seed)
        self.data_train, self.data_val = random_split(
            train, [len(train) - val_size, val_size], generator=generator
        )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        sampler = DistributedSampler(
            self.data_train,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
            shuffle=True,
            seed=self.hparams.shuffle_seed,
        )
        return DataLoader(self.data_train, batch_size=self.hparams.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.data_val, batch_size=self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.data_test, batch_size=self.hparams.eval_batch_size)


def write_npz(raw_folder: str | Path, path: str | Path) -> Path:
    """``path`` (.npz) with the four arrays of the MNIST-format IDX files in ``raw_folder``."""
    from vaelab.data.idx import read_idx

    raw = Path(raw_folder)
    names = {
        "x_train": "train-images-idx3-ubyte",
        "y_train": "train-labels-idx1-ubyte",
        "x_test": "t10k-images-idx3-ubyte",
        "y_test": "t10k-labels-idx1-ubyte",
    }
    arrays = {}
    for key, name in names.items():
        found = next((p for p in (raw / name, raw / f"{name}.gz") if p.is_file()), None)
        if found is None:
            raise VaelabError(f"{raw} has no {name}(.gz); name a folder of MNIST/raw files")
        arrays[key] = read_idx(found)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m vaelab.data.npz <folder of MNIST/raw> <file.npz>")
    try:
        print(write_npz(sys.argv[1], sys.argv[2]))
    except VaelabError as err:
        sys.exit(f"error: {err}")
