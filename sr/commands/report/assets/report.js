// The report page's behaviour (sr/commands/report/html.py): a sortable table and the comparison views. Vanilla JS, no network.
"use strict";

// Table: a header click sorts the rows by that column (numbers by value, before text; empty cells last); a second
// click on the same header reverses the order. Equal cells keep their previous order (Array.prototype.sort is stable).
function sortKey(text) {
  const number = parseFloat(text);   // "21.38 ± 2.10" -> 21.38, "n/a¹" and "–" -> NaN
  if (!Number.isNaN(number) && /^-?[0-9.]/.test(text)) return [0, number, ""];
  if (text === "" || text === "\u2013") return [2, 0, ""];
  return [1, 0, text];
}

function compareKeys(a, b) {
  for (let i = 0; i < a.length; i++) {
    if (a[i] < b[i]) return -1;
    if (a[i] > b[i]) return 1;
  }
  return 0;
}

function makeSortable(table) {
  const headers = Array.from(table.querySelectorAll("thead th"));
  headers.forEach((header, column) => {
    header.addEventListener("click", () => {
      const descending = header.getAttribute("aria-sort") === "ascending";
      headers.forEach((other) => other.removeAttribute("aria-sort"));
      header.setAttribute("aria-sort", descending ? "descending" : "ascending");
      const body = table.tBodies[0];
      const rows = Array.from(body.rows).map((row) => [sortKey(row.cells[column].textContent.trim()), row]);
      rows.sort((a, b) => (descending ? -1 : 1) * compareKeys(a[0], b[0]));
      rows.forEach(([, row]) => body.appendChild(row));
    });
  });
}

// Comparison view: both images share one zoom and pan (a CSS transform of the same values), the right one is
// clipped to the part right of the split.
const ZOOM_STEP = 1.25;
const MAX_ZOOM = 32;
const DIVIDER_GRAB_PX = 10;

function setUpComparison(section) {
  const viewer = section.querySelector(".viewer");
  const images = Array.from(viewer.querySelectorAll("img"));
  const rightLayer = viewer.querySelector(".layer-right");
  const divider = viewer.querySelector(".divider");
  const slider = section.querySelector(".split");
  const level = section.querySelector(".zoom-level");
  const state = { zoom: 1, x: 0, y: 0, split: parseFloat(slider.value) };

  function clampPan() {
    const width = viewer.clientWidth, height = viewer.clientHeight;
    state.x = Math.min(0, Math.max(width * (1 - state.zoom), state.x));
    state.y = Math.min(0, Math.max(height * (1 - state.zoom), state.y));
  }

  function draw() {
    clampPan();
    const transform = `translate(${state.x}px, ${state.y}px) scale(${state.zoom})`;
    images.forEach((image) => { image.style.transform = transform; });
    rightLayer.style.clipPath = `inset(0 0 0 ${state.split}%)`;
    divider.style.left = `${state.split}%`;
    slider.value = String(state.split);
    level.textContent = `${Math.round(state.zoom * 100)}%`;
  }

  function zoomAt(factor, clientX, clientY) {
    const box = viewer.getBoundingClientRect();
    const zoom = Math.min(MAX_ZOOM, Math.max(1, state.zoom * factor));
    const px = clientX - box.left, py = clientY - box.top;   // this point of the image stays where it is
    state.x = px - (px - state.x) * (zoom / state.zoom);
    state.y = py - (py - state.y) * (zoom / state.zoom);
    state.zoom = zoom;
    draw();
  }

  function zoomAtCentre(factor) {
    const box = viewer.getBoundingClientRect();
    zoomAt(factor, box.left + box.width / 2, box.top + box.height / 2);
  }

  function splitAt(clientX) {
    const box = viewer.getBoundingClientRect();
    state.split = Math.min(100, Math.max(0, (100 * (clientX - box.left)) / box.width));
    draw();
  }

  section.querySelector(".pick-left").addEventListener("change", (event) => { images[0].src = event.target.value; });
  section.querySelector(".pick-right").addEventListener("change", (event) => { images[1].src = event.target.value; });
  section.querySelector(".zoom-in").addEventListener("click", () => zoomAtCentre(ZOOM_STEP));
  section.querySelector(".zoom-out").addEventListener("click", () => zoomAtCentre(1 / ZOOM_STEP));
  section.querySelector(".zoom-reset").addEventListener("click", () => { state.zoom = 1; draw(); });
  slider.addEventListener("input", () => { state.split = parseFloat(slider.value); draw(); });
  viewer.addEventListener("wheel", (event) => {
    event.preventDefault();
    zoomAt(event.deltaY < 0 ? ZOOM_STEP : 1 / ZOOM_STEP, event.clientX, event.clientY);
  }, { passive: false });

  // A drag that starts on the divider moves the split; elsewhere it pans the zoomed images.
  let drag = null;
  viewer.addEventListener("pointerdown", (event) => {
    const box = viewer.getBoundingClientRect();
    const onDivider = Math.abs(event.clientX - box.left - (box.width * state.split) / 100) <= DIVIDER_GRAB_PX;
    drag = onDivider ? { split: true } : { split: false, x: event.clientX - state.x, y: event.clientY - state.y };
    viewer.setPointerCapture(event.pointerId);
    viewer.classList.toggle("panning", !onDivider);
  });
  viewer.addEventListener("pointermove", (event) => {
    if (drag === null) return;
    if (drag.split) {
      splitAt(event.clientX);
    } else {
      state.x = event.clientX - drag.x;
      state.y = event.clientY - drag.y;
      draw();
    }
  });
  const endDrag = () => { drag = null; viewer.classList.remove("panning"); };
  viewer.addEventListener("pointerup", endDrag);
  viewer.addEventListener("pointercancel", endDrag);
  window.addEventListener("resize", draw);
  draw();
}

document.querySelectorAll("table.sortable").forEach(makeSortable);
document.querySelectorAll("section.compare").forEach(setUpComparison);
