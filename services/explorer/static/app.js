// semsearch explorer: search, the embedding map and per-label quality over the explorer's JSON API.
// Everything here is DOM and fetching; drawing the map is map.js's job.

import { ScatterMap } from "./map.js";

// A qualitative palette: label code c is drawn in PALETTE[c % PALETTE.length] (map and legend alike).
const PALETTE = [
  "#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1", "#17becf", "#d37295", "#b6992d", "#9d7660", "#2f4b7c",
  "#a0cbe8", "#ffbe7d", "#ff9d9a", "#8cd17d", "#d4a6c8", "#86bcb6", "#fabfd2", "#f1ce63", "#d7b5a6", "#665191",
];
const UNLABELLED_COLOR = "#c3c7cf"; // map.js draws code NO_LABEL in the same grey
const NO_LABEL = 65535;
const DEFAULT_K = 10;
const MAX_K = 100;
const MAX_SELECTION = 500; // the most points /selection accepts at once
const COLLECTIONS_POLL_MS = 5000;
const MAP_POLL_MS = 1000;
const MAP_RETRY_MS = 10000; // after a failed map computation, which the server retries by itself
const QUALITY_POLL_MS = 3000; // while the sample behind the quality report is still being computed
const HOVER_FETCH_DELAY_MS = 120; // sweeping the cursor across points should not fire a request per point
const URL_KEYS = ["collection", "tab", "text", "id", "k", "recall", "filter", "field"];

const byId = (id) => document.getElementById(id);
const ui = {
  collection: byId("collection"),
  collectionCount: byId("collection-count"),
  collectionState: byId("collection-state"),
  collectionModel: byId("collection-model"),
  error: byId("error"),
  status: byId("status"),
  searchForm: byId("search-form"),
  queryText: byId("query-text"),
  dropzone: byId("dropzone"),
  imageInput: byId("image-input"),
  k: byId("k"),
  recallTarget: byId("recall-target"),
  filter: byId("filter"),
  filterFields: byId("filter-fields"),
  querySummary: byId("query-summary"),
  results: byId("results"),
  resultsEmpty: byId("results-empty"),
  queryInfoBody: byId("query-info-body"),
  checkRecall: byId("check-recall"),
  recallResult: byId("recall-result"),
  exactResults: byId("exact-results"),
  map: byId("map"),
  mapMeta: byId("map-meta"),
  mapReset: byId("map-reset"),
  mapProgress: byId("map-progress"),
  mapMessage: byId("map-message"),
  mapTooltip: byId("map-tooltip"),
  mapField: byId("map-field"),
  mapLegend: byId("map-legend"),
  mapLegendPanel: byId("map-legend-panel"),
  mapSelection: byId("map-selection"),
  mapSelectionNote: byId("map-selection-note"),
  qualityField: byId("quality-field"),
  qualityOverall: byId("quality-overall"),
  qualityRows: document.querySelector("#quality-table tbody"),
};
const RESULTS_HINT = ui.resultsEmpty.textContent;
const TABS = {
  search: { tab: byId("tab-search"), panel: byId("search-section") },
  map: { tab: byId("tab-map"), panel: byId("map-section") },
  quality: { tab: byId("tab-quality"), panel: byId("quality-section") },
};

const app = { collections: new Map(), collection: "", tab: "search" };
// seq numbers searches so that a response arriving after a newer search started is dropped.
const search = { seq: 0, controller: null, query: null, response: null };
// Map loads and selections carry tokens for the same reason; points caches point details by index.
const mapState = {
  collection: null,
  status: "idle", // idle | loading | computing | empty | ready | failed
  token: 0,
  timer: 0,
  header: null,
  labels: null,
  points: new Map(),
  hovered: -1,
  hoverTimer: 0,
  selectionToken: 0,
};
const quality = { collection: null, field: null, token: 0, timer: 0 };

// --- Small helpers ----------------------------------------------------------------------------

/** Flattens nested child lists and drops null/false, so optional parts can be written inline. */
const childNodes = (children) => children.flat(Infinity).filter((child) => child != null && child !== false);

/** Creates an element. Children that are strings become text nodes: server data is never parsed as HTML. */
function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value == null) continue;
    if (name === "class") element.className = value;
    else if (name === "style") Object.assign(element.style, value);
    else element.setAttribute(name, value === true ? "" : value);
  }
  element.append(...childNodes(children));
  return element;
}

function setChildren(element, ...children) {
  element.replaceChildren(...childNodes(children));
}

const numberFormat = new Intl.NumberFormat("en");
const formatCount = (n) => numberFormat.format(n);
const plural = (n, word) => `${formatCount(n)} ${word}${n === 1 ? "" : "s"}`;
const formatScore = (score) => Number(score).toFixed(3);
const formatMillis = (ms) => (ms < 10 ? Number(ms).toFixed(1) : String(Math.round(ms)));
const formatMs = (ms) => (ms == null ? "—" : `${formatMillis(ms)} ms`);
const clamp = (value, low, high) => Math.min(high, Math.max(low, value));
const labelColor = (code) => (code === NO_LABEL ? UNLABELLED_COLOR : PALETTE[code % PALETTE.length]);
const collectionPath = (collection) => encodeURIComponent(collection);

