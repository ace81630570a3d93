"""Your own vectors: ``aether similar --vectors`` over real AlphaEarth H3-r8 means of six
Cascadia towns (../shared/data), as JSON and as GeoParquet, through the real CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import geopandas as gpd
import h3
import numpy as np
import pytest
from shapely.geometry import Polygon
from support import shared_file

import aether
from aether.errors import InputError

TOWNS = ("chico_east", "chico_west", "eureka_arcata", "medford_west_centralpoint", "redding")
FILES = ["alphaearth_2021_h3r8_means_medford.json",
         *(f"alphaearth_2021_h3r8_cascadia/alphaearth_2021_h3r8_means_{t}.json" for t in TOWNS)]
#: Town centres (lat, lon) from a map, not from the data: the oracle of "urban".
CENTRES = {"Redding": (40.5865, -122.3917), "Chico": (39.7285, -121.8375),
           "Eureka": (40.8021, -124.1637), "Arcata": (40.8665, -124.0828),
           "Medford": (42.3265, -122.8756), "Central Point": (42.3760, -122.9164)}
DOWNTOWN_REDDING = (-122.3917, 40.5865)  # lon, lat
ROW = re.compile(r"^\s+\d+\. (-?\d\.\d{3})\s+(-?[\d.]+),(-?[\d.]+)\s+(\w+) \((\w+)\)", re.M)


@pytest.fixture(scope="module")
def files() -> list[str]:
    return [str(shared_file(f)) for f in FILES]


def _km_to_a_centre(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Great-circle km from each point to the nearest town centre."""
    r = np.radians
    out = []
    for clat, clon in CENTRES.values():
        a = (np.sin(r(lat - clat) / 2) ** 2
             + np.cos(r(lat)) * np.cos(r(clat)) * np.sin(r(lon - clon) / 2) ** 2)
        out.append(2 * 6371 * np.arcsin(np.sqrt(a)))
    return np.min(out, axis=0)


def test_downtown_is_most_like_other_towns_downtowns(files):
    """A downtown cell's nearest cells in *other* towns are urban: near a town centre, where
    only a small share of all cells lie (the rest is farmland, forest and coast)."""
    table = aether.similar(vectors=files, at=[DOWNTOWN_REDDING], k=400).table()
    assert len(table) == 400 and table["score"].is_monotonic_decreasing
    elsewhere = table[table["source"] != "alphaearth_2021_h3r8_means_redding"].head(10)
    assert len(elsewhere) == 10
    near = _km_to_a_centre(elsewhere["lat"].to_numpy(), elsewhere["lon"].to_numpy()) < 5
    every = np.array([h3.cell_to_latlng(c) for f in files[:-1]  # every cell not in Redding
                      for c in json.loads(Path(f).read_text())])
    base = float(np.mean(_km_to_a_centre(every[:, 0], every[:, 1]) < 5))
    assert near.sum() >= 8 and base < 0.15, (near, base)


def test_cli_leaves_the_example_out_and_scores_as_numpy(files, cli, tmp_path):
    """The printed rows are the cosine ranking computed here from the JSON itself; the
    example's own cell comes back only with --include-examples."""
    cells: dict[str, list[float]] = {}
    for f in files:
        cells.update({c: v["embedding"] for c, v in json.loads(Path(f).read_text()).items()})
    ids = list(cells)
    v = np.array([cells[c] for c in ids], np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    own = h3.latlng_to_cell(DOWNTOWN_REDDING[1], DOWNTOWN_REDDING[0], 8)
    cos = v @ v[ids.index(own)]
    expected = [ids[i] for i in np.argsort(-cos) if ids[i] != own][:5]
    base = ["similar", *(a for f in files for a in ("--vectors", f)),
            "--at", f"{DOWNTOWN_REDDING[0]},{DOWNTOWN_REDDING[1]}", "--k", "5"]
    r = cli(*base)
    assert r.returncode == 0, r.stderr
    rows = ROW.findall(r.stdout)
    assert [row[3] for row in rows] == expected
    np.testing.assert_allclose([float(row[0]) for row in rows],
                               np.sort(cos[[ids.index(c) for c in expected]])[::-1], atol=6e-4)
    with_ = ROW.findall(cli(*base, "--include-examples").stdout)
    assert with_[0][3] == own and with_[0][0] == "1.000"


def test_geoparquet_answers_as_the_json(files, tmp_path):
    """The same vectors as a GeoParquet of polygons with A00..A63 columns: the same answer."""
    data = json.loads(Path(files[0]).read_text())
    ids = list(data)
    table = gpd.GeoDataFrame(
        {"h3": ids, **{f"A{i:02d}": [data[c]["embedding"][i] for c in ids] for i in range(64)}},
        geometry=[Polygon([(lo, la) for la, lo in h3.cell_to_boundary(c)]) for c in ids],
        crs="EPSG:4326")
    path = tmp_path / "medford.parquet"
    table.to_parquet(path)
    at = [h3.cell_to_latlng(ids[17])[::-1]]
    a = aether.similar(vectors=[files[0]], at=at, k=10).table()
    b = aether.similar(vectors=[path], at=at, k=10).table()
    assert a["cell_id"].tolist() == b["cell_id"].tolist()
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-6)


