"""Open a `bort run` report.html in a real headless browser and check that it renders: every image decoded,
every table filled, the headings there. Prints what it found; exits 1 on a failure.

    apt-get install chromium chromium-driver && pip install selenium    # once
    python benchmarks/check_report.py runs/sst2/report.html
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

CHECK = """
const images = [...document.images].map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0,
                                                width: i.naturalWidth, height: i.naturalHeight}));
const tables = [...document.querySelectorAll('table')].map(t => t.rows.length);
const headings = [...document.querySelectorAll('h1, h2')].map(h => h.textContent);
return {images, tables, headings, title: document.title, width: document.body.scrollWidth};
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", help="a report.html written by `bort run`")
    args = p.parse_args()
    from selenium import webdriver

    browser, driver_path = shutil.which("chromium") or shutil.which("google-chrome"), shutil.which("chromedriver")
    if not (browser and driver_path):
        print("needs chromium and chromedriver on PATH (apt-get install chromium chromium-driver)")
        return 2
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"):
        options.add_argument(flag)
    # the browser and driver on PATH: selenium does not look for (or download) its own
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        driver.get(Path(args.report).resolve().as_uri())
        found = driver.execute_script(CHECK)
    finally:
        driver.quit()
    for image in found["images"]:
        print(f"image {image['alt']}: {'decoded' if image['ok'] else 'NOT decoded'} "
              f"({image['width']} x {image['height']} px)")
    print(f"tables (rows): {found['tables']}; headings: {found['headings']}")
    failed = (not found["images"] or not all(i["ok"] for i in found["images"]) or not found["tables"]
              or min(found["tables"]) < 2 or not found["headings"])
    print("report renders: " + ("NO" if failed else "yes"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