/** Like Python's str() of a float for the common cases (0.9, 1.0), rounded to 3 decimals. */
function formatRatio(value) {
  const rounded = Math.round(value * 1000) / 1000;
  return Number.isInteger(rounded) ? rounded.toFixed(1) : String(rounded);
}

// --- API --------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.status = status; // the HTTP status; 0 when the server could not be reached
  }
}

/** fetch() that turns HTTP errors into ApiError carrying the server's readable {"error"} message. */
async function request(url, options = {}) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError("Cannot reach the explorer server. Check that it is running.");
  }
  if (!response.ok) throw new ApiError(await errorMessage(response), response.status);
  return response;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error) return String(body.error);
  } catch {
    // Not JSON (a proxy's error page, say): fall back to the status line.
  }
  return `The server answered ${response.status} ${response.statusText}`.trim();
}

async function getJSON(url, options) {
  return (await request(url, options)).json();
}

function postJSON(url, body) {
  return getJSON(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

// --- Status and errors ------------------------------------------------------------------------

function showError(message) {
  // Rewriting the same text would make screen readers announce a repeated failure (a retry loop) again.
  if (!ui.error.hidden && ui.error.textContent === message) return;
  ui.error.textContent = message;
  ui.error.hidden = false;
}

function clearError() {
  ui.error.hidden = true;
  ui.error.textContent = "";
}

function setStatus(text, { busy = false } = {}) {
  ui.status.textContent = text;
  ui.status.classList.toggle("is-busy", busy);
}

// --- URL state: the shareable part of the page lives in the hash ------------------------------

function readUrlState() {
  const params = new URLSearchParams(location.hash.slice(1));
  return Object.fromEntries(URL_KEYS.filter((key) => params.has(key)).map((key) => [key, params.get(key)]));
}

function writeUrlState({ push = false } = {}) {
  const params = new URLSearchParams({ collection: app.collection });
  if (app.tab !== "search") params.set("tab", app.tab);
  const query = search.query;
  if (query) {
    // An uploaded image cannot live in a URL: an image query keeps only its options.
    if (query.kind === "text") params.set("text", query.text);
    if (query.kind === "id") params.set("id", query.id);
    if (query.k !== DEFAULT_K) params.set("k", query.k);
    if (query.recallTarget) params.set("recall", query.recallTarget);
    if (query.filter) params.set("filter", query.filter);
  }
  if (app.tab === "quality" && ui.qualityField.value) params.set("field", ui.qualityField.value);
  const hash = `#${params}`;
  if (hash !== location.hash) history[push ? "pushState" : "replaceState"](null, "", hash);
}

/** Brings the page to a URL's state: on load, and on back/forward. */
function applyUrlState(urlState) {
  const fallback = app.collection || app.collections.keys().next().value;
  selectCollection(app.collections.has(urlState.collection) ? urlState.collection : fallback);
  ui.k.value = urlState.k ?? DEFAULT_K;
  ui.recallTarget.value = urlState.recall ?? "";
  ui.filter.value = urlState.filter ?? "";
  ui.queryText.value = urlState.text ?? "";
  if (urlState.field && [...ui.qualityField.options].some((option) => option.value === urlState.field)) {
    ui.qualityField.value = urlState.field;
  }
  showTab(urlState.tab in TABS ? urlState.tab : "search");
  if (urlState.text) runSearch({ kind: "text", text: urlState.text }, { updateUrl: false });
  else if (urlState.id) runSearch({ kind: "id", id: urlState.id }, { updateUrl: false });
  else resetSearch();
  writeUrlState();
}

// --- Collections ------------------------------------------------------------------------------

async function loadCollections() {
  const { collections } = await getJSON("/api/collections");
  app.collections = new Map(collections.map((collection) => [collection.name, collection]));
  renderCollectionOptions();
  if (!app.collection && app.collections.size) applyUrlState(readUrlState());
  else renderCollectionInfo();
}

/** Polls so that the item count of a collection that is still loading visibly grows. */
function pollCollections() {
  setTimeout(async () => {
    if (!document.hidden) {
      try {
        await loadCollections();
      } catch {
        // A missed poll is harmless; the next one retries.
      }
    }
    pollCollections();
  }, COLLECTIONS_POLL_MS);
}

function renderCollectionOptions() {
  const names = [...app.collections.keys()];
  const shown = [...ui.collection.options].map((option) => option.value);
  if (names.join("\n") !== shown.join("\n")) {
    setChildren(ui.collection, ...names.map((name) => h("option", { value: name }, name)));
  }
  ui.collection.value = app.collection;
}

function renderCollectionInfo() {
  const info = app.collections.get(app.collection);
  if (!info) return;
  ui.collectionCount.textContent = `${plural(info.count, "item")}${info.loading ? " · loading…" : ""}`;
  ui.collectionState.textContent = info.state;
  ui.collectionState.className = `badge state-${info.state}`;
  ui.collectionState.title = {
    indexed: "Searched through its index",
    building: "Its index is being built; searches scan every item meanwhile",
    exact: "Searched exhaustively (too small to need an index)",
  }[info.state] ?? "";
  ui.collectionModel.textContent = `${info.model} · ${info.dim}-d`;
  const kinds = info.kinds ?? [];
  ui.dropzone.hidden = !kinds.includes("image");
  ui.queryText.placeholder = kinds.includes("text")
    ? "Describe what you are looking for…"
    : "This collection is searched by image: drop or paste one below";
  const fields = info.fields ?? [];
  ui.filterFields.textContent = fields.length ? `Fields: ${fields.map((field) => field.name).join(", ")}` : "";
  ui.filter.placeholder = fields.length ? `${fields[0].name} = "…"` : "";
}

function selectCollection(name) {
  if (!name || name === app.collection) return;
  app.collection = name;
  ui.collection.value = name;
  renderCollectionInfo();
  renderQualityFields();
  resetSearch();
  resetMap();
  resetQuality();
  loadActiveTab();
}

// --- Tabs (the WAI-ARIA tabs pattern: arrow keys move between tabs) ---------------------------

function showTab(name, { focus = false } = {}) {
  if (name !== app.tab) clearError(); // an error belongs to what the user was doing on the previous tab
  app.tab = name;
  for (const [key, { tab, panel }] of Object.entries(TABS)) {
    const active = key === name;
    tab.setAttribute("aria-selected", String(active));
    tab.tabIndex = active ? 0 : -1;
    panel.hidden = !active;
  }
  if (focus) TABS[name].tab.focus();
  loadActiveTab();
}

function loadActiveTab() {
  if (app.tab === "map") ensureMap();
  if (app.tab === "quality") ensureQuality();
}

function onTabKeyDown(event) {
  const names = Object.keys(TABS);
  const current = names.indexOf(app.tab);
  const target = { ArrowRight: current + 1, ArrowLeft: current - 1, Home: 0, End: names.length - 1 }[event.key];
  if (target === undefined) return;
  event.preventDefault();
  showTab(names[(target + names.length) % names.length], { focus: true });
  writeUrlState();
}

// --- Search -----------------------------------------------------------------------------------

function readOptions() {
  const k = clamp(Math.round(Number(ui.k.value) || DEFAULT_K), 1, MAX_K);
  ui.k.value = k;
  return { k, recallTarget: ui.recallTarget.value.trim(), filter: ui.filter.value.trim() };
}

function searchFormData(query) {
  const form = new FormData();
  form.set("collection", query.collection);
  form.set("k", String(query.k));
  form.set("recall_target", query.recallTarget);
  form.set("filter", query.filter);
  if (query.kind === "image") form.set("image", query.file, query.file.name || "pasted-image");
  else form.set(query.kind, query[query.kind]);
  return form;
}

/** Runs a search; source is {kind: "text", text} | {kind: "id", id} | {kind: "image", file}. */
async function runSearch(source, { updateUrl = true } = {}) {
  const query = { collection: app.collection, ...readOptions(), ...source };
  const seq = ++search.seq;
  search.controller?.abort();
  search.controller = new AbortController();
  search.query = query;
  if (updateUrl) writeUrlState({ push: true });
  clearError();
  setStatus("Searching…", { busy: true });
  ui.results.setAttribute("aria-busy", "true");
  try {
    const response = await getJSON("/api/search", {
      method: "POST",
      body: searchFormData(query),
      signal: search.controller.signal,
    });
    if (seq === search.seq) showSearchResponse(response);
  } catch (error) {
    if (seq !== search.seq) return; // superseded (or aborted) by a newer search
    setStatus("");
    showError(error.message);
  } finally {
    if (seq === search.seq) ui.results.removeAttribute("aria-busy");
  }
}

function searchMoreLike(id) {
  showTab("search");
  ui.queryText.value = "";
  runSearch({ kind: "id", id });
  if (ui.querySummary.getBoundingClientRect().top < 0) ui.querySummary.scrollIntoView();
}

function resetSearch() {
  search.seq++;
  search.controller?.abort();
  search.query = null;
  search.response = null;
  setStatus("");
  setChildren(ui.querySummary);
  setChildren(ui.results);
  ui.resultsEmpty.hidden = false;
  ui.resultsEmpty.textContent = RESULTS_HINT;
  setChildren(ui.queryInfoBody, h("p", { class: "muted" }, "Run a search to see its timings, shards and plan."));
  resetRecall();
  ui.checkRecall.disabled = true;
  highlightHitsOnMap();
}

function showSearchResponse(response) {
  search.response = response;
  window.__lastSearch = response;
  const hits = response.hits ?? [];
  renderQuerySummary(response.query ?? {}, response.query_thumbnail);
  renderHits(hits);
  renderQueryInfo(response.info ?? {});
  resetRecall();
  ui.checkRecall.disabled = !response.query_id;
  setStatus(`${plural(hits.length, "result")} in ${formatMs(response.info?.total_ms)}`);
  highlightHitsOnMap();
}

function renderQuerySummary(query, queryThumbnail) {
  const parts = [];
  if (query.kind === "image") {
    if (queryThumbnail) parts.push(h("img", { class: "query-thumbnail", src: queryThumbnail, alt: "The query image" }));
    parts.push(h("span", {}, "Results for this image"));
  } else if (query.kind === "id") {
    parts.push(h("span", {}, "More like "), h("code", {}, query.id));
  } else {
    parts.push(h("span", {}, `Results for “${query.text ?? ""}”`));
  }
  if (query.filter) parts.push(h("span", { class: "chip" }, h("span", { class: "chip-key" }, "filter"), query.filter));
  setChildren(ui.querySummary, ...parts);
}

function renderHits(hits) {
  const hadFocus = ui.results.contains(document.activeElement);
  const cards = hits.map((hit) =>
    itemCard(hit, { className: "hit", score: hit.score, moreLikeThis: true, focusable: true }),
  );
  setChildren(ui.results, cards);
  ui.resultsEmpty.hidden = hits.length > 0;
  if (!hits.length) ui.resultsEmpty.textContent = "No results. Try other words, or loosen the filter.";
  const first = ui.results.firstElementChild;
  // Keyboard users who triggered "more like this" from a card keep their place in the new results.
  if (first) setActiveCard(first, { focus: hadFocus });
}

/** A result card: preview (thumbnail or text), score, id, metadata chips and optional actions. */
function itemCard(item, { className, score, moreLikeThis = false, missed = false, focusable = false }) {
  return h(
    "li",
    { class: `card ${className}${missed ? " missed" : ""}`, "data-id": item.id, tabindex: focusable ? "-1" : null },
    itemPreview(item),
    h(
      "div",
      { class: "card-body" },
      h(
        "div",
        { class: "card-head" },
        score != null && h("span", { class: "score", title: "Similarity score" }, formatScore(score)),
        missed && h("span", { class: "badge badge-danger" }, "missed"),
        item.deleted && h("span", { class: "badge" }, "deleted"),
      ),
      h("code", { class: "card-id", title: item.id }, item.id),
      metadataChips(item.metadata ?? {}),
      moreLikeThis &&
        h("button", { type: "button", class: "button small more-like-this", "data-id": item.id }, "More like this"),
    ),
  );
}

function itemPreview(item) {
  if (item.thumbnail) {
    const image = h("img", { src: item.thumbnail, alt: `Thumbnail of ${item.id}`, loading: "lazy", decoding: "async" });
    return h("div", { class: "card-media" }, image);
  }
  if (item.text) return h("div", { class: "card-text" }, h("p", {}, item.text));
  return h("div", { class: "card-media card-media-empty" }, "No preview");
}

function metadataChips(metadata) {
  const entries = Object.entries(metadata).filter(([, value]) => value != null && value !== "");
  if (!entries.length) return null;
  return h(
    "ul",
    { class: "chips", "aria-label": "Metadata" },
    entries.map(([key, value]) =>
      h(
        "li",
        { class: "chip" },
        h("span", { class: "chip-key" }, key),
        typeof value === "object" ? JSON.stringify(value) : String(value),
      ),
    ),
  );
}

// Roving tabindex: the result grid is one tab stop; arrow keys move focus between its cards.
function setActiveCard(card, { focus = false } = {}) {
  for (const other of ui.results.children) {
    const active = other === card;
    other.tabIndex = active ? 0 : -1;
    other.querySelector(".more-like-this").tabIndex = active ? 0 : -1;
  }
  if (focus) card.focus();
}

/** How many cards the first row of the grid holds, so that Up/Down can jump a whole row. */
function gridColumns(cards) {
  const top = cards[0].offsetTop;
  const inFirstRow = cards.findIndex((card) => card.offsetTop !== top);
  return inFirstRow === -1 ? cards.length : inFirstRow;
}

function onResultsKeyDown(event) {
  const card = event.target.closest(".hit");
  if (!card) return;
  if (event.key === "Enter" && event.target === card) {
    event.preventDefault();
    searchMoreLike(card.dataset.id);
    return;
  }
  const cards = [...ui.results.children];
  const columns = gridColumns(cards);
  const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -columns, ArrowDown: columns }[event.key];
  const index = cards.indexOf(card);
  const target = { Home: 0, End: cards.length - 1 }[event.key] ?? (step === undefined ? undefined : index + step);
  if (target === undefined) return;
  event.preventDefault();
  if (target >= 0 && target < cards.length) setActiveCard(cards[target], { focus: true });
}

// --- Image queries: file input, drag and drop, paste ------------------------------------------

function searchImage(file) {
  showTab("search");
  ui.queryText.value = "";
  runSearch({ kind: "image", file });
}

const carriesFiles = (event) => [...(event.dataTransfer?.types ?? [])].includes("Files");

function bindImageInputs() {
  ui.imageInput.addEventListener("change", () => {
    const [file] = ui.imageInput.files;
    if (file) searchImage(file);
    ui.imageInput.value = ""; // choosing the same file again should search again
  });
  for (const type of ["dragenter", "dragover"]) {
    ui.dropzone.addEventListener(type, (event) => {
      if (!carriesFiles(event)) return;
      event.preventDefault();
      ui.dropzone.classList.add("is-dragover");
    });
  }
  ui.dropzone.addEventListener("dragleave", (event) => {
    if (!ui.dropzone.contains(event.relatedTarget)) ui.dropzone.classList.remove("is-dragover");
  });
  ui.dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    ui.dropzone.classList.remove("is-dragover");
    const [file] = event.dataTransfer.files;
    if (file) searchImage(file);
  });
  // A file dropped just beside the zone would otherwise make the browser navigate away to it.
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (event) => {
      if (carriesFiles(event)) event.preventDefault();
    });
  }
  document.addEventListener("paste", (event) => {
    const [file] = event.clipboardData?.files ?? [];
    if (!file) return; // pasted text goes to the focused field as usual
    event.preventDefault();
    searchImage(file);
  });
}