@pytest.mark.parametrize("case", ["not_h3", "points", "widths", "with_city", "not_json"])
def test_bad_vector_files_are_one_line(case, files, cli, tmp_path):
    good = files[0]
    extra: list[str] = []
    if case == "not_h3":
        path = tmp_path / "v.json"
        path.write_text(json.dumps({"downtown": {"embedding": [0.1] * 64}}))
    elif case == "points":
        path = tmp_path / "v.parquet"
        gpd.GeoDataFrame({"A00": [0.1], "A01": [0.2]}, geometry=gpd.points_from_xy([-122.4],
                         [40.6]), crs="EPSG:4326").to_parquet(path)
    elif case == "widths":
        path = tmp_path / "v.json"
        path.write_text(json.dumps({h3.latlng_to_cell(40.6, -122.4, 8): {"embedding": [0.1] * 8}}))
        extra = ["--vectors", good]
    elif case == "with_city":
        path, extra = tmp_path / "unused", ["--vectors", good, "--city", "Helsinki"]
    else:
        path = tmp_path / "v.json"
        path.write_text("{not json")
    args = ["--vectors", str(path)] if case != "with_city" else []
    r = cli("similar", *args, *extra, "--at", f"{DOWNTOWN_REDDING[0]},{DOWNTOWN_REDDING[1]}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("aether: error:")


# -- words over your vectors: `aether query --vectors --model RUN` and `aether serve --vectors`

QUERIES = ("forest", "shopping street")
VIEW_REDDING = "40.5865,-122.3917,13"


@pytest.fixture(scope="module")
def run_dirs(sample_runs) -> list[Path]:
    """The sample city's two trained runs, by directory (a run of another city than yours)."""
    from aether.io.store import CityStore

    city_dir, names, _ = sample_runs
    return [CityStore.at(city_dir).model(n) for n in names]


def _cells(files: list[str]) -> tuple[list[str], np.ndarray, list[str]]:
    """Every cell id of the files (the first file that has it), its vector and its file."""
    ids, vecs, src = [], [], []
    for f in files:
        for c, v in json.loads(Path(f).read_text()).items():
            if c not in ids:
                ids.append(c), vecs.append(v["embedding"]), src.append(Path(f).stem)
    return ids, np.array(vecs, np.float64), src


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _heads(run_dir: Path, x: np.ndarray, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The run's image head on ``x`` and text head on ``texts`` in numpy, from the saved
    weights (not aether's modules): the oracle. Its window is far inside an H3-r8 cell, so a
    cell's window mean is the cell's own mean."""
    from safetensors.numpy import load_file
    from scipy.special import erf, expit

    from aether.ml.text import encode_texts

    w = {k: v.astype(np.float64) for k, v in load_file(run_dir / "model.safetensors").items()}
    config = json.loads((run_dir / "config.json").read_text())
    assert config["base_radius_m"] <= 100  # the window lies inside one H3-r8 cell
    lin = lambda v, name: v @ w[f"{name}.weight"].T + w[f"{name}.bias"]  # noqa: E731
    if config["model"]["normalize_input"]:
        x = _unit(x)
    h = lin(np.maximum(lin(x, "ae_mlp.0"), 0), "ae_mlp.2") + expit(w["ae_gate"]) * lin(
        x, "ae_shortcut")
    g = lin(_unit(h), "ae_proj.0")
    z = _unit(lin(0.5 * g * (1 + erf(g / np.sqrt(2))), "ae_proj.2"))
    t = encode_texts(texts, model_name=config["text_model"]).astype(np.float64)
    return z, _unit(lin(t, "text_proj"))


@pytest.mark.parametrize("which", [0, 1])
def test_query_over_your_vectors_ranks_as_numpy_through_the_run(files, run_dirs, cli, which):
    """`aether query --vectors --model RUN_DIR` over the six Cascadia files: each answer is
    the cosine of the words' text vector with every cell's vector through the run's image
    head, computed here in numpy from the saved weights; the CLI prints what the Python API
    returns, each row naming its cell and file."""
    run = run_dirs[which]
    ids, x, src = _cells(files)
    z, t = _heads(run, x, list(QUERIES))
    table = aether.query(list(QUERIES), vectors=files, model=str(run), k=8)
    assert set(table["model"]) == {run.name} and len(table) == 16
    args = ["query", *QUERIES, *(a for f in files for a in ("--vectors", f)),
            "--model", str(run), "--k", "8"]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    printed = ROW.findall(r.stdout)
    for j, q in enumerate(QUERIES):
        scores = z @ t[j]
        rows = table[table["query"] == q]
        got = [ids.index(c) for c in rows["cell_id"]]
        np.testing.assert_allclose(rows["score"], scores[got], atol=2e-5)  # each cell's own
        np.testing.assert_allclose(rows["score"], np.sort(scores)[::-1][:8], atol=2e-5)  # top
        assert rows["source"].tolist() == [src[i] for i in got]
        assert [p[3] for p in printed[8 * j:8 * j + 8]] == rows["cell_id"].tolist()
        assert [p[4] for p in printed[8 * j:8 * j + 8]] == rows["source"].tolist()
    assert "(no maps: --out STEM draws them)" in r.stdout


def test_your_vectors_take_the_path_aether_encode_takes_for_an_h3_grid(files, run_dirs):
    """One path: the Medford cells through ``encode_vectors`` are what ``encode_grid`` (the
    function ``aether encode`` runs on an H3 grid table) gives for them as a grid; each
    window mean is the cell's own mean (the run's window lies inside a cell)."""
    import pandas as pd

    from aether.core.aef import BANDS
    from aether.ml.encode import encode_grid
    from aether.query.own_vectors import encode_vectors, read_vectors

    run = aether.Model.load(run_dirs[1]).run
    index = read_vectors(files[:1])
    enc = encode_vectors(index, run)
    grid = pd.concat([index.grid, pd.DataFrame(index.vectors, columns=list(BANDS))], axis=1)
    z, means = encode_grid(run, grid, "h3:8")
    np.testing.assert_allclose(enc.vectors, z, atol=1e-6)
    np.testing.assert_allclose(means.mean, index.vectors, atol=1e-6)
    assert enc.grid["cell_id"].tolist() == index.grid["cell_id"].tolist()


@pytest.mark.parametrize("case", ["no_model", "width", "with_city", "not_a_run",
                                  "serve_width", "serve_city_basemap"])
def test_words_over_your_vectors_refusals_are_one_line(case, files, run_dirs, cli, tmp_path):
    """No model (raw vectors have no text space), vectors of another width than the run
    takes (both widths said), a city too, a model that is not a run's directory; and for
    serve a width and the city base map: one line on stderr, exit 2, no traceback."""
    narrow = tmp_path / "v8.json"
    narrow.write_text(json.dumps({h3.latlng_to_cell(40.6, -122.4, 8): {"embedding": [0.1] * 8}}))
    run = str(run_dirs[1])
    args = {"no_model": ["query", "forest", "--vectors", files[0]],
            "width": ["query", "forest", "--vectors", str(narrow), "--model", run],
            "with_city": ["query", "forest", "--vectors", files[0], "--model", run,
                          "--city", "Helsinki"],
            "not_a_run": ["query", "forest", "--vectors", files[0], "--model", str(tmp_path)],
            "serve_width": ["serve", "--vectors", str(narrow), "--model", run, "--port", "0"],
            "serve_city_basemap": ["serve", "--vectors", files[0], "--basemap", "city",
                                   "--port", "0"]}[case]
    r = cli(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("aether: error:")
    said = {"no_model": "no text space", "width": "your vectors are 8-d; model",
            "with_city": "not a city's grid", "not_a_run": "no complete trained run",
            "serve_width": "takes 64-d", "serve_city_basemap": "no city base map"}[case]
    assert said in r.stderr, r.stderr
    if case == "no_model":
        assert "aether similar --vectors" in r.stderr and "--model" in r.stderr


@pytest.fixture(scope="module")
def own_server(files, run_dirs):
    """`aether serve --vectors` over the six files with one run: the real CLI server."""
    from support import serving

    with serving(*(a for f in files for a in ("--vectors", f)),
                 "--model", str(run_dirs[1])) as (url, _):
        yield url


def test_served_your_vectors_say_their_files_and_answer_from_them(own_server, files,
                                                                  run_dirs) -> None:
    """/api/info names every file with its cells and both credits, labels nothing as
    generated; "more like this" on the raw panel is numpy's cosine over the JSON vectors,
    the clicked cell left out, each cell named with its file; words on the raw panel are a
    one-line 400; words on the run's panel are the numpy oracle's top; the heat raster of
    towns hundreds of km apart stays within the pixel budget and draws their cells."""
    from support import http_get, served_answer

    from aether.query.heat import MAX_PIXELS

    url, run = own_server, run_dirs[1]
    ids, x, src = _cells(files)
    info = json.loads(http_get(f"{url}api/info")[1])
    assert [m["name"] for m in info["models"]] == ["your vectors", run.name]
    assert [m["text"] for m in info["models"]] == [False, True]
    assert info["sources"] == [{"file": Path(f).stem, "cells": src.count(Path(f).stem)}
                               for f in files]
    assert info["synthetic"] is None and info["basemap"] == "none"
    assert any("OpenStreetMap contributors" in a for a in info["attribution"])
    assert any("produced by Google and Google DeepMind" in a for a in info["attribution"])
    lon, lat = DOWNTOWN_REDDING
    status, body, _ = http_get(f"{url}api/query?model=your%20vectors&at={lon},{lat}&k=5")
    assert status == 200
    feats = json.loads(body)["top"]["features"]
    own = ids.index(h3.latlng_to_cell(lat, lon, 8))
    cos = _unit(x) @ _unit(x[own])
    cos[own] = -np.inf
    expected = [ids[i] for i in np.argsort(-cos, kind="stable")[:5]]
    assert [f["properties"]["cell_id"] for f in feats] == expected
    assert [f["properties"]["source"] for f in feats] == [src[ids.index(c)] for c in expected]
    np.testing.assert_allclose([f["properties"]["score"] for f in feats],
                               np.sort(cos)[::-1][:5], atol=2e-4)
    status, body, _ = http_get(f"{url}api/query?model=your%20vectors&q=forest")
    assert status == 400 and "no text space" in json.loads(body)["error"]
    z, t = _heads(run, x, ["forest"])
    status, body, _ = http_get(f"{url}api/answer?model={run.name}&q=forest&k=3")
    head, heat = served_answer(body)
    top = [f["properties"]["cell_id"] for f in head["top"]["features"]]
    scores = z @ t[0]
    np.testing.assert_allclose([scores[ids.index(c)] for c in top],
                               np.sort(scores)[::-1][:3], atol=2e-5)
    assert heat.size <= MAX_PIXELS and (heat != 255).sum() > 3 * len(ids)


def test_browser_serves_your_vectors_click_and_words(own_server, files, run_dirs,
                                                     chromium) -> None:
    """In Chromium: the page names the files served and both credits; words answer on the
    run's panel while the raw panel asks for a click; a click in downtown Redding answers
    on both panels, the raw panel's top being the API's for that place, a cell of the files;
    the top place's popup names its cell and file."""
    from playwright.sync_api import sync_playwright
    from support import http_get

    url, run = own_server, run_dirs[1].name
    ids, _, src = _cells(files)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{url}?view={VIEW_REDDING}&k=3")
        page.wait_for_selector('#status[data-state="ready"]', timeout=60_000)
        shown = page.locator("#sources").inner_text()
        assert all(f"{Path(f).stem} (" in shown for f in files), shown
        credits = page.locator("#credits").inner_text()
        assert "OpenStreetMap contributors" in credits
        assert "produced by Google and Google DeepMind" in credits
        assert "generated" not in credits
        assert "no base map under your vectors" in page.locator("#base-note").inner_text()
        raw = page.locator('.panel[data-model="your vectors"]')
        assert raw.locator(".about").inner_text().startswith("your vectors as given: 64-d")
        # the run learnt from the sample's generated raster: its panel says so, yours do not
        about = page.locator(f'.panel[data-model="{run}"] .about').inner_text()
        assert "a generated raster: synthetic" in about, about
        assert "synthetic" not in raw.locator(".about").inner_text()
        page.fill("#q", "forest")
        page.click("button[type=submit]")
        page.wait_for_selector('#status[data-state="done"]', timeout=60_000)
        api = json.loads(http_get(f"{url}api/query?model={run}&q=forest&k=3")[1])
        assert page.get_attribute(f'.panel[data-model="{run}"]', "data-top") == (
            api["top"]["features"][0]["properties"]["cell_id"])
        assert "click a place" in raw.locator("h2").inner_text()
        page.fill("#q", "")
        page.click("button[type=submit]")  # nothing asked: the words are dropped
        n = int(page.evaluate("Number(document.body.dataset.answered || 0)"))
        xy = page.evaluate("""([lat, lon]) => { const p = panels["your vectors"].map
            .latLngToContainerPoint([lat, lon]); return [p.x, p.y]; }""",
                           list(DOWNTOWN_REDDING[::-1]))
        raw.locator(".map").click(position={"x": xy[0], "y": xy[1]})
        page.wait_for_function(f"Number(document.body.dataset.answered) > {n}",
                               timeout=60_000)
        lat, lon = page.evaluate("labels.pos[0]")
        api = json.loads(http_get(f"{url}api/query?model=your%20vectors&at={lon:.6f},"
                                  f"{lat:.6f}&k=3")[1])
        top = api["top"]["features"][0]["properties"]
        assert raw.get_attribute("data-top") == top["cell_id"] and top["cell_id"] in ids
        assert top["source"] == src[ids.index(top["cell_id"])]
        assert page.get_attribute(f'.panel[data-model="{run}"]', "data-top") in ids
        assert int(raw.get_attribute("data-cells")) > 100  # the heat layer is drawn
        page.evaluate("""() => { const p = panels["your vectors"];
            p.markers.getLayers()[0].openPopup(); }""")
        popup = page.locator(".leaflet-popup-content").first.inner_text()
        assert f"{top['cell_id']} ({top['source']})" in popup
        browser.close()


def test_similar_over_your_vectors_in_a_runs_space_ranks_as_numpy(files, run_dirs, cli):
    """`aether similar --vectors --model RUN_DIR`: the cells' vectors through the run's image
    head (numpy, from the saved weights), then the cosine to the example's; the example
    itself is left out; a grid cell size with --vectors is refused."""
    run = run_dirs[1]
    ids, x, src = _cells(files)
    z, _ = _heads(run, x, ["unused"])
    own = h3.latlng_to_cell(DOWNTOWN_REDDING[1], DOWNTOWN_REDDING[0], 8)
    cos = z @ z[ids.index(own)]
    expected = [i for i in np.argsort(-cos) if ids[i] != own][:6]
    args = ["similar", *(a for f in files for a in ("--vectors", f)), "--model", str(run),
            "--at", f"{DOWNTOWN_REDDING[0]},{DOWNTOWN_REDDING[1]}", "--k", "6"]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert f"your vectors, in model {run.name}'s space" in r.stdout
    rows = ROW.findall(r.stdout)
    assert [row[3] for row in rows] == [ids[i] for i in expected]
    assert [row[4] for row in rows] == [src[i] for i in expected]
    np.testing.assert_allclose([float(row[0]) for row in rows], cos[expected], atol=6e-4)
    api = aether.similar(vectors=files, model=str(run), at=[DOWNTOWN_REDDING], k=6).table()
    assert api["cell_id"].tolist() == [ids[i] for i in expected]
    assert set(api["model"]) == {run.name}
    raw = aether.similar(vectors=files, at=[DOWNTOWN_REDDING], k=6).table()
    assert set(raw["model"]) == {"vectors"}  # as given: another space, other scores
    assert np.abs(raw["score"].to_numpy() - cos[expected]).max() > 1e-3
    with pytest.raises(InputError, match="searches your own vectors, not a city"):
        aether.similar(vectors=files, model=str(run), at=[DOWNTOWN_REDDING], cell="h3:8")
