"""LightningDataModule for MNIST-format data held in memory as one uint8 tensor per split."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from vaelab.data.files import SPLIT_FILES, ensure_files, load_split, raw_dir
from vaelab.data.idx import read_idx_shape
from vaelab.data.sampling import ShardedBatches
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
        # the dynamic binarization's draws (None: torch's global generator)
        self.noise: torch.Generator | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        indices = torch.as_tensor(indices, device=self.images.device)
        # index_select: the same rows as images[indices], in half the time on the CPU; then
        # convert and divide in place: the values of torch.div(uint8, 255.0) in less than half
        # its time (0.7 against 1.6 ms for 2048 images on a 2-core CPU)
        x = self.images.index_select(0, indices).float().div_(255.0).unsqueeze(1)
        if self.dynamic_binarize:
            x = torch.bernoulli(x, generator=self.noise)
        return x, self.labels.index_select(0, indices)

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
    device = dataset.images.device
    sampler = ShardedBatches(len(dataset), batch_size, shuffle, seed, rank, num_replicas, device)
    return DataLoader(dataset, batch_size=None, sampler=sampler)


class MNISTDataModule(L.LightningDataModule):
    """MNIST (or any data set in its file format) from ``<data_dir>/<dataset>/raw/``.

    Splits: ``train`` is the training file minus a seeded hold-out of ``val_size`` images that
    forms ``val``; ``val_size=0`` validates on the official test set (as the reference script
    does). ``test`` is the official test file. Batches are (x [B, 1, 28, 28] in [0, 1], y [B]).

    ``binarize``: ``none`` keeps grey levels; ``static`` binarizes every split once with a
    seeded draw; ``dynamic`` draws the training pixels afresh for every batch (the protocol of
    the NLL literature) while val and test get one seeded draw, so evaluations compare.

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
        binarize: str = "none",
        binarize_seed: int = 0,
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__()
        # in checkpoints (as plain containers): eval.py and sample.py read the data settings
        self.save_hyperparameters()
        self.hparams.update(
            data_dir=str(data_dir),
            mirrors=list(mirrors),
            search_dirs=list(search_dirs),
            checksums=dict(checksums) if checksums else None,
        )
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
        self.shuffle_seed = shuffle_seed
        self.data_train: InMemoryImages | None = None
        self.data_val: InMemoryImages | None = None
        self.data_test: InMemoryImages | None = None
        self._paths: dict[str, Path] | None = None
        self._train_sampler: ShardedBatches | None = None
        self._restored_seed = False
        self._noise_state: torch.Tensor | None = None
        self._skip_batches = 0
        # batches of batch_size joined into one item of the training loader (set by a module
        # that takes that many batches in one training step: model.steps_per_call)
        self.train_batches_per_item = 1
        # trainer.limit_train_batches in batches of batch_size, applied by the sampler then
        self.train_batch_limit: int | float | None = None

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
        if not self._restored_seed:  # a resumed run keeps its order's seed
            self.shuffle_seed = self._shared_shuffle_seed()
        device = self._device()  # on an accelerator the data live there: no per-batch copy
        self.data_train = InMemoryImages(train_x, train_y, self.binarize == "dynamic").to(device)
        if self.binarize == "dynamic":  # seeded by binarize_seed, a stream per rank
            rank = self.trainer.global_rank if self.trainer is not None else 0
            seed = (self.binarize_seed + 3) * 1_000_003 + rank
            self.data_train.noise = torch.Generator(device).manual_seed(seed)
            if self._noise_state is not None:
                self.data_train.noise.set_state(self._noise_state)
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
        loader = batch_loader(
            self.data_train, self.batch_size, True, self.shuffle_seed, **self._shard()
        )
        # several batches per item for a module that takes several optimizer steps a call
        loader.sampler.batches_per_item = self.train_batches_per_item
        loader.sampler.max_batches = self.train_batch_limit
        self._train_sampler = loader.sampler
        if self._skip_batches:
            loader.sampler.resume(self._skip_batches)
            self._skip_batches = 0
        return loader

    def state_dict(self) -> dict:
        """The training order's seed, and mid-epoch (a checkpoint saved on interruption) how
        many of this epoch's batches were trained on. The order of an epoch is a function of
        the seed and the epoch (``ShardedBatches``), so that is enough to finish the epoch on
        the images it had not seen."""
        trainer, sampler = self.trainer, self._train_sampler
        if trainer is None or sampler is None:
            return {}
        # batches whose optimizer step ran: where Lightning's loop continues after a restore
        items = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        done = min(items * sampler.batches_per_item, sampler.num_batches)
        state = {"shuffle_seed": self.shuffle_seed}
        noise = getattr(self.data_train, "noise", None)
        if noise is not None:  # where the dynamic binarization's draws continue
            state["binarize_noise"] = noise.get_state()
        if 0 < done < sampler.num_batches:
            state["train_batches_done"] = done
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        if "shuffle_seed" in state_dict:
            self.shuffle_seed = state_dict["shuffle_seed"]
            self._restored_seed = True
        self._skip_batches = int(state_dict.get("train_batches_done", 0))
        self._noise_state = state_dict.get("binarize_noise")
        noise = getattr(self.data_train, "noise", None)
        if noise is not None and self._noise_state is not None:
            noise.set_state(self._noise_state)

    def val_dataloader(self) -> DataLoader:
        return batch_loader(self.data_val, self.eval_batch_size, False, **self._shard())

    def test_dataloader(self) -> DataLoader:
        return batch_loader(self.data_test, self.eval_batch_size, False, **self._shard())
