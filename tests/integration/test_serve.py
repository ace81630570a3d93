"""aether serve: the web app in a real headless Chromium, against the real CLI server."""

from __future__ import annotations

import io
import json
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest
from support import http_get as _get
from support import served_answer as _answer
from support import serving


def _serving(data_root, names, *extra: str):
    """The real CLI server over the sample city's two runs; yields its URL and process."""
    return serving("--city", "Helsinki", "--model", names[0], "--model", names[1],
                   "--data-dir", str(data_root), *extra)


@pytest.fixture(scope="module")
def server(sample_runs):
    _, names, data_root = sample_runs
    with _serving(data_root, names) as (url, _):
        yield url, names, sample_runs[0]


@pytest.fixture(scope="module")
def busy_server(sample_runs):
    """One worker and one queue place: a slow PNG export fills the worker."""
    _, names, data_root = sample_runs
    with _serving(data_root, names, "--workers", "1", "--queue", "1") as (url, proc):
        yield url, names, proc


def test_query_api_answers_top_k_as_geojson_without_a_list_per_cell(server) -> None:
    """/api/query is the answer as JSON for scripts: top-k points, the range, no per-cell
    list; the best score is the top of the range."""
    url, names, _ = server
    status, body, _ = _get(f"{url}api/query?q={quote('coffee shop')}&model={names[1]}&k=5")
    assert status == 200
    res = json.loads(body)
    assert "scores" not in res
    feats = res["top"]["features"]
    assert [f["properties"]["rank"] for f in feats] == [1, 2, 3, 4, 5]
    assert feats[0]["properties"]["score"] == pytest.approx(res["hi"], abs=1e-4)
    assert all(len(f["properties"]["nearest_pois"]) == 3 for f in feats)
    assert res["lo"] < res["hi"]


@pytest.mark.parametrize(("raw", "why"), [("%00", "a control character"),
                                           ("caf%E9", "bytes that are not UTF-8"),
                                           ("%FF%FE", "bytes that are not UTF-8"),
                                           ("a%1B%5B2J", "a control character")])
def test_query_that_is_not_text_is_a_400_in_one_line(server, raw, why) -> None:
    """NUL, escapes and bytes that are not UTF-8 are refused as the command line refuses
    them: a 400 whose error is one line, never an answer."""
    url, names, _ = server
    for path in ("api/query", "api/answer"):
        status, body, kind = _get(f"{url}{path}?q={raw}&model={names[1]}")
        assert status == 400 and kind.startswith("application/json"), (path, status, body)
        err = json.loads(body)
        assert why in err["error"] and "\n" not in err["error"] + err["hint"], err


def test_answer_is_a_compact_binary_raster(server) -> None:
    """/api/answer: the JSON head and one byte per pixel of the heat raster, the top cell
    coloured with the top value; the reply stays within the raster budget."""
    from aether.query.heat import MAX_PIXELS

    url, names, _ = server
    status, body, ctype = _get(f"{url}api/answer?q={quote('coffee shop')}&model={names[1]}")
    assert status == 200 and ctype == "application/octet-stream"
    head, heat = _answer(body)
    assert len(body) < 4 + 64_000 + MAX_PIXELS
    assert head["heat"]["levels"] == 254 and head["heat"]["nodata"] == 255
    coloured = heat[heat != 255]
    assert coloured.max() == 254 and coloured.min() == 0  # the range is the answer's own
    assert coloured.size > 0.5 * heat.size
    (s, w), (n, e) = head["heat"]["bounds"]
    lon, lat = head["top"]["features"][0]["geometry"]["coordinates"]
    assert s < lat < n and w < lon < e
    # the pixel under the top cell's centre (rows from the north, Web Mercator) holds 254
    merc = lambda la: np.log(np.tan(np.pi / 4 + np.radians(la) / 2))  # noqa: E731
    row = int((merc(n) - merc(lat)) / (merc(n) - merc(s)) * heat.shape[0])
    col = int((lon - w) / (e - w) * heat.shape[1])
    assert heat[row, col] == 254


def test_more_like_this_matches_numpy_and_leaves_out_the_example(server) -> None:
    """"More like this" on a click: the top cell is numpy's most similar cell to the
    clicked one (cosine over the encoded grid read here), the clicked cell itself left out."""
    from pyproj import Transformer

    url, names, city_dir = server
    status, body, _ = _get(f"{url}api/query?at=24.945,60.170&model={names[1]}&k=3")
    assert status == 200
    top = json.loads(body)["top"]["features"]
    grid = pd.read_parquet(city_dir / "aether" / names[1] / "grid_50m.parquet")
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:32635", always_xy=True).transform(24.945,
                                                                                     60.170)
    here = int(np.argmin((grid["x"] - x) ** 2 + (grid["y"] - y) ** 2))
    v = np.array(grid[[c for c in grid.columns if c.startswith("E")]], np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    cos = v @ v[here]
    cos[here] = -np.inf
    assert top[0]["properties"]["cell_id"] == grid["cell_id"].iloc[int(np.nanargmax(cos))]
    assert grid["cell_id"].iloc[here] not in [f["properties"]["cell_id"] for f in top]
    assert top[0]["properties"]["score"] == pytest.approx(np.nanmax(cos), abs=1e-3)


def test_raw_panel_answers_more_like_this_not_text(server) -> None:
    url, _, _ = server
    status, body, _ = _get(f"{url}api/query?q=hotel&model=alphaearth")
    assert status == 400 and "no text space" in json.loads(body)["error"]
    status, body, _ = _get(f"{url}api/query?at=24.945,60.170&model=alphaearth&k=3")
    res = json.loads(body)
    assert status == 200 and 0.9 < res["top"]["features"][0]["properties"]["score"] < 1.0


def test_refuses_cross_site_calls_of_the_api(server) -> None:
    """A page elsewhere cannot make the visitor's browser run the API: Sec-Fetch-Site of
    another site, or a foreign Origin, gets a 403 with a one-line JSON error."""
    url, names, _ = server
    host = url.split("/")[2]
    q = f"{url}api/answer?q=hotel&model={names[0]}"
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                    {"Origin": "http://evil.example"}, {"Origin": "null"}):
        for path in (q, f"{url}api/export.png?q=hotel&model={names[0]}", f"{url}api/info",
                     f"{url}api/labels.geojson?at=24.945,60.170",
                     f"{url}api/labels.csv?at=24.945,60.170",
                     f"{url}api/query?mode=classify&at=24.945,60.170&not=24.948,60.176"
                     f"&model={names[0]}"):
            status, body, ctype = _get(path, headers=headers)
            assert status == 403 and ctype == "application/json", (path, headers)
            assert json.loads(body)["error"].startswith("cross-site request refused")
            assert b"\n" not in body
    for headers in ({"Sec-Fetch-Site": "same-origin", "Origin": f"http://{host}"},
                    {"Sec-Fetch-Site": "none"}, {}):
        assert _get(q, headers=headers)[0] == 200
    assert _get(url, headers={"Sec-Fetch-Site": "cross-site"})[0] == 200  # a link to the page


