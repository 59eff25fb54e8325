"""Where MNIST-format files live, how they are checked, and how missing ones are downloaded."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pooch

from vaelab.data.idx import read_idx
from vaelab.errors import VaelabError

log = logging.getLogger(__name__)

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FILE_NAMES = tuple(name for pair in SPLIT_FILES.values() for name in pair)


def raw_dir(data_dir: str | Path, dataset: str) -> Path:
    """``<data_dir>/<dataset>/raw``: torchvision's layout, so its downloads are reused."""
    return Path(data_dir).expanduser().resolve() / dataset / "raw"


def find_file(folder: Path, name: str, search_dirs: Sequence[str | Path] = ()) -> Path | None:
    """``name.gz`` or extracted ``name`` in ``folder`` or any of ``search_dirs``."""
    for directory in (folder, *map(Path, search_dirs)):
        for candidate in (directory / f"{name}.gz", directory / name):
            if candidate.is_file():
                return candidate
    return None


def download(
    folder: Path, name: str, mirrors: Sequence[str], expected_md5: str | None = None
) -> Path:
    """Fetch ``name.gz`` from the first mirror that answers with a valid file.

    pooch writes to a temporary file and moves it in place only when the transfer completed
    (a connection dropped before the declared Content-Length raises), so an interrupted
    download never leaves a file behind. The moved file is then decompressed and parsed, and
    its md5 compared with ``expected_md5`` (of the decompressed bytes, as ``data.checksums``
    holds); a file that fails is deleted, never trusted by a later run.
    """
    errors = []
    for mirror in mirrors:
        url = f"{mirror.rstrip('/')}/{name}.gz"
        try:
            path = Path(
                pooch.retrieve(
                    url, known_hash=None, fname=f"{name}.gz", path=folder, progressbar=True
                )
            )
        except Exception as err:  # noqa: BLE001 - any failure means: try the next mirror
            errors.append(f"{url}: {type(err).__name__} ({_short(err)})")
            continue
        try:
            read_idx(path, expected_md5)
        except VaelabError as err:
            path.unlink(missing_ok=True)
            errors.append(f"{url}: the downloaded file was invalid and is deleted ({_short(err)})")
            continue
        return path
    raise VaelabError(
        f"MNIST-format files missing from {folder} and no mirror gave a valid {name}.gz "
        f"({'; '.join(errors) or 'no mirrors configured'}). Copy {', '.join(FILE_NAMES)} "
        "(.gz or extracted) there, or point DATA_ROOT / paths.data_dir at a folder that has "
        f"{folder.parent.name}/raw/"
    )


def _short(err: Exception, limit: int = 160) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def ensure_files(
    folder: Path,
    mirrors: Sequence[str] = (),
    download_missing: bool = True,
    search_dirs: Sequence[str | Path] = (),
    checksums: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Paths of the four files, downloading the missing ones (verified against ``checksums``,
    md5 of the decompressed bytes, when given); one clear error if impossible."""
    found = {name: find_file(folder, name, search_dirs) for name in FILE_NAMES}
    missing = [name for name, path in found.items() if path is None]
    data_dir = folder.parent.parent
    if missing and all(find_file(data_dir, name) for name in missing):
        # DATA_ROOT named the folder of the files itself: say so, instead of downloading
        # into <it>/<dataset>/raw (a folder that may be shared and read-only)
        layout = f"{folder.parent.name}/raw"
        fix = (
            f"DATA_ROOT={data_dir.parent.parent}"
            if data_dir.as_posix().endswith(f"/{layout}")
            else f"move the files into {folder}"
        )
        raise VaelabError(
            f"DATA_ROOT / paths.data_dir={data_dir} holds the data files themselves, but it must "
            f"name the folder that holds {layout}/: {fix}"
        )
    if missing and not download_missing:
        raise VaelabError(
            f"MNIST-format files missing from {folder}: {', '.join(missing)}. Copy them there "
            "(.gz or extracted), point DATA_ROOT / paths.data_dir at a folder that has "
            f"{folder.parent.name}/raw/, or set data.download=true"
        )
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        for name in missing:
            log.info("Downloading %s into %s", name, folder)
            found[name] = download(folder, name, mirrors, (checksums or {}).get(name))
    return found  # type: ignore[return-value]


def load_split(
    paths: Mapping[str, Path], split: str, checksums: Mapping[str, str] | None
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, H, W], labels int64 [N]) of ``split`` (train or test), writable."""
    image_name, label_name = SPLIT_FILES[split]
    checksums = checksums or {}
    images = read_idx(paths[image_name], checksums.get(image_name))
    labels = read_idx(paths[label_name], checksums.get(label_name))
    if images.ndim != 3 or labels.ndim != 1:
        raise VaelabError(
            f"{paths[image_name]} must hold images [N, H, W] and {paths[label_name]} labels [N]; "
            f"got shapes {images.shape} and {labels.shape}: replace the files"
        )
    if len(images) != len(labels):
        raise VaelabError(
            f"{paths[image_name]} has {len(images)} images but {paths[label_name]} has "
            f"{len(labels)} labels; the files belong to different data sets, replace them"
        )
    return images.copy(), labels.astype(np.int64)  # writable, for torch.from_numpy
