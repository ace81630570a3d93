// aether serve: one Leaflet map per model, a heat raster per answer, top-k markers.
// Every string from the server or the user is put into the page as text, never as HTML.
// Labels: a click adds a positive place, a shift-click (or a click with the toggle on) a
// negative; the server turns them into a query vector or a classifier (mode=classify), and
// owns their files (export and import). The URL carries the whole state (words asked,
// labels, models, classifier, map view), rewritten with history.replaceState.
// An answer (/api/answer) is binary: a uint32 length, that much JSON (top-k, range, how to
// read the raster), then one byte per pixel of a Web Mercator raster (0..254 over the
// answer's range, 255 nothing): a million cells arrive as ~2 MB and draw in one canvas.
"use strict";
const STOPS = ["#ffffcc", "#ffeda0", "#fed976", "#feb24c", "#fd8d3c", "#fc4e2a", "#e31a1c", "#b10026"];
const rgb = (stops) => stops.map((h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)));
const RGB = rgb(STOPS);
const DIVERGING_STOPS = ["#2166ac", "#67a9cf", "#d1e5f0", "#f7f7f7", "#fddbc7", "#ef8a62", "#b2182b"];
const DIVERGING = rgb(DIVERGING_STOPS);
// Opacity of the heat (of 255): the base layers under it stay readable.
const HEAT_ALPHA = 170;
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const panels = {};
// The city's own OSM layers (/api/basemap.geojson, fetched once), drawn under the heat in
// every panel; buildings and POIs only from DETAIL_ZOOM in, where they can be told apart.
const DETAIL = ["building", "poi"];
const DETAIL_ZOOM = 15;
let baseData = null;
let info = null;
const labels = { pos: [], neg: [] };  // [lat, lng] of each labelled place, in order
let asked = null;  // the words last asked, or null
let negative = false;  // the toggle: a click adds a negative
let view = null;  // { center: [lat, lng], zoom } of the panels, once known
let active = null;  // the panel shown on a phone
let runs = 0;  // answers asked for: a late reply to an older question is dropped
let ready = false;  // the URL is only written once the state it read is applied

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function status(text, state) {
  const s = $("status");
  s.textContent = text;
  s.dataset.state = state;
}

async function getJSON(url) {
  const r = await fetch(url);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error + (body.hint ? " — " + body.hint : ""));
  return body;
}

async function getAnswer(url) {
  const r = await fetch(url);
  if (!r.ok) {
    const body = await r.json();
    throw new Error(body.error + (body.hint ? " — " + body.hint : ""));
  }
  const buf = await r.arrayBuffer();
  const n = new DataView(buf).getUint32(0, true);
  const head = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
  head.pixels = new Uint8Array(buf, 4 + n);
  return head;
}

function selected() {
  return [...document.querySelectorAll("#models input:checked")].map((c) => c.value);
}

function isText(name) {
  return info.models.find((m) => m.name === name).text;
}

function about(name) {
  const m = info.models.find((x) => x.name === name);
  return m ? m.about : "";
}

async function panel(name) {
  if (panels[name]) return panels[name];
  const div = el("section", undefined, "panel");
  div.dataset.model = name;
  div.classList.toggle("active", name === active);  // a phone shows it: the map has a size
  const mapDiv = el("div", undefined, "map");
  const head = el("div", undefined, "head");
  const title = el("h2", name);
  head.append(title, el("p", about(name), "about"));
  if (info.synthetic) head.append(el("p", info.synthetic, "synthetic"));
  const legend = el("div", undefined, "legend");
  div.append(mapDiv, head, legend);
  $("panels").append(div);
  // no box zoom: shift-click labels a negative place
  const map = L.map(mapDiv, { preferCanvas: true, boxZoom: false });
  map.attributionControl.setPrefix(false);
  for (const a of info.attribution) map.attributionControl.addAttribution(a);
  L.control.scale({ imperial: false }).addTo(map);
  map.createPane("base").style.zIndex = 250;  // over tiles (200), under the heat
  map.createPane("heat").style.zIndex = 350;  // under the markers (overlayPane, 400)
  if (info.basemap === "osm") {
    L.tileLayer("https://tile.openstreetmap.org/{z}/{x}/{y}.png", { maxZoom: 19 })
      .on("tileerror", () => { $("base-note").textContent = "OpenStreetMap tiles did not load (offline?): the heat maps are drawn without them; --basemap city draws the city's own OSM layers offline"; })
      .addTo(map);
  }
  if (view) map.setView(view.center, view.zoom); else map.fitBounds(info.bounds);
  const base = baseData ? baseLayers(map) : null;
  map.on("click", (ev) => addLabel(ev.latlng, ev.originalEvent.shiftKey || negative));
  map.on("moveend", () => follow(name));
  const markers = L.layerGroup().addTo(map);
  const marks = L.layerGroup().addTo(map);
  panels[name] = { div, map, markers, marks, title, legend, base, heat: null, answer: null };
  drawMarks(panels[name]);
  return panels[name];
}