def test_refuses_foreign_host_and_unknown_static(server) -> None:
    url, _, _ = server
    assert _get(f"{url}api/info", host="evil.example:80")[0] == 400
    assert _get(f"{url}static/..%2F..%2Fcli.py")[0] == 404
    assert _get(f"{url}static/app.js")[0] == 200


def test_exports_geojson_and_png(server) -> None:
    url, names, _ = server
    status, body, ctype = _get(f"{url}api/export.geojson?q=hotel&model={names[0]}&k=4")
    doc = json.loads(body)
    assert status == 200 and "geo+json" in ctype
    assert [f["properties"]["rank"] for f in doc["features"]] == [1, 2, 3, 4]
    assert doc["features"][0]["geometry"]["type"] == "Polygon" and doc["query"] == "hotel"
    assert any("OpenStreetMap" in a for a in doc["attribution"])
    assert "generated raster" in doc["synthetic"]
    status, body, ctype = _get(f"{url}api/export.png?q=hotel&model={names[0]}")
    assert status == 200 and ctype == "image/png" and body[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    from aether.query.maps import AEF_CREDIT, SYNTHETIC_LABEL

    text = Image.open(io.BytesIO(body)).text  # the PNG's own text, beside its drawn titles
    assert text["Title"].startswith(f"{names[0]}: hotel · ") and SYNTHETIC_LABEL in text["Title"]
    assert "OpenStreetMap contributors" in text["Copyright"] and AEF_CREDIT in text["Copyright"]


def test_exports_cover_every_model_named(server) -> None:
    """Export of several ticked models: the GeoJSON holds each model's top-k (its ranks and
    scores as /api/query gives them), the PNG one titled panel per model, side by side."""
    from PIL import Image

    url, names, _ = server
    both = f"model={names[0]}&model={names[1]}"
    doc = json.loads(_get(f"{url}api/export.geojson?at=24.945,60.170&k=3&{both}")[1])
    for name in names:
        mine = [f["properties"] for f in doc["features"] if f["properties"]["model"] == name]
        alone = json.loads(_get(f"{url}api/query?at=24.945,60.170&k=3&model={name}")[1])
        assert [m["rank"] for m in mine] == [1, 2, 3]
        assert [round(m["score"], 4) for m in mine] == [
            f["properties"]["score"] for f in alone["top"]["features"]]
    assert [m["model"] for m in doc["models"]] == names
    status, body, _ = _get(f"{url}api/export.png?at=24.945,60.170&{both}")
    image = Image.open(io.BytesIO(body))
    one = Image.open(io.BytesIO(_get(f"{url}api/export.png?at=24.945,60.170&model={names[0]}"
                                     )[1]))
    assert status == 200 and image.width > 1.8 * one.width
    titles = image.text["Title"].split(" | ")
    assert [t.split(":")[0] for t in titles] == names


def test_browser_types_a_query_and_sees_the_answer(server, tmp_path, chromium) -> None:
    from playwright.sync_api import sync_playwright

    url, names, _ = server
    hostile = '<img src=x onerror="window.pwned=1">bar'
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 700})
        page.goto(f"{url}?model={names[1]},alphaearth")
        page.wait_for_selector('#status[data-state="ready"]', timeout=60_000)
        page.fill("#q", "coffee shop")
        t0 = time.perf_counter()
        page.click("button[type=submit]")
        page.wait_for_selector('#status[data-state="done"]', timeout=60_000)
        elapsed = time.perf_counter() - t0
        top = page.get_attribute(f'.panel[data-model="{names[1]}"]', "data-top")
        expected = json.loads(_get(f"{url}api/query?q={quote('coffee shop')}&model={names[1]}"
                                   )[1])["top"]["features"][0]["properties"]["cell_id"]
        assert top == expected
        assert elapsed < 5.0  # "within a second" on a quiet machine; CI shares 2 cores
        assert "q=coffee%20shop" in page.url and names[1] in page.url  # shareable
        assert page.locator(".legend").first.inner_text().startswith("cosine similarity")
        credits = page.locator(".leaflet-control-attribution").first.inner_text()
        assert "OpenStreetMap contributors" in credits
        assert "produced by Google and Google DeepMind" in credits
        panel = page.locator(f'.panel[data-model="{names[1]}"]')
        assert int(panel.get_attribute("data-cells")) > 100  # the heat layer is drawn
        assert panel.get_attribute("data-markers") == "10"
        # the model named in full and what it is, the generated raster said, the range shown
        assert panel.locator(".about").inner_text().startswith(
            f"AETHER run {names[1]} (preset default): 128-d")
        assert "generated raster" in panel.locator(".synthetic").inner_text()
        legend = panel.locator(".legend").inner_text()
        note = json.loads(_get(f"{url}api/query?q={quote('coffee shop')}&model={names[1]}")[1]
                          )["note"]
        assert "this panel: " in legend and (note is None or note in legend)
        # panels pan and zoom together
        page.evaluate("""() => { const m = Object.values(panels)[0].map;
                                 m.setZoom(m.getZoom() + 1, { animate: false }); }""")
        zooms = page.evaluate("Object.values(panels).filter((p) => !p.div.hidden)"
                              ".map((p) => p.map.getZoom())")
        assert len(zooms) == 2 and zooms[0] == zooms[1]
        # hostile text is shown as text, never run
        page.fill("#q", hostile)
        page.click("button[type=submit]")
        page.wait_for_selector('#status[data-state="done"]', timeout=60_000)
        assert page.evaluate("window.pwned") is None
        assert hostile in page.locator(f'.panel[data-model="{names[1]}"] h2').inner_text()
        # a shared URL reproduces the answer
        page.goto(f"{url}?q={quote('coffee shop')}&model={names[1]}")
        page.wait_for_selector('#status[data-state="done"]', timeout=60_000)
        assert page.get_attribute(f'.panel[data-model="{names[1]}"]', "data-top") == expected
        # two text models: one colour scale, the same range written in both legends
        page.goto(f"{url}?q={quote('coffee shop')}&model={names[0]},{names[1]}")
        page.wait_for_selector('#status[data-state="done"]', timeout=60_000)
        ends = [page.locator(f'.panel[data-model="{n}"] .legend .ends').inner_text()
                for n in names[:2]]
        assert ends[0] == ends[1]
        assert "one scale for all panels" in page.locator(".legend").first.inner_text()
        page.screenshot(path=str(tmp_path / "serve.png"))
        browser.close()
    assert (tmp_path / "serve.png").stat().st_size > 20_000


