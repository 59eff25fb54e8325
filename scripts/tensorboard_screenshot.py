"""Capture a TensorBoard page of a run to a PNG with headless Chromium.

    python scripts/tensorboard_screenshot.py logs/train/runs/<ts> --out docs/images/tensorboard.png
    python scripts/tensorboard_screenshot.py <sweep dir> --page hparams --out hparams.png
    python scripts/tensorboard_screenshot.py <sweep dir>/tensorboard/<job> --page projector

``--page`` is the dashboard: images (default), scalars, custom_scalars, hparams (its table
view; ``--click 'parallel coordinates view'`` shows that view instead), projector (drawn
with software WebGL; give it ``--wait-ms 30000``).

Starts ``tensorboard`` on 127.0.0.1 at a free port over the run, waits until the run's images
are loaded, and has Chromium (Debian's ``chromium`` package: ``apt-get install chromium``)
render the page with every network feature off. Optional: nothing else in vaelab needs it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
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


def click_and_capture(chromium: str, profile: str, args, url: str) -> None:
    """Load ``url``, click the first element whose text is ``args.click`` (a tab such as
    PARALLEL COORDINATES VIEW, searched through shadow roots), wait, and save a screenshot.
    Chromium's command line cannot click, so this drives it through the DevTools protocol on
    a pipe (fd 3: commands, fd 4: replies, messages ending in NUL): no library needed."""
    commands_read, commands_write = os.pipe()
    replies_read, replies_write = os.pipe()

    def wire_fds() -> None:
        # via fresh duplicates: dup2 onto the same number would keep close-on-exec set
        commands, replies = os.dup(commands_read), os.dup(replies_write)
        os.dup2(commands, 3)
        os.dup2(replies, 4)

    browser = subprocess.Popen(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ],  # fmt: skip
        preexec_fn=wire_fds,
        close_fds=False,  # else the fds 3 and 4 made by wire_fds are closed before exec
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(commands_read)
    os.close(replies_write)
    pending, counter = b"", iter(range(1, 1 << 30))

    def call(method: str, session: str | None = None, **params):
        nonlocal pending
        number = next(counter)
        message = {"id": number, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(commands_write, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in pending:
                chunk = os.read(replies_read, 1 << 20)
                if not chunk:
                    sys.exit("error: chromium closed its DevTools pipe")
                pending += chunk
            raw, pending = pending.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == number:
                if "error" in reply:
                    sys.exit(f"error: chromium: {method}: {reply['error']}")
                return reply.get("result", {})

    click = f"""(() => {{ const stack = [document];
      while (stack.length) {{ const node = stack.pop();
        for (const el of node.querySelectorAll('*')) {{
          if (el.shadowRoot) stack.push(el.shadowRoot);
          if ((el.children.length === 0 || el.tagName === 'PAPER-TAB')
              && el.textContent.trim().toUpperCase() === {json.dumps(args.click.upper())}) {{
            el.click(); return true; }} }} }}
      return false; }})()"""
    try:
        target = call("Target.createTarget", url=url)["targetId"]
        session = call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        width, height = map(int, args.size.split(","))
        call("Emulation.setDeviceMetricsOverride", session, width=width, height=height,
             deviceScaleFactor=1, mobile=False)  # fmt: skip
        deadline = time.monotonic() + 60
        while not call("Runtime.evaluate", session, expression=click, returnByValue=True)[
            "result"
        ].get("value"):
            if time.monotonic() > deadline:
                sys.exit(f"error: nothing labelled {args.click!r} on the page within 60 s")
            time.sleep(0.5)
        time.sleep(args.wait_ms / 1000)
        png = call("Page.captureScreenshot", session, format="png")["data"]
        args.out.write_bytes(base64.b64decode(png))
    finally:
        browser.kill()
        browser.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a run dir (or any TensorBoard logdir)")
    parser.add_argument("--out", type=Path, default=Path("tensorboard.png"))
    parser.add_argument("--page", default="images", help="dashboard: images, scalars, ...")
    parser.add_argument("--size", default="1400,1080", help="window width,height in pixels")
    parser.add_argument("--wait-ms", type=int, default=15000, help="virtual time to render")
    parser.add_argument(
        "--click", help="click the element with this text first, e.g. 'parallel coordinates view'"
    )
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
            if args.click:
                click_and_capture(chromium, profile, args, f"{base}/#{args.page}")
                print(f"wrote {args.out}")
                return
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