// One panel's copy of the base layers (a Leaflet layer belongs to one map; the data is shared).
function baseLayers(map) {
  const style = (f) => info.base_style[f.properties.layer];
  const point = (f, latlng) => L.circleMarker(latlng, { ...info.base_style.poi, pane: "base", interactive: false });
  const part = (detail) => L.geoJSON(baseData, {
    pane: "base", interactive: false, style, pointToLayer: point,
    filter: (f) => DETAIL.includes(f.properties.layer) === detail,
  });
  const coarse = part(false).addTo(map);
  const detail = part(true);
  const zoomed = () => {
    if (map.getZoom() >= DETAIL_ZOOM) detail.addTo(map); else detail.remove();
  };
  map.on("zoomend", zoomed);
  zoomed();
  return { coarse, detail };
}

// Panels pan and zoom together: the one moved leads, the others take its view.
let following = false;
function follow(name) {
  if (following) return;
  following = true;
  const lead = panels[name].map;
  const c = lead.getCenter();
  view = { center: [c.lat, c.lng], zoom: lead.getZoom() };
  for (const [other, p] of Object.entries(panels)) {
    if (other !== name && !p.div.hidden) p.map.setView(lead.getCenter(), lead.getZoom(), { animate: false });
  }
  following = false;
  writeURL();
}

// The colour of each byte of a panel's raster, on the range [lo, hi] shared by the panels.
function palette(ans, lo, hi) {
  const lut = new Uint8ClampedArray(256 * 4);
  const span = hi > lo ? hi - lo : 1;
  for (let v = 0; v < 255; v++) {
    const s = ans.lo + (v / ans.heat.levels) * (ans.hi - ans.lo);
    const t = Math.max(0, Math.min(1, (s - lo) / span));
    const c = RGB[Math.round(t * (RGB.length - 1))];
    lut.set([c[0], c[1], c[2], HEAT_ALPHA], v * 4);
  }
  return new Uint32Array(lut.buffer);  // 255 (no cell) stays transparent
}

// Each byte's percentile among the answer's pixels (cells, up to the raster's resolution):
// where a place ranks, which compares across models whose cosines live on other scales.
function percentiles(ans) {
  const count = new Float64Array(256);
  for (const v of ans.pixels) count[v] += 1;
  const pct = new Float64Array(255);
  const n = ans.pixels.length - count[255];
  let below = 0;
  for (let v = 0; v < 255; v++) {
    pct[v] = (below + count[v] / 2) / (n || 1);
    below += count[v];
  }
  return pct;
}

// The colour of each pair (this panel's byte, raw AlphaEarth's byte) of the same pixel: red
// where the model ranks the place higher than raw AlphaEarth does, blue where lower.
function diffPalette(ans, raw) {
  const mine = percentiles(ans);
  const theirs = percentiles(raw);
  const lut = new Uint8ClampedArray(256 * 256 * 4);
  for (let a = 0; a < 255; a++) {
    for (let b = 0; b < 255; b++) {
      const t = (mine[a] - theirs[b] + 1) / 2;
      const c = DIVERGING[Math.round(t * (DIVERGING.length - 1))];
      lut.set([c[0], c[1], c[2], HEAT_ALPHA], (a * 256 + b) * 4);
    }
  }
  return new Uint32Array(lut.buffer);  // any pair with a 255 (no cell) stays transparent
}

function drawHeat(p, colour) {
  const { width, height } = p.answer.heat;
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(width, height);
  const out = new Uint32Array(img.data.buffer);
  let coloured = 0;
  for (let i = 0; i < out.length; i++) {
    out[i] = colour(i);
    if (out[i] !== 0) coloured += 1;
  }
  ctx.putImageData(img, 0, 0);
  if (p.heat) p.map.removeLayer(p.heat);
  p.heat = L.imageOverlay(canvas.toDataURL(), p.answer.heat.bounds, { className: "heat", pane: "heat", interactive: false }).addTo(p.map);
  p.div.dataset.cells = coloured;
}