@pytest.fixture(scope="module")
def tiles_server(sample_runs):
    """Online tiles asked for (``--basemap osm``) instead of the city's own layers."""
    _, names, data_root = sample_runs
    with _serving(data_root, names, "--basemap", "osm") as (url, _):
        yield url, names


def _layers(doc: dict) -> dict[str, int]:
    return pd.Series([f["properties"]["layer"] for f in doc["features"]]).value_counts(
        ).to_dict()


def test_city_base_map_is_compact_lon_lat_geojson_made_at_load(server) -> None:
    """/api/basemap.geojson: every road, rail, water, green and building of basemap.parquet
    and every POI, in lon/lat to 1e-5°, the layer the only property; gzipped when the
    client takes it, the same bytes every time (made once, at load)."""
    import gzip

    import geopandas as gpd

    url, _, city_dir = server
    status, body, ctype = _get(f"{url}api/basemap.geojson")
    assert status == 200 and ctype == "application/geo+json"
    doc = json.loads(body)
    want = gpd.read_parquet(city_dir / "basemap.parquet")["layer"].value_counts().to_dict()
    want["poi"] = len(pd.read_parquet(city_dir / "pois.parquet"))
    assert _layers(doc) == want
    assert {k for f in doc["features"] for k in f["properties"]} == {"layer"}
    coords = np.array(re.findall(rb"\[(-?\d+\.?\d*),(-?\d+\.?\d*)\]", body), float)
    assert len(coords) > len(doc["features"])
    assert (abs(coords * 1e5 - np.round(coords * 1e5)) < 1e-6).all()  # 5 decimals at most
    assert (coords[:, 0] > 24.9).all() and (coords[:, 0] < 25.0).all()  # lon, lat order
    assert (coords[:, 1] > 60.1).all() and (coords[:, 1] < 60.2).all()
    status, zipped, _ = _get(f"{url}api/basemap.geojson", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and gzip.decompress(zipped) == body and len(zipped) < len(body) / 3


def _clipped(page, selector: str) -> list[str]:
    """Texts of the elements that do not fit their box (cut off or scrolled)."""
    return page.evaluate("""(sel) => [...document.querySelectorAll(sel)]
        .filter((e) => e.offsetParent !== null && (e.scrollWidth > e.clientWidth
                 || e.scrollHeight > e.clientHeight))
        .map((e) => e.textContent)""", selector)


def test_browser_draws_the_city_under_a_shared_scale_at_1280(server, chromium) -> None:
    """At 1280 × 800 with three panels: the city's own layers are drawn in every panel
    (its roads, rails, water and green from the start, buildings and POIs once zoomed in),
    each panel's full model name, what it is and the generated-raster label fit their boxes,
    the raw panel says it wants a click, and the legend's range is the answers' shared one
    until "own scale" is ticked."""
    from playwright.sync_api import sync_playwright

    url, names, _ = server
    layers = _layers(json.loads(_get(f"{url}api/basemap.geojson")[1]))
    coarse = sum(n for k, n in layers.items() if k not in ("building", "poi"))
    q = quote("late-night bars and live music")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{url}?q={q}&model={names[0]},{names[1]},alphaearth")
        page.wait_for_selector('#status[data-state="done"]', timeout=60_000)
        models = [names[0], names[1], "alphaearth"]
        drawn = page.evaluate("""() => Object.entries(panels).map(([name, p]) => {
            const c = p.map.getPane("base").querySelector("canvas");
            const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            let inked = 0;
            for (let i = 3; i < px.length; i += 4) if (px[i] > 0) inked += 1;
            return [name, p.map.hasLayer(p.base.coarse), p.base.coarse.getLayers().length,
                    p.map.hasLayer(p.base.detail), inked, p.map.getZoom()];
        })""")
        assert [d[0] for d in drawn] == models
        for _, shown, n, detail, inked, zoom in drawn:
            assert shown and n == coarse
            assert detail == (zoom >= 15)
            assert inked > 2000  # the streets are on the canvas, not only in memory
        page.evaluate("() => { Object.values(panels)[0].map.setZoom(16, { animate: false }); }")
        page.wait_for_function("() => Object.values(panels).every((p) => p.map.getZoom() == 16)")
        assert page.evaluate("Object.values(panels).map((p) => p.map.hasLayer(p.base.detail)"
                             " && p.base.detail.getLayers().length)") == [
            layers["building"] + layers["poi"]] * 3
        assert page.locator("#base-note").inner_text() == ""
        # full names and what each panel is, not cut off at 1280 px
        for name in models:
            head = page.locator(f'.panel[data-model="{name}"] .head')
            assert head.locator("h2").inner_text().startswith(f"{name}: ")
            assert "generated raster" in head.locator(".synthetic").inner_text()
        assert page.locator('.panel[data-model="alphaearth"] .about').inner_text().startswith(
            "raw AlphaEarth: the grid's own 64-d means")
        assert "click a place" in page.locator('.panel[data-model="alphaearth"] h2').inner_text()
        for sel in (".panel h2", ".panel .about", ".panel .synthetic", "#models label"):
            assert page.locator(sel).count() >= 3
            assert _clipped(page, sel) == [], sel
        inside = page.evaluate("""() => [...document.querySelectorAll(".panel")].every((p) => {
            const a = p.getBoundingClientRect();
            const b = p.querySelector(".head").getBoundingClientRect();
            return b.left >= a.left && b.right <= a.right && b.bottom <= a.bottom; })""")
        assert inside
        # one colour scale: the lowest and highest score of the two answers, in each legend
        answers = [json.loads(_get(f"{url}api/query?q={q}&model={n}")[1]) for n in names]
        shared = f"{min(a['lo'] for a in answers):.3f}\n{max(a['hi'] for a in answers):.3f}"
        for name, a in zip(names, answers, strict=True):
            legend = page.locator(f'.panel[data-model="{name}"] .legend')
            assert legend.locator(".ends").inner_text() == shared
            assert f"this panel: {a['lo']:.3f} … {a['hi']:.3f}" in legend.inner_text()
        page.check("#own-scale")
        for name, a in zip(names, answers, strict=True):
            ends = page.locator(f'.panel[data-model="{name}"] .legend .ends').inner_text()
            assert ends == f"{a['lo']:.3f}\n{a['hi']:.3f}"
        browser.close()


def _percentiles(heat: np.ndarray) -> np.ndarray:
    """Each byte's percentile among a raster's cell pixels (the page's rank scale)."""
    count = np.bincount(heat.ravel(), minlength=256)[:255].astype(float)
    return (np.cumsum(count) - count / 2) / count.sum()


def test_browser_shows_how_a_model_reranks_places_against_raw_alphaearth(server,
                                                                         chromium) -> None:
    """"vs raw AlphaEarth" after a click: each trained panel's pixel is coloured by its
    place's percentile under the model minus under raw AlphaEarth (recomputed here from
    both answers' rasters): red where the model ranks it higher, blue lower, white level."""
    from playwright.sync_api import sync_playwright

    url, names, _ = server
    heats = {m: _answer(_get(f"{url}api/answer?at=24.945000,60.170000&model={m}")[1])[1]
             for m in (names[1], "alphaearth")}
    mine, raw = heats[names[1]], heats["alphaearth"]
    ok = (mine != 255) & (raw != 255)
    d = np.where(ok, _percentiles(mine)[np.minimum(mine, 254)]
                 - _percentiles(raw)[np.minimum(raw, 254)], np.nan)
    flat = np.nan_to_num(d, nan=0.0).ravel()
    picks = {"higher": int(np.argmax(np.where(ok.ravel(), flat, -9))),
             "lower": int(np.argmin(np.where(ok.ravel(), flat, 9))),
             "level": int(np.argmin(np.where(ok.ravel(), abs(flat), 9))),
             "no cell": int(np.argmin(ok.ravel()))}
    assert d.ravel()[picks["higher"]] > 0.25 and d.ravel()[picks["lower"]] < -0.25
    assert not ok.all()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{url}?at=24.945,60.170&model={names[1]},alphaearth")
        page.wait_for_selector('#status[data-state="done"]', timeout=60_000)
        page.check("#vs-raw")
        panel = page.locator(f'.panel[data-model="{names[1]}"]')
        assert panel.get_attribute("data-view") == "vs-raw"
        assert page.locator('.panel[data-model="alphaearth"]').get_attribute(
            "data-view") == "scores"
        assert panel.locator(".legend").inner_text().startswith("rank vs raw AlphaEarth")
        got = page.evaluate("""async ([name, at]) => {
            const img = panels[name].heat.getElement();
            await img.decode();
            const c = document.createElement("canvas");
            [c.width, c.height] = [img.naturalWidth, img.naturalHeight];
            const ctx = c.getContext("2d");
            ctx.drawImage(img, 0, 0);
            const px = ctx.getImageData(0, 0, c.width, c.height).data;
            return { size: [c.height, c.width], stops: DIVERGING,
                     rgba: at.map((i) => [...px.slice(4 * i, 4 * i + 4)]) };
        }""", [names[1], list(picks.values())])
        assert got["size"] == list(mine.shape)
        for (what, i), rgba in zip(picks.items(), got["rgba"], strict=True):
            if what == "no cell":
                assert rgba[3] == 0
                continue
            want = got["stops"][round((d.ravel()[i] + 1) / 2 * (len(got["stops"]) - 1))]
            assert rgba[3] > 0 and np.abs(np.subtract(rgba[:3], want)).max() <= 3, what
        assert got["rgba"][0][0] > got["rgba"][0][2]  # higher: red
        assert got["rgba"][1][2] > got["rgba"][1][0]  # lower: blue
        # a text query has no raw answer to compare with: said, and the scores drawn
        page.click("#clear-labels")
        page.fill("#q", "hotel")
        page.click("button[type=submit]")
        page.wait_for_selector('#status[data-state="done"]', timeout=60_000)
        assert panel.get_attribute("data-view") == "scores"
        assert "click a place" in page.locator("#vs-raw-note").inner_text()
        browser.close()


def test_online_tiles_only_when_asked_and_a_failed_load_is_said(tiles_server,
                                                                 chromium) -> None:
    """--basemap osm: OpenStreetMap tiles instead of the city's layers; when they cannot
    load (here refused), the page says so in words, the maps still drawn with the credits."""
    from playwright.sync_api import sync_playwright

    url, names = tiles_server
    assert _get(f"{url}api/basemap.geojson")[0] == 404
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        asked: list[str] = []
        page.route("https://tile.openstreetmap.org/**",
                   lambda route: (asked.append(route.request.url), route.abort()))
        page.goto(f"{url}?model={names[1]}")
        page.wait_for_selector('#status[data-state="ready"]', timeout=60_000)
        page.wait_for_function("() => document.getElementById('base-note').textContent",
                               timeout=30_000)
        assert page.locator("#base-note").is_visible()
        assert page.locator("#base-note").inner_text().startswith(
            "OpenStreetMap tiles did not load")
        assert asked and page.evaluate("Object.values(panels)[0].base") is None
        assert "OpenStreetMap contributors" in page.locator(
            ".leaflet-control-attribution").first.inner_text()
        browser.close()


def _load(url: str) -> dict:
    return json.loads(_get(f"{url}api/info")[1])["load"]


def _wait_admitted(url: str, n: int, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while _load(url)["admitted"] != n:
        assert time.monotonic() < end, f"never {n} admitted: {_load(url)}"
        time.sleep(0.005)


def _in_thread(fn, *args):
    import threading

    out: list = []
    t = threading.Thread(target=lambda: out.append(fn(*args)))
    t.start()
    return t, out


def test_busy_server_refuses_at_once_with_retry_after(busy_server) -> None:
    """Worker and queue full (a PNG export running, another waiting): a query gets a 503
    with Retry-After at once, not a place in an unbounded queue; both exports complete,
    and then queries are answered again."""
    url, names, _ = busy_server
    png = f"{url}api/export.png?q=hotel&model={names[0]}&k=200"
    first, out1 = _in_thread(_get, png)
    _wait_admitted(url, 1)
    second, out2 = _in_thread(_get, png)
    _wait_admitted(url, 2)
    refused0 = _load(url)["refused"]
    t0 = time.perf_counter()
    req = urllib.request.Request(f"{url}api/answer?q=hotel&model={names[0]}")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    waited = time.perf_counter() - t0
    assert err.value.code == 503 and err.value.headers["Retry-After"] == "1"
    assert json.loads(err.value.read())["error"].startswith("busy")
    assert waited < 0.5  # at once, not after the exports
    first.join(60)
    second.join(60)
    assert out1[0][0] == 200 and out2[0][0] == 200
    assert _load(url)["refused"] == refused0 + 1
    assert _get(f"{url}api/query?q=hotel&model={names[0]}")[0] == 200


def test_request_whose_client_left_is_not_computed(busy_server) -> None:
    """A query queued behind a slow export whose client hangs up is dropped, not computed."""
    url, names, _ = busy_server
    before = _load(url)
    png, _ = _in_thread(_get, f"{url}api/export.png?q=hotel&model={names[0]}&k=200")
    _wait_admitted(url, 1)
    host, port = url.split("/")[2].split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"GET /api/answer?q=cafe&model={names[0]} HTTP/1.1\r\n"
                     f"Host: {host}:{port}\r\n\r\n".encode())
        _wait_admitted(url, 2)
    png.join(60)
    _wait_admitted(url, 0)
    after = _load(url)
    assert after["abandoned"] == before["abandoned"] + 1
    assert after["answered"] == before["answered"] + 1  # the export only


def test_many_clients_are_answered_or_refused_and_memory_stays_bounded(busy_server) -> None:
    """400 requests from 32 threads at one worker and one queue place: each gets a 200 or
    an immediate 503 (none hangs), and the server's peak memory grows by under 100 MB."""
    from concurrent.futures import ThreadPoolExecutor

    url, names, proc = busy_server

    def peak_mb() -> float:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024

    _get(f"{url}api/answer?q=hotel&model={names[1]}")  # first answers allocate once
    base = peak_mb()
    q = f"{url}api/answer?q=hotel&model={names[1]}"
    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(lambda _: _get(q)[0], range(400)))
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 1
    assert peak_mb() - base < 100


