"""LightningDataModule for MNIST-format data held in memory as one uint8 tensor per split."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from vaelab.data.files import ensure_files, load_split, raw_dir
from vaelab.data.sampling import ShardedBatches
from vaelab.errors import VaelabError


class InMemoryImages(Dataset):
    """Images uint8 [N, H, W] and labels [N], indexed by a whole batch of indices at once.

    ``dataset[indices]`` returns (x float [B, 1, H, W] in [0, 1], y int64 [B]): one tensor
    gather per batch instead of B ``__getitem__`` calls and a collate.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        indices = torch.as_tensor(indices, device=self.images.device)
        x = self.images[indices].unsqueeze(1).float().div_(255.0)
        return x, self.labels[indices]

    def to(self, device: torch.device) -> InMemoryImages:
        return InMemoryImages(self.images.to(device), self.labels.to(device))


def batch_loader(
    dataset: InMemoryImages,
    batch_size: int,
    shuffle: bool,
    seed: int | None = None,
    rank: int = 0,
    num_replicas: int = 1,
):
    """A DataLoader that yields whole batches from ``dataset[index_tensor]`` (no workers:
    a batch is one tensor gather, cheaper than inter-process transfer), this rank's share of
    the split when ``num_replicas > 1`` (see ``ShardedBatches``)."""
    sampler = ShardedBatches(len(dataset), batch_size, shuffle, seed, rank, num_replicas)
    return DataLoader(dataset, batch_size=None, sampler=sampler)


class MNISTDataModule(L.LightningDataModule):
    """MNIST (or any data set in its file format) from ``<data_dir>/<dataset>/raw/``.

    Splits: ``train`` is the training file minus a seeded hold-out of ``val_size`` images that
    forms ``val``; ``val_size=0`` validates on the official test set (as the reference script
    does). ``test`` is the official test file. Batches are (x [B, 1, 28, 28] in [0, 1], y [B]).

    Under DDP each process gets its own share of every split (``batch_size`` is per process;
    see ``vaelab.data.sampling.ShardedBatches``), so the Trainer must not add its own
    DistributedSampler: ``use_distributed_sampler=False`` (set in ``configs/trainer``).
    The training order is seeded by ``shuffle_seed`` and the epoch; ``None`` draws the seed
    from torch's generator on rank 0 and broadcasts it.
    """

    def __init__(
        self,
        data_dir: str = "data",
        dataset: str = "MNIST",
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        split_seed: int = 42,
        download: bool = True,
        mirrors: Sequence[str] = (),
        checksums: Mapping[str, str] | None = None,
        search_dirs: Sequence[str] = (),
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.dataset = dataset
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_size = val_size
        self.split_seed = split_seed
        self.download = download
        self.mirrors = list(mirrors)
        self.checksums = dict(checksums) if checksums else None
        self.search_dirs = list(search_dirs)
        self.shuffle_seed = shuffle_seed
        self.data_train: InMemoryImages | None = None
        self.data_val: InMemoryImages | None = None
        self.data_test: InMemoryImages | None = None
        self._paths: dict[str, Path] | None = None

    @property
    def raw_dir(self) -> Path:
        return raw_dir(self.data_dir, self.dataset)

    def prepare_data(self) -> None:
        """Find (or download) the four files and verify them; safe to call more than once."""
        if self._paths is None:
            self._paths = ensure_files(self.raw_dir, self.mirrors, self.download, self.search_dirs)

    def setup(self, stage: str | None = None) -> None:
        if self.data_train is not None:
            return
        self.prepare_data()
        train_images, train_labels = load_split(self._paths, "train", self.checksums)
        test_images, test_labels = load_split(self._paths, "test", self.checksums)
        if not 0 <= self.val_size < len(train_images):
            raise VaelabError(
                f"data.val_size={self.val_size} must be between 0 and {len(train_images) - 1} "
                f"(the training file has {len(train_images)} images); lower it"
            )
        train = InMemoryImages(
            torch.from_numpy(train_images.copy()), torch.from_numpy(train_labels)
        )
        test = InMemoryImages(torch.from_numpy(test_images.copy()), torch.from_numpy(test_labels))
        if self.val_size == 0:
            self.data_train, self.data_val = train, test
        else:
            order = torch.randperm(
                len(train), generator=torch.Generator().manual_seed(self.split_seed)
            )
            val_idx, train_idx = order[: self.val_size], order[self.val_size :]
            self.data_train = InMemoryImages(train.images[train_idx], train.labels[train_idx])
            self.data_val = InMemoryImages(train.images[val_idx], train.labels[val_idx])
        self.data_test = test
        self.shuffle_seed = self._shared_shuffle_seed()
        device = self._device()
        if device.type != "cpu":  # keep the data on the accelerator: no per-batch host copy
            self.data_train, self.data_val, self.data_test = (
                d.to(device) for d in (self.data_train, self.data_val, self.data_test)
            )

    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _shared_shuffle_seed(self) -> int:
        """``shuffle_seed``, or one drawn on rank 0: every rank must shuffle alike."""
        if self.shuffle_seed is not None:
            return int(self.shuffle_seed)
        seed = int(torch.randint(2**31 - 1, ()))
        return seed if self.trainer is None else int(self.trainer.strategy.broadcast(seed))

    def _shard(self) -> dict[str, int]:
        trainer = self.trainer
        if trainer is None:
            return {"rank": 0, "num_replicas": 1}
        return {"rank": trainer.global_rank, "num_replicas": trainer.world_size}

    def train_dataloader(self) -> DataLoader:
        return batch_loader(
            self.data_train, self.batch_size, True, self.shuffle_seed, **self._shard()
        )

    def val_dataloader(self) -> DataLoader:
        return batch_loader(self.data_val, self.eval_batch_size, False, **self._shard())

    def test_dataloader(self) -> DataLoader:
        return batch_loader(self.data_test, self.eval_batch_size, False, **self._shard())
