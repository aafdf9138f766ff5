"""The explorer in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium)
against a real stack (Triton, shards, gateway, explorer) holding a small real data set: search by
text, by uploaded image and by a hit; the recall check; the map and a click on it; the quality
table; a bad upload; a shared URL. A screenshot of each state is written to the test's folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from semsearch.client import Item, SemsearchClient
from semsearch.datasets import fashion_mnist
from semsearch.tools.ingest import create_collection_for, dataset_items, ingest
from semsearch.tools.stack import Stack

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.integration

IMAGES, TEXTS = 1_000, 300
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def stack(model_repository, tmp_path_factory):
    home = tmp_path_factory.mktemp("explorer") / "stack"
    with Stack(home, model_repository, num_shards=2, with_explorer=True).start() as stack:
        with SemsearchClient(stack.gateway_address, timeout_s=120) as client:
            for collection, dataset, n in (("images", "fashion-mnist", IMAGES), ("texts", "fortunes", TEXTS)):
                create_collection_for(client, collection, dataset)
                total, items = dataset_items(dataset, n)
                ingest(client, collection, dataset, total, items, progress=False)
        yield stack


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("explorer-screenshots")


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are installed by scripts/setup.sh (Debian packages)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, stack, shots, request):
    """The explorer, freshly loaded; on leaving, a screenshot and no script errors in the console."""
    browser.get(f"{stack.explorer_url}/")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#collection option"))
    yield browser
    browser.save_screenshot(str(shots / f"{request.node.name}.png"))
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    # A failed request that the page answered with its own error box shows up here too (as a
    # network error for the status code); script errors must not.
    assert not [e for e in errors if "Uncaught" in e or "TypeError" in e or "ReferenceError" in e], errors


def wait(driver, condition, timeout: float = 60):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)
    except TimeoutException:
        error = driver.find_elements(By.ID, "error")
        shown = error[0].text if error and error[0].is_displayed() else ""
        raise AssertionError(f"timed out waiting on the page; its error box says {shown!r}") from None


def choose_collection(driver, name: str) -> None:
    driver.execute_script(
        "const s = document.getElementById('collection'); s.value = arguments[0];"
        "s.dispatchEvent(new Event('change'));",
        name,
    )
    wait(driver, lambda d: d.find_element(By.ID, "collection").get_attribute("value") == name)


def hits(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, "#results .hit")


def results_for(driver, previous_query_id: str | None, count: int) -> list:
    """Waits for a new search response (a different query id) with `count` hits drawn."""

    def ready(d):
        last = d.execute_script("return window.__lastSearch && window.__lastSearch.query_id")
        return last and last != previous_query_id and len(hits(d)) == count

    wait(driver, ready)
    return hits(driver)


def last_query_id(driver) -> str | None:
    return driver.execute_script("return window.__lastSearch ? window.__lastSearch.query_id : null")


def thumbnails_loaded(driver) -> bool:
    return driver.execute_script(
        "const imgs = [...document.querySelectorAll('#results .hit img')];"
        "imgs.forEach((img) => { img.loading = 'eager'; });"
        "return imgs.length > 0 && imgs.every((img) => img.complete && img.naturalWidth > 0);"
    )


def test_search_by_text_shows_text_cards_and_the_query_panel(page, stack):
    choose_collection(page, "texts")
    page.find_element(By.ID, "query-text").send_keys("computers and programming")
    page.find_element(By.ID, "search-button").click()
    cards = results_for(page, None, 10)
    assert all(card.find_elements(By.CSS_SELECTOR, ".card-text") for card in cards)
    assert all(card.get_attribute("data-id").startswith("fortune-") for card in cards)
    info = page.find_element(By.ID, "query-info").text
    # Stage timings, per-shard coverage and the model that embedded the query.
    assert "embed" in info.lower() and "shard" in info.lower(), info
    assert "text" in page.current_url and "computers" in page.current_url


def test_search_by_uploaded_image_then_more_like_this(page, tmp_path):
    choose_collection(page, "images")
    image = tmp_path / "query.png"
    image.write_bytes(fashion_mnist("test").png(0))  # an ankle boot that is not in the collection
    page.find_element(By.ID, "image-input").send_keys(str(image))
    results_for(page, None, 10)
    wait(page, thumbnails_loaded)
    assert page.find_element(By.CSS_SELECTOR, "#query-summary img.query-thumbnail")
    labels = page.execute_script("return window.__lastSearch.hits.map((h) => h.metadata.label)")
    assert labels.count("Ankle boot") >= 5, labels

    first = hits(page)[0]
    chosen = first.get_attribute("data-id")
    previous = last_query_id(page)
    first.find_element(By.CSS_SELECTOR, ".more-like-this").click()
    cards = results_for(page, previous, 10)
    wait(page, thumbnails_loaded)
    assert chosen not in [card.get_attribute("data-id") for card in cards]  # the item itself is excluded
    assert f"id={chosen}" in page.current_url


def test_words_search_an_image_collection(page):
    choose_collection(page, "images")
    page.find_element(By.ID, "query-text").send_keys("trousers")
    page.find_element(By.ID, "search-button").click()
    results_for(page, None, 10)
    wait(page, thumbnails_loaded)
    labels = page.execute_script("return window.__lastSearch.hits.map((h) => h.metadata.label)")
    assert labels.count("Trouser") >= 6, labels
    assert "imagenet_bridge@" in page.find_element(By.ID, "query-info").text  # the route that answered


def test_recall_button_shows_recall_and_the_exact_neighbours(page):
    page.get(page.current_url.split("#")[0] + "#collection=images&id=fmnist-train-7&k=10")
    results_for(page, None, 10)
    page.find_element(By.ID, "check-recall").click()
    wait(page, lambda d: re.search(r"recall@10: [0-9.]+", d.find_element(By.ID, "recall-result").text))
    assert len(page.find_elements(By.CSS_SELECTOR, "#exact-results .exact-hit")) == 10


def test_a_shared_url_reloads_the_same_results(page, stack):
    page.get(f"{stack.explorer_url}/#collection=texts&text=love+and+marriage&k=5")
    first = [card.get_attribute("data-id") for card in results_for(page, None, 5)]
    page.refresh()
    again = [card.get_attribute("data-id") for card in results_for(page, None, 5)]
    assert first == again
    assert page.find_element(By.ID, "query-text").get_attribute("value") == "love and marriage"


def test_keyboard_moves_between_hits_and_enter_searches_from_one(page, stack):
    page.get(f"{stack.explorer_url}/#collection=images&id=fmnist-train-3")
    results_for(page, None, 10)
    page.execute_script("document.querySelector('#results .hit').focus()")
    previous = last_query_id(page)
    active = page.switch_to.active_element
    active.send_keys("\ue014")  # arrow right
    second = hits(page)[1].get_attribute("data-id")
    assert page.switch_to.active_element.get_attribute("data-id") == second
    page.switch_to.active_element.send_keys("\ue007")  # enter
    results_for(page, previous, 10)
    assert f"id={second}" in page.current_url


def test_a_bad_upload_shows_a_readable_error(page, tmp_path):
    choose_collection(page, "images")
    bogus = tmp_path / "notes.png"
    bogus.write_bytes(b"these are notes, not a picture")
    page.find_element(By.ID, "image-input").send_keys(str(bogus))
    wait(page, lambda d: d.find_element(By.ID, "error").is_displayed())
    message = page.find_element(By.ID, "error").text
    assert "image" in message and "not recognised" in message, message
    assert "Traceback" not in message and "grpc" not in message.lower()


def test_the_map_draws_every_point_and_a_click_searches(page, stack, shots):
    page.get(f"{stack.explorer_url}/#collection=images&tab=map")
    # The first map of a collection is computed while the page shows progress (UMAP, in its own
    # process); later loads come from the cache.
    wait(page, lambda d: d.execute_script("return window.__mapReady === true"), timeout=300)
    assert page.execute_script("return window.__mapPointCount") == IMAGES
    assert len(page.find_elements(By.CSS_SELECTOR, "#map-legend li")) == 10  # coloured by label
    page.save_screenshot(str(shots / "map.png"))
    point = page.execute_script("return window.__mapScreenPoint(0)")  # canvas pixels
    canvas = page.find_element(By.ID, "map")
    origin = canvas.rect

    def at(x: float, y: float):  # offsets from the canvas's centre, as Selenium moves
        return canvas, round(x - origin["width"] / 2), round(y - origin["height"] / 2)

    # Hovering a point shows it (thumbnail and id) next to the pointer.
    webdriver.ActionChains(page).move_to_element_with_offset(*at(point["x"], point["y"])).perform()
    wait(page, lambda d: d.find_element(By.ID, "map-tooltip").is_displayed())
    tooltip_image = "const img = document.querySelector('#map-tooltip img');"
    wait(
        page, lambda d: d.execute_script(tooltip_image + "return img && img.complete && img.naturalWidth > 0")
    )
    # Shift+drag over the whole map selects every point and lists them.
    (
        webdriver.ActionChains(page)
        .key_down(Keys.SHIFT)
        .move_to_element_with_offset(*at(4, 4))
        .click_and_hold()
        .move_to_element_with_offset(*at(origin["width"] - 4, origin["height"] - 4))
        .release()
        .key_up(Keys.SHIFT)
        .perform()
    )
    wait(page, lambda d: f"{IMAGES:,} points selected" in d.find_element(By.ID, "map-selection").text)
    assert page.find_elements(By.CSS_SELECTOR, "#map-selection .selection-item")
    page.save_screenshot(str(shots / "map-selection.png"))
    webdriver.ActionChains(page).move_to_element_with_offset(*at(point["x"], point["y"])).click().perform()
    results_for(page, None, 10)
    assert "id=" in page.current_url


def test_the_quality_tab_lists_every_label(page, stack):
    page.get(f"{stack.explorer_url}/#collection=images&tab=quality")
    wait(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#quality-table tbody tr")) == 10, timeout=120)
    overall = page.find_element(By.ID, "quality-overall").text
    assert re.search(r"0\.\d+|\d+%", overall), overall


def test_a_collection_that_is_loading_shows_its_progress(page, stack):
    choose_collection(page, "texts")
    assert page.find_element(By.ID, "collection-count").text == f"{TEXTS} items"
    with SemsearchClient(stack.gateway_address, timeout_s=60) as client:
        client.upsert("texts", [Item(id=f"extra-{i}", text=f"an extra note number {i}") for i in range(40)])
    # The page polls the collections; a count that grew lately is shown as loading.
    wait(page, lambda d: d.find_element(By.ID, "collection-count").text == f"{TEXTS + 40} items · loading…")