# Labelled places: two positives and a negative inside the sample city (lon, lat).
POS = [(24.9450, 60.1700), (24.9400, 60.1670)]
NEG = [(24.9480, 60.1760)]


def _post(url: str, data: bytes, headers: dict[str, str] | None = None
          ) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _unit_grid(city_dir: Path, name: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The encoded grid as written, and its vectors scaled to unit length (numpy only)."""
    grid = pd.read_parquet(city_dir / "aether" / name / "grid_50m.parquet")
    v = np.array(grid[[c for c in grid.columns if c.startswith("E")]], np.float64)
    return grid, v / np.linalg.norm(v, axis=1, keepdims=True)


def _rows_at(grid: pd.DataFrame, places: list[tuple[float, float]]) -> list[int]:
    """The row of the 50 m cell holding each (lon, lat): the nearest cell centre."""
    from pyproj import Transformer

    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32635", always_xy=True)
    out = []
    for lon, lat in places:
        x, y = to_utm.transform(lon, lat)
        out.append(int(np.argmin((grid["x"] - x) ** 2 + (grid["y"] - y) ** 2)))
    return out


def _like_scores(v: np.ndarray, pos: list[int], neg: list[int]) -> np.ndarray:
    """Cosine of every cell with 2·unit(mean(positives)) − mean(negatives), as the docs say."""
    p = v[pos].mean(axis=0)
    q = 2 * p / np.linalg.norm(p) - v[neg].mean(axis=0) if neg else p
    return v @ (q / np.linalg.norm(q))


def _params(pos: list[tuple[float, float]], neg: list[tuple[float, float]]) -> str:
    return "&".join([f"at={lon},{lat}" for lon, lat in pos]
                    + [f"not={lon},{lat}" for lon, lat in neg])


def test_labels_search_matches_numpy_and_bad_labels_are_400(server) -> None:
    """Positives and negatives: the answer is numpy's cosine with 2·mean(pos) − mean(neg)
    (top cells, scores and the range), the labelled cells left out; a negative changes the
    top. Bad coordinates, a place off the grid, too many labels: a 400 in one line."""
    url, names, city_dir = server
    grid, v = _unit_grid(city_dir, names[1])
    pos, neg = _rows_at(grid, POS), _rows_at(grid, NEG)
    tops = []
    for n in ([], neg):
        cos = _like_scores(v, pos, n)
        res = json.loads(_get(f"{url}api/query?{_params(POS, NEG[:len(n)])}&model={names[1]}"
                              "&k=3")[1])
        assert res["lo"] == pytest.approx(cos.min(), abs=1e-4)
        assert res["hi"] == pytest.approx(cos.max(), abs=1e-4)
        cos[pos + n] = -np.inf
        want = np.argsort(-cos, kind="stable")[:3]
        got = [f["properties"] for f in res["top"]["features"]]
        assert [g["cell_id"] for g in got] == grid["cell_id"].iloc[want].tolist()
        assert [g["score"] for g in got] == pytest.approx(cos[want], abs=1e-4)
        tops.append(got[0]["cell_id"])
    assert tops[0] != tops[1]
    many = "&".join(["at=24.945,60.170"] * 300 + ["not=24.948,60.176"] * 201)
    for query, why in ((f"{many}", "501 labelled places"),
                       ("at=999,60.17", "is not a place on Earth"),
                       ("at=24.945", "is not LON,LAT"),
                       ("at=25.5,60.17", "outside the encoded grid"),
                       ("not=24.948,60.176", "no positive place given")):
        status, body, _ = _get(f"{url}api/query?{query}&model={names[1]}")
        err = json.loads(body)
        assert status == 400 and why in err["error"], (query, err)
        assert "\n" not in err["error"] + err["hint"]


def test_classifier_matches_sklearn_and_needs_both_kinds_of_label(server) -> None:
    """mode=classify: each cell's probability under a logistic regression fitted here with
    sklearn on the same labelled vectors (unit, standardised by the grid's mean and sd, C=1,
    balanced classes) — the top cells' probabilities and the best one agree within 1e-3;
    with positives only it is refused in one line."""
    from sklearn.linear_model import LogisticRegression

    url, names, city_dir = server
    pos_places, neg_places = [*POS, (24.9430, 60.1690)], [*NEG, (24.9500, 60.1740)]
    for name in (names[1], "alphaearth"):
        if name == "alphaearth":  # the raw panel: the grid's own 64-d means, A00..A63
            grid, _ = _unit_grid(city_dir, names[1])
            raw = pd.read_parquet(city_dir / "grid_embeddings_50m.parquet").set_index("cell_id")
            v = raw.reindex(grid["cell_id"])[[f"A{i:02d}" for i in range(64)]].to_numpy(float)
            v = v / np.linalg.norm(v, axis=1, keepdims=True)
        else:
            grid, v = _unit_grid(city_dir, name)
        pos, neg = _rows_at(grid, pos_places), _rows_at(grid, neg_places)
        mean, sd = v.mean(axis=0), v.std(axis=0)
        fit = LogisticRegression(C=1.0, class_weight="balanced").fit(
            (v[pos + neg] - mean) / sd, [1] * len(pos) + [0] * len(neg))
        prob = fit.predict_proba((v - mean) / sd)[:, 1]
        prob[pos + neg] = np.nan
        res = json.loads(_get(f"{url}api/query?mode=classify&k=10&model={name}&"
                              f"{_params(pos_places, neg_places)}")[1])
        assert res["kind"] == "probability" and (res["lo"], res["hi"]) == (0.0, 1.0)
        top = [f["properties"] for f in res["top"]["features"]]
        rows = grid.reset_index().set_index("cell_id").loc[[t["cell_id"] for t in top], "index"]
        assert [t["score"] for t in top] == pytest.approx(prob[rows.to_numpy()], abs=1e-3)
        assert top[0]["score"] == pytest.approx(np.nanmax(prob), abs=1e-3)
        assert not set(rows) & set(pos + neg)
        assert np.nanmin(prob) < 0.1 and np.nanmax(prob) > 0.9  # not a flat map
    status, body, _ = _get(f"{url}api/query?mode=classify&model={names[1]}&{_params(POS, [])}")
    err = json.loads(body)["error"]
    assert status == 400 and "at least 1 positive and 1 negative" in err and "(got 2 and 0)" in err


def test_labels_export_and_import_round_trip(server) -> None:
    """Labels as GeoJSON and CSV name each place's cell (numpy's cell under it); both files
    read back as the same labels; a bad file (not the format, a wrong label, a place not on
    Earth or off the grid, too many, too big) is a 400 in one line."""
    url, names, city_dir = server
    grid, _ = _unit_grid(city_dir, names[1])
    cells = grid["cell_id"].iloc[_rows_at(grid, POS + NEG)].tolist()
    query = _params(POS, NEG)
    status, body, ctype = _get(f"{url}api/labels.geojson?{query}")
    doc = json.loads(body)
    assert status == 200 and ctype == "application/geo+json"
    assert [f["properties"]["label"] for f in doc["features"]] == ["positive"] * 2 + ["negative"]
    assert [f["properties"]["cell_id"] for f in doc["features"]] == cells
    assert [tuple(f["geometry"]["coordinates"]) for f in doc["features"]] == POS + NEG
    assert any("OpenStreetMap" in a for a in doc["attribution"])
    status, text, ctype = _get(f"{url}api/labels.csv?{query}")
    rows = pd.read_csv(io.BytesIO(text), dtype={"cell_id": str})
    assert status == 200 and ctype.startswith("text/csv")
    assert rows["cell_id"].tolist() == cells and rows["label"].tolist()[-1] == "negative"
    want = {"at": [f"{lon:.6f},{lat:.6f}" for lon, lat in POS],
            "not": [f"{lon:.6f},{lat:.6f}" for lon, lat in NEG]}
    assert _post(f"{url}api/labels", body) == (200, want)
    assert _post(f"{url}api/labels", text) == (200, want)
    many = "label,lon,lat\n" + "positive,24.945,60.17\n" * 501
    for bad, why in ((b"hello", "no label, lon and lat columns"),
                     (b'{"type": "FeatureCollection"', "not JSON"),
                     (b"label,lon,lat\nmaybe,24.945,60.17\n", "label 1 is 'maybe'"),
                     (b"label,lon,lat\npositive,24.945,60.17\nnegative,999,60.17\n",
                      "label 2: '999,60.17' is not a place on Earth"),
                     (b"label,lon,lat\npositive,25.5,60.17\n", "outside the encoded grid"),
                     (many.encode(), "501 labelled places"),
                     (b"\xff\xfe", "not UTF-8")):
        status, err = _post(f"{url}api/labels", bad)
        assert status == 400 and why in err["error"], (bad[:40], err)
        assert "\n" not in err["error"] + err["hint"]
    # a file over the cap is refused on its declared size, before a byte of it is read: the
    # answer comes though the client never sends the body (sending it races the server's
    # close: a broken pipe in the client, not an answer)
    import http.client
    from urllib.parse import urlsplit

    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    try:
        conn.putrequest("POST", "/api/labels")
        conn.putheader("Content-Type", "text/csv")
        conn.putheader("Content-Length", "1000001")
        conn.endheaders()
        r = conn.getresponse()
        err = json.loads(r.read())
    finally:
        conn.close()
    assert r.status == 400 and "bytes" in err["error"] and "\n" not in err["error"], err


def test_new_endpoints_refuse_cross_site_requests(server) -> None:
    """The labels import (a POST) from another site: a 403, the body never read as labels."""
    url, _, _ = server
    body = f"label,lon,lat\npositive,{POS[0][0]},{POS[0][1]}\n".encode()
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "http://evil.example"}):
        status, err = _post(f"{url}api/labels", body, headers)
        assert status == 403 and err["error"].startswith("cross-site request refused")
    assert _post(f"{url}api/labels", body, {"Sec-Fetch-Site": "same-origin"})[0] == 200


def _answered(page) -> int:
    return int(page.evaluate("Number(document.body.dataset.answered || 0)"))


def _click(page, model: str, lon: float, lat: float, *, shift: bool = False) -> None:
    """A click (or shift-click) on a panel's map at (lon, lat), then the answer it asks."""
    x, y = page.evaluate("""([m, lat, lon]) => {
        const p = panels[m].map.latLngToContainerPoint([lat, lon]); return [p.x, p.y]; }""",
                         [model, lat, lon])
    n = _answered(page)
    page.locator(f'.panel[data-model="{model}"] .map').click(
        position={"x": x, "y": y}, modifiers=["Shift"] if shift else [])
    page.wait_for_function(f"Number(document.body.dataset.answered) > {n}", timeout=60_000)


