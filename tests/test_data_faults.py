"""Broken data: one clear message naming the file and the fix, and downloads that are
never trusted unless complete and valid (a local HTTP server stands in for the mirrors)."""

import gzip
import hashlib
import http.server
import threading

import numpy as np
import pytest
from conftest import compose_train, make_synthetic_mnist, synthetic_overrides, write_idx

from vaelab.data import MNISTDataModule
from vaelab.data.files import FILE_NAMES
from vaelab.errors import VaelabError
from vaelab.runs.train import train


class Mirror:
    """An HTTP server on 127.0.0.1 serving ``files`` (name -> bytes). ``drop_half`` makes it
    declare the full Content-Length, send half the bytes and close the connection."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.drop_half, self.requests = files, False, []
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                mirror.requests.append(name)
                body = mirror.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if mirror.drop_half else body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror(tmp_path):
    served = make_synthetic_mnist(tmp_path / "served", n_train=40, n_test=10) / "MNIST" / "raw"
    server = Mirror({p.name: p.read_bytes() for p in served.glob("*.gz")})
    yield server
    server.close()


def md5_of_decompressed(data: bytes) -> str:
    return hashlib.md5(gzip.decompress(data)).hexdigest()


def datamodule(tmp_path, mirror, checksums=None) -> MNISTDataModule:
    return MNISTDataModule(
        tmp_path / "data", val_size=10, mirrors=[mirror.url], checksums=checksums
    )


def test_download_with_checksums_succeeds(tmp_path, mirror):
    checksums = {n: md5_of_decompressed(mirror.files[f"{n}.gz"]) for n in FILE_NAMES}
    dm = datamodule(tmp_path, mirror, checksums)
    dm.setup()
    assert sorted(p.name for p in dm.raw_dir.iterdir()) == sorted(f"{n}.gz" for n in FILE_NAMES)
    assert len(dm.data_train) == 30 and len(dm.data_test) == 10


def test_interrupted_download_leaves_no_file(tmp_path, mirror):
    mirror.drop_half = True
    dm = datamodule(tmp_path, mirror)
    with pytest.raises(VaelabError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert message.startswith(f"MNIST-format files missing from {dm.raw_dir}")
    assert f"{mirror.url}/train-images-idx3-ubyte.gz: ChunkedEncodingError" in message
    assert "IncompleteRead" in message and "DATA_ROOT" in message and "\n" not in message
    assert list(dm.raw_dir.iterdir()) == []  # not even pooch's temporary file


def test_download_failing_its_checksum_is_deleted_and_never_trusted(tmp_path, mirror):
    checksums = {n: md5_of_decompressed(mirror.files[f"{n}.gz"]) for n in FILE_NAMES}
    name = "train-images-idx3-ubyte"
    other = write_idx(tmp_path / name, np.full((40, 28, 28), 7, np.uint8))
    mirror.files[f"{name}.gz"] = other.read_bytes()  # valid IDX, wrong contents
    for attempt in (1, 2):  # the second run downloads again instead of trusting a file
        with pytest.raises(VaelabError) as err:
            datamodule(tmp_path, mirror, checksums).prepare_data()
        assert f"{mirror.url}/{name}.gz: the downloaded file was invalid and is deleted" in str(
            err.value
        )
        assert "fails its checksum" in str(err.value)
        assert list((tmp_path / "data" / "MNIST" / "raw").iterdir()) == []
        assert mirror.requests.count(f"{name}.gz") == attempt


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("garbage", "{path} is truncated or corrupt (Not a gzipped file"),
        ("truncated", "{path} is truncated or corrupt (Compressed file ended before"),
        ("magic", "{path} is not an IDX file (magic number 89504e47)"),
    ],
)
def test_broken_training_file_fails_before_the_model_is_built(tmp_path, fault, message):
    root = make_synthetic_mnist(tmp_path / "data", n_train=100, n_test=20)
    path = root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    if fault == "garbage":
        path.write_bytes(b"this is not gzip data" * 10)
    elif fault == "truncated":
        path.write_bytes(path.read_bytes()[:20])
    else:
        path.write_bytes(gzip.compress(b"\x89PNG" + bytes(100)))
    overrides = synthetic_overrides(root, tmp_path) + ["data.val_size=10"]
    with pytest.raises(VaelabError) as err:
        train(compose_train(overrides, tmp_path / "run"))
    assert str(err.value).startswith(message.format(path=path)), str(err.value)
    assert "replace" in str(err.value) or "download or copy it again" in str(err.value)
    assert not (tmp_path / "run").exists()  # no logger or checkpoint dir: nothing was built
