"""The MLflow UI on the suite's runs: a loopback `mlflow server`, the link that opens an
experiment's runs side by side (chart view), and a headless-Chromium screenshot of it."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from dmarl.errors import UserError

START_TIMEOUT_S = 120.0


def comparison_url(base: str, experiment_id: str) -> str:
    """The experiment's runs in MLflow's chart view (every metric of every run side by side),
    with the UI in its model-training mode rather than its GenAI mode."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?compareRunsMode=CHART&workflowType=machine_learning"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, artifacts_dir: Path, port: int | None = None) -> Iterator[str]:
    """Run `mlflow server` on 127.0.0.1 (serving artifacts from ``artifacts_dir``) until the
    block ends; yields its URL once ``/health`` answers. The server and its workers run in their
    own process group, stopped together; its output goes to a temporary log, quoted on failure."""
    port = port or free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", backend_store_uri, "--artifacts-destination", str(artifacts_dir),
    ]
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S  # a loaded machine starts the server slowly
        try:
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise UserError(f"mlflow server on port {port} did not start: {log.read()[-2000:]}") from None
                    time.sleep(0.25)
            yield url
        finally:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is already gone
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def chromium() -> str | None:
    """The headless browser (Debian's `chromium` package), or None when it is not installed."""
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


RENDERED_STD = 20.0  # mean per-channel pixel std of a rendered MLflow page (a blank one is ~0; charts > 25)


def pixel_std(png: Path) -> float:
    """Mean over colour channels of the pixel standard deviation of an image file."""
    import imageio.v3 as iio
    import numpy as np

    image = np.asarray(iio.imread(png), dtype=np.float64)
    return float(image.reshape(-1, image.shape[-1]).std(axis=0).mean())


def screenshot(url: str, out: Path, *, width: int = 1600, height: int = 1000, wait_ms: int = 25000,
               attempts: int = 3) -> Path:
    """Render ``url`` in headless Chromium and write a PNG of the window to ``out``.

    A capture that is still nearly blank (``pixel_std`` below ``RENDERED_STD``: the page's
    scripts had not drawn yet, seen on a loaded machine) is retaken with twice the virtual-time
    budget, up to ``attempts`` captures; the last one is kept either way."""
    browser = chromium()
    if browser is None:
        raise UserError("no Chromium found; install the Debian package `chromium` to take screenshots")
    out.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(attempts):
        cmd = [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={width},{height}",
            f"--virtual-time-budget={wait_ms * 2**attempt}", f"--screenshot={out}", url,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180 * 2**attempt)
        if done.returncode != 0 or not out.is_file():
            raise UserError(f"chromium could not screenshot {url}: {done.stderr[-2000:]}")
        if pixel_std(out) >= RENDERED_STD:
            break
    return out