// --- What happened in this query --------------------------------------------------------------

function renderQueryInfo(info) {
  setChildren(
    ui.queryInfoBody,
    infoSummary(info),
    stageTimings(info.timings ?? [], info.total_ms),
    shardTable(info.shards ?? []),
  );
}

function infoSummary(info) {
  const generations = Object.entries(info.generations ?? {}).map(([shard, number]) => `shard ${shard}: ${number}`);
  const partial = info.shards_answered < info.shards_queried;
  const rows = [
    ["Total", formatMs(info.total_ms), false],
    ["Cached", info.cached ? "yes" : "no", false],
    ["Shards answered", `${info.shards_answered ?? "—"} of ${info.shards_queried ?? "—"}`, partial],
    ["Generations", generations.join(", ") || "—", false],
    ["Model", info.model_version || "—", false],
  ];
  return h(
    "dl",
    { class: "info-list" },
    rows.map(([term, value, warn]) => [h("dt", {}, term), h("dd", { class: warn ? "warning" : null }, value)]),
  );
}

// The gateway's stage names, as a person reads them.
const STAGE_NAMES = {
  lookup: "item lookup",
  embedding_cache: "embedding cache",
  embed: "embed (Triton)",
  result_cache: "result cache",
  fanout: "fan-out to shards",
  merge: "merge",
};

