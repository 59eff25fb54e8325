"""IDX parsing, checksums, file lookup, downloads and the DataModule's splits and batches."""

import gzip
import hashlib
import http.server
import threading
from functools import partial

import numpy as np
import pytest
import torch
from conftest import make_synthetic_mnist, write_idx

from vaelab.data import MNISTDataModule, read_idx
from vaelab.data.datamodule import InMemoryImages
from vaelab.data.files import FILE_NAMES, ensure_files
from vaelab.errors import VaelabError


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "a-idx3-ubyte", array, compress=compress)
    np.testing.assert_array_equal(read_idx(path), array)


def test_idx_wrong_magic_number(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x89PNG" + bytes(100))
    with pytest.raises(VaelabError, match=r"bad is not an IDX file \(magic number 89504e47\)"):
        read_idx(path)


def test_idx_truncated_payload(tmp_path):
    path = write_idx(tmp_path / "t", np.zeros((10, 28, 28), np.uint8), compress=False)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(VaelabError, match="truncated or corrupt; replace it"):
        read_idx(path)


def test_idx_truncated_gzip(tmp_path):
    path = write_idx(tmp_path / "t", np.zeros((10, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(VaelabError, match=r"t\.gz is truncated or corrupt"):
        read_idx(path)


def test_idx_checksum_of_decompressed_bytes(tmp_path):
    array = np.ones((3, 2, 2), np.uint8)
    path = write_idx(tmp_path / "c", array)
    good = hashlib.md5(gzip.decompress(path.read_bytes())).hexdigest()
    np.testing.assert_array_equal(read_idx(path, expected_md5=good), array)
    with pytest.raises(VaelabError, match="fails its checksum"):
        read_idx(path, expected_md5="0" * 32)


def test_images_and_labels_of_different_lengths(tmp_path):
    make_synthetic_mnist(tmp_path, n_train=50, n_test=20)
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(19, np.uint8))
    dm = MNISTDataModule(tmp_path, val_size=10, download=False)
    with pytest.raises(VaelabError, match="has 20 images but .* has 19 labels"):
        dm.setup()


def test_missing_files_offline_names_folder_files_and_fix(tmp_path):
    with pytest.raises(VaelabError) as err:
        ensure_files(tmp_path / "MNIST" / "raw", mirrors=["http://127.0.0.1:9"])
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert all(name in message for name in FILE_NAMES)
    assert "DATA_ROOT" in message and "\n" not in message


def test_missing_files_without_download(tmp_path):
    with pytest.raises(VaelabError, match="missing from .*train-images-idx3-ubyte"):
        ensure_files(tmp_path / "MNIST" / "raw", download_missing=False)


@pytest.mark.parametrize("download", [True, False])
def test_data_dir_naming_the_raw_folder_itself_is_refused_without_writing(tmp_path, download):
    # DATA_ROOT=/data/MNIST/raw instead of DATA_ROOT=/data: one line saying which value to use,
    # and nothing created or downloaded inside the (maybe shared, read-only) data folder
    make_synthetic_mnist(tmp_path, n_train=30, n_test=10)
    raw = tmp_path / "MNIST" / "raw"
    before = sorted(p.name for p in raw.iterdir())
    with pytest.raises(VaelabError) as err:
        ensure_files(
            raw / "MNIST" / "raw", mirrors=["http://127.0.0.1:9"], download_missing=download
        )
    message = str(err.value)
    assert f"DATA_ROOT={tmp_path}" in message and "\n" not in message
    assert sorted(p.name for p in raw.iterdir()) == before


def test_extracted_files_and_search_dirs_are_found(tmp_path):
    make_synthetic_mnist(tmp_path / "elsewhere", n_train=30, n_test=10)
    source = tmp_path / "elsewhere" / "MNIST" / "raw"
    for gz in source.glob("*.gz"):  # leave one file extracted
        if gz.name.startswith("t10k-labels"):
            gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
            gz.unlink()
    found = ensure_files(tmp_path / "MNIST" / "raw", download_missing=False, search_dirs=[source])
    assert found["t10k-labels-idx1-ubyte"].name == "t10k-labels-idx1-ubyte"
    assert found["train-images-idx3-ubyte"].name == "train-images-idx3-ubyte.gz"


@pytest.fixture
def mirror(tmp_path):
    """A local HTTP server serving synthetic MNIST .gz files; yields (url, served_dir)."""
    make_synthetic_mnist(tmp_path / "served", n_train=40, n_test=10)
    served = tmp_path / "served" / "MNIST" / "raw"
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()
    server.server_close()


def test_download_from_mirror_with_checksums(tmp_path, mirror):
    url, served = mirror
    checksums = {
        name: hashlib.md5(gzip.decompress((served / f"{name}.gz").read_bytes())).hexdigest()
        for name in FILE_NAMES
    }
    dm = MNISTDataModule(
        tmp_path / "data", val_size=10, mirrors=["http://127.0.0.1:9", url], checksums=checksums
    )
    dm.setup()
    assert sorted(p.name for p in dm.raw_dir.iterdir()) == sorted(f"{n}.gz" for n in FILE_NAMES)
    assert len(dm.data_train) == 30 and len(dm.data_val) == 10 and len(dm.data_test) == 10


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return make_synthetic_mnist(tmp_path_factory.mktemp("small"), n_train=300, n_test=70)


def test_validation_hold_out_is_seeded_and_disjoint(small_root):
    a = MNISTDataModule(small_root, val_size=50, download=False, split_seed=1)
    b = MNISTDataModule(small_root, val_size=50, download=False, split_seed=1)
    a.setup()
    b.setup()
    assert len(a.data_train) == 250 and len(a.data_val) == 50 and len(a.data_test) == 70
    torch.testing.assert_close(a.data_val.images, b.data_val.images)
    train_rows = {row.numpy().tobytes() for row in a.data_train.images}
    assert not any(row.numpy().tobytes() in train_rows for row in a.data_val.images)


def test_val_size_zero_validates_on_the_test_set(small_root):
    dm = MNISTDataModule(small_root, val_size=0, download=False)
    dm.setup()
    assert len(dm.data_train) == 300
    assert dm.data_val is dm.data_test


def test_dynamic_binarization_draws_from_its_seeded_generator_and_resumes(small_root):
    def datamodule():
        dm = MNISTDataModule(small_root, val_size=50, download=False, binarize="dynamic")
        dm.setup()
        dm.data_train.images = torch.full_like(dm.data_train.images, 128)  # grey: p = 0.5
        return dm

    rows = torch.arange(32)
    torch.manual_seed(1)
    a = datamodule()
    first = a.data_train[rows][0]
    torch.manual_seed(2)  # the global generator plays no part
    b = datamodule()
    torch.testing.assert_close(b.data_train[rows][0], first)
    assert set(first.unique().tolist()) <= {0.0, 1.0}
    state = {"binarize_noise": a.data_train.noise.get_state()}  # what a checkpoint keeps
    second = a.data_train[rows][0]
    assert not torch.equal(second, first)  # afresh for every batch
    resumed = datamodule()
    resumed.load_state_dict(state)
    torch.testing.assert_close(resumed.data_train[rows][0], second)


def test_val_size_must_leave_training_data(small_root):
    with pytest.raises(VaelabError, match=r"data.val_size=300 must be between 0 and 299"):
        MNISTDataModule(small_root, val_size=300, download=False).setup()


def test_batches_cover_the_split_once_with_a_smaller_last_batch(small_root):
    dm = MNISTDataModule(small_root, val_size=50, batch_size=64, eval_batch_size=40, download=False)
    dm.setup()
    train_batches = list(dm.train_dataloader())
    assert [len(y) for _, y in train_batches] == [64, 64, 64, 58]
    x, y = train_batches[0]
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= 0 and x.max() <= 1
    seen = torch.cat([x.flatten(1) for x, _ in train_batches])
    assert len(torch.unique(seen, dim=0)) == len(
        torch.unique(dm.data_train.images.flatten(1).float() / 255, dim=0)
    )
    assert [len(y) for _, y in dm.val_dataloader()] == [40, 10]


def test_a_batch_is_the_images_scaled_to_unit_range_exactly():
    images = torch.randint(0, 256, (50, 28, 28), dtype=torch.uint8)
    labels = torch.arange(50) % 10
    indices = torch.tensor([7, 0, 49, 7])
    x, y = InMemoryImages(images, labels)[indices]
    assert x.dtype == torch.float32 and x.shape == (4, 1, 28, 28)
    assert torch.equal(x, images[indices].unsqueeze(1).float() / 255)
    assert torch.equal(y, labels[indices])
