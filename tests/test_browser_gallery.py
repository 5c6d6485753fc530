"""The gallery page in headless Chromium, from file:// as a user opens it: images render, filter, sort, pages, full view, live."""

import json
import shutil
import time

import pytest

from web import require_selenium

require_selenium()  # fails under make test, skips elsewhere

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from normgrad.cli import main
from normgrad.gallery import Gallery
from normgrad.store import OutputStore
from test_gallery import MODEL, awkward_inputs, chunks
from web import severe_console_errors, wait

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A real explain run (random-weights ResNet-18, two layers saved) on awkward names and one broken file."""
    root = tmp_path_factory.mktemp("gallery")
    out = root / "out"
    assert main(["explain", *map(str, awkward_inputs(root / "in")), "--out", str(out), *MODEL, "--layers", "layer2,layer3",
                 "--save-layers"]) == 1  # fmt: skip
    return out


def open_page(browser, url):
    browser.get("about:blank")  # a fresh page, not a jump within the last one
    browser.get(url)


def cards(browser):
    return browser.find_elements(By.CSS_SELECTOR, "#grid .card")


def names(browser):
    return [c.get_attribute("data-name") for c in cards(browser)]


def rendered(browser, css):
    """Every image under ``css`` has loaded and decoded (naturalWidth > 0), not just its tag."""
    return browser.execute_script(
        "const imgs = Array.from(document.querySelectorAll(arguments[0]));"
        "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);",
        css,
    )


def test_every_image_renders_and_names_are_shown_as_text(browser, run_folder):
    open_page(browser, (run_folder / "index.html").as_uri())
    wait(lambda: len(cards(browser)) == 6, message="six cards (five images and the broken one)")
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")  # lazy images load when near the view
    wait(lambda: rendered(browser, "#grid .card.ok img"), message="thumbnails decoded")
    items = {i["name"]: i for i in chunks(run_folder)}
    assert sorted(names(browser)) == sorted(items)
    for card in cards(browser):
        shown = items[card.get_attribute("data-name")]
        assert card.find_element(By.CSS_SELECTOR, ".name").text == shown["file"]  # markup in names stays text
    assert browser.execute_script("return window.pwned === undefined && document.querySelectorAll('#grid b, #grid script').length === 0")
    broken = browser.find_element(By.CSS_SELECTOR, ".card.failed")
    assert "cannot read image" in broken.text
    assert "5 explained · 1 failed · run finished" in browser.find_element(By.ID, "status").text
    assert severe_console_errors(browser) == []


def test_filter_sort_and_class(browser, run_folder):
    open_page(browser, (run_folder / "index.html").as_uri())
    wait(lambda: len(cards(browser)) == 6)
    items = [i for i in chunks(run_folder) if i["status"] == "ok"]
    by_confidence = [i["name"] for i in sorted(items, key=lambda i: -i["predictions"][0]["probability"])]
    assert names(browser)[:5] == by_confidence  # the default: confidence, high first; failed last
    Select(browser.find_element(By.ID, "sort")).select_by_value("name-asc")
    wait(lambda: names(browser)[0] == '<b>bold</b> & "q"')
    Select(browser.find_element(By.ID, "sort")).select_by_value("name-desc")
    wait(lambda: names(browser)[-1] == '<b>bold</b> & "q"')
    search = browser.find_element(By.ID, "search")
    search.send_keys("猫")
    wait(lambda: names(browser) == ["café ☃ 猫"])
    search.clear()
    search.send_keys("</script>")
    wait(lambda: names(browser) == ["x</script>é"])
    search.send_keys(Keys.CONTROL, "a", Keys.DELETE)
    wait(lambda: len(cards(browser)) == 6)
    top = items[0]["predictions"][0]
    Select(browser.find_element(By.ID, "class")).select_by_value(f"p:{top['class']}")
    expected = sorted(i["name"] for i in items if i["predictions"][0]["class"] == top["class"])
    wait(lambda: sorted(names(browser)) == expected)
    Select(browser.find_element(By.ID, "class")).select_by_value("")
    Select(browser.find_element(By.ID, "state")).select_by_value("failed")
    wait(lambda: names(browser) == ["broken"])


def stack_pixels(browser):
    return browser.find_element(By.CSS_SELECTOR, "#stage .layers").screenshot_as_png


def test_full_view_opacity_side_by_side_and_layers(browser, run_folder):
    open_page(browser, (run_folder / "index.html").as_uri() + "#sort=name-asc")
    wait(lambda: len(cards(browser)) == 6)
    cards(browser)[0].click()
    viewer = browser.find_element(By.ID, "viewer")
    wait(lambda: viewer.is_displayed() and rendered(browser, "#stage .layers img"), message="photo and map decoded")
    assert browser.find_element(By.ID, "viewer-title").text == '<b>bold</b> & "q"'
    before = stack_pixels(browser)
    slider = browser.find_element(By.ID, "opacity")
    for _ in range(40):
        slider.send_keys(Keys.ARROW_LEFT)
    assert browser.execute_script("return getComputedStyle(document.getElementById('map')).opacity") == "0.1"
    assert stack_pixels(browser) != before  # what is shown changed
    slider.send_keys(Keys.HOME)
    wait(lambda: browser.execute_script("return getComputedStyle(document.getElementById('map')).opacity") == "0")
    photo_only = stack_pixels(browser)
    slider.send_keys(Keys.END)
    assert stack_pixels(browser) != photo_only
    assert not browser.find_element(By.ID, "original").is_displayed()
    browser.find_element(By.CSS_SELECTOR, "input[name=layout][value=side]").click()
    wait(lambda: browser.find_element(By.ID, "original").is_displayed() and rendered(browser, "#original"))
    buttons = browser.find_elements(By.CSS_SELECTOR, "#map-choice button")
    assert [b.text for b in buttons] == ["combined", "layer2", "layer3"]
    source = browser.find_element(By.ID, "map").get_attribute("src")
    buttons[2].click()
    wait(lambda: browser.find_element(By.ID, "map").get_attribute("src") != source and rendered(browser, "#stage .layers img"))
    links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#details a")]
    assert any(link.endswith("%3Cb%3Ebold%3C/b%3E%20%26%20%22q%22_layer3.npy") for link in links)
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
    wait(lambda: browser.find_element(By.ID, "viewer-title").text != '<b>bold</b> & "q"')
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    wait(lambda: not viewer.is_displayed())


def synthetic(out, count, thumb_source):
    """A manifest of ``count`` images whose pictures share one real thumbnail (only the first page's are written)."""
    images = [{"name": f"img{k:05d}", "image": f"/data/img{k:05d}.jpg", "run": "r1", "size": [640, 480], "layers": ["layer4"],
               "outputs": [{"layer": "combined", "png": f"img{k:05d}.png", "npy": f"img{k:05d}.npy"}],
               "predictions": [{"class": k % 7, "name": f"class {k % 7}", "probability": (k % 1000) / 1000}],
               "target": {"class": k % 7, "name": f"class {k % 7}", "probability": (k % 1000) / 1000}} for k in range(count)]  # fmt: skip
    return {"format": "normgrad-explain", "version": 1, "runs": {"r1": {"settings": {"method": "normgrad"}}}, "images": images}


def test_ten_thousand_images_stay_fast_and_the_page_follows_a_running_run(browser, run_folder, tmp_path):
    out = tmp_path / "big"
    store = OutputStore(out, "r1")
    gallery = Gallery(store)
    manifest = synthetic(out, 10_000, run_folder)
    gallery.start(manifest, running=True, make_pictures=False)
    thumb = next((run_folder / "gallery" / "img").rglob("*.t.jpg"))
    for item in sorted(chunks(out), key=lambda i: -i["predictions"][0]["probability"])[:48]:
        (out / item["thumb"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(thumb, out / item["thumb"])
    data = list((out / "gallery" / "data").glob("chunk-*.js"))
    assert len(data) == 40 and max(p.stat().st_size for p in data) < 300_000  # no multi-megabyte document
    started = time.monotonic()
    open_page(browser, (out / "index.html").as_uri())
    wait(lambda: len(cards(browser)) == 48 and "10000 explained" in browser.find_element(By.ID, "status").text, timeout=30)
    loaded = time.monotonic() - started
    wait(lambda: rendered(browser, "#grid .card img:not([loading=lazy]), #grid .card:nth-child(-n+8) img"))
    assert browser.find_element(By.CSS_SELECTOR, ".pager .where").text.startswith("page 1 of 209")
    started = time.monotonic()
    browser.find_element(By.ID, "search").send_keys("img0999")
    wait(lambda: len(cards(browser)) == 10)  # img09990 ... img09999
    filtered = time.monotonic() - started
    assert loaded < 10 and filtered < 3, (loaded, filtered)

    for k in range(3):  # the run goes on: the open page picks the new images up by itself
        gallery.fail({"type": "failed", "run": "r1", "name": f"late{k}", "image": f"/data/late{k}.jpg", "error": "unreadable"})
    gallery.flush()
    wait(lambda: "3 failed" in browser.find_element(By.ID, "status").text, timeout=10, message="the page did not update itself")
    gallery.finish(json.loads(json.dumps(manifest)))
    wait(lambda: "run finished" in browser.find_element(By.ID, "status").text, timeout=10)
    store.close()