function stageTimings(timings, totalMs) {
  if (!timings.length) return null;
  const longest = Math.max(totalMs ?? 0, ...timings.map((timing) => timing.ms));
  return h(
    "div",
    { class: "info-block" },
    h("h3", {}, "Stages"),
    h(
      "ul",
      { class: "bar-list" },
      timings.map((timing) =>
        h(
          "li",
          {},
          h("span", { class: "bar-name", title: timing.stage }, STAGE_NAMES[timing.stage] ?? timing.stage),
          bar(timing.ms / (longest || 1)),
          h("span", { class: "bar-value" }, formatMs(timing.ms)),
        ),
      ),
    ),
  );
}

/** A horizontal bar filled to fraction (0..1). */
function bar(fraction) {
  const width = `${clamp(fraction, 0, 1) * 100}%`;
  return h("span", { class: "bar" }, h("span", { class: "bar-fill", style: { width } }));
}

function shardTable(shards) {
  if (!shards.length) return null;
  const headings = [
    ["Shard", ""],
    ["Plan", "index: searched through the index; exact: every allowed item scored"],
    ["Lists probed", "IVF lists probed per query (or HNSW efSearch); none for an exact plan"],
    ["Items allowed", "Live items matching the filter on this shard"],
    ["ms", "Time spent on this shard"],
  ];
  return h(
    "div",
    { class: "info-block" },
    h("h3", {}, "Shards"),
    h(
      "table",
      { class: "shard-table" },
      h("thead", {}, h("tr", {}, headings.map(([name, help]) => h("th", { scope: "col", title: help || null }, name)))),
      h(
        "tbody",
        {},
        shards.map((shard) =>
          h(
            "tr",
            {},
            h("td", {}, String(shard.shard)),
            h("td", {}, h("span", { class: `plan plan-${shard.plan}` }, shard.plan)),
            h("td", { class: "numeric" }, shard.depth ? Number(shard.depth).toFixed(1) : "—"),
            h("td", { class: "numeric" }, shard.matched == null ? "—" : formatCount(shard.matched)),
            h("td", { class: "numeric" }, shard.ms == null ? "—" : formatMillis(shard.ms)),
          ),
        ),
      ),
    ),
  );
}

