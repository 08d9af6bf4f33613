"""Headless Debian Chromium driven by Selenium, against a real server on 127.0.0.1.

Chromium and its driver come from Debian (`make browser`: apt-get install
chromium chromium-driver), never downloaded by a test tool. Under CI (`CI`
set) a missing browser fails the tests; elsewhere they skip, saying how to
install it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("QWEN_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("QWEN_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
INSTALL = "make browser (as root: apt-get install chromium chromium-driver)"
# No Google services, no QUIC: this machine's network is closed, and a test must not depend on it.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--autoplay-policy=no-user-gesture-required",
    "--window-size=1100,1400",
]


def _require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (os.path.isfile(p) or shutil.which(p))]
    if not missing:
        return
    message = f"{' and '.join(missing)} not found: {INSTALL}"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the browser tests: {message}")
    pytest.skip(message)


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """`chromium(microphone=WAV)` -> a Selenium driver; the WAV file (if any) is the fake microphone,
    `deny_microphone=True` refuses the permission as a user would."""
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    drivers: list[Any] = []

    def start(microphone: Path | None = None, deny_microphone: bool = False) -> Any:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={tmp_path / f'profile{len(drivers)}'}")
        if microphone is not None:
            options.add_argument("--use-fake-ui-for-media-stream")  # grants the permission
            options.add_argument("--use-fake-device-for-media-stream")
            options.add_argument(f"--use-file-for-fake-audio-capture={microphone}%noloop")
        if deny_microphone:
            options.add_argument("--use-fake-ui-for-media-stream=deny")
            options.add_argument("--use-fake-device-for-media-stream")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=DriverService(CHROMEDRIVER), options=options)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        try:
            for entry in driver.get_log("browser"):  # shown by pytest when the test failed
                print("console:", entry.get("level"), entry.get("message"))
        finally:
            driver.quit()
