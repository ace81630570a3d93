// aether serve: one Leaflet map per model, a heat layer per answer, top-k markers.
// Every string from the server or the user is put into the page as text, never as HTML.
"use strict";
const STOPS = ["#ffffcc", "#ffeda0", "#fed976", "#feb24c", "#fd8d3c", "#fc4e2a", "#e31a1c", "#b10026"];
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const panels = {};
let info = null;
let last = null;  // the current request, for exports and the shareable URL

function colour(t) {
  if (t === null || Number.isNaN(t)) return null;
  const i = Math.max(0, Math.min(STOPS.length - 1, Math.round(t * (STOPS.length - 1))));
  return STOPS[i];
}

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

function selected() {
  return [...document.querySelectorAll("#models input:checked")].map((c) => c.value);
}

async function panel(name) {
  if (panels[name]) return panels[name];
  const div = el("section", undefined, "panel");
  div.dataset.model = name;
  const mapDiv = el("div", undefined, "map");
  const title = el("h2", name);
  const legend = el("div", undefined, "legend");
  div.append(mapDiv, title, legend);
  $("panels").append(div);
  const map = L.map(mapDiv, { preferCanvas: true });
  map.attributionControl.setPrefix(false);
  for (const a of info.attribution) map.attributionControl.addAttribution(a);
  L.control.scale({ imperial: false }).addTo(map);
  if (params.get("tiles") !== "0" && info.tiles) {
    L.tileLayer("https://tile.openstreetmap.org/{z}/{x}/{y}.png", { maxZoom: 19 }).addTo(map);
  }
  map.setView([(info.bounds[0][0] + info.bounds[1][0]) / 2, (info.bounds[0][1] + info.bounds[1][1]) / 2], 14);
  const grid = await getJSON("/api/grid?model=" + encodeURIComponent(name));
  const layer = L.geoJSON(grid, { style: { weight: 0, fillOpacity: 0 } }).addTo(map);
  layer.on("click", (ev) => like(ev.latlng));
  const markers = L.layerGroup().addTo(map);
  panels[name] = { div, map, layer, markers, title, legend, ids: grid.features.map((f) => f.properties.cell_id) };
  return panels[name];
}

function drawLegend(p, lo, hi) {
  p.legend.replaceChildren();
  p.legend.append(el("b", "cosine similarity"));
  const bar = el("div", undefined, "bar");
  bar.style.background = "linear-gradient(to right," + STOPS.join(",") + ")";
  const ends = el("div", undefined, "ends");
  ends.append(el("span", lo.toFixed(2)), el("span", hi.toFixed(2)));
  p.legend.append(bar, ends, el("span", "● top places"));
}

function draw(p, res) {
  const span = res.hi > res.lo ? res.hi - res.lo : 1;
  const byId = new Map(p.ids.map((id, j) => [id, j]));
  let coloured = 0;
  p.layer.eachLayer((l) => {
    const s = res.scores[byId.get(l.feature.properties.cell_id)];
    const c = s === null ? null : colour((s - res.lo) / span);
    l.setStyle(c ? { fillColor: c, fillOpacity: 0.75, weight: 0 } : { fillOpacity: 0, weight: 0 });
    if (c) coloured += 1;
  });
  p.div.dataset.cells = coloured;
  p.markers.clearLayers();
  for (const row of res.top) {
    const box = el("div", undefined, "popup");
    box.append(el("b", "#" + row.rank), document.createTextNode(" score " + row.score.toFixed(3)));
    const ul = el("ul");
    for (const poi of row.nearest_pois) {
      ul.append(el("li", poi.name + " (" + poi.category + ", " + Math.round(poi.distance_m) + " m)"));
    }
    box.append(ul);
    L.circleMarker([row.lat, row.lon], { radius: 7, color: "#08306b", weight: 2, fillColor: "#2171b5", fillOpacity: 0.9 })
      .bindPopup(box).bindTooltip("#" + row.rank + " " + row.score.toFixed(3)).addTo(p.markers);
  }
  p.title.textContent = p.div.dataset.model + ": " + res.query;
  drawLegend(p, res.lo, res.hi);
  p.div.dataset.top = res.top.length ? res.top[0].cell_id : "";
  p.div.dataset.markers = res.top.length;
}

function layout(models) {
  // panels share the row: after any change of which are shown, each map re-measures itself
  for (const [name, p] of Object.entries(panels)) p.div.hidden = !models.includes(name);
  for (const name of models) {
    panels[name].map.invalidateSize();
    if (!panels[name].fitted) { panels[name].map.fitBounds(info.bounds); panels[name].fitted = true; }
  }
}

function exportLinks(query, model) {
  $("export-geojson").href = "/api/export.geojson?" + query + "&model=" + encodeURIComponent(model);
  $("export-png").href = "/api/export.png?" + query + "&model=" + encodeURIComponent(model);
}

async function run(query, shareable) {
  const models = selected();
  if (!models.length) { status("pick at least one model", "error"); return; }
  status("asking…", "busy");
  last = query;
  const errors = [];
  let done = 0;
  const text = query.startsWith("q=");
  for (const name of models) await panel(name);
  layout(models);
  for (const name of models) {
    const p = panels[name];
    if (text && !info.models.find((m) => m.name === name).text) {
      p.title.textContent = name + ": raw AlphaEarth answers “more like this”: click a place";
      p.markers.clearLayers();
      p.layer.setStyle({ fillOpacity: 0, weight: 0 });
      p.legend.replaceChildren();
      continue;
    }
    try {
      draw(p, await getJSON("/api/query?" + query + "&model=" + encodeURIComponent(name)));
      done += 1;
    } catch (e) {
      p.title.textContent = name + ": " + e.message;
      errors.push(name + ": " + e.message);
    }
  }
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
  run(query, query);
}

async function init() {
  try {
    info = await getJSON("/api/info");
  } catch (e) { status(e.message, "error"); return; }
  $("city").textContent = "aether · " + info.city;
  $("credits").textContent = info.attribution.join(" · ");
  const want = (params.get("model") || "").split(",").filter(Boolean);
  for (const m of info.models) {
    const label = el("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = m.name;
    box.checked = want.length ? want.includes(m.name) : true;
    label.append(box, document.createTextNode(" " + m.name + (m.text ? "" : " (more like this)")));
    $("models").append(label);
  }
  $("ask").addEventListener("submit", ask);
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
