"""The explorer in headless Chromium against a live server: upload, maps drawn, another class, hover, opacity, bad uploads."""

import hashlib
import io
import re
import urllib.request

import numpy as np
import pytest

from web import require_selenium

require_selenium()  # fails under make test, skips elsewhere

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from normgrad.serve import Explorer, create_app
from web import AWKWARD, live_server, picture, severe_console_errors, tiny_model, wait

pytestmark = pytest.mark.browser


def canvas_digest(browser, css="#main"):
    """A digest of the pixels a canvas shows (its drawn content, not the tag)."""
    pixels = browser.execute_script(
        "const c = document.querySelector(arguments[0]);"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let s = 0, v = 0;"
        "for (let i = 0; i < d.length; i += 4) { s = (s * 31 + d[i] + 7 * d[i + 1] + 13 * d[i + 2]) % 2147483647; v += d[i] !== d[0]; }"
        "return [c.width, c.height, s, v];",
        css,
    )
    return pixels


def shown(browser):
    return int(browser.find_element(By.ID, "result").get_attribute("data-shown") or 0)


def open_explorer(browser, url):
    browser.get("about:blank")
    browser.get(url)
    wait(lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1", message="the explorer did not start")


def test_upload_choose_a_class_hover_opacity_and_bad_uploads(browser, tmp_path):
    photo = picture(tmp_path / "photo.png", (160, 120), seed=3)
    with live_server(create_app(Explorer(tiny_model()))) as url:
        open_explorer(browser, url)
        browser.find_element(By.ID, "file").send_keys(str(photo))
        wait(lambda: shown(browser) >= 1, message="no map after the upload")
        predictions = browser.find_elements(By.CSS_SELECTOR, "#predictions button")
        assert len(predictions) == 5 and any(AWKWARD[1] in p.text for p in browser.find_elements(By.CSS_SELECTOR, "#predictions li"))
        assert browser.execute_script(
            "return window.pwned === undefined && document.querySelectorAll('#predictions b, #predictions img').length === 0"
        )
        width, height, first, varied = canvas_digest(browser)
        assert (width, height) == (160, 120) and varied > 1000  # the photo and its map are drawn, not a blank canvas
        tiles = browser.find_elements(By.CSS_SELECTOR, "#tiles .tile")
        assert [t.text for t in tiles] == ["combined", "stage1", "stage2"]  # the default: block outputs, no conv before its ReLU
        assert Select(browser.find_element(By.ID, "method")).first_selected_option.text == "default"
        Select(browser.find_element(By.ID, "method")).select_by_value("normgrad")  # other methods: the stage layers
        wait(lambda: [t.text for t in browser.find_elements(By.CSS_SELECTOR, "#tiles .tile")] == ["combined", "stage1", "stage2"])
        width, height, first, varied = canvas_digest(browser)
        before = browser.find_element(By.ID, "result").get_attribute("data-target")

        other = next(k for k in range(6) if str(k) != before)
        target = browser.find_element(By.ID, "target")
        target.send_keys(f"{other}: ")  # type-ahead over the class names (a datalist), then confirm
        target.send_keys(Keys.ENTER)
        browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", target)
        wait(
            lambda: browser.find_element(By.ID, "result").get_attribute("data-target") == str(other),
            message="the map did not follow the class",
        )
        assert canvas_digest(browser)[2] != first

        main = browser.find_element(By.ID, "main")
        browser.execute_script(
            "const c = arguments[0], b = c.getBoundingClientRect();"
            "c.dispatchEvent(new MouseEvent('mousemove', {clientX: b.left + b.width / 2, clientY: b.top + b.height / 2, bubbles: true}));",
            main,
        )
        readout = re.match(r"combined at \((\d+), (\d+)\): (\S+) +\(range (\S+) … (\S+)\)", browser.find_element(By.ID, "readout").text)
        x, y, value, low, high = readout.groups()
        assert abs(int(x) - 80) <= 1 and abs(int(y) - 60) <= 1 and float(low) <= float(value) <= float(high)

        digest = canvas_digest(browser)[2]
        slider = browser.find_element(By.ID, "opacity")
        for _ in range(30):
            slider.send_keys(Keys.ARROW_LEFT)
        wait(lambda: canvas_digest(browser)[2] != digest, message="the opacity slider changed nothing")

        browser.find_elements(By.CSS_SELECTOR, "#tiles .tile")[1].click()  # the tiles are drawn anew with each result
        wait(lambda: "stage1" in browser.find_element(By.ID, "main-name").text)
        link = browser.find_element(By.ID, "download-npy").get_attribute("href")
        with urllib.request.urlopen(link) as answer:
            assert np.load(io.BytesIO(answer.read())).shape == (120, 160)

        Select(browser.find_element(By.ID, "method")).select_by_value("gradient")
        wait(lambda: [t.text for t in browser.find_elements(By.CSS_SELECTOR, "#tiles .tile")] == ["input"])
        assert browser.find_element(By.ID, "layers-box").get_attribute("disabled") == "true"

        bad = tmp_path / "notes.jpg"
        bad.write_text("this is not a photo")
        browser.find_element(By.ID, "file").send_keys(str(bad))
        error = browser.find_element(By.ID, "error")
        wait(lambda: error.is_displayed(), message="no message for a bad upload")
        assert "Cannot open notes.jpg" in error.text and "not an image format" in error.text
        wide = picture(tmp_path / "wide.png", (2100, 100))
        browser.find_element(By.ID, "file").send_keys(str(wide))
        wait(lambda: "aspect ratio of 21:1" in error.text)
        Select(browser.find_element(By.ID, "method")).select_by_value("normgrad")
        browser.find_element(By.ID, "layer-add").send_keys("no.such.layer")
        browser.find_element(By.ID, "layer-add-button").click()
        wait(lambda: "no layer" in error.text)
        assert [e for e in severe_console_errors(browser) if "api/upload" not in e] == []  # the refused uploads log a 400 each


def test_the_real_pipeline_on_a_listed_photo(browser, tmp_path):
    """The embedded EfficientNet-Lite0 on scikit-image's cat, picked from --images: a cat, and a new map for another class."""
    import normgrad as ng

    skimage_data = pytest.importorskip("skimage.data")
    ng.images.from_array(skimage_data.chelsea()).save(tmp_path / "chelsea.jpg")
    explorer = Explorer(ng.models.load(), [tmp_path / "chelsea.jpg"], listed_names=["chelsea.jpg"])
    with live_server(create_app(explorer)) as url:
        open_explorer(browser, url)
        Select(browser.find_element(By.ID, "listed")).select_by_visible_text("chelsea.jpg")
        wait(lambda: shown(browser) >= 1, timeout=30)
        first = browser.find_element(By.CSS_SELECTOR, "#predictions button").text
        assert "cat" in first
        digest = canvas_digest(browser)[2]
        tiger = next(b for b in browser.find_elements(By.CSS_SELECTOR, "#predictions button") if b.text.startswith("tiger cat"))
        tiger.click()
        wait(lambda: browser.find_element(By.ID, "result").get_attribute("data-target") == "282", timeout=30)
        assert canvas_digest(browser)[2] != digest
        assert hashlib.sha256(browser.get_screenshot_as_png()).hexdigest()  # the page draws
