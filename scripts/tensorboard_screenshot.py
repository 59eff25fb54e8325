"""Capture a TensorBoard page of a run to a PNG with headless Chromium.

    python scripts/tensorboard_screenshot.py logs/train/runs/<ts> --out docs/images/tensorboard.png
    python scripts/tensorboard_screenshot.py <sweep dir> --page hparams --out hparams.png
    python scripts/tensorboard_screenshot.py <sweep dir>/tensorboard/<job> --page projector

``--page`` is the dashboard: images (default), scalars, custom_scalars, hparams (its table
view), projector (drawn with software WebGL; give it ``--wait-ms 30000``).

Starts ``tensorboard`` on 127.0.0.1 at a free port over the run, waits until the run's images
are loaded, and has Chromium (Debian's ``chromium`` package: ``apt-get install chromium``)
render the page with every network feature off. Optional: nothing else in vaelab needs it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--enable-unsafe-swiftshader",  # WebGL in software: the projector draws with it
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_images(base: str, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit("error: tensorboard exited: " + server.stderr.read().decode()[-500:])
        try:
            with urllib.request.urlopen(f"{base}/data/plugin/images/tags", timeout=5) as r:
                if any(json.load(r).values()):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"error: tensorboard did not show images of the run within {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a run dir (or any TensorBoard logdir)")
    parser.add_argument("--out", type=Path, default=Path("tensorboard.png"))
    parser.add_argument("--page", default="images", help="dashboard: images, scalars, ...")
    parser.add_argument("--size", default="1400,1080", help="window width,height in pixels")
    parser.add_argument("--wait-ms", type=int, default=15000, help="virtual time to render")
    args = parser.parse_args()

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("error: chromium not found; install it with `apt-get install chromium`")
    logdir = args.run / "tensorboard" if (args.run / "tensorboard").is_dir() else args.run
    if not logdir.is_dir():
        sys.exit(
            f"error: {args.run} is not a directory; pass a run dir such as logs/train/runs/<ts>"
        )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
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
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_images(base, server)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(
                [
                    chromium,
                    *CHROMIUM_FLAGS,
                    f"--user-data-dir={profile}",
                    f"--window-size={args.size}",
                    f"--virtual-time-budget={args.wait_ms}",
                    f"--screenshot={args.out.resolve()}",
                    f"{base}/#{args.page}",
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
