// A Canvas2D scatter plot for tens of thousands of points.
//
// Points are written straight into one reused ImageData (a small square of pixels per point,
// coloured through a per-label lookup table) and blitted with a single putImageData: that is far
// cheaper than one arc() per point and needs no WebGL, which GPU-less headless browsers lack.
// Overlays (hit rings, the hovered point, the selection box) are then drawn with ordinary 2D calls.
//
// Coordinates: "data" space is the 0..65535 quantized layout; "screen" space is CSS pixels relative
// to the canvas, screen = data * view.scale + view.offset. Device pixels only appear when rendering.

const NO_LABEL = 65535;
const HOVER_RADIUS_PX = 6;
const DRAG_THRESHOLD_PX = 4;
const FIT_PADDING_PX = 24;
const MIN_ZOOM = 0.5; // relative to the fitted view
const MAX_ZOOM = 400;
const BACKGROUND = "#ffffff";
const UNLABELLED = "#c3c7cf";

// ImageData is RGBA in memory; a Uint32Array view reads those bytes in the platform's byte order.
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** Packs "#rrggbb" into one pixel of a Uint32Array view over ImageData (opaque). */
function packColor(hex) {
  const value = parseInt(hex.slice(1, 7), 16);
  const r = (value >> 16) & 255;
  const g = (value >> 8) & 255;
  const b = value & 255;
  const packed = LITTLE_ENDIAN ? (255 << 24) | (b << 16) | (g << 8) | r : (r << 24) | (g << 16) | (b << 8) | 255;
  return packed >>> 0;
}

function clamp(value, low, high) {
  return Math.min(high, Math.max(low, value));
}

/** Bounding box of the points in data space (an empty set gets the full quantized square). */
function boundsOf(xy, count) {
  if (count === 0) return { minX: 0, minY: 0, maxX: 65535, maxY: 65535 };
  let minX = Infinity;
  let minY = Infinity;
  let maxX = -Infinity;
  let maxY = -Infinity;
  for (let i = 0; i < count; i++) {
    const x = xy[2 * i];
    const y = xy[2 * i + 1];
    if (x < minX) minX = x;
    if (x > maxX) maxX = x;
    if (y < minY) minY = y;
    if (y > maxY) maxY = y;
  }
  return { minX, minY, maxX, maxY };
}

/**
 * A uniform grid over data space, built once per data set with a counting sort: the indices of
 * the points in cell c are items[starts[c] .. starts[c + 1]). Hover lookups then scan a few cells
 * instead of every point.
 */
function buildGrid(xy, count, bounds) {
  const side = clamp(Math.ceil(Math.sqrt(count / 4)), 1, 512); // about 4 points per cell
  const cellWidth = (bounds.maxX - bounds.minX + 1) / side;
  const cellHeight = (bounds.maxY - bounds.minY + 1) / side;
  const cellOf = new Uint32Array(count);
  const starts = new Uint32Array(side * side + 1);
  for (let i = 0; i < count; i++) {
    const column = Math.floor((xy[2 * i] - bounds.minX) / cellWidth);
    const row = Math.floor((xy[2 * i + 1] - bounds.minY) / cellHeight);
    const cell = row * side + column;
    cellOf[i] = cell;
    starts[cell + 1]++;
  }
  for (let c = 0; c < side * side; c++) starts[c + 1] += starts[c];
  const next = starts.slice(0, side * side);
  const items = new Uint32Array(count);
  for (let i = 0; i < count; i++) items[next[cellOf[i]]++] = i;
  return { side, cellWidth, cellHeight, minX: bounds.minX, minY: bounds.minY, starts, items };
}

/** One colour per possible label code: code c takes palette[c % palette.length]. */
function buildColorTable(palette) {
  const packed = palette.map(packColor);
  const table = new Uint32Array(NO_LABEL + 1);
  for (let code = 0; code < NO_LABEL; code++) table[code] = packed[code % packed.length];
  table[NO_LABEL] = packColor(UNLABELLED);
  return table;
}