function legendBar(p, title, stops, lo, hi) {
  p.legend.replaceChildren();
  p.legend.append(el("b", title));
  const bar = el("div", undefined, "bar");
  bar.style.background = "linear-gradient(to right," + stops.join(",") + ")";
  const ends = el("div", undefined, "ends");
  ends.append(el("span", lo), el("span", hi));
  return [bar, ends];
}

function drawLegend(p, lo, hi, shared) {
  const what = p.answer.kind === "probability" ? "probability of a positive (classifier)" : "cosine similarity";
  const [bar, ends] = legendBar(p, what, STOPS, lo.toFixed(3), hi.toFixed(3));
  if (shared) p.legend.append(el("div", "one scale for all panels"));
  p.legend.append(bar, ends);
  const ans = p.answer;
  p.legend.append(el("div", "this panel: " + ans.lo.toFixed(3) + " … " + ans.hi.toFixed(3)));
  if (ans.note) p.legend.append(el("div", ans.note, "note"));
  p.legend.append(el("span", "● top places"));
}

function drawDiffLegend(p) {
  const [bar, ends] = legendBar(p, "rank vs raw AlphaEarth", DIVERGING_STOPS, "−100", "+100");
  p.legend.append(bar, ends, el("div", "percentile points: red ranks higher here than raw AlphaEarth, blue lower", "explain"));
}

function drawTop(p, ans) {
  p.markers.clearLayers();
  for (const f of ans.top.features) {
    const row = f.properties;
    const box = el("div", undefined, "popup");
    box.append(el("b", "#" + row.rank), document.createTextNode(" score " + row.score.toFixed(3)));
    const ul = el("ul");
    for (const poi of row.nearest_pois) {
      ul.append(el("li", poi.name + " (" + poi.category + ", " + Math.round(poi.distance_m) + " m)"));
    }
    if (row.source !== undefined) ul.append(el("li", row.cell_id + " (" + row.source + ")"));  // your vectors: cell and file
    box.append(ul);
    const [lon, lat] = f.geometry.coordinates;
    // a click on a top place opens its popup; it does not label the place under it
    L.circleMarker([lat, lon], { radius: 7, color: "#08306b", weight: 2, fillColor: "#2171b5", fillOpacity: 0.9, bubblingMouseEvents: false })
      .bindPopup(box).bindTooltip("#" + row.rank + " " + row.score.toFixed(3)).addTo(p.markers);
  }
  p.title.textContent = p.div.dataset.model + ": " + ans.query;
  p.div.dataset.top = ans.top.features.length ? ans.top.features[0].properties.cell_id : "";
  p.div.dataset.markers = ans.top.features.length;
}

// One colour scale for every answered panel (unless "own scale" is ticked), its range shown;
// with "vs raw AlphaEarth" ticked and a place clicked, how each model re-ranks the places.
function drawAll() {
  const shown = Object.values(panels).filter((p) => !p.div.hidden && p.answer);
  const raw = shown.find((p) => !isText(p.div.dataset.model));
  const versus = $("vs-raw").checked && raw;
  $("vs-raw-note").textContent = $("vs-raw").checked && !raw ? "vs raw AlphaEarth: click a place (raw AlphaEarth has no text space)" : "";
  const shared = !$("own-scale").checked;
  const scaled = shown.filter((p) => !versus || p === raw);
  const lo = Math.min(...scaled.map((p) => p.answer.lo));
  const hi = Math.max(...scaled.map((p) => p.answer.hi));
  for (const p of shown) {
    if (versus && p !== raw) {
      const lut = diffPalette(p.answer, raw.answer);
      const [a, b] = [p.answer.pixels, raw.answer.pixels];
      drawHeat(p, (i) => (a[i] === 255 || b[i] === 255 ? 0 : lut[a[i] * 256 + b[i]]));
      drawDiffLegend(p);
      p.div.dataset.view = "vs-raw";
      continue;
    }
    const [l, h] = shared ? [lo, hi] : [p.answer.lo, p.answer.hi];
    const lut = palette(p.answer, l, h);
    const px = p.answer.pixels;
    drawHeat(p, (i) => lut[px[i]]);
    drawLegend(p, l, h, shared && scaled.length > 1);
    p.div.dataset.view = "scores";
  }
}

// Every label on a panel: a green "+" for a positive, a red "−" for a negative.
function drawMarks(p) {
  p.marks.clearLayers();
  for (const kind of ["pos", "neg"]) {
    labels[kind].forEach((ll, i) => {
      const icon = L.divIcon({ className: "mark " + kind, html: kind === "pos" ? "+" : "−", iconSize: [20, 20] });
      L.marker(ll, { icon, keyboard: false }).bindTooltip((kind === "pos" ? "positive " : "negative ") + (i + 1)).addTo(p.marks);
    });
  }
  p.div.dataset.labels = labels.pos.length + labels.neg.length;
}