def _page_state(page) -> dict:
    return page.evaluate("""() => ({
        labels: [...document.querySelectorAll("#label-list li")].map((li) => li.textContent),
        pos: labels.pos, neg: labels.neg, q: document.getElementById("q").value,
        models: [...document.querySelectorAll("#models input:checked")].map((c) => c.value),
        classify: document.getElementById("classify").checked,
        view: Object.values(panels).filter((p) => !p.div.hidden).map((p) => [
            p.map.getCenter().lat.toFixed(4), p.map.getCenter().lng.toFixed(4), p.map.getZoom()]),
        tops: Object.fromEntries(Object.values(panels).map((p) => [p.div.dataset.model,
                                                                   p.div.dataset.top])),
        marks: document.querySelectorAll(".panel:not([hidden]) .mark.pos").length
               + "/" + document.querySelectorAll(".panel:not([hidden]) .mark.neg").length})""")


def test_browser_labels_places_and_the_url_holds_the_state(server, chromium) -> None:
    """Click two places (positives), shift-click a third (a negative): each is marked on
    every panel and listed, and the top cell after each is numpy's for the labels the page
    holds; the heat's range is numpy's. Removing a label asks again without it. The
    classifier's top is the API's. The URL, reloaded, gives the same labels, words, models,
    classifier and view."""
    from playwright.sync_api import sync_playwright

    url, names, city_dir = server
    grid, v = _unit_grid(city_dir, names[1])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{url}?model={names[1]},alphaearth&k=1&view=60.1715,24.9440,15")
        page.wait_for_selector('#status[data-state="ready"]', timeout=60_000)
        panel = page.locator(f'.panel[data-model="{names[1]}"]')
        tops = []
        for (lon, lat), shift in ((POS[0], False), (POS[1], False), (NEG[0], True)):
            _click(page, names[1], lon, lat, shift=shift)
            state = _page_state(page)
            pos = _rows_at(grid, [(b, a) for a, b in state["pos"]])
            neg = _rows_at(grid, [(b, a) for a, b in state["neg"]])
            cos = _like_scores(v, pos, neg)
            lo, hi = page.evaluate(f"[panels['{names[1]}'].answer.lo, "
                                   f"panels['{names[1]}'].answer.hi]")
            assert (lo, hi) == pytest.approx((cos.min(), cos.max()), abs=1e-4)
            cos[pos + neg] = -np.inf
            assert state["tops"][names[1]] == grid["cell_id"].iloc[int(np.argmax(cos))]
            tops.append(state["tops"][names[1]])
        assert len(state["pos"]) == 2 and len(state["neg"]) == 1  # the shift-click: negative
        assert state["marks"] == "4/2"  # both labels of each kind on both panels
        assert [li.split(" ")[0] for li in state["labels"]] == ["+", "+", "−"]
        assert tops[1] != tops[2]  # the negative moved the best place
        assert "not=" in page.url and page.url.count("at=") == 2
        # remove the first positive: asked again with the other two labels only
        n = _answered(page)
        page.click('#label-list li[data-kind="pos"] .remove >> nth=0')
        page.wait_for_function(f"Number(document.body.dataset.answered) > {n}")
        state = _page_state(page)
        pos = _rows_at(grid, [(b, a) for a, b in state["pos"]])
        assert pos == _rows_at(grid, [POS[1]]) and page.url.count("at=") == 1
        cos = _like_scores(v, pos, neg)
        cos[pos + neg] = -np.inf
        assert state["tops"][names[1]] == grid["cell_id"].iloc[int(np.argmax(cos))]
        assert panel.get_attribute("data-labels") == "2"
        # words with the labels, then the classifier; then a zoom: all of it in the URL
        page.fill("#q", "coffee shop")
        n = _answered(page)
        page.click("button[type=submit]")
        page.wait_for_function(f"Number(document.body.dataset.answered) > {n}")
        assert "coffee shop + labels" in panel.locator("h2").inner_text()
        _click(page, names[1], *POS[0])  # back again, a positive
        n = _answered(page)
        page.check("#classify")
        page.wait_for_function(f"Number(document.body.dataset.answered) > {n}")
        assert panel.locator(".legend").inner_text().startswith("probability of a positive")
        page.evaluate(f"() => {{ panels['{names[1]}'].map.setZoom(17, {{ animate: false }}); }}")
        before = _page_state(page)
        api = json.loads(_get(f"{url}api/query?model={names[1]}&mode=classify&k=1&"
                              + "&".join(f"{k}={b:.6f},{a:.6f}" for k, pts in
                                         (("at", before["pos"]), ("not", before["neg"]))
                                         for a, b in pts))[1])
        assert before["tops"][names[1]] == api["top"]["features"][0]["properties"]["cell_id"]
        assert before["view"][0][2] == 17 and before["classify"]
        shared = page.url
        fresh = browser.new_page(viewport={"width": 1280, "height": 800})
        fresh.goto(shared)
        fresh.wait_for_selector('#status[data-state="done"]', timeout=60_000)
        after = _page_state(fresh)
        for key in ("labels", "q", "models", "classify", "view", "tops", "marks"):
            assert after[key] == before[key], key
        assert np.ravel(after["pos"]) == pytest.approx(np.ravel(before["pos"]), abs=1e-6)
        browser.close()


