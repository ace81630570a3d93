"""The Code Editor script (ee_scripts/poi_buffer_means.js) computes what the Python source does.

The script runs under Node with the genuine ``@google/earthengine`` npm client (installed by
``npm ci`` in ee_scripts/, see the Makefile), initialised against the loopback emulator; its
graph is serialised by ``ee.Serializer`` and evaluated by the JS client (value:compute). The
Python Earth Engine source computes the same POIs through the same emulator. Both the graphs'
decisive parts (collection, year filter, bounds, crs, scale, radii, bands) and the numbers
must agree: for the sample city (one UTM zone) and for POIs on both sides of a zone edge, where
each POI is reduced in its own zone (the script groups them by zone on the server, as the
Python source cuts its batches).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from aef_tiles import smooth_q, write
from pyproj import Transformer
from shapely.geometry import Point
from support import REPO

from aether.core import aef
from aether.core.aef import BANDS, COLLECTION_ID
from aether.embeddings import get_source
from aether.embeddings.earthengine.source import (
    SCALE_M,
    buffer_max_error,
    make_batches,
    reduce_regions_graph,
)
from aether.io import tiles as tile_io
from aether.io.tables import sort_poi_embeddings

SCRIPTS = REPO / "ee_scripts"
CLIENT = SCRIPTS / "node_modules" / "@google" / "earthengine"
RADII = [100.0, 200.0]

if shutil.which("node") is None or not CLIENT.is_dir():
    why = "needs node and the npm client: run `make ee-scripts` (npm ci in ee_scripts/)"
    if os.environ.get("AETHER_REQUIRE_NODE"):  # CI sets it: a missing client is a failure
        raise RuntimeError(why)
    pytest.skip(why, allow_module_level=True)


@pytest.fixture
def reset_ee():
    yield
    import ee

    ee.Reset()


def calls(expression: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every function invocation of a serialised graph with its constant arguments."""
    found: list[tuple[str, dict[str, Any]]] = []

    shared = expression.get("values", {})

    def constant(v: Any) -> Any:
        if isinstance(v, dict) and "valueReference" in v:
            return constant(shared.get(v["valueReference"]))
        if isinstance(v, dict) and "constantValue" in v:
            return v["constantValue"]
        inv = v.get("functionInvocationValue") if isinstance(v, dict) else None
        if inv and inv.get("functionName") == "ErrorMargin":  # a number, as EE promotes it
            return constant(inv["arguments"].get("value"))
        if isinstance(v, dict) and "arrayValue" in v:
            items = [constant(x) for x in v["arrayValue"].get("values", [])]
            return None if any(x is None for x in items) else items
        return None

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            inv = node.get("functionInvocationValue")
            if isinstance(inv, dict):
                args = inv.get("arguments", {})
                consts = {k: constant(v) for k, v in args.items()}
                found.append((inv.get("functionName", ""),
                              {k: v for k, v in consts.items() if v is not None}))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(expression)
    return found


def facts(expression: dict[str, Any]) -> dict[str, Any]:
    """What decides the numbers: collection, dates, bands, crs/scale/tileScale, buffers."""
    c = calls(expression)

    def one(name: str) -> dict[str, Any]:
        hits = [a for n, a in c if n == name]
        assert len(hits) == 1, (name, hits)
        return hits[0]

    rr = one("Image.reduceRegions")
    crs = {a.get("crs") for n, a in c if n == "Projection"}
    return {
        "collection": one("ImageCollection.load")["id"],
        "dates": (one("DateRange")["start"], one("DateRange")["end"]),
        "bounds filter": any(n == "Filter.intersects" for n, _ in c),
        "bands": [a["bandSelectors"] for n, a in c
                  if n == "Image.select" and len(a.get("bandSelectors", [])) == len(BANDS)],
        # None: no constant crs in the graph (the script derives it on the server)
        "crs": rr.get("crs") or (crs.pop() if len(crs) == 1 else None), "scale": rr["scale"],
        "tileScale": rr.get("tileScale", 1),
        "buffers": {a["distance"] for n, a in c if n == "Geometry.buffer"},
        "max_errors": {a.get("maxError") for n, a in c if n == "Geometry.buffer"} - {None},
        "reducers": sorted({n for n, _ in c if n.startswith("Reducer.")}),
    }


def test_code_editor_script_matches_the_python_source(sample_extract, ee_server, tmp_path,
                                                      reset_ee):
    import ee

    pois = gpd.read_parquet(sample_extract / "pois.parquet").iloc[::50].head(40)
    out = _harness(ee_server, pois, tmp_path)

    # the Python source, same POIs, same emulator (this also initialises the ee client)
    src = get_source("ee", workdir=tmp_path / "work", ee_url=ee_server,
                     ee_project="demo-project", ee_backoff=0.01)
    py = sort_poi_embeddings(src.point_means(pois, RADII, 2024))

    # 1. the graphs ask for the same thing
    (batch,) = make_batches(pois, RADII, 2024, 10_000)
    py_expr = ee.serializer.encode(reduce_regions_graph(batch.items, 2024), for_cloud_api=True)
    py_f = facts(py_expr)
    for i, expr in enumerate(out["expressions"]):
        js_f = facts(expr)
        for key in ("collection", "dates", "bounds filter", "bands", "scale", "tileScale"):
            assert js_f[key] == py_f[key], (key, js_f[key], py_f[key])
        assert js_f["crs"] is None  # no hard-coded zone: the server derives it from the POIs
        assert RADII[i] in js_f["buffers"]
        # the same buffer polygons: drawn in the UTM projection with the same maxError
        assert len(js_f["max_errors"]) == 1
        assert abs(js_f["max_errors"].pop() - buffer_max_error(RADII[i])) < 1e-9
        # the JS asks for means; Python for sums plus a valid band (to also get weights)
        assert js_f["reducers"] == ["Reducer.mean"] and py_f["reducers"] == ["Reducer.sum"]
    assert py_f["collection"] == COLLECTION_ID and py_f["scale"] == SCALE_M
    assert py_f["dates"] == ("2024-01-01", "2025-01-01")
    assert out["crs"] == [py_f["crs"]] == ["EPSG:32635"]  # as the server derived it: Helsinki's
    assert set(RADII) <= py_f["buffers"]
    assert py_f["max_errors"] == {buffer_max_error(r) for r in RADII}

    # 2. and get the same numbers
    assert _max_diff(out["rows"], py, len(pois)) <= 1e-5


