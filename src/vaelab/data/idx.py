"""Reading IDX files (the MNIST file format), gzipped or not.

Written here because the format is twelve lines of numpy and the usual reader lives in
torchvision, which this project does not import (see docs/data.md).
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from vaelab.errors import VaelabError

# Third byte of the magic number: element type. MNIST only uses unsigned bytes.
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_bytes(path: Path) -> bytes:
    """The decompressed contents of ``path`` (``.gz`` or plain), with a clear error if broken."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise VaelabError(
            f"{path} is truncated or corrupt ({err}); delete it and download or copy it again"
        ) from err


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """IDX bytes -> array of the shape and type the header declares."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise VaelabError(
            f"{source} is not an IDX file (magic number {data[:4].hex() or 'missing'}); "
            "it should be one of the MNIST-format files, replace it"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise VaelabError(f"{source} is truncated (header incomplete); replace the file")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise VaelabError(
            f"{source} has {len(data)} bytes but its header {shape} needs {expected}: "
            "the file is truncated or corrupt; replace it"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape)


def read_idx_shape(path: Path) -> tuple[int, ...]:
    """The shape an IDX file's header declares, read without decompressing the whole file."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_TYPES:
                parse_idx(magic, str(path))  # raises the not-an-IDX-file error
            dims = f.read(4 * magic[3])
    except (OSError, EOFError, zlib.error) as err:
        raise VaelabError(
            f"{path} is truncated or corrupt ({err}); delete it and download or copy it again"
        ) from err
    if len(dims) < 4 * magic[3]:
        raise VaelabError(f"{path} is truncated (header incomplete); replace the file")
    return tuple(int(d) for d in np.frombuffer(dims, ">u4"))


def read_idx(path: Path, expected_md5: str | None = None) -> np.ndarray:
    """Read an IDX file, verifying the md5 of its decompressed bytes when one is given."""
    data = read_bytes(path)
    if expected_md5 is not None and md5(data) != expected_md5:
        raise VaelabError(
            f"{path} fails its checksum (md5 of the decompressed bytes is {md5(data)}, "
            f"expected {expected_md5}); delete it and download or copy it again"
        )
    return parse_idx(data, str(path))
