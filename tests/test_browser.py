"""In headless Chromium (Debian's chromium + chromium-driver, driven by Selenium; ``make test-browser`` installs them):
the report page (``index.html``) loads from disk with no console error and no request other than its own files,
sorts its table by a clicked header, and its comparison slider, zoom and pan change the pixels shown; the web demo
(``python -m sr.commands.app``) returns, for an upload through its page, the PNG that ``upscale.py`` writes with the
same settings, shows an error for a file that is not an image and goes on serving, and answers two uploads made at once.
"""

import csv
import io
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser_support import (REPO, missing_browser, new_chromium, open_app, open_page, serving_app, upload,
                             wait_for)
from test_report import _fake_sweep

pytestmark = pytest.mark.browser

JOB_SECONDS = 240
# the settings of the app test, as upscale.py keys: a 48 x 48 input to 192 x 192 in 2 x 2 latent tiles, 2 steps
SETTINGS = {"scale": 4, "w": 0.7, "num_inference_steps": 2, "seed": 7, "color_fix": "adain", "tile.size": 16, "tile.overlap": 8}


@pytest.fixture
def browser(tmp_path_factory):
    """``browser()``: a new headless Chromium (several may be open), logging the console and the network."""
    if missing := missing_browser():
        pytest.fail(f"missing {', '.join(missing)}: `make test-browser` installs chromium and chromium-driver")
    drivers = []

    def start():
        drivers.append(new_chromium(tmp_path_factory.mktemp("chromium")))
        return drivers[-1]

    yield start
    for driver in drivers:
        driver.quit()


def _pixels(element) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB")).astype(np.int16)


# --- the report page -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A report of the 2 x 2 sweep of tests/test_report.py (noise images: every candidate looks different)."""
    from sr.commands.report.build import build_report

    root = tmp_path_factory.mktemp("report")
    out = root / "report"
    build_report(_fake_sweep(root), out, "browser")
    return out


def _open_report(browser, report):
    return open_page(browser(), (report / "index.html").as_uri())


def test_report_page_loads_offline_without_console_errors(browser, report):
    driver = _open_report(browser, report)
    images = driver.execute_script("return Array.from(document.images).map(i => [i.src, i.naturalWidth]);")
    assert len(images) == 6 + 2 * 2   # 6 plots (psnr_y, lpips_alex, fid against w and tile.overlap), 2 per view
    assert all(width > 0 for _, width in images), images   # every image loaded from the report folder
    console = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert console == []
    # every request the browser sent (DevTools' network events; the Performance API does not list file:// loads)
    requested = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
    sent = [event["params"] for event in requested if event["method"] == "Network.requestWillBeSent"]
    page = [params["request"]["url"] for params in sent if params["documentURL"] == driver.current_url]
    assert len(page) > len(images)   # the page and its images: the log saw the page's requests
    assert {url.split(":")[0] for url in page} == {"file"}, page
    # nor did anything else in the browser go out (before the page, it showed its own chrome:// new tab)
    assert not {params["request"]["url"].split(":")[0] for params in sent} & {"http", "https", "ws", "wss", "ftp"}


def _column(driver, header):
    index = driver.execute_script(
        "return Array.from(document.querySelectorAll('#sweep-table th')).findIndex(h => h.textContent.trim() == "
        "arguments[0]);", header)
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#sweep-table tbody tr')).map(r => "
        "r.cells[arguments[0]].textContent);", index)