// --- Recall check -----------------------------------------------------------------------------

function resetRecall() {
  ui.recallResult.textContent = "";
  ui.recallResult.classList.remove("is-busy");
  setChildren(ui.exactResults);
}

async function checkRecall() {
  const response = search.response;
  if (!response?.query_id) return;
  const current = () => search.response === response; // a newer search may land while this runs
  ui.checkRecall.disabled = true;
  ui.recallResult.textContent = "Scoring every item…";
  ui.recallResult.classList.add("is-busy");
  try {
    const exact = await postJSON("/api/exact", { query_id: response.query_id });
    if (current()) renderRecall(exact);
  } catch (error) {
    if (!current()) return;
    resetRecall();
    showError(error.message);
  } finally {
    if (current()) ui.checkRecall.disabled = false;
  }
}

function renderRecall(exact) {
  const missed = exact.exact.filter((hit) => hit.missed).length;
  const outcome = missed
    ? `the index missed ${missed} of the exact top ${exact.k}`
    : "the index found every exact neighbour";
  ui.recallResult.classList.remove("is-busy");
  setChildren(
    ui.recallResult,
    h("strong", {}, `recall@${exact.k}: ${formatRatio(exact.recall)}`),
    h("span", { class: "muted" }, ` · ${outcome} (exact search: ${formatMs(exact.ms)})`),
  );
  setChildren(
    ui.exactResults,
    exact.exact.map((hit) => itemCard(hit, { className: "exact-hit", score: hit.score, missed: Boolean(hit.missed) })),
  );
}

