"""Screenshot a comparison's ``report.html`` in a real headless browser (Chromium), for the docs.

    python docs/screenshot_report.py reports/demo/report.html docs/img/compare-report-screenshot.png

Chromium (Debian: ``apt-get install chromium``) renders the self-contained page from the file
alone, as a reader's browser would; the page is cropped below its last non-white row and halved
in width. Open the PNG to check that every plot shows.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

WIDTH, TALLEST = 1200, 8000  # the browser window, in CSS pixels


def screenshot(page: Path, output: Path) -> tuple[int, int]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SystemExit("no Chromium found: install it (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as folder:
        raw = Path(folder) / "page.png"
        subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--window-size={WIDTH},{TALLEST}", f"--screenshot={raw}",
                        page.resolve().as_uri()], check=True, capture_output=True, timeout=120)
        image = Image.open(raw).convert("RGB")
    ink = np.flatnonzero(np.asarray(image.convert("L")).min(axis=1) < 250)
    if ink.size == 0:
        raise SystemExit(f"{page} rendered as a blank page: open it in a browser to see why")
    if ink.max() >= TALLEST - 1:
        raise SystemExit(f"{page} is taller than the {TALLEST} px window: raise TALLEST in {__file__}")
    image = image.crop((0, 0, WIDTH, int(ink.max()) + 40))
    image = image.resize((WIDTH // 2, image.height // 2), Image.LANCZOS)
    image.save(output, optimize=True)
    return image.size


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    width, height = screenshot(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"screenshot {width}x{height}")
