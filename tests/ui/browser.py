"""Headless Chromium for the dashboard tests, driven by Selenium.

Debian's `chromium` and `chromium-driver` packages are used as installed
(/usr/bin/chromium, /usr/bin/chromedriver): the driver path is given to Selenium's
Service, so Selenium Manager never runs and nothing is downloaded. Without them
the tests are skipped, except under CI (CI=true), where .ci/run installs them and
a missing binary is a failure. Every browser gets its own temporary profile and is
stopped by `quit()`; whatever it started and left running is then killed by pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = "1400,1300"
ARTIFACTS_VARIABLE = "CHANGEAGENT_ARTIFACTS"


def require_browser() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    if missing:
        message = f"missing {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@contextlib.contextmanager
def chromium(profile: Path, driver_log: Path) -> Iterator[Any]:
    """A headless Chromium session; quit (and killed if need be) on the way out."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    arguments = [
        "--headless=new",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW}",
        "--disable-gpu",
        "--disable-dev-shm-usage",  # small /dev/shm in containers
        "--disable-extensions",
        "--disable-background-networking",  # no update or safe-browsing traffic
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
    ]
    if os.geteuid() == 0:
        arguments.append("--no-sandbox")  # Chromium's sandbox refuses to run as root
    for argument in arguments:
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(CHROMEDRIVER, log_output=str(driver_log))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        # Taken before quit(): the browser's processes, while they are still the driver's.
        started = _descendants(service.process.pid) if service.process is not None else []
        try:
            driver.quit()
        finally:
            _kill_left_over(started)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _kill_left_over(processes: list[psutil.Process]) -> None:
    """Kill, by pid, the driver and the browser processes it started that still run
    after quit(); `psutil.Process` checks its create time, so a reused pid is safe."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if process.is_running():
                process.kill()
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.wait(10)


def save_artifact(screenshot: Callable[[str], bool], directory: Path, name: str) -> Path:
    """Save a screenshot in `directory` (the test's tmp dir) and, when
    $CHANGEAGENT_ARTIFACTS names a directory, copy it there too."""
    path = directory / name
    assert screenshot(str(path)), "the browser took no screenshot"
    artifacts = os.environ.get(ARTIFACTS_VARIABLE)
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artifacts) / name)
    return path