const lonlat = (ll) => ll[1].toFixed(6) + "," + ll[0].toFixed(6);

function labelParams() {
  return [...labels.pos.map((ll) => "at=" + lonlat(ll)), ...labels.neg.map((ll) => "not=" + lonlat(ll))];
}

// The side list: each label with its own remove button, and the labels' export links.
function listLabels() {
  const list = $("label-list");
  list.replaceChildren();
  for (const kind of ["pos", "neg"]) {
    labels[kind].forEach((ll, i) => {
      const li = el("li", undefined, kind);
      li.dataset.kind = kind;
      li.append(el("span", (kind === "pos" ? "+ " : "− ") + ll[0].toFixed(5) + ", " + ll[1].toFixed(5), "where"));
      const remove = el("button", "×", "remove");
      remove.type = "button";
      remove.title = "remove this label";
      remove.setAttribute("aria-label", "remove " + (kind === "pos" ? "positive " : "negative ") + (i + 1));
      remove.addEventListener("click", () => { labels[kind].splice(i, 1); changed(); });
      li.append(remove);
      list.append(li);
    });
  }
  const [np, nn] = [labels.pos.length, labels.neg.length];
  $("label-count").textContent = np + nn ? np + " positive, " + nn + " negative" : "no labels: click a place to add a positive, shift-click a negative";
  const query = labelParams().join("&");
  $("labels-geojson").href = "/api/labels.geojson?" + query;
  $("labels-csv").href = "/api/labels.csv?" + query;
  document.querySelector(".label-exports").hidden = !(np + nn);
}

function addLabel(latlng, neg) {
  if (labels.pos.length + labels.neg.length >= info.max_labels) {
    $("labels-note").textContent = "at most " + info.max_labels + " labels: remove some first";
    return;
  }
  labels[neg ? "neg" : "pos"].push([latlng.lat, latlng.lng]);
  changed();
}

function changed() {
  $("labels-note").textContent = "";
  listLabels();
  for (const p of Object.values(panels)) drawMarks(p);
  run();
}

// A labels file (GeoJSON or CSV) is read and checked by the server: on any fault its one
// line is shown and the labels stay as they were.
async function importLabels(ev) {
  const file = ev.target.files[0];
  ev.target.value = "";
  if (!file) return;
  try {
    const r = await fetch("/api/labels", { method: "POST", body: await file.arrayBuffer() });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error + (body.hint ? " — " + body.hint : ""));
    const parse = (a) => { const [lng, lat] = a.split(",").map(Number); return [lat, lng]; };
    labels.pos = body.at.map(parse);
    labels.neg = body.not.map(parse);
  } catch (e) {
    $("labels-note").textContent = "not imported: " + e.message;
    return;
  }
  changed();
}

// Ticked panels share the row; on a phone only the active one is shown (the switcher picks
// it). After any change of what is shown, each map re-measures itself and takes the view.
function layout(models) {
  for (const [name, p] of Object.entries(panels)) p.div.hidden = !models.includes(name);
  if (!models.includes(active)) active = models[0];
  const sw = $("switcher");
  sw.replaceChildren(...models.map((m) => { const o = el("option", m); o.value = m; return o; }));
  sw.value = active;
  for (const name of models) {
    const p = panels[name];
    p.div.classList.toggle("active", name === active);
    p.map.invalidateSize();  // keeps the centre as the panel's size changes
    if (view) p.map.setView(view.center, view.zoom, { animate: false });
  }
}

function exportLinks(query, models) {
  const named = models.map((m) => "&model=" + encodeURIComponent(m)).join("");
  $("export-geojson").href = "/api/export.geojson?" + query + named;
  $("export-png").href = "/api/export.png?" + query + named;
}

// What the panels are asked: the words, the labels, k and the classifier.
function apiQuery() {
  const parts = asked ? ["q=" + encodeURIComponent(asked)] : [];
  parts.push(...labelParams(), "k=" + encodeURIComponent($("k").value));
  if ($("classify").checked) parts.push("mode=classify");
  return parts.join("&");
}

function writeURL() {
  if (!ready) return;
  const v = view ? "&view=" + view.center.map((x) => x.toFixed(5)).join(",") + "," + view.zoom : "";
  history.replaceState(null, "", "?" + apiQuery() + "&model=" + selected().map(encodeURIComponent).join(",") + v);
}

