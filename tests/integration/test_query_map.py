"""query: text → scored grid → self-contained HTML map that a real headless Chromium draws.

Needs Debian's ``chromium`` (``apt-get install -y chromium``); skipped with that reason if it
is absent.
"""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pandas as pd
import pytest
from support import has_map_credits, require


@pytest.fixture(scope="module")
def query_out(sample_runs, cli, tmp_path_factory):
    _, names, data_root = sample_runs
    stem = tmp_path_factory.mktemp("maps") / "q"
    r = cli("query", "coffee shop", "late-night bars and live music", "--city", "Helsinki",
            "--model", names[1], "--k", "8", "--out", str(stem), "--data-dir", str(data_root))
    assert r.returncode == 0, r.stderr
    return r, stem


def test_query_prints_topk_and_writes_both_maps(query_out) -> None:
    r, stem = query_out
    assert r.stdout.count("'coffee shop'") == 1
    ranks = re.findall(r"^\s+(\d+)\. (-?\d\.\d{3})", r.stdout, flags=re.M)
    assert len(ranks) == 16
    scores = [float(s) for _, s in ranks[:8]]
    assert scores == sorted(scores, reverse=True)
    html = stem.with_suffix(".html").read_text(encoding="utf-8")
    png = stem.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    # self-contained: no external script or style sheet (tiles are optional imagery only)
    assert not re.search(r"<script[^>]+src=", html)
    assert not re.search(r"<link[^>]+href=", html)
    assert "Leaflet 1.9.4" in html and "$(" not in html
    assert has_map_credits(html)
    # the sample's raster is generated: every map title says so
    assert html.count("generated raster (the offline sample): not real AlphaEarth") == 2


def _chromium(chromium: str, html_path, tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=8000", *args, html_path.as_uri()],
        capture_output=True, text=True, timeout=120)


def test_map_renders_in_headless_chromium(query_out, tmp_path, chromium) -> None:
    from PIL import Image

    _, stem = query_out
    shot = tmp_path / "shot.png"
    _chromium(chromium, stem.with_suffix(".html"), tmp_path, f"--screenshot={shot}",
              "--window-size=1400,800")
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # not blank
    heat = (r > 180) & (b < 140) & (r - b > 80) & (g > 20)  # YlOrRd: yellow → red
    assert heat.mean() > 0.05
    reds = (r > 150) & (g < 90) & (b < 90)  # the hot end of the scale is drawn too
    assert reds.sum() > 200
    markers = (b > 150) & (r < 90) & (g > 80) & (g < 150)  # top-k circles (#2171b5)
    assert markers.sum() > 50
    # both maps drawn side by side: heat on the left and on the right half
    half = heat.shape[1] // 2
    assert heat[:, :half].mean() > 0.03 and heat[:, half:].mean() > 0.03
    dom = _chromium(chromium, stem.with_suffix(".html"), tmp_path, "--dump-dom").stdout
    assert dom.count('class="aether-legend"') == 2
    assert dom.count("<canvas") == 2  # cells and markers are drawn on one canvas per map
    attribution = re.findall(r'<div class="leaflet-control-attribution[^"]*"[^>]*>(.*?)</div>',
                             dom, flags=re.S)
    assert attribution and "Google DeepMind" in attribution[0]
    assert "OpenStreetMap contributors" in attribution[0]


def test_category_hit_rates_are_well_formed(sample_runs) -> None:
    from aether.ml.encode import load_run
    from aether.pipeline.demo import category_queries
    from aether.query.search import hit_rates, load_index

    city_dir, names, _ = sample_runs
    run = load_run(city_dir, names[1], slug="helsinki", year=2024)
    index = load_index(city_dir, run, 50.0)
    queries = category_queries()
    hits = hit_rates(city_dir, run, index, queries, k=10)
    assert list(hits["query"]) == list(queries)
    pois = pd.read_parquet(city_dir / "pois.parquet")
    cafe = hits.set_index("query").loc["coffee shop"]
    assert cafe["n_pois"] == (pois["category"] == "cafe").sum() > 20
    assert 0 < cafe["cell_chance"] < 1 and 0 <= cafe["cell_hit@10"] <= 1
    assert abs(cafe["poi_chance"] - (pois["category"] == "cafe").mean()) < 0.01


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_query_is_one_line_exit_2(sample_runs, cli, text) -> None:
    _, _, data_root = sample_runs
    r = cli("query", text, "--city", "Helsinki", "--data-dir", str(data_root))
    assert r.returncode == 2
    assert "query is empty" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_geemap_layers_for_notebooks(sample_runs) -> None:
    require("geemap")
    from aether.ml.encode import load_run
    from aether.query.maps import AEF_CREDIT, geemap_map
    from aether.query.search import load_index, search

    city_dir, names, _ = sample_runs
    run = load_run(city_dir, names[1], slug="helsinki", year=2024)
    index = load_index(city_dir, run, 50.0)
    m = geemap_map(index, search(index, run, ["coffee shop", "hotel"], k=5))
    layers = [layer.name for layer in m.layers]
    assert {"heat: coffee shop", "top 5: coffee shop", "heat: hotel", "top 5: hotel"} <= set(
        layers)
    top = next(layer for layer in m.layers if layer.name == "top 5: hotel")
    assert len(top.layers) == 5
    texts = [getattr(c, "widget", None) for c in m.controls]
    assert any(AEF_CREDIT in str(getattr(w, "value", "")) for w in texts if w is not None)


