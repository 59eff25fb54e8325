"""The real ``tensorboard`` server shows a run's scalars and images through its HTTP API."""

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from io import BytesIO

import pytest
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


@pytest.fixture
def tensorboard(trained_run):
    """A tensorboard server on 127.0.0.1 over the run; yields its base URL; always stopped."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "tensorboard.main",
        "--logdir",
        str(trained_run),
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
                tags = json.loads(get(base, "/data/plugin/images/tags"))
                if any(set(t) >= IMAGE_TAGS for t in tags.values()):
                    break
            except OSError:
                pass
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "tensorboard did not load the run in 60 s"
            time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


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
    assert [e["step"] for e in entries] == [0, 1]
    png = get(tensorboard, "/data/plugin/images/individualImage?" + entries[-1]["query"])
    with Image.open(BytesIO(png)) as image:
        assert image.format == "PNG"
        image.load()
        assert min(image.size) > 28
