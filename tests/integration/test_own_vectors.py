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
