"""`semsearch bench explorer`: what the web app costs on top of the stack, on a private stack with the
explorer: page load in a real headless Chromium (cold profile, then warm cache), a search round trip
through the page's API against the same kind of search through the SDK, map computation time at two
sizes, and the map's bytes per point."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from semsearch.client import Item, SemsearchClient
from semsearch.tools.bench.cpu import own_cpu_seconds
from semsearch.tools.bench.indexer import clustered_vectors
from semsearch.tools.stack import Stack

log = logging.getLogger(__name__)

DIM = 1280  # the image collection's dimension
LABELS = 10
GOAL_ADDED_MS = 5.0
GOAL_BYTES_PER_POINT = 16
WARMUP_POINTS = 5_000  # past 4,096 points UMAP switches to NN-descent, with kernels of its own


def _load(client: SemsearchClient, name: str, vectors: np.ndarray) -> None:
    client.create_collection(name, dim=DIM, metric="cosine", fields={"label": "string"})
    labels = np.arange(len(vectors)) % LABELS
    for start in range(0, len(vectors), 500):
        items = [Item(id=f"{name}-{i}", vector=vectors[i], metadata={"label": f"class-{labels[i]}"})
                 for i in range(start, min(start + 500, len(vectors)))]  # fmt: skip
        client.upsert(name, items)


def _map_seconds(http, name: str, timeout_s: float = 1800) -> tuple[float, bytes]:
    """Seconds from the first request of a collection's map until it is served, and the map."""
    begin = time.perf_counter()
    while time.perf_counter() - begin < timeout_s:
        response = http.get(f"/api/map/{name}")
        if response.headers["content-type"] == "application/octet-stream":
            return time.perf_counter() - begin, response.content
        if response.status_code != 200:
            raise RuntimeError(f"map of {name}: {response.status_code} {response.text}")
        time.sleep(0.5)
    raise TimeoutError(f"map of {name} not ready after {timeout_s:.0f}s")


def _browser():
    """Headless Debian Chromium through its chromedriver (nothing is downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)


# Zooms the map in and out with wheel events, one a frame, and collects each redraw's time.
ZOOM_FRAMES = """
const done = arguments[arguments.length - 1];
const canvas = document.getElementById("map");
const box = canvas.getBoundingClientRect();
const times = [];
let n = 0;
function step() {
  if (n++ >= 40) { done(times); return; }
  const at = {clientX: box.left + box.width / 2, clientY: box.top + box.height / 2};
  const options = {...at, deltaY: n % 2 ? -240 : 240, bubbles: true, cancelable: true};
  canvas.dispatchEvent(new WheelEvent("wheel", options));
  requestAnimationFrame(() => requestAnimationFrame(() => { times.push(window.__mapDrawMs); step(); }));
}
step();
"""


def _map_frame_ms(url: str, collection: str) -> float:
    """Median time (ms) to redraw the collection's map while zooming, in headless Chromium."""
    driver = _browser()
    try:
        driver.set_script_timeout(60)
        driver.get(f"{url}/#collection={collection}&tab=map")
        deadline = time.monotonic() + 120
        while not driver.execute_script("return window.__mapReady === true") and time.monotonic() < deadline:
            time.sleep(0.2)
        return float(np.median(driver.execute_async_script(ZOOM_FRAMES)))
    finally:
        driver.quit()


def _page_load(url: str) -> tuple[float, float]:
    """(cold, warm) page load in ms in headless Chromium: a fresh profile, then a reload with its cache."""
    driver = _browser()
    measure = ("const n = performance.getEntriesByType('navigation')[0];"
               "return n.loadEventEnd > 0 ? n.loadEventEnd - n.startTime : null;")  # fmt: skip
    try:
        timings = []
        for _ in range(2):
            driver.get(url)
            deadline = time.monotonic() + 30
            value = None
            while value is None and time.monotonic() < deadline:
                value = driver.execute_script(measure)
                time.sleep(0.05)
            timings.append(float(value))
        return timings[0], timings[1]
    finally:
        driver.quit()


