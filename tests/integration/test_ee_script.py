"""The Code Editor script (ee_scripts/poi_buffer_means.js) computes what the Python source does.

The script runs under Node with the genuine ``@google/earthengine`` npm client (installed by
``npm ci`` in ee_scripts/, see the Makefile), initialised against the loopback emulator; its
graph is serialised by ``ee.Serializer`` and evaluated by the JS client (value:compute). The
Python Earth Engine source computes the same POIs through the same emulator. Both the graphs'
decisive parts (collection, year filter, bounds, crs, scale, radii, bands) and the numbers
must agree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from support import REPO

from aether.core.aef import BANDS, COLLECTION_ID
from aether.embeddings import get_source
from aether.embeddings.earthengine.source import (
    SCALE_M,
    buffer_max_error,
    make_batches,
    reduce_regions_graph,
)
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
    poi_file = tmp_path / "pois.json"
    poi_file.write_text(json.dumps([{"poi_id": i, "lon": g.x, "lat": g.y}
                                    for i, g in zip(pois["poi_id"], pois.geometry, strict=True)]))
    r = subprocess.run(["node", str(SCRIPTS / "harness.js"), ee_server, "demo-project",
                        str(poi_file), "2024", ",".join(f"{x:g}" for x in RADII)],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)

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
    assert out["crs"] == py_f["crs"] == "EPSG:32635"  # as the server derived it: Helsinki's
    assert set(RADII) <= py_f["buffers"]
    assert py_f["max_errors"] == {buffer_max_error(r) for r in RADII}

    # 2. and get the same numbers
    js = pd.DataFrame(out["rows"]).reindex(columns=["poi_id", "radius_m", *BANDS])
    js["radius_m"] = js["radius_m"].astype(float)
    js = js.sort_values(["radius_m", "poi_id"]).reset_index(drop=True)
    py = py.sort_values(["radius_m", "poi_id"]).reset_index(drop=True)
    assert len(js) == len(py) == len(pois) * len(RADII)
    assert (js[["poi_id", "radius_m"]].to_numpy() == py[["poi_id", "radius_m"]].to_numpy()).all()
    a = js[list(BANDS)].to_numpy(dtype=np.float64)
    b = py[list(BANDS)].to_numpy(dtype=np.float64)
    assert (np.isnan(a) == np.isnan(b)).all()
    assert np.isfinite(a).sum() > 0.9 * a.size
    assert np.nanmax(np.abs(a - b)) <= 1e-5