def test_browser_exports_and_imports_labels(server, chromium, tmp_path) -> None:
    """The labels' GeoJSON and CSV links download the listed labels; cleared and imported
    back, the list is the same; a bad file says why in one line and changes nothing; the
    results' export links name every ticked model."""
    from playwright.sync_api import sync_playwright

    url, names, _ = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{url}?model={names[0]},{names[1]}&k=3&{_params(POS, NEG)}")
        page.wait_for_selector('#status[data-state="done"]', timeout=60_000)
        listed = _page_state(page)["labels"]
        assert len(listed) == 3
        for link in ("#export-geojson", "#export-png"):
            href = page.get_attribute(link, "href")
            assert f"model={names[0]}" in href and f"model={names[1]}" in href
        files = {}
        for kind in ("geojson", "csv"):
            with page.expect_download() as dl:
                page.click(f"#labels-{kind}")
            files[kind] = tmp_path / f"labels.{kind}"
            dl.value.save_as(files[kind])
        doc = json.loads(files["geojson"].read_text())
        assert [f["properties"]["label"] for f in doc["features"]] == [
            "positive", "positive", "negative"]
        assert pd.read_csv(files["csv"])["label"].tolist() == ["positive", "positive", "negative"]
        for kind in ("geojson", "csv"):
            page.click("#clear-labels")
            page.wait_for_selector('#status[data-state="ready"]')
            assert _page_state(page)["labels"] == []
            n = _answered(page)
            page.set_input_files("#import-labels", str(files[kind]))
            page.wait_for_function(f"Number(document.body.dataset.answered) > {n}")
            assert _page_state(page)["labels"] == listed, kind
        bad = tmp_path / "bad.csv"
        bad.write_text("label,lon,lat\npositive,24.945,60.17\nnegative,999,60.17\n")
        page.set_input_files("#import-labels", str(bad))
        page.wait_for_function("document.getElementById('labels-note').textContent")
        note = page.locator("#labels-note")
        assert note.is_visible() and "\n" not in note.inner_text()
        assert note.inner_text().startswith("not imported: label 2: '999,60.17' is not a place")
        assert _page_state(page)["labels"] == listed
        browser.close()