def bench(repository: Path, small: int = 10_000, large: int = 50_000, searches: int = 200):
    """Table rows and the JSON summary."""
    import httpx2

    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per request otherwise

    work = Path(tempfile.mkdtemp(prefix="semsearch-bench-explorer-"))
    rows: list[tuple[str, ...]] = []
    summary: dict = {"small": small, "large": large, "dim": DIM, "searches": searches}
    try:
        with Stack(work / "stack", repository, num_shards=2, with_explorer=True).start() as stack:
            client = SemsearchClient(stack.gateway_address, timeout_s=120)
            log.info("loading %d + %d vectors of dim %d", small, large, DIM)
            _load(client, "warmup", clustered_vectors(WARMUP_POINTS, DIM, seed=10, clusters=LABELS))
            _load(client, "small", clustered_vectors(small, DIM, seed=11, clusters=LABELS))
            big = clustered_vectors(large, DIM, seed=12, clusters=LABELS)
            _load(client, "large", big)
            http = httpx2.Client(base_url=stack.explorer_url, timeout=120)

            # Page load: HTML and its assets, in a real browser.
            cold, warm = _page_load(stack.explorer_url)
            rows += [
                ("page load, cold profile", f"{cold:.1f} ms", ""),
                ("page load, warm cache", f"{warm:.1f} ms", ""),
            ]
            summary.update(page_load_cold_ms=round(cold, 1), page_load_warm_ms=round(warm, 1))

            # A search round trip: the page's API vs the SDK, the same kind of query ("more like this",
            # payloads included), each on its own items so that neither hits the other's cached result.
            page, sdk = [], []
            explorer_pid = stack.explorer.pid
            cpu_before = own_cpu_seconds(explorer_pid)
            for i in range(searches):
                begin = time.perf_counter()
                response = http.post(
                    "/api/search", data={"collection": "large", "id": f"large-{2 * i}", "k": "10"}
                )
                page.append(time.perf_counter() - begin)
                assert response.status_code == 200, response.text
                begin = time.perf_counter()
                client.search("large", id=f"large-{2 * i + 1}", k=10, include_payloads=True)
                sdk.append(time.perf_counter() - begin)
            explorer_cpu_ms = (own_cpu_seconds(explorer_pid) - cpu_before) * 1000 / searches
            page_p50, sdk_p50 = (float(np.percentile(np.asarray(t) * 1000, 50)) for t in (page, sdk))
            added = page_p50 - sdk_p50
            rows += [
                ("search p50 through the page's API", f"{page_p50:.2f} ms", ""),
                ("search p50 through the SDK", f"{sdk_p50:.2f} ms", ""),
                ("added by the explorer at p50", f"{added:.2f} ms", f"<= {GOAL_ADDED_MS:.0f} ms"),
                ("explorer CPU per search (its own process)", f"{explorer_cpu_ms:.2f} ms", ""),
            ]
            summary.update(search_p50_page_ms=round(page_p50, 2), search_p50_sdk_ms=round(sdk_p50, 2),
                           added_p50_ms=round(added, 2), added_goal_met=added <= GOAL_ADDED_MS,
                           explorer_cpu_ms_per_search=round(explorer_cpu_ms, 2))  # fmt: skip
            # The first map of an explorer pays once for starting the layout process, importing UMAP
            # and compiling its numba kernels (cached on disk for the next start): timed apart.
            seconds, _ = _map_seconds(http, "warmup")
            rows.append((f"first map, {WARMUP_POINTS:,} points (layout start-up)", f"{seconds:.1f} s", ""))
            summary["first_map_seconds"] = round(seconds, 1)

            # Maps: sampling through the gateway, PCA, UMAP (its own process), quality.
            for name, n in (("small", small), ("large", large)):
                seconds, payload = _map_seconds(http, name)
                header_bytes = int.from_bytes(payload[:4], "little")
                per_point = (len(payload) - 4 - header_bytes) / n
                size = f"{per_point:.2f} B + {header_bytes} B header"
                goal = f"<= {GOAL_BYTES_PER_POINT} B"
                rows += [(f"map of {n:,} points computed", f"{seconds:.1f} s", ""),
                         (f"map payload per point ({n:,} points)", size, goal)]  # fmt: skip
                summary[f"map_seconds_{n}"] = round(seconds, 1)
                summary[f"map_bytes_per_point_{n}"] = round(per_point, 2)
            frame = _map_frame_ms(stack.explorer_url, "large")
            rows.append(
                (
                    f"map redraw while zooming, {large:,} points (headless Chromium, no GPU)",
                    f"{frame:.1f} ms",
                    "",
                )
            )
            summary[f"map_frame_ms_{large}"] = round(frame, 1)
            http.close()
            client.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows, summary
