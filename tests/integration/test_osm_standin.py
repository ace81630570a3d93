"""osmnx's real HTTP, cache and parsing code against the loopback Nominatim/Overpass stand-in."""

from __future__ import annotations

import json
import time

import pytest

from aether.errors import PoiError
from aether.places.osm_http import RETRIES
from aether.places.place import resolve_place
from aether.pois.load import load_pois


@pytest.fixture
def helsinki(osm_env):
    return resolve_place("Helsinki")


def newest_edit(pbf) -> str:
    """What the extract is as of: its newest edit, read here with osmium directly."""
    import osmium

    stamps = [o.timestamp for o in osmium.FileProcessor(str(pbf)) if o.timestamp]
    return max(stamps).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_osm_source_equals_pbf_source(osm_env, helsinki, helsinki_pbf):
    before = osm_env.count("overpass")
    osm = load_pois("osm", helsinki)
    assert osm_env.count("overpass") == before + 1  # one real HTTP request
    pbf = load_pois(f"pbf:{helsinki_pbf}", helsinki)
    assert len(osm) > 2000
    assert list(osm["poi_id"]) == list(pbf["poi_id"])
    for col in ("name", "category", "top_category", "text"):
        assert osm[col].fillna("").tolist() == pbf[col].fillna("").tolist(), col
    assert (osm.geometry.x - pbf.geometry.x).abs().max() < 1e-9
    assert (osm.geometry.y - pbf.geometry.y).abs().max() < 1e-9
    assert set(osm["source"]) == {"osm"}
    # the data's date: Overpass's timestamp_osm_base; the PBF without a replication time
    # in its header is as of its newest POI edit, which is no later
    as_of = newest_edit(helsinki_pbf)
    assert osm.attrs["snapshot"]["as_of"] == as_of
    assert "timestamp_osm_base" in osm.attrs["snapshot"]["from"]
    assert "newest edit among its POIs" in pbf.attrs["snapshot"]["from"]
    assert "2000" < pbf.attrs["snapshot"]["as_of"] <= as_of
    # the second load is answered by osmnx's own HTTP cache: no request reaches the server,
    # and the cached response keeps the date it was made with
    again = load_pois("osm", helsinki)
    assert osm_env.count("overpass") == before + 1
    assert list(again["poi_id"]) == list(osm["poi_id"])
    assert again.attrs["snapshot"] == osm.attrs["snapshot"]


def test_overpass_failures_are_retried_politely(osm_env, helsinki, monkeypatch):
    monkeypatch.setenv("AETHER_OSM_BACKOFF_S", "0.2")
    osm_env.inject("429", retry_after=1)  # Retry-After honoured: at least 1 s
    osm_env.inject("504")
    osm_env.inject("timeout")  # HTTP 200 + "runtime error: Query timed out": must not be kept
    before = osm_env.count("overpass")
    t0 = time.perf_counter()
    df = load_pois("osm", helsinki)
    waited = time.perf_counter() - t0
    assert osm_env.count("overpass") == before + 4
    assert waited >= 1 + 0.4  # Retry-After 1 s, then back-off 0.4 s and 0.8 s
    assert len(df) > 2000


def test_overpass_gives_up_in_one_line(osm_env, helsinki, monkeypatch):
    monkeypatch.setenv("AETHER_OSM_BACKOFF_S", "0.05")
    osm_env.inject("timeout", times=RETRIES + 1)
    before = osm_env.count("overpass")
    with pytest.raises(PoiError, match="Overpass failed 5 times: runtime error: Query timed out"
                       ) as e:
        load_pois("osm", helsinki)
    assert "\n" not in str(e.value)
    assert osm_env.count("overpass") == before + RETRIES + 1
    # nothing was cached from the failures: the next call asks the server again and succeeds
    assert len(load_pois("osm", helsinki)) > 2000
    assert osm_env.count("overpass") == before + RETRIES + 2


def test_nominatim_429_is_retried(osm_env):
    osm_env.inject("429", service="nominatim", retry_after=1)
    before = osm_env.count("nominatim")
    place = resolve_place("Kamppi")
    assert osm_env.count("nominatim") == before + 2
    assert place.slug == "kamppi" and place.boundary.geom_type in ("Polygon", "MultiPolygon")