def _harness(url: str, pois: gpd.GeoDataFrame, tmp_path: Path, crs: str | None = None
             ) -> dict[str, Any]:
    """The script under Node against the emulator at ``url``: its JSON answer."""
    poi_file = tmp_path / "pois.json"
    poi_file.write_text(json.dumps([{"poi_id": i, "lon": g.x, "lat": g.y}
                                    for i, g in zip(pois["poi_id"], pois.geometry, strict=True)]))
    r = subprocess.run(["node", str(SCRIPTS / "harness.js"), url, "demo-project", str(poi_file),
                        "2024", ",".join(f"{x:g}" for x in RADII), *([crs] if crs else [])],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def _diffs(rows: list[dict[str, Any]], py: pd.DataFrame, n_pois: int) -> pd.Series:
    """Per (poi_id, radius_m): max |JS mean - Python mean| over the bands, the same rows
    and the same NaNs required."""
    js = pd.DataFrame(rows).reindex(columns=["poi_id", "radius_m", *BANDS])
    js["radius_m"] = js["radius_m"].astype(float)
    js = js.sort_values(["radius_m", "poi_id"]).reset_index(drop=True)
    py = py.sort_values(["radius_m", "poi_id"]).reset_index(drop=True)
    assert len(js) == len(py) == n_pois * len(RADII)
    assert (js[["poi_id", "radius_m"]].to_numpy() == py[["poi_id", "radius_m"]].to_numpy()).all()
    a = js[list(BANDS)].to_numpy(dtype=np.float64)
    b = py[list(BANDS)].to_numpy(dtype=np.float64)
    assert (np.isnan(a) == np.isnan(b)).all()
    assert np.isfinite(a).sum() > 0.9 * a.size
    return pd.Series(np.nanmax(np.abs(a - b), axis=1),
                     index=pd.MultiIndex.from_frame(py[["poi_id", "radius_m"]]))


def _max_diff(rows: list[dict[str, Any]], py: pd.DataFrame, n_pois: int) -> float:
    return float(_diffs(rows, py, n_pois).max())


LAT, EDGE = 60.17, 24.0  # the edge of UTM zones 34N and 35N


def _tile(root: Path, name: str, epsg: int, west_m: float, east_m: float, seed: int) -> dict:
    x, y = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(EDGE, LAT)
    x0, x1 = np.floor((x + west_m) / 10) * 10, np.floor((x + east_m) / 10) * 10
    north = np.floor(y / 10) * 10 + 1_000
    return write(root, name, smooth_q(200, int((x1 - x0) / 10), seed=seed), f"EPSG:{epsg}",
                 x0, north)


def test_code_editor_script_reduces_each_poi_in_its_own_zone(tmp_path, reset_ee) -> None:
    """POIs on both sides of the 34N/35N edge (two tiles, each reaching 1 km past it): the
    script finds both zones and gets each POI's means as the Python source does, which
    reduces each batch in its zone. Forced into one zone (what the script did with the
    table's centroid zone), the other side's POIs come out different: the check can fail."""
    from aether.testing.emulator import Emulator, running

    root = tmp_path / "tiles"
    tile_io.write_index([_tile(root, "w-0000000000-0000000000", 32634, -2_000, 1_000, seed=1),
                         _tile(root, "e-0000000000-0000000000", 32635, -1_000, 2_000, seed=2)],
                        root)
    lon = np.linspace(EDGE - 0.012, EDGE + 0.012, 8)  # 4 POIs each side, none on the edge
    pois = gpd.GeoDataFrame({"poi_id": [f"p{i}" for i in range(len(lon))]},
                            geometry=[Point(a, LAT + 0.001 * (i % 3))
                                      for i, a in enumerate(lon)], crs="EPSG:4326")
    zones = pd.Series([aef.utm_epsg(p.x, p.y) for p in pois.geometry], index=pois["poi_id"])
    assert sorted(zones.value_counts().to_dict().items()) == [(32634, 4), (32635, 4)]

    with running(Emulator(tiles=root, exports=tmp_path / "exports")) as url:
        py = sort_poi_embeddings(get_source("ee", workdir=tmp_path / "work", ee_url=url,
                                            ee_project="demo-project", ee_backoff=0.01)
                                 .point_means(pois, RADII, 2024))
        own = _harness(url, pois, tmp_path)
        forced = _harness(url, pois, tmp_path, crs="EPSG:32635")

    assert own["crs"] == ["EPSG:32634", "EPSG:32635"]  # the zones found, in table order
    assert all(e["values"] and facts(e)["crs"] is None for e in own["expressions"])
    assert _max_diff(own["rows"], py, len(pois)) <= 1e-5
    # one zone for all: the 35N side is still right, the 34N side is not
    d = _diffs(forced["rows"], py, len(pois)).groupby(level="poi_id").max()
    assert (d[zones[zones == 32635].index] <= 1e-5).all(), d
    assert (d[zones[zones == 32634].index] > 1e-4).all(), d
