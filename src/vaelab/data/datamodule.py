"""LightningDataModule for MNIST-format data held in memory as one uint8 tensor per split."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from vaelab.data.files import SPLIT_FILES, ensure_files, load_split, raw_dir
from vaelab.data.idx import read_idx_shape
from vaelab.errors import VaelabError


class InMemoryImages(Dataset):
    """Images uint8 [N, H, W] and labels [N], indexed by a whole batch of indices at once.

    ``dataset[indices]`` returns (x float [B, 1, H, W] in [0, 1], y int64 [B]): one tensor
    gather per batch instead of B ``__getitem__`` calls and a collate. With
    ``dynamic_binarize`` each returned pixel is a fresh Bernoulli draw with its intensity as
    probability.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, dynamic_binarize: bool = False
    ) -> None:
        self.images = images
        self.labels = labels
        self.dynamic_binarize = dynamic_binarize

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        indices = torch.as_tensor(indices, device=self.images.device)
        x = self.images[indices].unsqueeze(1).float().div_(255.0)
        if self.dynamic_binarize:
            x = torch.bernoulli(x)
        return x, self.labels[indices]

    def to(self, device: torch.device) -> InMemoryImages:
        return InMemoryImages(self.images.to(device), self.labels.to(device), self.dynamic_binarize)


BINARIZE = ("none", "dynamic", "static")