// --- Map --------------------------------------------------------------------------------------

const scatter = new ScatterMap(ui.map, {
  onHover: onMapHover,
  onClick: onMapClick,
  onSelect: onMapSelect,
  onDraw: onMapDraw,
});
window.__mapReady = false;
window.__mapPointCount = 0;
window.__mapScreenPoint = (i) => scatter.screenPoint(i);

function ensureMap() {
  if (mapState.collection === app.collection) return;
  mapState.collection = app.collection;
  mapState.status = "loading";
  showMapMessage("Loading the map…");
  loadMap(mapState.token);
}

/** Clears the map; bumping the token makes any request or poll still under way for it stand down. */
function resetMap() {
  mapState.token++;
  clearTimeout(mapState.timer);
  clearTimeout(mapState.hoverTimer);
  Object.assign(mapState, { collection: null, status: "idle", header: null, labels: null, hovered: -1 });
  mapState.points = new Map();
  scatter.setData({ xy: new Uint16Array(0), labels: new Uint16Array(0), palette: PALETTE });
  window.__mapReady = false;
  window.__mapPointCount = 0;
  ui.mapProgress.hidden = true;
  ui.mapMessage.hidden = true;
  ui.mapTooltip.hidden = true;
  ui.mapMeta.textContent = "";
  ui.mapField.textContent = "";
  ui.mapLegendPanel.hidden = true;
  setChildren(ui.mapLegend);
  clearSelectionList();
}

/** Fetches the map; the server answers JSON while it computes (or has nothing to show), binary when ready. */
async function loadMap(token) {
  try {
    const response = await request(`/api/map/${collectionPath(mapState.collection)}`);
    const isJson = (response.headers.get("Content-Type") ?? "").includes("application/json");
    const body = isJson ? await response.json() : decodeMap(await response.arrayBuffer());
    if (token !== mapState.token) return;
    if (body.state === "computing") {
      mapState.status = "computing";
      showMapProgress(body);
      mapState.timer = setTimeout(() => loadMap(token), MAP_POLL_MS);
    } else if (body.state === "empty") {
      mapState.status = "empty";
      showMapMessage("This collection has too few items for a map.");
    } else {
      showMapData(body);
    }
  } catch (error) {
    if (token !== mapState.token) return;
    mapState.status = "failed";
    showMapMessage("The map could not be loaded. Retrying shortly…");
    showError(error.message);
    mapState.timer = setTimeout(() => loadMap(token), MAP_RETRY_MS);
  }
}

/**
 * The binary map: uint32 LE header length H, H bytes of JSON header, padding to a multiple of 4,
 * then 2N uint16 LE (x, y per point) and N uint16 LE label codes.
 */
function decodeMap(buffer) {
  const headerLength = new DataView(buffer).getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, headerLength)));
  const start = Math.ceil((4 + headerLength) / 4) * 4;
  // Typed arrays use the platform's byte order; browsers run on little-endian hardware, like the payload.
  const xy = new Uint16Array(buffer, start, 2 * header.count);
  const labels = new Uint16Array(buffer, start + 4 * header.count, header.count);
  return { state: "ready", header, xy, labels };
}

function showMapProgress({ progress = 0, phase = "Computing the map" }) {
  const percent = Math.round(clamp(progress, 0, 1) * 100);
  ui.mapMessage.hidden = true;
  ui.mapProgress.hidden = false;
  ui.mapProgress.setAttribute("aria-valuenow", String(percent));
  ui.mapProgress.setAttribute("aria-valuetext", `${phase}: ${percent}%`);
  ui.mapProgress.querySelector(".progress-fill").style.width = `${percent}%`;
  ui.mapProgress.querySelector(".progress-label").textContent = `${phase} — ${percent}%`;
}

function showMapMessage(text) {
  ui.mapProgress.hidden = true;
  ui.mapMessage.hidden = false;
  ui.mapMessage.textContent = text;
}

function showMapData({ header, xy, labels }) {
  Object.assign(mapState, { status: "ready", header, labels });
  ui.mapProgress.hidden = true;
  ui.mapMessage.hidden = true;
  scatter.setData({ xy, labels, palette: PALETTE });
  window.__mapPointCount = header.count;
  const method = header.method === "umap" ? "UMAP" : String(header.method).toUpperCase();
  const layout = `${method} layout (${Math.round(header.seconds)} s)`;
  const computed = new Date(header.computed_at * 1000).toLocaleString();
  const sample = `${plural(header.count, "point")} sampled from ${header.items.toLocaleString()} items`;
  ui.mapMeta.textContent = `${sample} · ${layout} · computed ${computed}`;
  renderLegend(header, labels);
  highlightHitsOnMap();
}