def test_phone_layout_shows_one_panel_and_a_switcher(server, chromium) -> None:
    """At 390 × 844: one panel shown at a time, filling the width; the switcher lists the
    ticked models and shows the one picked (its map drawn); nothing is wider than the
    screen; the toggle makes a tap add a negative."""
    from playwright.sync_api import sync_playwright

    url, names, _ = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 390, "height": 844}, has_touch=True)
        page.goto(f"{url}?q={quote('coffee shop')}&model={names[0]},{names[1]}&k=1")
        page.wait_for_selector('#status[data-state="done"]', timeout=60_000)

        def shown() -> list[tuple[str, float]]:
            return page.evaluate("""() => [...document.querySelectorAll(".panel")]
                .filter((p) => p.getBoundingClientRect().width > 0)
                .map((p) => [p.dataset.model, p.getBoundingClientRect().width])""")

        assert shown() == [[names[0], 390]]
        assert page.locator("#switcher").is_visible()
        assert page.eval_on_selector_all("#switcher option", "os => os.map((o) => o.value)"
                                         ) == names
        page.select_option("#switcher", names[1])
        assert shown() == [[names[1], 390]]
        panel = page.locator(f'.panel[data-model="{names[1]}"]')
        assert int(panel.get_attribute("data-cells")) > 100
        size = page.evaluate(f"panels['{names[1]}'].map.getSize()")
        assert size["x"] >= 385 and size["y"] > 300
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        for control in ("#q", "button[type=submit]", "#neg-mode", "#classify", "#switcher"):
            box = page.locator(control).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, control
            assert box["y"] + box["height"] <= 844, control
        page.tap("#neg-mode")
        assert page.get_attribute("#neg-mode", "aria-pressed") == "true"
        _click(page, names[1], *NEG[0])
        assert _page_state(page)["neg"] and not _page_state(page)["pos"]
        browser.close()


