"""The real ``tensorboard`` server shows a run's scalars and images through its HTTP API."""

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest
from conftest import run_script, synthetic_overrides
from PIL import Image

SCALAR_PREFIXES = ("train/", "val/", "test/")
IMAGE_TAGS = {"val/reconstructions", "val/samples", "val/interpolation", "val/latent_space"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(base: str, path: str, **params) -> bytes:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def post(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{base}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def serve(logdir: Path, ready: Callable[[str], bool]):
    """A tensorboard server on 127.0.0.1 over ``logdir``, once ``ready(base_url)``; yields its
    base URL; always stopped."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "tensorboard.main",
        "--logdir",
        str(logdir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--load_fast",
        "false",
        "--reload_interval",
        "1",
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if ready(base):
                    break
            except OSError:
                pass
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "tensorboard did not load the runs in 60 s"
            time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture
def tensorboard(trained_run):
    """A tensorboard server over the run, once its images are loaded."""

    def images_loaded(base: str) -> bool:
        tags = json.loads(get(base, "/data/plugin/images/tags"))
        return any(set(t) >= IMAGE_TAGS for t in tags.values())

    with serve(trained_run, images_loaded) as base:
        yield base


@pytest.mark.slow
def test_tensorboard_serves_the_runs_scalars_and_images(tensorboard):
    runs = json.loads(get(tensorboard, "/data/runs"))
    assert runs, "no run found"
    scalar_tags = {
        t
        for tags in json.loads(get(tensorboard, "/data/plugin/scalars/tags")).values()
        for t in tags
    }
    for split in ("train", "val", "test"):
        assert {f"{split}/loss", f"{split}/recon", f"{split}/kl"} <= scalar_tags

    image_tags = json.loads(get(tensorboard, "/data/plugin/images/tags"))
    run = next(r for r, tags in image_tags.items() if set(tags) >= IMAGE_TAGS)
    entries = json.loads(
        get(tensorboard, "/data/plugin/images/images", run=run, tag="val/samples", sample=0)
    )
    assert [e["step"] for e in entries] == [7, 15]  # every epoch (2 of 8 steps)
    png = get(tensorboard, "/data/plugin/images/individualImage?" + entries[-1]["query"])
    with Image.open(BytesIO(png)) as image:
        assert image.format == "PNG"
        image.load()
        assert min(image.size) > 28


@pytest.mark.slow
def test_the_projector_lists_the_posterior_means_with_digits_and_sprite(tensorboard):
    runs = json.loads(get(tensorboard, "/data/plugin/projector/runs"))
    assert runs
    info = json.loads(get(tensorboard, "/data/plugin/projector/info", run=runs[0]))
    (embedding,) = info["embeddings"]
    assert embedding["tensorName"].startswith("val/posterior_means")
    assert embedding["tensorShape"] == [100, 32]  # the 100 validation images, latent 32
    assert embedding["metadataPath"] and embedding["sprite"]["singleImageDim"] == [28, 28]
    digits = get(
        tensorboard, "/data/plugin/projector/metadata", run=runs[0], name=embedding["tensorName"]
    ).decode()
    assert len(digits.split()) == 100 and set(digits.split()) <= set("0123456789")
    sprite = get(
        tensorboard, "/data/plugin/projector/sprite_image", run=runs[0],
        name=embedding["tensorName"],
    )  # fmt: skip
    with Image.open(BytesIO(sprite)) as image:
        assert image.format == "PNG" and image.size[0] >= 28 * 10


def test_the_scalars_page_opens_on_the_losses(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained_run / "tensorboard"), size_guidance={"histograms": 0})
    events.Reload()
    tags = events.Tags()
    assert "epoch" not in tags["scalars"]  # no staircase chart first
    assert not [t for t in tags["scalars"] if t.count("/") > 1]  # nothing per dimension
    assert {"val/kl_per_dim", "val/active_unit_variance"} <= set(tags["histograms"])
    assert len(events.Histograms("val/kl_per_dim")) == 2  # one per epoch
    layout = events.Tensors("custom_scalars__config__")  # the CUSTOM SCALARS layout
    assert layout and b"^train/loss$" in layout[0].tensor_proto.SerializeToString()
    # the NLL's settings are no measurements: no scalar cards
    assert not {"test/nll_k", "test/nll_images", "test/nll_normalized"} & set(tags["scalars"])


SESSION_REQUEST = {
    "experimentName": "",
    "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
    "colParams": [],
    "startIndex": 0,
    "sliceSize": 100,
}


@pytest.fixture(scope="module")
def sweep_dir(synthetic_root, tmp_path_factory) -> Path:
    """A 2-job sweep over the latent size, one epoch each, on the synthetic data."""
    sweep = tmp_path_factory.mktemp("tb-sweep") / "sweep"
    result = run_script(
        "train.py",
        ["-m", "model.latent_dim=2,4", f"hydra.sweep.dir={sweep}", "trainer.max_epochs=1"]
        + synthetic_overrides(synthetic_root, sweep.parent / "logs"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"tensorboard --logdir {sweep / 'tensorboard'}" in result.stdout
    return sweep


@pytest.mark.slow
def test_a_sweeps_runs_are_named_by_their_values_with_hparams_and_metrics(sweep_dir):
    def both_sessions(base: str) -> bool:
        groups = post(base, "/data/plugin/hparams/session_groups", SESSION_REQUEST)
        return len(groups.get("sessionGroups", [])) == 2

    with serve(sweep_dir / "tensorboard", both_sessions) as base:
        runs = json.loads(get(base, "/data/runs"))
        assert set(runs) == {"latent_dim=2", "latent_dim=4"}  # no empty run "."
        experiment = post(base, "/data/plugin/hparams/experiment", {"experimentName": ""})
        (only,) = experiment["hparamInfos"]  # only what varies, then the figures
        assert only["name"] == "model.latent_dim" and only["differs"]
        assert only["domainDiscrete"] == ["2", "4"]
        assert [m["name"]["tag"] for m in experiment["metricInfos"]][:2] == [
            "val/loss_best",
            "test/loss",
        ]
        groups = post(base, "/data/plugin/hparams/session_groups", SESSION_REQUEST)
        by_name = {g["name"]: g for g in groups["sessionGroups"]}
        assert set(by_name) == {"latent_dim=2", "latent_dim=4"}
        for latent in (2, 4):
            group = by_name[f"latent_dim={latent}"]
            assert group["hparams"]["model.latent_dim"] == str(latent)  # not 2.0000
            assert group["hparams"]["model"] == "vae"
            metrics = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
            job = next(
                d for d in sweep_dir.iterdir() if (d / ".hydra").is_dir()
                and f"model.latent_dim={latent}" in (d / ".hydra" / "overrides.yaml").read_text()
            )  # fmt: skip
            saved = json.loads((job / "metrics.json").read_text())
            assert metrics["test/loss"] == pytest.approx(saved["test/loss"], rel=1e-6)
            assert metrics["val/loss_best"] == pytest.approx(saved["val/loss"], rel=1e-6)
            assert {"test/recon", "test/kl", "test/nll", "test/active_units"} <= set(metrics)
        tags = json.loads(get(base, "/data/plugin/scalars/tags"))
        assert all({"train/loss", "val/loss"} <= set(run_tags) for run_tags in tags.values())