function onMapDraw(milliseconds) {
  window.__mapDrawMs = milliseconds;
  if (mapState.status === "ready") window.__mapReady = true;
}

const swatch = (color) => h("span", { class: "swatch", style: { background: color } });

function renderLegend(header, codes) {
  const names = header.labels ?? [];
  ui.mapLegendPanel.hidden = false;
  ui.mapField.textContent = header.field ?? "(no label field)";
  // One extra slot, last, counts the points without a label.
  const counts = new Uint32Array(names.length + 1);
  for (const code of codes) counts[Math.min(code, names.length)]++;
  const entries = names.map((name, code) => ({ name, color: labelColor(code), count: counts[code] }));
  if (counts[names.length]) entries.push({ name: "no label", color: UNLABELLED_COLOR, count: counts[names.length] });
  setChildren(
    ui.mapLegend,
    ...entries.map(({ name, color, count }) =>
      h(
        "li",
        {},
        swatch(color),
        h("span", { class: "legend-name" }, name),
        h("span", { class: "legend-count" }, formatCount(count)),
      ),
    ),
  );
}

function highlightHitsOnMap() {
  const response = search.response;
  // map_points (the hits' indices in the map, -1 when absent) comes only when the map is ready server-side.
  const applies =
    mapState.status === "ready" &&
    response?.query?.collection === mapState.collection &&
    Array.isArray(response.map_points);
  scatter.setHighlights(applies ? response.map_points : []);
}

/** Point details for the tooltip and selection, fetched once per point and cached (as promises). */
function fetchPoint(index) {
  if (!mapState.points.has(index)) {
    const pending = getJSON(`/api/map/${collectionPath(mapState.collection)}/point/${index}`);
    mapState.points.set(index, pending);
    pending.catch(() => mapState.points.delete(index)); // let a later hover retry
  }
  return mapState.points.get(index);
}

function onMapHover(index, at) {
  clearTimeout(mapState.hoverTimer);
  mapState.hovered = index;
  if (index < 0) {
    ui.mapTooltip.hidden = true;
    return;
  }
  showTooltip(index, at, null);
  if (mapState.points.has(index)) fillTooltip(index, at);
  else mapState.hoverTimer = setTimeout(() => fillTooltip(index, at), HOVER_FETCH_DELAY_MS);
}

async function fillTooltip(index, at) {
  try {
    const point = await fetchPoint(index);
    if (mapState.hovered === index) showTooltip(index, at, point);
  } catch {
    if (mapState.hovered === index) showTooltip(index, at, { id: "details unavailable" });
  }
}

/** Shows the tooltip beside the point, flipped to stay inside the map; point is null while loading. */
function showTooltip(index, at, point) {
  const code = mapState.labels[index];
  const labelName = code === NO_LABEL ? "no label" : mapState.header.labels[code];
  setChildren(
    ui.mapTooltip,
    point?.thumbnail ? h("img", { src: point.thumbnail, alt: "" }) : null,
    point?.text ? h("p", { class: "tooltip-text" }, point.text) : null,
    h("code", { class: "tooltip-id" }, point ? point.id : `point ${index}…`),
    h("span", { class: "tooltip-label" }, swatch(labelColor(code)), labelName),
  );
  ui.mapTooltip.hidden = false;
  const gap = 14;
  const stage = ui.mapTooltip.parentElement;
  const { offsetWidth: width, offsetHeight: height } = ui.mapTooltip;
  const left = at.x + gap + width > stage.clientWidth ? at.x - gap - width : at.x + gap;
  const top = at.y + gap + height > stage.clientHeight ? at.y - gap - height : at.y + gap;
  ui.mapTooltip.style.transform = `translate(${Math.max(left, 0)}px, ${Math.max(top, 0)}px)`;
}

async function onMapClick(index) {
  try {
    const point = await fetchPoint(index);
    searchMoreLike(point.id);
  } catch (error) {
    showError(error.message);
  }
}

async function onMapSelect(indices) {
  const token = ++mapState.selectionToken;
  if (!indices.length) {
    clearSelectionList();
    return;
  }
  const requested = indices.slice(0, MAX_SELECTION);
  setChildren(ui.mapSelection, h("p", { class: "muted" }, `Loading ${plural(requested.length, "selected item")}…`));
  try {
    const url = `/api/map/${collectionPath(mapState.collection)}/selection`;
    const { items } = await postJSON(url, { points: requested });
    if (token !== mapState.selectionToken) return;
    for (const item of items) mapState.points.set(item.index, Promise.resolve(item));
    renderSelection(items, indices.length);
  } catch (error) {
    if (token !== mapState.selectionToken) return;
    clearSelectionList();
    showError(error.message);
  }
}

function clearSelectionList() {
  setChildren(ui.mapSelection);
  ui.mapSelectionNote.hidden = true;
}

function renderSelection(items, total) {
  const selected = `${plural(total, "point")} selected`;
  const heading = total > items.length ? `${selected} · showing the first ${formatCount(items.length)}` : selected;
  ui.mapSelectionNote.textContent = `${selected} ↓`;
  ui.mapSelectionNote.hidden = false;
  setChildren(
    ui.mapSelection,
    h("h2", {}, heading),
    h(
      "ol",
      { class: "hit-grid compact" },
      items.map((item) => itemCard(item, { className: "selection-item", moreLikeThis: true })),
    ),
  );
}