def test_the_app_in_a_notebook_cell(sample_runs, chromium) -> None:
    """``aether.serve`` in Python: a notebook cell's value shows the app (an iframe on the
    loopback URL, which answers); ``stop()`` frees the port."""
    from playwright.sync_api import sync_playwright

    import aether

    _, names, data_root = sample_runs
    app = aether.serve("Helsinki", [names[0]], data_dir=data_root, height=500)
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", app.url)
        assert repr(app) == f"ServedApp(Helsinki: serving at {app.url})"
        with urllib.request.urlopen(app.url + "api/info", timeout=30) as r:
            assert [m["name"] for m in json.load(r)["models"]] == [names[0], "alphaearth"]
        cell = app._repr_html_()
        assert cell.startswith(f'<iframe src="{app.url}"') and 'height="500"' in cell
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.set_content(f"<html><body><h1>notebook</h1>{cell}</body></html>")
            frame = page.frame_locator("iframe")
            frame.locator("#q").fill("hotel")
            frame.locator("#q").press("Enter")
            frame.locator(".legend", has_text="cosine").first.wait_for(timeout=60_000)
            assert "OpenStreetMap contributors" in frame.locator("body").inner_text()
            browser.close()
    finally:
        app.stop()
    assert repr(app).endswith(f"stopped at {app.url})")
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(app.url + "api/info", timeout=5)