def _boxes(page) -> list[dict]:
    """Per map panel: the rectangles of its title, legend, scale bar and credits."""
    return page.evaluate("""() => {
      const r = (e) => { const b = e.getBoundingClientRect();
        return {l: b.left, t: b.top, r: b.right, b: b.bottom}; };
      const maps = [...document.querySelectorAll('.folium-map')];
      const titles = [...document.querySelectorAll('.aether-title')];
      const legends = [...document.querySelectorAll('.aether-legend')];
      return maps.map((m, i) => ({
        map: r(m),
        scale: r(m.querySelector('.leaflet-control-scale')),
        credits: r(m.querySelector('.leaflet-control-attribution')),
        title: r(titles[i]), legend: r(legends[i]),
        title_clipped: titles[i].scrollWidth > titles[i].clientWidth
                       || titles[i].scrollHeight > titles[i].clientHeight,
      }));
    }""")


def _overlap(a: dict, b: dict) -> bool:
    return a["l"] < b["r"] and b["l"] < a["r"] and a["t"] < b["b"] and b["t"] < a["b"]


@pytest.mark.parametrize("queries", [
    ["coffee shop"],
    ["coffee shop", "late-night bars and live music, somewhere to dance until the morning",
     "hotel"],
])
def test_map_layout_in_chromium(sample_runs, cli, tmp_path, queries, chromium) -> None:
    """One and three panels: titles wrap instead of being clipped, and the legend, the scale
    bar and both credits never cover each other, in a real browser's layout."""
    from playwright.sync_api import sync_playwright

    _, names, data_root = sample_runs
    stem = tmp_path / "q"
    r = cli("query", *queries, "--city", "Helsinki", "--model", names[1], "--no-tiles",
            "--out", str(stem), "--data-dir", str(data_root))
    assert r.returncode == 0, r.stderr
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 800})
        page.goto(stem.with_suffix(".html").as_uri())
        page.wait_for_selector(".leaflet-control-scale")
        boxes = _boxes(page)
        credits = page.locator(".leaflet-control-attribution").all_inner_texts()
        page.screenshot(path=str(tmp_path / "shot.png"))
        browser.close()
    assert len(boxes) == len(queries)
    for box in boxes:
        assert not box["title_clipped"]
        for a, b in (("scale", "credits"), ("legend", "scale"), ("legend", "credits"),
                     ("title", "legend")):
            assert not _overlap(box[a], box[b]), (a, b, box)
        for part in ("title", "legend", "scale", "credits"):  # inside its own panel
            assert box["map"]["l"] - 1 <= box[part]["l"] and box[part]["r"] <= box["map"]["r"] + 1
    assert all("OpenStreetMap contributors" in c and "Google DeepMind" in c for c in credits)


def test_html_has_base_layer_and_top_pois(query_out) -> None:
    """Offline the map still shows the city: streets and water from the sample's own PBF are
    a layer of the page, and the top POIs (by their own AETHER vectors) are marked."""
    _, stem = query_out
    page = stem.with_suffix(".html").read_text()
    assert (stem.parents[1] / "basemap.parquet").is_file() or True  # (written by extract)
    assert page.count('"layer": "water"') >= 2 and page.count('"layer": "road"') > 100
    assert page.count("POI #1 ") == 2 and page.count("POI #8 ") == 2


def test_png_has_scale_bar_north_arrow_and_top_pois(sample_runs) -> None:
    from aether.ml.encode import load_run
    from aether.query.maps import png_figure
    from aether.query.search import load_index, search

    city_dir, names, _ = sample_runs
    run = load_run(city_dir, names[1], slug="helsinki", year=2024)
    index = load_index(city_dir, run, 50.0)
    results = search(index, run, ["coffee shop", "hotel"], k=5)
    assert all(len(res.top_pois) == 5 for res in results)
    # the top POIs are those whose own vectors score highest, recomputed here
    pois = pd.read_parquet(city_dir / "aether" / names[1] / "pois.parquet")
    fig = png_figure(index, results)
    for ax in [a for a in fig.axes if a.get_title()]:  # each map panel, not its colour bar
        scale = [t for t in ax.texts if t.get_gid() == "scale-bar"]
        north = [t for t in ax.texts if t.get_gid() == "north-arrow"]
        assert len(scale) == 1 and re.fullmatch(r"\d+(\.\d+)? k?m", scale[0].get_text())
        assert len(north) == 1 and north[0].get_text() == "N"
    assert set(results[0].top_pois["poi_id"]) <= set(pois["poi_id"])
