"""data=fashion_mnist: the same data module, reading Fashion-MNIST from torchvision's layout or
from where Debian's dataset-fashion-mnist package installs it."""

from pathlib import Path

import pytest
from conftest import compose_train, make_synthetic_mnist
from hydra.utils import instantiate

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def test_fashion_mnist_is_read_from_the_debian_search_dir(tmp_path):
    # a stand-in for Debian's folder: the four files, flat, as the package installs them
    debian = make_synthetic_mnist(tmp_path / "debian") / "MNIST" / "raw"
    cfg = compose_train(
        [
            "data=fashion_mnist",
            f"paths.data_dir={tmp_path / 'empty'}",
            f"data.search_dirs=[{debian}]",
            "data.checksums=null",
            "data.download=false",
            "data.val_size=100",
        ]
    )
    assert cfg.data.dataset == "FashionMNIST"
    dm = instantiate(cfg.data)
    assert dm.raw_dir == (tmp_path / "empty" / "FashionMNIST" / "raw").resolve()
    dm.setup()
    assert (len(dm.data_train), len(dm.data_val), len(dm.data_test)) == (500, 100, 200)
    assert all(Path(p).parent == debian for p in dm._paths.values())


def test_fashion_mnist_config_looks_where_debian_installs_it():
    cfg = compose_train(["data=fashion_mnist"])
    assert str(DEBIAN_DIR) in list(cfg.data.search_dirs)
    assert set(cfg.data.checksums) == {
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    }


@pytest.mark.slow
@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_debian_fashion_mnist_passes_the_configured_checksums(tmp_path):
    cfg = compose_train(["data=fashion_mnist", f"paths.data_dir={tmp_path}", "data.download=false"])
    dm = instantiate(cfg.data)
    dm.setup()  # verifies the md5 of each decompressed file
    assert len(dm.data_train) + len(dm.data_val) == 60000 and len(dm.data_test) == 10000
    x, y = dm.data_test[list(range(1000))]
    assert sorted(set(y.tolist())) == list(range(10)) and 0.2 < x.mean() < 0.4