// --- Quality ----------------------------------------------------------------------------------

function renderQualityFields() {
  // Labels are string fields; precision by a numeric field would mean nothing.
  const fields = (app.collections.get(app.collection)?.fields ?? [])
    .filter((field) => field.type === "string")
    .map((field) => field.name);
  setChildren(ui.qualityField, ...fields.map((name) => h("option", { value: name }, name)));
  if (fields.includes("label")) ui.qualityField.value = "label";
}

function resetQuality() {
  quality.token++;
  clearTimeout(quality.timer);
  quality.collection = null;
  quality.field = null;
  ui.qualityOverall.textContent = "";
  setChildren(ui.qualityRows);
}

function ensureQuality() {
  if (quality.collection !== app.collection || quality.field !== ui.qualityField.value) loadQuality();
}

function loadQuality() {
  const field = ui.qualityField.value;
  const token = ++quality.token;
  clearTimeout(quality.timer);
  quality.collection = app.collection;
  quality.field = field;
  setChildren(ui.qualityRows);
  if (!field) {
    ui.qualityOverall.textContent = "This collection has no label field to measure against.";
    return;
  }
  ui.qualityOverall.textContent = "Measuring neighbour precision…";
  fetchQuality(token, field);
}

async function fetchQuality(token, field) {
  try {
    const url = `/api/quality/${collectionPath(quality.collection)}?field=${encodeURIComponent(field)}`;
    const report = await getJSON(url);
    if (token === quality.token) renderQuality(report);
  } catch (error) {
    if (token !== quality.token) return;
    if (error.status === 409) {
      // 409: the sample the report is computed on (the map's) is not ready yet; ask again shortly.
      ui.qualityOverall.textContent = `${error.message}…`;
      quality.timer = setTimeout(() => fetchQuality(token, field), QUALITY_POLL_MS);
      return;
    }
    ui.qualityOverall.textContent = "";
    showError(error.message);
  }
}

function renderQuality(report) {
  setChildren(
    ui.qualityOverall,
    h("span", {}, `Overall precision@${report.k}: `),
    h("strong", {}, report.overall.toFixed(2)),
    h("span", { class: "muted" }, ` · over ${plural(report.sample, "sampled item")}`),
  );
  const rows = [...report.per_label].sort((a, b) => a.precision - b.precision);
  setChildren(ui.qualityRows, ...rows.map(qualityRow));
}

function qualityRow(entry) {
  const confusions = (entry.confused_with ?? []).slice(0, 3);
  return h(
    "tr",
    {},
    h("th", { scope: "row" }, entry.label),
    h(
      "td",
      {},
      h("div", { class: "meter" }, bar(entry.precision), h("span", { class: "bar-value" }, entry.precision.toFixed(2))),
    ),
    h("td", { class: "numeric" }, formatCount(entry.count)),
    h("td", {}, confusions.length ? confusionChips(confusions) : h("span", { class: "muted" }, "—")),
  );
}

function confusionChips(confusions) {
  return h(
    "ul",
    { class: "chips" },
    confusions.map(({ label, share }) =>
      h("li", { class: "chip" }, label, h("span", { class: "chip-key" }, `${Math.round(share * 100)}%`)),
    ),
  );
}

// --- Wiring -----------------------------------------------------------------------------------

function bindEvents() {
  ui.collection.addEventListener("change", () => {
    selectCollection(ui.collection.value);
    writeUrlState({ push: true });
  });
  for (const [name, { tab }] of Object.entries(TABS)) {
    tab.addEventListener("click", () => {
      showTab(name);
      writeUrlState();
    });
    tab.addEventListener("keydown", onTabKeyDown);
  }
  ui.searchForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.queryText.value.trim();
    if (text) runSearch({ kind: "text", text });
    else ui.queryText.focus();
  });
  ui.results.addEventListener("keydown", onResultsKeyDown);
  ui.results.addEventListener("focusin", (event) => {
    const card = event.target.closest(".hit");
    if (card) setActiveCard(card);
  });
  // One listener serves every "More like this" button: results, exact hits and the map selection.
  document.addEventListener("click", (event) => {
    const button = event.target.closest(".more-like-this");
    if (button) searchMoreLike(button.dataset.id);
  });
  ui.checkRecall.addEventListener("click", checkRecall);
  ui.mapReset.addEventListener("click", () => scatter.resetView());
  // The selection is listed below the map, often below the fold: this note leads there.
  ui.mapSelectionNote.addEventListener("click", () => ui.mapSelection.scrollIntoView({ block: "start" }));
  ui.qualityField.addEventListener("change", () => {
    loadQuality();
    writeUrlState();
  });
  window.addEventListener("popstate", () => applyUrlState(readUrlState()));
  bindImageInputs();
}

async function start() {
  bindEvents();
  try {
    await loadCollections();
  } catch (error) {
    showError(error.message);
  }
  pollCollections();
}

start();
