"""Headless Chromium (Debian's chromium + chromium-driver, driven by Selenium) and the web demo on a free port: shared
by the browser tests (tests/test_browser.py) and the README's screenshots (scripts/screenshots.py)."""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# as root in a container: no sandbox; no GPU; nothing the browser would fetch on its own (updates, sync, QUIC)
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--force-device-scale-factor=1")
APP_START_SECONDS = 240


def missing_browser() -> list[str]:
    """The browser files that are not installed (``make test-browser`` installs them)."""
    return [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]


def new_chromium(user_data_dir: Path, window: tuple[int, int] = (1280, 1000)):
    """A headless Chromium with its own profile folder, logging the console and the network."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--window-size={window[0]},{window[1]}", f"--user-data-dir={user_data_dir}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def wait_for(condition, seconds: float, what: str):
    """The first truthy value of ``condition()``, polled every 0.2 s; an AssertionError naming ``what`` once
    ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (value := condition()):
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serving_app(log_dir: Path, *arguments: str):
    """``python -m sr.commands.app`` (default model unless ``arguments`` say otherwise) on a free loopback port, its
    output in ``log_dir/app.log``; yields its URL once it answers, stops it on exit."""
    port = free_port()
    environment = os.environ | {"GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(log_dir / "gradio")}
    with open(log_dir / "app.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "sr.commands.app", "--port", str(port), *arguments],
                                  cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"

    def serving():
        if server.poll() is not None:
            raise AssertionError(f"sr.commands.app exited: {(log_dir / 'app.log').read_text()[-2000:]}")
        try:
            return urllib.request.urlopen(url, timeout=5).status == 200
        except OSError:
            return False

    try:
        wait_for(serving, APP_START_SECONDS, "sr.commands.app to serve")
        yield url
    finally:
        server.terminate()
        server.wait(30)


def open_page(driver, url: str):
    """``driver`` on ``url``, once the document has loaded."""
    driver.get(url)
    wait_for(lambda: driver.execute_script("return document.readyState") == "complete", 30, f"{url} to load")
    return driver


def open_app(driver, url: str):
    """``driver`` on the demo's page, once its upload field is there."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"), 60, "the upload field")
    return driver


def upload(driver, image: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(image))
    # the file list shows the name as stem and suffix in two elements
    wait_for(lambda: image.name in driver.find_element(By.ID, "upload").text.replace("\n", ""), 60,
             f"{image.name} uploaded")
