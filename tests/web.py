"""Shared by the gallery and explorer tests: a tiny classifier with awkward class names, a live server, headless Chromium."""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from normgrad.models import LoadedModel, Preprocess

CHROMIUM = os.environ.get("NORMGRAD_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("NORMGRAD_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,900"]  # fmt: skip
# names are user data: markup, entities, quotes, a closing script tag, non-ASCII
AWKWARD = ['<b>bold</b> & "quoted"', "x</script><script>window.pwned=1</script>", "café ☃ 猫", "it's <img src=x onerror=pwned=1>"]


class TinyNet(nn.Module):
    """Three conv stages and a linear head: fast, deterministic, and its maps differ from class to class."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage2(self.stage1(self.stem(x))).mean((2, 3)))


def tiny_model(classes: int = 6) -> LoadedModel:
    torch.manual_seed(1)
    names = [*AWKWARD, *(f"class {i}" for i in range(len(AWKWARD), classes))][:classes]
    return LoadedModel("tiny", TinyNet(classes).eval(), Preprocess(size=64), names)


def picture(path: Path, size: tuple[int, int] = (96, 72), seed: int = 0) -> Path:
    """A smooth random picture (so maps are not flat), saved by its suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(path)
    return path


@contextlib.contextmanager
def live_server(app) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()


def _missing(message: str, module: bool = False) -> None:
    """Fail under ``make test`` (NORMGRAD_BROWSER_TESTS=required), skip elsewhere."""
    if os.environ.get("NORMGRAD_BROWSER_TESTS") == "required":
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=module)


def require_selenium() -> None:
    """At the top of a browser test module, before importing selenium."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        _missing("browser tests need the selenium package: pip install -e '.[dev]' (make test installs it)", module=True)


def chromium():
    """A headless Chromium (Debian's, with its driver) with a fresh profile; fails, not skips, under ``make test`` if absent."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package (pip install -e '.[dev]')")
    if missing:
        _missing(f"browser tests need {', '.join(missing)}: apt-get install chromium chromium-driver (make test installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='normgrad-chromium-')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def wait(condition, timeout: float = 15.0, message: str = "the page did not get there"):
    """Poll ``condition()`` until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except Exception:  # noqa: BLE001 - the element may not be there yet
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.05)


def severe_console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