def test_clicking_a_header_sorts_the_rows(browser, report):
    from selenium.webdriver.common.by import By

    with open(report / "table.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    psnr = [float(row["psnr_y_mean"]) for row in rows]
    driver = _open_report(browser, report)
    assert [float(cell.split()[0]) for cell in _column(driver, "psnr_y")] == psnr   # table order: method first

    def click(header):
        driver.find_element(By.XPATH, f"//table[@id='sweep-table']//th[normalize-space()='{header}']").click()

    click("psnr_y")
    assert [float(cell.split()[0]) for cell in _column(driver, "psnr_y")] == sorted(psnr)
    click("psnr_y")
    assert [float(cell.split()[0]) for cell in _column(driver, "psnr_y")] == sorted(psnr, reverse=True)
    click("lpips_alex ↓")
    lpips = _column(driver, "lpips_alex ↓")
    assert [float(cell.split()[0]) for cell in lpips] == sorted(round(float(row["lpips_alex_mean"]), 4) for row in rows)
    click("method")
    assert _column(driver, "method") == sorted(row["method"] for row in rows)
    # whole rows move: each method still has its own scores
    pairs = sorted(zip(_column(driver, "method"), _column(driver, "psnr_y")))
    assert pairs == sorted((row["method"], f"{float(row['psnr_y_mean']):.2f} ± {float(row['psnr_y_std']):.2f}")
                           for row in rows)


def test_comparison_slider_zoom_and_pan_change_the_pixels_shown(browser, report):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver = _open_report(browser, report)
    section = driver.find_element(By.CSS_SELECTOR, "section.compare")
    viewer = section.find_element(By.CSS_SELECTOR, ".viewer")
    slider = section.find_element(By.CSS_SELECTOR, "input.split")
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", section)   # the whole view on screen
    before = _pixels(viewer)
    assert before.shape[:2] == (viewer.size["height"], viewer.size["width"]) == (512, 512)
    width = before.shape[1]
    # a click at 80 % of the slider's track moves the split from the middle to about 80 %
    ActionChains(driver).move_to_element_with_offset(slider, int(0.3 * slider.size["width"]), 0).click().perform()
    split = float(slider.get_attribute("value"))
    assert 75 < split < 85
    after = _pixels(viewer)
    left, moved, right = slice(0, int(0.45 * width)), slice(int(0.55 * width), int(0.7 * width)), slice(
        int(0.9 * width), width)
    assert np.array_equal(before[:, left], after[:, left])      # the left image on both sides of the move
    assert np.abs(before[:, moved] - after[:, moved]).mean() > 20   # right image -> left image
    assert np.array_equal(before[:, right], after[:, right])    # the right image still

    # zoom: both images get the same transform, and the view changes; a drag pans both alike
    section.find_element(By.CSS_SELECTOR, ".zoom-in").click()
    section.find_element(By.CSS_SELECTOR, ".zoom-in").click()
    transforms = driver.execute_script("return Array.from(arguments[0].querySelectorAll('img')).map(i => "
                                       "i.style.transform);", viewer)
    assert transforms[0] == transforms[1] and "scale(1.5625)" in transforms[0]
    assert section.find_element(By.CSS_SELECTOR, ".zoom-level").text == "156%"
    zoomed = _pixels(viewer)
    assert np.abs(zoomed[:, left] - after[:, left]).mean() > 20
    ActionChains(driver).move_to_element_with_offset(viewer, -int(0.3 * width), 0).click_and_hold() \
        .move_by_offset(40, 30).release().perform()
    panned = driver.execute_script("return Array.from(arguments[0].querySelectorAll('img')).map(i => "
                                   "i.style.transform);", viewer)
    assert panned[0] == panned[1] != transforms[0]
    assert float(slider.get_attribute("value")) == split   # a drag away from the divider does not move it
    assert not np.array_equal(_pixels(viewer), zoomed)
    assert [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"] == []


# --- the web demo ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """``python -m sr.commands.app`` on the default model, on a free loopback port; yields its URL."""
    with serving_app(tmp_path_factory.mktemp("app")) as url:
        yield url


def _noise_image(path: Path, seed: int, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def _open_app(browser, url):
    return open_app(browser(), url)


def _set_number(driver, element_id, value):
    """Type ``value`` into the number field of component ``element_id`` (a number box or a slider's box)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.CSS_SELECTOR, f"#{element_id} input[type=number]")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(str(value), Keys.TAB)
    wait_for(lambda: float(field.get_attribute("value")) == float(value), 10, f"{element_id} = {value}")


def _submit(driver, image: Path):
    from selenium.webdriver.common.by import By

    upload(driver, image)
    driver.find_element(By.ID, "run").click()


def _download(driver) -> tuple[bytes, set[str]]:
    """The PNG the page offers once the job is done, and the progress counts (``3/8``) shown while it ran."""
    from selenium.webdriver.common.by import By

    progress = set()

    def done():
        progress.update(re.findall(r"\b\d+/\d+\b", driver.find_element(By.ID, "compare").text))
        return driver.find_elements(By.CSS_SELECTOR, "#download a[href]")

    link = wait_for(done, JOB_SECONDS, "the result")
    with urllib.request.urlopen(link[0].get_attribute("href"), timeout=30) as response:
        return response.read(), progress


def test_upload_returns_the_png_upscale_py_writes(browser, app, tmp_path):
    from selenium.webdriver.common.by import By

    image = _noise_image(tmp_path / "in" / "noise.png", seed=3, size=48)
    subprocess.run([sys.executable, str(REPO / "upscale.py"), "model=stablesr_tiny", f"input={image}",
                    f"output={tmp_path / 'out'}", "progress=false",
                    *(f"{key}={value}" for key, value in SETTINGS.items())], cwd=REPO, check=True, timeout=600)
    expected = (tmp_path / "out" / "noise.png").read_bytes()

    driver = _open_app(browser, app)
    for element_id, key in (("scale", "scale"), ("w", "w"), ("num-inference-steps", "num_inference_steps"),
                            ("seed", "seed"), ("tile-size", "tile.size"), ("tile-overlap", "tile.overlap")):
        _set_number(driver, element_id, SETTINGS[key])
    _submit(driver, image)
    assert _download(driver)[0] == expected
    assert Image.open(io.BytesIO(expected)).size == (192, 192)
    assert "noise.png: 192x192" in driver.find_element(By.ID, "status").text
    slider_images = driver.find_elements(By.CSS_SELECTOR, "#compare img")
    assert len(slider_images) == 2   # before / after


def test_a_bad_file_shows_an_error_and_the_next_upload_works(browser, app, tmp_path):
    from selenium.webdriver.common.by import By

    broken = tmp_path / "notes.png"
    broken.write_text("not an image\n")
    driver = _open_app(browser, app)
    _submit(driver, broken)
    wait_for(lambda: "notes.png: " in driver.find_element(By.TAG_NAME, "body").text, JOB_SECONDS, "the error message")
    assert not driver.find_elements(By.CSS_SELECTOR, "#download a[href]")

    driver.get(app)   # a fresh page on the same server
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"), 60, "the upload field")
    _set_number(driver, "num-inference-steps", 8)
    _submit(driver, _noise_image(tmp_path / "good.png", seed=4, size=64))
    result, progress = _download(driver)
    assert Image.open(io.BytesIO(result)).size == (256, 256)
    # the progress bar counted the sampling steps
    assert {count for count in progress if count.endswith("/8")} - {"0/8", "8/8"}, progress


def test_two_uploads_at_once_are_both_answered(browser, app, tmp_path):
    from selenium.webdriver.common.by import By

    drivers = [_open_app(browser, app) for _ in range(2)]
    images = [_noise_image(tmp_path / f"photo{index}.png", seed=10 + index, size=24 + 8 * index) for index in range(2)]
    for driver, image in zip(drivers, images):
        _set_number(driver, "num-inference-steps", 4)
        upload(driver, image)
    for driver in drivers:   # both jobs asked for before either is done
        driver.find_element(By.ID, "run").click()
    results = [Image.open(io.BytesIO(_download(driver)[0])) for driver in drivers]
    assert [result.size for result in results] == [(96, 96), (128, 128)]   # each answer is its own upload's

