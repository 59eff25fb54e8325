"""The sample-quality classifier on a tiny synthetic digit set: it learns, it is cached by a
fingerprint of its data, and a read-only cache location falls back to the next one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vaelab.evaluation.classifier import DigitClassifier, Images, classify
from vaelab.lit.classifier import load_or_train, train_classifier

TINY = {"channels": (4, 8), "num_features": 16}


@pytest.fixture(autouse=True)
def one_thread():
    """Convolutions this small run fastest on one thread (several times faster when the
    machine is shared: no waiting for a busy second core at every op)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_digits(n: int, seed: int) -> Images:
    """Each class a fixed random blob pattern (same for every seed) plus pixel noise."""
    prototypes = torch.rand(10, 28, 28, generator=torch.Generator().manual_seed(0)) < 0.2
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    noise = torch.rand(n, 28, 28, generator=gen) < 0.05
    x = (prototypes[y] ^ noise).to(torch.uint8) * 255
    return Images(x, y)


def test_train_classifier_learns_synthetic_digits():
    model, acc = train_classifier(
        synthetic_digits(300, 1), synthetic_digits(100, 2), epochs=4, batch_size=32, lr=1e-2,
        progress=False, **TINY,
    )  # fmt: skip
    assert acc >= 0.9
    probs, feats = classify(model, synthetic_digits(20, 3).x)
    torch.testing.assert_close(probs.sum(1), torch.ones(20))
    assert feats.shape == (20, 16) and (feats >= 0).all()


def test_load_or_train_caches_by_data_fingerprint(tmp_path):
    train, test = synthetic_digits(100, 1), synthetic_digits(50, 2)
    dirs = [tmp_path / "beside-data", tmp_path / "user-cache"]
    kwargs = {"epochs": 1, "progress": False, "model_kwargs": TINY}
    first, info = load_or_train(train, test, dirs, **kwargs)
    assert info["trained"] and info["path"].startswith(str(dirs[0]))
    saved = torch.load(info["path"], weights_only=True)
    assert saved["accuracy"] == info["accuracy"] and saved["model_kwargs"] == TINY

    again, info2 = load_or_train(train, test, dirs, **kwargs)
    assert not info2["trained"] and info2["path"] == info["path"]
    assert info2["accuracy"] == info["accuracy"]
    torch.testing.assert_close(again(test.x), first(test.x))

    other_train = synthetic_digits(100, 5)  # other data: another fingerprint, trained anew
    _, info3 = load_or_train(other_train, test, dirs, **kwargs)
    assert info3["trained"] and info3["fingerprint"] != info["fingerprint"]
    assert len(list(dirs[0].glob("digit_classifier-*.pt"))) == 2


def test_unwritable_cache_dir_falls_back_to_the_next(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # a folder cannot be made below a file, even by root
    dirs = [blocker / "classifier", tmp_path / "user-cache"]
    _, info = load_or_train(
        synthetic_digits(50, 1), synthetic_digits(20, 2), dirs, epochs=1, progress=False,
        model_kwargs=TINY,
    )  # fmt: skip
    assert info["path"].startswith(str(dirs[1]))


def test_digit_classifier_shapes():
    model = DigitClassifier(**TINY).eval()
    x = torch.rand(3, 1, 28, 28)
    assert model(x).shape == (3, 10) and model.features(x).shape == (3, 16)


def test_read_only_locations_are_searched_but_never_written(tmp_path):
    train, test = synthetic_digits(50, 1), synthetic_digits(20, 2)
    beside_data, cache = tmp_path / "data" / "MNIST" / "classifier", tmp_path / "cache"
    kwargs = {"epochs": 1, "progress": False, "model_kwargs": TINY, "read_only": 1}
    _, info = load_or_train(train, test, [beside_data, cache], **kwargs)
    assert info["trained"] and info["path"].startswith(str(cache))
    assert not beside_data.exists()
    # a classifier placed beside the data (e.g. in a shared data folder) is found first
    beside_data.mkdir(parents=True)
    (cache / Path(info["path"]).name).rename(beside_data / Path(info["path"]).name)
    _, info2 = load_or_train(train, test, [beside_data, cache], **kwargs)
    assert not info2["trained"] and info2["path"].startswith(str(beside_data))