export class ScatterMap {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {{onHover?: (index: number, at: {x: number, y: number} | null) => void,
   *          onClick?: (index: number) => void,
   *          onSelect?: (indices: number[]) => void,
   *          onDraw?: (milliseconds: number) => void}} callbacks
   *   onHover gets -1 and null when no point is under the cursor any more.
   */
  constructor(canvas, { onHover = () => {}, onClick = () => {}, onSelect = () => {}, onDraw = () => {} } = {}) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d");
    this.callbacks = { onHover, onClick, onSelect, onDraw };
    this.backgroundPixel = packColor(BACKGROUND);
    this.hovered = -1;
    this.gesture = null; // the pointer drag in progress
    this.size = { width: 0, height: 0, dpr: 1 }; // CSS pixels, and device pixels per CSS pixel
    this.view = { scale: 1, x: 0, y: 0, fitScale: 1 };
    this.viewMoved = false; // once the user pans or zooms, resizes keep their view
    this.image = null; // the ImageData points are drawn into, and a Uint32Array view of its pixels
    this.pixels = null;
    this.frame = 0;
    this.setData({ xy: new Uint16Array(0), labels: new Uint16Array(0), palette: [] });
    this.listen();
    this.resizeObserver = new ResizeObserver(() => this.resize());
    this.resizeObserver.observe(canvas);
  }

  /**
   * @param {{xy: Uint16Array, labels: Uint16Array, palette: string[]}} data
   *   xy holds x then y per point; labels one code per point (65535: none); palette "#rrggbb" colours.
   */
  setData({ xy, labels, palette }) {
    this.count = labels.length;
    this.xy = xy;
    this.labels = labels;
    this.colors = buildColorTable(palette.length ? palette : [UNLABELLED]);
    this.bounds = boundsOf(xy, this.count);
    this.grid = buildGrid(xy, this.count, this.bounds);
    this.highlights = [];
    this.selectionBox = null; // data-space rectangle of the last box selection
    this.setHovered(-1);
    this.resetView();
  }

  /** Rings drawn around these points (for example the current query's hits); -1 entries are skipped. */
  setHighlights(indices) {
    this.highlights = indices.filter((i) => i >= 0 && i < this.count);
    this.requestDraw();
  }

  resetView() {
    this.viewMoved = false;
    this.fitView();
    this.requestDraw();
  }

  /** Where point i is drawn, in CSS pixels relative to the canvas. */
  screenPoint(i) {
    return {
      x: this.xy[2 * i] * this.view.scale + this.view.x,
      y: this.xy[2 * i + 1] * this.view.scale + this.view.y,
    };
  }

  destroy() {
    cancelAnimationFrame(this.frame);
    this.resizeObserver.disconnect();
    for (const [type, handler] of this.handlers) this.canvas.removeEventListener(type, handler);
  }

  // --- View ---------------------------------------------------------------------------------

  fitView() {
    const { width, height } = this.size;
    const { minX, minY, maxX, maxY } = this.bounds;
    const spanX = Math.max(maxX - minX, 1);
    const spanY = Math.max(maxY - minY, 1);
    const fit = Math.min((width - 2 * FIT_PADDING_PX) / spanX, (height - 2 * FIT_PADDING_PX) / spanY);
    const scale = Math.max(fit, 1e-6); // a canvas not laid out yet still gets a usable (if tiny) view
    this.view = {
      scale,
      fitScale: scale,
      x: width / 2 - ((minX + maxX) / 2) * scale,
      y: height / 2 - ((minY + maxY) / 2) * scale,
    };
  }

  /** Zooms by factor keeping the data point under (x, y) fixed on screen. */
  zoomAt(x, y, factor) {
    const { view } = this;
    const scale = clamp(view.scale * factor, view.fitScale * MIN_ZOOM, view.fitScale * MAX_ZOOM);
    const applied = scale / view.scale;
    view.x = x - (x - view.x) * applied;
    view.y = y - (y - view.y) * applied;
    view.scale = scale;
    this.viewMoved = true;
    this.setHovered(-1); // the point under the cursor has moved away
    this.requestDraw();
  }

  panBy(dx, dy) {
    this.view.x += dx;
    this.view.y += dy;
    this.viewMoved = true;
    this.requestDraw();
  }

  toData(x, y) {
    return { x: (x - this.view.x) / this.view.scale, y: (y - this.view.y) / this.view.scale };
  }

  resize() {
    const rect = this.canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const width = Math.round(rect.width);
    const height = Math.round(rect.height);
    if (width === 0 || height === 0) return; // hidden (an inactive tab): keep the last size and view
    if (width === this.size.width && height === this.size.height && dpr === this.size.dpr) return;
    const previous = this.size;
    this.size = { width, height, dpr };
    this.canvas.width = Math.round(width * dpr);
    this.canvas.height = Math.round(height * dpr);
    this.image = this.context.createImageData(this.canvas.width, this.canvas.height);
    this.pixels = new Uint32Array(this.image.data.buffer);
    if (this.viewMoved && previous.width > 0) {
      // Keep what the user was looking at centred rather than snapping back to the full map.
      this.panBy((width - previous.width) / 2, (height - previous.height) / 2);
    } else {
      this.fitView();
    }
    this.draw();
  }

  // --- Picking ------------------------------------------------------------------------------

  /** The point nearest to screen (x, y) within HOVER_RADIUS_PX, or -1. */
  pointAt(x, y) {
    if (this.count === 0) return -1;
    const { grid, xy } = this;
    const centre = this.toData(x, y);
    const radius = HOVER_RADIUS_PX / this.view.scale;
    const firstColumn = clamp(Math.floor((centre.x - radius - grid.minX) / grid.cellWidth), 0, grid.side - 1);
    const lastColumn = clamp(Math.floor((centre.x + radius - grid.minX) / grid.cellWidth), 0, grid.side - 1);
    const firstRow = clamp(Math.floor((centre.y - radius - grid.minY) / grid.cellHeight), 0, grid.side - 1);
    const lastRow = clamp(Math.floor((centre.y + radius - grid.minY) / grid.cellHeight), 0, grid.side - 1);
    let best = -1;
    let bestDistance = radius * radius;
    for (let row = firstRow; row <= lastRow; row++) {
      for (let column = firstColumn; column <= lastColumn; column++) {
        const cell = row * grid.side + column;
        for (let k = grid.starts[cell]; k < grid.starts[cell + 1]; k++) {
          const i = grid.items[k];
          const dx = xy[2 * i] - centre.x;
          const dy = xy[2 * i + 1] - centre.y;
          const distance = dx * dx + dy * dy;
          if (distance <= bestDistance) {
            best = i;
            bestDistance = distance;
          }
        }
      }
    }
    return best;
  }

  /** Indices of the points inside a data-space rectangle. A plain scan: 50k points take well under 1 ms. */
  pointsIn(box) {
    const inside = [];
    for (let i = 0; i < this.count; i++) {
      const x = this.xy[2 * i];
      const y = this.xy[2 * i + 1];
      if (x >= box.minX && x <= box.maxX && y >= box.minY && y <= box.maxY) inside.push(i);
    }
    return inside;
  }

  setHovered(index) {
    if (index === this.hovered) return;
    this.hovered = index;
    this.canvas.style.cursor = index >= 0 ? "pointer" : "";
    this.callbacks.onHover(index, index >= 0 ? this.screenPoint(index) : null);
    this.requestDraw();
  }

  // --- Input --------------------------------------------------------------------------------

  listen() {
    this.handlers = [
      ["pointerdown", (event) => this.onPointerDown(event)],
      ["pointermove", (event) => this.onPointerMove(event)],
      ["pointerup", (event) => this.onPointerUp(event)],
      ["pointercancel", () => this.onPointerCancel()],
      ["pointerleave", () => this.onPointerLeave()],
      ["wheel", (event) => this.onWheel(event)],
      ["keydown", (event) => this.onKeyDown(event)],
    ];
    // Not passive: wheel and key handlers call preventDefault to keep the page from scrolling.
    for (const [type, handler] of this.handlers) this.canvas.addEventListener(type, handler);
  }

  localPoint(event) {
    const rect = this.canvas.getBoundingClientRect();
    return { x: event.clientX - rect.left, y: event.clientY - rect.top };
  }

  onPointerDown(event) {
    if (event.button !== 0) return;
    this.canvas.setPointerCapture(event.pointerId);
    const start = this.localPoint(event);
    this.gesture = { mode: event.shiftKey ? "select" : "pan", start, last: start, moved: false };
  }

  onPointerMove(event) {
    const point = this.localPoint(event);
    const { gesture } = this;
    if (!gesture) {
      this.setHovered(this.pointAt(point.x, point.y));
      return;
    }
    if (!gesture.moved && Math.hypot(point.x - gesture.start.x, point.y - gesture.start.y) < DRAG_THRESHOLD_PX) return;
    if (!gesture.moved) {
      gesture.moved = true;
      this.setHovered(-1);
      if (gesture.mode === "pan") this.canvas.classList.add("is-panning");
    }
    if (gesture.mode === "pan") this.panBy(point.x - gesture.last.x, point.y - gesture.last.y);
    else this.requestDraw();
    gesture.last = point;
  }

  onPointerUp(event) {
    const { gesture } = this;
    if (!gesture) return;
    this.gesture = null;
    this.canvas.classList.remove("is-panning");
    const point = this.localPoint(event);
    if (!gesture.moved) this.onTap(point);
    else if (gesture.mode === "select") this.finishSelection(gesture.start, point);
  }

  onPointerLeave() {
    if (!this.gesture) this.setHovered(-1);
  }

  onPointerCancel() {
    this.gesture = null;
    this.canvas.classList.remove("is-panning");
    this.requestDraw();
  }

  /** A click without a drag: open the point under it, or clear the box selection on empty space. */
  onTap(point) {
    const index = this.pointAt(point.x, point.y);
    if (index >= 0) {
      this.callbacks.onClick(index);
    } else if (this.selectionBox) {
      this.selectionBox = null;
      this.callbacks.onSelect([]);
      this.requestDraw();
    }
  }

  finishSelection(start, end) {
    const a = this.toData(start.x, start.y);
    const b = this.toData(end.x, end.y);
    this.selectionBox = {
      minX: Math.min(a.x, b.x),
      minY: Math.min(a.y, b.y),
      maxX: Math.max(a.x, b.x),
      maxY: Math.max(a.y, b.y),
    };
    this.requestDraw();
    this.callbacks.onSelect(this.pointsIn(this.selectionBox));
  }

  onWheel(event) {
    event.preventDefault();
    // Pixel deltas (touchpads, most mice) and line deltas (some mice) differ by ~40x.
    const delta = event.deltaMode === WheelEvent.DOM_DELTA_LINE ? event.deltaY * 40 : event.deltaY;
    const point = this.localPoint(event);
    this.zoomAt(point.x, point.y, Math.exp(-delta * 0.002));
  }

  /** Keyboard equivalents of the mouse gestures, for a focused canvas. */
  onKeyDown(event) {
    const step = 60;
    const centreX = this.size.width / 2;
    const centreY = this.size.height / 2;
    const actions = {
      ArrowLeft: () => this.panBy(step, 0),
      ArrowRight: () => this.panBy(-step, 0),
      ArrowUp: () => this.panBy(0, step),
      ArrowDown: () => this.panBy(0, -step),
      "+": () => this.zoomAt(centreX, centreY, 1.25),
      "=": () => this.zoomAt(centreX, centreY, 1.25),
      "-": () => this.zoomAt(centreX, centreY, 0.8),
      "0": () => this.resetView(),
    };
    const action = actions[event.key];
    if (!action) return;
    event.preventDefault();
    action();
  }

  // --- Rendering ----------------------------------------------------------------------------

  /** Coalesces any number of changes within a frame into one redraw. */
  requestDraw() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.draw());
  }

  draw() {
    cancelAnimationFrame(this.frame);
    this.frame = 0;
    if (!this.image) return;
    const started = performance.now();
    this.drawPoints();
    this.drawOverlays();
    this.callbacks.onDraw(performance.now() - started);
  }

  /** Side of a point's square in device pixels: grows a little as the user zooms in. */
  pointSize() {
    const zoom = this.view.scale / this.view.fitScale;
    const cssSize = clamp(2.5 + Math.log2(Math.max(zoom, 1)) * 0.75, 2.5, 6);
    return Math.max(2, Math.round(cssSize * this.size.dpr));
  }

  drawPoints() {
    const { pixels, image, xy, labels, colors, count } = this;
    const width = image.width;
    const height = image.height;
    const { dpr } = this.size;
    const scale = this.view.scale * dpr;
    const size = this.pointSize();
    // Folding the half-size into the offset centres each square on its point.
    const offsetX = this.view.x * dpr - size / 2;
    const offsetY = this.view.y * dpr - size / 2;
    pixels.fill(this.backgroundPixel);
    for (let i = 0; i < count; i++) {
      const left = Math.round(xy[2 * i] * scale + offsetX);
      const top = Math.round(xy[2 * i + 1] * scale + offsetY);
      if (left >= width || top >= height || left + size <= 0 || top + size <= 0) continue;
      const color = colors[labels[i]];
      const x0 = Math.max(left, 0);
      const x1 = Math.min(left + size, width);
      const y1 = Math.min(top + size, height);
      for (let y = Math.max(top, 0); y < y1; y++) {
        const row = y * width;
        for (let x = x0; x < x1; x++) pixels[row + x] = color;
      }
    }
    this.context.putImageData(image, 0, 0);
  }

  drawOverlays() {
    const { context } = this;
    context.save();
    context.setTransform(this.size.dpr, 0, 0, this.size.dpr, 0, 0);
    for (const index of this.highlights) this.drawRing(index, 7, "#111827");
    if (this.hovered >= 0) this.drawRing(this.hovered, 6, "#2563eb");
    this.drawSelection();
    context.restore();
  }

  /** A dark ring with a white halo, visible on any point colour. */
  drawRing(index, radius, color) {
    const { context } = this;
    const { x, y } = this.screenPoint(index);
    context.beginPath();
    context.arc(x, y, radius, 0, 2 * Math.PI);
    context.lineWidth = 4;
    context.strokeStyle = "rgba(255, 255, 255, 0.9)";
    context.stroke();
    context.lineWidth = 2;
    context.strokeStyle = color;
    context.stroke();
  }

  /** The box being dragged, or else the last completed selection (it follows pans and zooms). */
  drawSelection() {
    const { gesture, context } = this;
    let rect = null;
    if (gesture && gesture.mode === "select" && gesture.moved) {
      const { start, last } = gesture;
      rect = { x: start.x, y: start.y, width: last.x - start.x, height: last.y - start.y };
    } else if (this.selectionBox) {
      const { minX, minY, maxX, maxY } = this.selectionBox;
      const { scale, x, y } = this.view;
      const width = (maxX - minX) * scale;
      const height = (maxY - minY) * scale;
      rect = { x: minX * scale + x, y: minY * scale + y, width, height };
    }
    if (!rect) return;
    context.fillStyle = "rgba(37, 99, 235, 0.1)";
    context.fillRect(rect.x, rect.y, rect.width, rect.height);
    // A white underlay keeps the dashed outline readable over dense, dark clusters.
    context.lineWidth = 3;
    context.strokeStyle = "rgba(255, 255, 255, 0.9)";
    context.strokeRect(rect.x, rect.y, rect.width, rect.height);
    context.setLineDash([5, 4]);
    context.lineWidth = 1.5;
    context.strokeStyle = "#1d4ed8";
    context.strokeRect(rect.x, rect.y, rect.width, rect.height);
    context.setLineDash([]);
  }
}