def test_empty_poi_result(osm_env):
    from shapely.geometry import box

    from aether.places.place import place_from_polygon

    water = place_from_polygon("Harbour", box(24.9535, 60.1640, 24.9536, 60.1641))
    with pytest.raises(PoiError, match="no POIs found in Harbour"):
        load_pois("osm", water)


def test_standin_rejects_other_queries(osm_standin):
    import requests

    r = requests.post(f"{osm_standin.overpass_url}/interpreter",
                      data={"data": "[out:json];node(1);out;"}, timeout=10)
    assert r.status_code == 400
    assert requests.get(f"{osm_standin.overpass_url}/status", timeout=10).text.split("\n")[4] \
        .startswith("2 slots available")


def test_cli_extract_through_osmnx_equals_pbf(osm_env, cli, sample_city, helsinki, helsinki_pbf,
                                              tmp_path):
    """`aether extract --city Helsinki --source cog --tiles ...` without --offline: the place
    and POIs come through osmnx from the stand-in, and match the pbf: source."""
    import geopandas as gpd
    import pandas as pd

    env = osm_env.environment(tmp_path / "cli-cache")
    data = tmp_path / "data"
    res = cli("extract", "--city", "Helsinki", "--source", "cog", "--tiles",
              str(sample_city.tiles), "--data-dir", str(data), env=env)
    assert res.returncode == 0, res.stderr
    out = data / "helsinki" / "2024"
    pois = gpd.read_parquet(out / "pois.parquet")
    pbf = load_pois(f"pbf:{helsinki_pbf}", helsinki)
    assert list(pois["poi_id"]) == list(pbf["poi_id"])
    assert list(pois["category"]) == list(pbf["category"])
    assert list(pois["top_category"]) == list(pbf["top_category"])
    emb = pd.read_parquet(out / "poi_embeddings.parquet")
    assert len(emb) == 2 * len(pois)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["pois_snapshot"]["as_of"] == newest_edit(helsinki_pbf)


def test_cli_overpass_failure_leaves_nothing(osm_env, cli, sample_city, tmp_path):
    env = {**osm_env.environment(tmp_path / "cli-cache"), "AETHER_OSM_BACKOFF_S": "0.05"}
    osm_env.inject("504", times=RETRIES + 1)
    data = tmp_path / "data"
    res = cli("extract", "--city", "Helsinki", "--source", "cog", "--tiles",
              str(sample_city.tiles), "--data-dir", str(data), env=env)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Overpass failed 5 times: HTTP 504" in lines[0]
    assert not (data / "helsinki").exists()


# every other bad place is checked at library level (test_places.py); the CLI maps them alike
@pytest.mark.parametrize(("args", "message"), [
    (["--city", "Vuohi"], "'Vuohi' is ambiguous: 1) Vuohi [W33505710"),
    (["--bbox", "24.96,60.16,24.93,60.18"], "has W >= E"),
])
def test_cli_bad_places(osm_env, cli, sample_city, tmp_path, args, message):
    env = osm_env.environment(tmp_path / "cli-cache")
    res = cli("extract", *args, "--source", "cog", "--tiles", str(sample_city.tiles),
              "--data-dir", str(tmp_path / "data"), env=env)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("*.parquet"))


def test_grid_after_an_osm_extract_reuses_its_place(osm_env, sample_city, tmp_path):
    """The place extract geocoded is the grid's (a run's encode step): no second lookup."""
    import shutil

    from aether.embeddings.base import SourceRequest
    from aether.pipeline.extract import ExtractRequest, run_extract, run_grid
    from aether.pois.load import PoiSpec

    req = ExtractRequest(city="Helsinki", data_dir=tmp_path / "data", pois=PoiSpec.of("osm"),
                         source=SourceRequest.of("cog", {"tiles": str(sample_city.tiles)}),
                         radii=(100.0,))
    done = run_extract(req)
    looked_up = osm_env.count("nominatim")
    assert looked_up >= 1 and done.n_pois > 2000
    shutil.rmtree(tmp_path / "osm-cache")  # osmnx's cache would hide a second lookup
    grid = run_grid(req, "500m")
    assert osm_env.count("nominatim") == looked_up
    assert grid.path.is_file() and grid.path.parent == done.out_dir
