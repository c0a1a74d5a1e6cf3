"""The README's two screenshots, taken in headless Chromium (``make test-browser`` installs Debian's chromium and
chromium-driver; Selenium comes with the ``[dev]`` extra):

- ``docs/report.png``: the committed demo report (``experiments/demo_tiny/index.html``, written by ``make
  demo-report``) sorted by PSNR-Y, its first comparison set to bicubic | stablesr w = 1 and zoomed in twice;
- ``docs/app.png``: the web demo (``python -m sr.commands.app``, the released tiny model) after upscaling the held-out
  coffee LR photo at its default settings.

    python scripts/screenshots.py [--out docs] [--overwrite]

Existing files are kept unless ``--overwrite``; each PNG is written atomically.
"""

import argparse
import sys
import tempfile
from pathlib import Path

from sr.commands.config import find_project_root
from sr.io import write_bytes_atomic

ROOT = find_project_root()
sys.path.insert(0, str(ROOT / "tests"))

from browser_support import (missing_browser, new_chromium, open_app, open_page, serving_app, upload,  # noqa: E402
                             wait_for)

REPORT_PAGE = ROOT / "experiments" / "demo_tiny" / "index.html"
APP_IMAGE = ROOT / "data" / "samples" / "heldout_pairs" / "lr" / "coffee.png"
JOB_SECONDS = 300


def images_shown(driver, root, count: int | None = None) -> bool:
    """Every ``img`` under the element ``root`` has loaded (and there are ``count`` of them, when given)."""
    widths = driver.execute_script(
        "return Array.from(arguments[0].querySelectorAll('img')).map(i => i.complete ? i.naturalWidth : 0)", root)
    return bool(widths) and all(widths) and count in (None, len(widths))


def report_screenshot(scratch: Path) -> bytes:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = new_chromium(scratch / "report-profile", window=(1100, 1260))
    try:
        open_page(driver, REPORT_PAGE.as_uri())
        header = driver.find_element(By.XPATH, "//table[@id='sweep-table']//th[normalize-space()='psnr_y']")
        header.click()
        header.click()   # the second click sorts from the highest
        section = driver.find_element(By.CSS_SELECTOR, "section.compare")
        Select(section.find_element(By.CSS_SELECTOR, "select.pick-left")).select_by_visible_text("bicubic")
        Select(section.find_element(By.CSS_SELECTOR, "select.pick-right")).select_by_visible_text(
            "stablesr (w=1.0, tile.overlap=16)")
        for _ in range(2):
            section.find_element(By.CSS_SELECTOR, ".zoom-in").click()
        wait_for(lambda: images_shown(driver, section), 30, "the comparison's images")
        return driver.get_screenshot_as_png()
    finally:
        driver.quit()


def app_screenshot(scratch: Path) -> bytes:
    from selenium.webdriver.common.by import By

    (scratch / "app").mkdir()
    with serving_app(scratch / "app") as url:
        driver = new_chromium(scratch / "app-profile", window=(1280, 720))
        try:
            open_app(driver, url)
            upload(driver, APP_IMAGE)
            driver.find_element(By.ID, "run").click()
            wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#download a[href]"), JOB_SECONDS, "the result")
            wait_for(lambda: images_shown(driver, driver.find_element(By.ID, "compare"), count=2), 30,
                     "the before/after images")
            return driver.get_screenshot_as_png()
        finally:
            driver.quit()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder of report.png and app.png")
    parser.add_argument("--overwrite", action="store_true", help="replace existing screenshots")
    args = parser.parse_args(argv)
    if missing := missing_browser():
        sys.exit(f"missing {', '.join(missing)}: `make test-browser` (as root) installs chromium and chromium-driver")
    targets = {"report.png": report_screenshot, "app.png": app_screenshot}
    if not args.overwrite and (existing := [name for name in targets if (args.out / name).exists()]):
        sys.exit(f"{args.out}: {', '.join(existing)} exist; pass --overwrite to replace them")
    with tempfile.TemporaryDirectory() as scratch:
        for name, take in targets.items():
            path = write_bytes_atomic(args.out / name, take(Path(scratch)), overwrite=args.overwrite)
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
