"""The README's screenshots, taken in headless Chromium from real runs: docs/gallery.png, docs/gallery-view.png, docs/explorer.png.

``normgrad explain`` with the embedded EfficientNet-Lite0 on six scikit-image
photos (``--save-layers``) writes a gallery, shown as a user opens it; then
``normgrad serve`` on the same photos, with the cat picked and "tiger cat"
chosen.  Needs Debian's chromium and chromium-driver (``make browser``).

    python tools/screenshots.py [--out docs]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from web import chromium, live_server, wait  # noqa: E402

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()

    import skimage.data
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    import normgrad as ng
    from normgrad.serve import Explorer, create_app

    work = Path(tempfile.mkdtemp(prefix="normgrad-screenshots-"))
    photos = work / "photos"
    photos.mkdir()
    for name in PHOTOS:
        ng.images.from_array(getattr(skimage.data, name)()).save(photos / f"{name}.jpg", quality=92)
    out = work / "explain"
    subprocess.run(
        [sys.executable, "-m", "normgrad", "explain", str(photos), "--out", str(out), "--save-layers", "--workers", "0"], check=True
    )

    browser = chromium()
    try:
        browser.set_window_size(1280, 820)
        browser.get((out / "index.html").as_uri())
        wait(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#grid .card")) == len(PHOTOS))
        wait(
            lambda: browser.execute_script(
                "return Array.from(document.images).filter(i => i.closest('.card')).every(i => i.complete && i.naturalWidth > 0)"
            )
        )
        browser.save_screenshot(str(args.out / "gallery.png"))
        browser.find_element(By.CSS_SELECTOR, ".card[data-name=chelsea]").click()
        browser.find_element(By.CSS_SELECTOR, "input[name=layout][value=side]").click()
        wait(
            lambda: browser.execute_script(
                "return Array.from(document.querySelectorAll('#stage img')).every(i => i.complete && i.naturalWidth > 0)"
            )
        )
        time.sleep(0.3)
        browser.save_screenshot(str(args.out / "gallery-view.png"))

        explorer = Explorer(ng.models.load(), sorted(photos.iterdir()), listed_names=[p.name for p in sorted(photos.iterdir())])
        with live_server(create_app(explorer)) as url:
            browser.set_window_size(1280, 900)
            browser.get(url)
            wait(lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
            Select(browser.find_element(By.ID, "listed")).select_by_visible_text("chelsea.jpg")
            wait(lambda: browser.find_element(By.ID, "result").get_attribute("data-shown") == "1", timeout=60)
            tiger = next(b for b in browser.find_elements(By.CSS_SELECTOR, "#predictions button") if b.text.startswith("tiger cat"))
            tiger.click()
            wait(lambda: browser.find_element(By.ID, "result").get_attribute("data-target") == "282", timeout=60)
            main_canvas = browser.find_element(By.ID, "main")
            browser.execute_script(
                "const c = arguments[0], b = c.getBoundingClientRect();"
                "const at = {clientX: b.left + b.width * 0.62, clientY: b.top + b.height * 0.45, bubbles: true};"
                "c.dispatchEvent(new MouseEvent('mousemove', at));",
                main_canvas,
            )
            time.sleep(0.3)
            browser.save_screenshot(str(args.out / "explorer.png"))
    finally:
        browser.quit()
    for name in ("gallery.png", "gallery-view.png", "explorer.png"):
        shrink(args.out / name)
    print(f"wrote {', '.join(str(args.out / n) for n in ('gallery.png', 'gallery-view.png', 'explorer.png'))}")


def shrink(path: Path) -> None:
    """256 colours (dithered): a third of the size, no visible change at README scale."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
    small.save(path, optimize=True)


if __name__ == "__main__":
    main()
