// aether serve: one Leaflet map per model, a heat raster per answer, top-k markers.
// Every string from the server or the user is put into the page as text, never as HTML.
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
let last = null;  // the current request, for exports and the shareable URL

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
  const mapDiv = el("div", undefined, "map");
  const head = el("div", undefined, "head");
  const title = el("h2", name);
  head.append(title, el("p", about(name), "about"));
  if (info.synthetic) head.append(el("p", info.synthetic, "synthetic"));
  const legend = el("div", undefined, "legend");
  div.append(mapDiv, head, legend);
  $("panels").append(div);
  const map = L.map(mapDiv, { preferCanvas: true });
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
  map.fitBounds(info.bounds);
  const base = baseData ? baseLayers(map) : null;
  map.on("click", (ev) => like(ev.latlng));
  map.on("moveend", () => follow(name));
  const markers = L.layerGroup().addTo(map);
  panels[name] = { div, map, markers, title, legend, base, heat: null, answer: null };
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
  for (const [other, p] of Object.entries(panels)) {
    if (other !== name && !p.div.hidden) p.map.setView(lead.getCenter(), lead.getZoom(), { animate: false });
  }
  following = false;
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
  const [bar, ends] = legendBar(p, "cosine similarity", STOPS, lo.toFixed(3), hi.toFixed(3));
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

function drawTop(p, ans, example) {
  p.markers.clearLayers();
  for (const f of ans.top.features) {
    const row = f.properties;
    const box = el("div", undefined, "popup");
    box.append(el("b", "#" + row.rank), document.createTextNode(" score " + row.score.toFixed(3)));
    const ul = el("ul");
    for (const poi of row.nearest_pois) {
      ul.append(el("li", poi.name + " (" + poi.category + ", " + Math.round(poi.distance_m) + " m)"));
    }
    box.append(ul);
    const [lon, lat] = f.geometry.coordinates;
    L.circleMarker([lat, lon], { radius: 7, color: "#08306b", weight: 2, fillColor: "#2171b5", fillOpacity: 0.9 })
      .bindPopup(box).bindTooltip("#" + row.rank + " " + row.score.toFixed(3)).addTo(p.markers);
  }
  if (example) {
    L.circleMarker(example, { radius: 9, color: "#000", weight: 3, fill: false })
      .bindTooltip("the example place").addTo(p.markers);
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

function layout(models) {
  // panels share the row: after any change of which are shown, each map re-measures itself
  for (const [name, p] of Object.entries(panels)) p.div.hidden = !models.includes(name);
  for (const name of models) panels[name].map.invalidateSize();
}

function exportLinks(query, model) {
  $("export-geojson").href = "/api/export.geojson?" + query + "&model=" + encodeURIComponent(model);
  $("export-png").href = "/api/export.png?" + query + "&model=" + encodeURIComponent(model);
}

async function run(query, shareable, example) {
  const models = selected();
  if (!models.length) { status("pick at least one model", "error"); return; }
  status("asking…", "busy");
  last = query;
  const errors = [];
  let done = 0;
  const text = query.startsWith("q=");
  for (const name of models) await panel(name);
  layout(models);
  await Promise.all(models.map(async (name) => {
    const p = panels[name];
    p.answer = null;
    if (text && !isText(name)) {
      p.title.textContent = name + ": raw AlphaEarth answers “more like this”: click a place";
      p.markers.clearLayers();
      if (p.heat) { p.map.removeLayer(p.heat); p.heat = null; }
      p.legend.replaceChildren();
      return;
    }
    try {
      p.answer = await getAnswer("/api/answer?" + query + "&model=" + encodeURIComponent(name));
      drawTop(p, p.answer, example);
      done += 1;
    } catch (e) {
      p.title.textContent = name + ": " + e.message;
      errors.push(name + ": " + e.message);
    }
  }));
  drawAll();
  exportLinks(query, models[0]);
  history.replaceState(null, "", "?" + shareable + "&model=" + models.map(encodeURIComponent).join(","));
  status(errors.length ? errors.join("; ") : "answered by " + done + " model(s)", errors.length && !done ? "error" : "done");
}

function ask(ev) {
  if (ev) ev.preventDefault();
  const q = $("q").value.trim();
  if (!q) { status("type a question first", "error"); return; }
  const query = "q=" + encodeURIComponent(q) + "&k=" + encodeURIComponent($("k").value);
  run(query, query);
}

function like(latlng) {
  const at = latlng.lng.toFixed(6) + "," + latlng.lat.toFixed(6);
  const query = "at=" + encodeURIComponent(at) + "&k=" + encodeURIComponent($("k").value);
  run(query, query, [latlng.lat, latlng.lng]);
}

async function init() {
  try {
    info = await getJSON("/api/info");
  } catch (e) { status(e.message, "error"); return; }
  $("city").textContent = "aether · " + info.city;
  $("credits").textContent = info.attribution.join(" · ") + (info.synthetic ? " · " + info.synthetic : "");
  if (info.base_note) $("base-note").textContent = info.base_note;
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
  if (params.get("k")) $("k").value = params.get("k");
  if (params.get("q")) { $("q").value = params.get("q"); ask(); }
  else if (params.get("at")) { const [lng, lat] = params.get("at").split(",").map(Number); like({ lng, lat }); }
  else {
    for (const name of selected()) await panel(name);
    layout(selected());
    status("ready", "ready");
  }
}
init();
