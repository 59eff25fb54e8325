"""MNIST-format data: IDX files, checksums, downloads and the LightningDataModule."""

from vaelab.data.datamodule import MNISTDataModule
from vaelab.data.idx import read_idx

__all__ = ["MNISTDataModule", "read_idx"]