function clearPanel(p, title) {
  p.answer = null;
  p.title.textContent = title;
  p.markers.clearLayers();
  if (p.heat) { p.map.removeLayer(p.heat); p.heat = null; }
  p.legend.replaceChildren();
  p.div.dataset.top = "";
}

async function run() {
  const models = selected();
  if (!models.length) { status("pick at least one model", "error"); return; }
  const seq = ++runs;
  const query = apiQuery();
  const classify = $("classify").checked;
  if (!models.includes(active)) active = models[0];
  for (const name of models) await panel(name);
  layout(models);
  writeURL();
  if (!asked && !labels.pos.length && !labels.neg.length) {
    for (const name of models) clearPanel(panels[name], name);
    drawAll();
    status("ready", "ready");
    return;
  }
  status("asking…", "busy");
  const errors = [];
  let done = 0;
  const got = await Promise.all(models.map(async (name) => {
    if (!classify && !isText(name) && !labels.pos.length) return [name, null, "no text space, “more like this” only: click a place"];
    try {
      return [name, await getAnswer("/api/answer?" + query + "&model=" + encodeURIComponent(name)), null];
    } catch (e) {
      errors.push(name + ": " + e.message);
      return [name, null, name + ": " + e.message];
    }
  }));
  if (seq !== runs) return;  // a newer question was asked meanwhile
  for (const [name, ans, why] of got) {
    const p = panels[name];
    if (!ans) { clearPanel(p, name + ": " + why.replace(name + ": ", "")); continue; }
    p.answer = ans;
    drawTop(p, ans);
    done += 1;
  }
  drawAll();
  exportLinks(query, models);
  status(errors.length ? errors.join("; ") : "answered by " + done + " model(s)", errors.length && !done ? "error" : "done");
  document.body.dataset.answered = seq;
}

function ask(ev) {
  if (ev) ev.preventDefault();
  asked = $("q").value.trim() || null;
  if (!asked && !labels.pos.length && !labels.neg.length) { status("type a question or click a place first", "error"); return; }
  run();
}

function setNegative(on) {
  negative = on;
  $("neg-mode").setAttribute("aria-pressed", String(on));
  $("neg-mode").textContent = on ? "tap adds: − negative" : "tap adds: + positive";
}

// The state a shared URL holds: words, labels, k, models, classifier and view.
function readURL(params) {
  asked = (params.get("q") || "").trim() || null;
  $("q").value = asked || "";
  const place = (a) => { const [lng, lat] = a.split(",").map(Number); return [lat, lng]; };
  labels.pos = params.getAll("at").map(place);
  labels.neg = params.getAll("not").map(place);
  if (params.get("k")) $("k").value = params.get("k");
  $("classify").checked = params.get("mode") === "classify";
  const v = (params.get("view") || "").split(",").map(Number);
  if (v.length === 3 && v.every(Number.isFinite)) view = { center: [v[0], v[1]], zoom: v[2] };
}

async function init() {
  try {
    info = await getJSON("/api/info");
  } catch (e) { status(e.message, "error"); return; }
  $("city").textContent = "aether · " + info.city;
  $("credits").textContent = info.attribution.join(" · ") + (info.synthetic ? " · " + info.synthetic : "");
  if (info.base_note) $("base-note").textContent = info.base_note;
  if (info.sources.length) {
    $("sources").textContent = "serving your vectors from " + info.sources.map((s) => s.file + " (" + s.cells.toLocaleString("en") + " cells)").join(", ");
  }
  if (info.basemap === "city" && info.base_features) {
    try {
      baseData = await getJSON("/api/basemap.geojson");
    } catch (e) { $("base-note").textContent = "the city's base map did not load: " + e.message; }
  }
  const want = (params.get("model") || "").split(",").filter(Boolean);
  for (const m of info.models) {
    const label = el("label");
    label.title = m.about;
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = m.name;
    box.checked = want.length ? want.includes(m.name) : true;
    label.append(box, document.createTextNode(" " + m.name + (m.text ? "" : " (more like this)")));
    $("models").append(label);
  }
  $("ask").addEventListener("submit", ask);
  $("own-scale").addEventListener("change", drawAll);
  $("vs-raw").addEventListener("change", drawAll);
  $("models").addEventListener("change", run);
  $("classify").addEventListener("change", run);
  $("neg-mode").addEventListener("click", () => setNegative(!negative));
  $("clear-labels").addEventListener("click", () => { labels.pos = []; labels.neg = []; changed(); });
  $("import-labels").addEventListener("change", importLabels);
  $("switcher").addEventListener("change", () => { active = $("switcher").value; layout(selected()); });
  readURL(params);
  listLabels();
  ready = true;
  await run();
}
init();