def hold_out(images: torch.Tensor, labels: torch.Tensor, size: int, seed: int):
    """Split off a seeded random ``size`` images: ((rest_x, rest_y), (held_x, held_y))."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    held, rest = order[:size], order[size:]
    return (images[rest], labels[rest]), (images[held], labels[held])


def binarize_images(images: torch.Tensor, seed: int) -> torch.Tensor:
    """One seeded Bernoulli draw of uint8 images [N, H, W]: pixels become 0 or 255."""
    generator = torch.Generator().manual_seed(seed)
    draw = torch.rand(images.shape, generator=generator) < images.float() / 255
    return draw.to(torch.uint8) * 255


class ResumableRandomSampler(RandomSampler):
    """``RandomSampler`` (the same permutations for the same seed) that keeps the current
    epoch's order, so that a run resumed from a checkpoint saved mid-epoch can finish that
    epoch on the images it had not seen yet (``resume``)."""

    def __init__(self, data_source, generator: torch.Generator | None = None) -> None:
        super().__init__(data_source, generator=generator)
        self.order: torch.Tensor | None = None
        self._resume: tuple[torch.Tensor, int] | None = None

    def resume(self, order: torch.Tensor, start: int) -> None:
        """Make the next epoch ``order[start:]``."""
        self._resume = (order, start)

    def __iter__(self):
        if self._resume is not None:
            (self.order, start), self._resume = self._resume, None
        else:
            self.order, start = torch.tensor(list(super().__iter__())), 0
        yield from self.order[start:].tolist()


def batch_loader(dataset: InMemoryImages, batch_size: int, shuffle: bool, seed: int | None = None):
    """A DataLoader that yields whole batches from ``dataset[list_of_indices]`` (no workers:
    a batch is one tensor gather, cheaper than inter-process transfer)."""
    if shuffle:
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        sampler = ResumableRandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(
        dataset, batch_size=None, sampler=BatchSampler(sampler, batch_size, drop_last=False)
    )


class MNISTDataModule(L.LightningDataModule):
    """MNIST (or any data set in its file format) from ``<data_dir>/<dataset>/raw/``.

    Splits: ``train`` is the training file minus a seeded hold-out of ``val_size`` images that
    forms ``val``; ``val_size=0`` validates on the official test set (as the reference script
    does). ``test`` is the official test file. Batches are (x [B, 1, 28, 28] in [0, 1], y [B]).

    ``binarize``: ``none`` keeps grey levels; ``static`` binarizes every split once with a
    seeded draw; ``dynamic`` draws the training pixels afresh for every batch (the protocol of
    the NLL literature) while val and test get one seeded draw, so evaluations compare.
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
        binarize: str = "none",
        binarize_seed: int = 0,
    ) -> None:
        super().__init__()
        if binarize not in BINARIZE:
            raise VaelabError(f"data.binarize={binarize!r} is not one of {', '.join(BINARIZE)}")
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
        self.binarize = binarize
        self.binarize_seed = binarize_seed
        self.data_train: InMemoryImages | None = None
        self.data_val: InMemoryImages | None = None
        self.data_test: InMemoryImages | None = None
        self._paths: dict[str, Path] | None = None
        self._train_sampler: ResumableRandomSampler | None = None
        self._resume_train: dict | None = None

    @property
    def raw_dir(self) -> Path:
        return raw_dir(self.data_dir, self.dataset)

    def prepare_data(self) -> None:
        """Find (or download) the four files and check that ``val_size`` leaves training
        images (from the file header, before anything is loaded); safe to call more than once."""
        if self._paths is None:
            self._paths = ensure_files(
                self.raw_dir, self.mirrors, self.download, self.search_dirs, self.checksums
            )
            train_images = self._paths[SPLIT_FILES["train"][0]]
            self._check_val_size(read_idx_shape(train_images)[0], train_images.name)

    def setup(self, stage: str | None = None) -> None:
        if self.data_train is not None:
            return
        self.prepare_data()
        train_x, train_y = (
            torch.from_numpy(a) for a in load_split(self._paths, "train", self.checksums)
        )
        test_x, test_y = (
            torch.from_numpy(a) for a in load_split(self._paths, "test", self.checksums)
        )
        self._check_val_size(len(train_x), self._paths[SPLIT_FILES["train"][0]].name)
        if self.val_size:
            (train_x, train_y), (val_x, val_y) = hold_out(
                train_x, train_y, self.val_size, self.split_seed
            )
        if self.binarize != "none":  # evaluation splits get one fixed draw each
            test_x = binarize_images(test_x, self.binarize_seed + 1)
            if self.val_size:
                val_x = binarize_images(val_x, self.binarize_seed + 2)
        if self.binarize == "static":
            train_x = binarize_images(train_x, self.binarize_seed)
        device = self._device()  # on an accelerator the data live there: no per-batch copy
        self.data_train = InMemoryImages(train_x, train_y, self.binarize == "dynamic").to(device)
        self.data_test = InMemoryImages(test_x, test_y).to(device)
        self.data_val = InMemoryImages(val_x, val_y).to(device) if self.val_size else self.data_test

    def _check_val_size(self, n_train: int, file_name: str) -> None:
        if not 0 <= self.val_size < n_train:
            raise VaelabError(
                f"data.val_size={self.val_size} must be between 0 and {n_train - 1} to leave "
                f"training images ({file_name} has {n_train} images); lower it"
            )

    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def train_dataloader(self) -> DataLoader:
        loader = batch_loader(self.data_train, self.batch_size, shuffle=True)
        self._train_sampler = getattr(loader.sampler, "sampler", None)
        if self._resume_train and isinstance(self._train_sampler, ResumableRandomSampler):
            state, self._resume_train = self._resume_train, None
            self._train_sampler.resume(state["train_order"], state["train_images_done"])
        return loader

    def state_dict(self) -> dict:
        """Mid-epoch (a checkpoint saved on interruption): the epoch's order and how many of
        its images were trained on; empty at epoch boundaries."""
        trainer, sampler = self.trainer, self._train_sampler
        if trainer is None or sampler is None or sampler.order is None:
            return {}
        # batches whose optimizer step ran: where Lightning's loop continues after a restore
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if not 0 < done * self.batch_size < len(sampler.order):
            return {}
        return {"train_order": sampler.order, "train_images_done": done * self.batch_size}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume_train = dict(state_dict) if state_dict else None

    def val_dataloader(self) -> DataLoader:
        return batch_loader(self.data_val, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return batch_loader(self.data_test, self.eval_batch_size, shuffle=False)
