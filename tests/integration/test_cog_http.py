"""The COG source over HTTP: a real nginx on 127.0.0.1 serving tiles in the public layout.

Remote reads give the same means as local ones, fetch only a fraction of a tile (counted in
nginx's access log), revalidate the cached index (304), and every failure of the server
(down, 404, 416, 503) is one line and exit 2.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from aef_tiles import smooth_q, write
from pyproj import Transformer
from shapely.geometry import Point

from aether.core import aef
from aether.embeddings.cog import CogSource
from aether.io import tiles as tile_io

BANDS = list(aef.BANDS)
KEY = ["poi_id", "radius_m"]
#: The public index the issue names as the default of ``--source cog``.
PUBLIC_INDEX = "https://data.source.coop/tge-labs/aef/v1/annual/aef_index.parquet"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AETHER_CACHE_DIR", str(tmp_path / "cache"))


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(KEY).reset_index(drop=True)


def _sample_pois(sample_city, n: int = 40) -> gpd.GeoDataFrame:
    w, s, e, n_ = sample_city.place.bbox
    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(w, e, n), rng.uniform(s, n_, n)
    return gpd.GeoDataFrame({"poi_id": [f"p{i}" for i in range(n)]},
                            geometry=[Point(a, b) for a, b in zip(lon, lat, strict=True)],
                            crs="EPSG:4326")


def test_remote_means_equal_local(sample_city, nginx) -> None:
    server = nginx(sample_city.tiles)  # <root>/<year>/<zone>/<file>.tiff + aef_index.parquet
    pois = _sample_pois(sample_city)
    local = CogSource(str(sample_city.tiles)).point_means(pois, [100.0, 200.0], 2024)
    remote = CogSource(server.url + "/").point_means(pois, [100.0, 200.0], 2024)
    a, b = _sorted(local), _sorted(remote)
    assert a[KEY].equals(b[KEY])
    np.testing.assert_array_equal(a[[*BANDS, "weight", "valid_fraction"]].to_numpy(),
                                  b[[*BANDS, "weight", "valid_fraction"]].to_numpy())
    gets = [r for r in server.requests() if r.uri.endswith(".tiff") and r.method == "GET"]
    assert gets and all(r.status == 206 and r.range != "-" for r in gets)  # range requests only


@pytest.fixture(scope="module")
def big_tile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One 1024² tile (16 blocks of 256²) in the public layout: (root, tile)."""
    root = tmp_path_factory.mktemp("www")
    rec = write(root, "big-0000000000-0000000000", smooth_q(1024, 1024), "EPSG:32635",
                385_000.0, 6_680_000.0)
    tile_io.write_index([rec], root)
    return root, Path(str(rec["path"]))


def _corner_pois(n: int = 5) -> gpd.GeoDataFrame:
    """POIs within ~1 km of the tile's north-west corner."""
    x = 385_300.0 + np.linspace(0, 700, n)
    y = 6_679_700.0 - np.linspace(0, 500, n)
    lon, lat = Transformer.from_crs("EPSG:32635", "EPSG:4326", always_xy=True).transform(x, y)
    return gpd.GeoDataFrame({"poi_id": [f"c{i}" for i in range(n)]},
                            geometry=[Point(a, b) for a, b in zip(lon, lat, strict=True)],
                            crs="EPSG:4326")


def test_only_the_touched_blocks_are_fetched_and_the_index_once(big_tile, nginx) -> None:
    root, tile = big_tile
    server = nginx(root)
    pois = _corner_pois()
    local = CogSource(str(root)).point_means(pois, [100.0], 2024)
    remote = CogSource(f"{server.url}/aef_index.parquet").point_means(pois, [100.0], 2024)
    np.testing.assert_array_equal(_sorted(local)[BANDS].to_numpy(),
                                  _sorted(remote)[BANDS].to_numpy())
    sent = sum(r.bytes_sent for r in server.requests() if r.uri.endswith(".tiff"))
    size = tile.stat().st_size
    assert 0 < sent < 0.25 * size, (sent, size)  # the corner's blocks, not the tile
    index = [r for r in server.requests() if r.uri.endswith(".parquet")]
    assert [r.status for r in index] == [200]
    # a second run asks whether the index changed, and reads the cached copy
    server.clear_log()
    again = CogSource(f"{server.url}/aef_index.parquet").point_means(pois, [100.0], 2024)
    assert _sorted(again)[BANDS].equals(_sorted(remote)[BANDS])
    index = [r for r in server.requests() if r.uri.endswith(".parquet")]
    assert [(r.status, r.bytes_sent) for r in index] == [(304, 0)]


def _pois_csv(path: Path, pois: gpd.GeoDataFrame) -> Path:
    pd.DataFrame({"poi_id": pois["poi_id"], "name": pois["poi_id"], "amenity": "cafe",
                  "lon": pois.geometry.x, "lat": pois.geometry.y}).to_csv(path, index=False)
    return path


def _one_line_exit_2(res) -> str:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_cli_extract_over_http_matches_local(big_tile, nginx, tmp_path: Path, cli) -> None:
    root, _ = big_tile
    server = nginx(root)
    csv = _pois_csv(tmp_path / "pois.csv", _corner_pois())
    env = {"AETHER_CACHE_DIR": str(tmp_path / "cache")}
    outs = []
    for name, tiles in (("local", str(root)), ("remote", server.url)):
        res = cli("extract", "--pois", str(csv), "--source", "cog", "--tiles", tiles,
                  "--radius", "100", "--data-dir", str(tmp_path / name), env=env)
        assert res.returncode == 0, res.stderr
        (table,) = (tmp_path / name).rglob("poi_embeddings.parquet")
        outs.append(pd.read_parquet(table))
    np.testing.assert_array_equal(outs[0][BANDS].to_numpy(), outs[1][BANDS].to_numpy())


def _failing_index(root: Path, base: str, code: int) -> Path:
    """A copy of the index whose tiles live under nginx's ``/e<code>/`` location."""
    gdf = tile_io.read_index(root)
    gdf["path"] = [f"{base}/e{code}/{Path(p).relative_to(root)}" for p in gdf["path"]]
    out = root / f"index-{code}"
    out.mkdir()
    gdf.to_parquet(out / aef.INDEX_NAME)
    return out


@pytest.mark.parametrize("code", [404, 416, 503])
def test_tile_errors_are_one_line(code, big_tile, nginx, tmp_path: Path, cli) -> None:
    root, _ = big_tile
    server = nginx(root)
    _failing_index(root, server.url, code)
    csv = _pois_csv(tmp_path / "pois.csv", _corner_pois())
    res = cli("extract", "--pois", str(csv), "--source", "cog", "--tiles",
              f"{server.url}/index-{code}/", "--data-dir", str(tmp_path / "d"),
              env={"AETHER_CACHE_DIR": str(tmp_path / "cache"), "GDAL_HTTP_RETRY_DELAY": "0.1"})
    line = _one_line_exit_2(res)
    assert f"/e{code}/" in line and "cannot read tile" in line
    assert not (tmp_path / "d").exists() or not list((tmp_path / "d").rglob("*.parquet"))


@pytest.mark.parametrize("code", [404, 503])
def test_index_errors_are_one_line(code, big_tile, nginx, tmp_path: Path, cli) -> None:
    root, _ = big_tile
    server = nginx(root)
    csv = _pois_csv(tmp_path / "pois.csv", _corner_pois())
    res = cli("extract", "--pois", str(csv), "--source", "cog", "--tiles",
              f"{server.url}/e{code}/", "--data-dir", str(tmp_path / "d"),
              env={"AETHER_CACHE_DIR": str(tmp_path / "cache")})
    line = _one_line_exit_2(res)
    assert f"HTTP {code}" in line and f"/e{code}/aef_index.parquet" in line


def test_server_down_is_one_line(big_tile, nginx, tmp_path: Path, cli) -> None:
    root, _ = big_tile
    server = nginx(root)
    url = server.url
    server.stop()
    csv = _pois_csv(tmp_path / "pois.csv", _corner_pois())
    res = cli("extract", "--pois", str(csv), "--source", "cog", "--tiles", url,
              "--data-dir", str(tmp_path / "d"), env={"AETHER_CACHE_DIR": str(tmp_path / "c")})
    line = _one_line_exit_2(res)
    assert "cannot reach the AEF index" in line and url in line


def test_tiles_default_to_aether_tiles_then_the_public_index(big_tile, nginx, tmp_path: Path,
                                                              cli) -> None:
    root, _ = big_tile
    server = nginx(root)
    csv = _pois_csv(tmp_path / "pois.csv", _corner_pois())
    env = {"AETHER_CACHE_DIR": str(tmp_path / "cache"), "AETHER_TILES": server.url}
    res = cli("extract", "--pois", str(csv), "--source", "cog", "--data-dir",
              str(tmp_path / "d"), env=env)
    assert res.returncode == 0, res.stderr
    assert any(r.uri == "/aef_index.parquet" for r in server.requests())
    # no flag, no AETHER_TILES: the public index, asked for through a proxy that is the
    # local nginx (it refuses to tunnel), so the network is never used: one line naming it
    proxy = {k: server.url for k in ("https_proxy", "HTTPS_PROXY")}
    env = {"AETHER_CACHE_DIR": str(tmp_path / "cache2"), "AETHER_TILES": "", "no_proxy": "",
           "NO_PROXY": "", **proxy}
    server.clear_log()
    res = cli("extract", "--pois", str(csv), "--source", "cog", "--data-dir",
              str(tmp_path / "d2"), env=env)
    line = _one_line_exit_2(res)
    assert PUBLIC_INDEX in line and "Tunnel connection failed: 400" in line
    assert [r.status for r in server.requests()] == [400]  # the one request: nginx's refusal


def test_the_same_tiles_from_a_mirror_are_the_same_extraction(big_tile, nginx, tmp_path: Path,
                                                              cli) -> None:
    """The hash holds the dataset version (tile names, index rows), not where the tiles are
    read from: the local folder an HTTP server serves is the same data. (Other tiles, or a
    new version, redo it: tests/integration/test_incremental.py.)"""
    root, _ = big_tile
    server = nginx(root)
    csv = _pois_csv(tmp_path / "pois.csv", _corner_pois())
    args = ["extract", "--pois", str(csv), "--source", "cog", "--data-dir", str(tmp_path / "d")]
    env = {"AETHER_CACHE_DIR": str(tmp_path / "cache")}
    first = cli(*args, env={**env, "AETHER_TILES": server.url})
    same = cli(*args, env={**env, "AETHER_TILES": server.url})
    other = cli(*args, env={**env, "AETHER_TILES": str(root)})
    assert first.returncode == same.returncode == other.returncode == 0, other.stderr
    assert "up to date" in same.stdout
    assert "up to date" in other.stdout


def test_a_cached_index_outlives_the_server(big_tile, nginx, caplog) -> None:
    root, _ = big_tile
    server = nginx(root)
    first = tile_io.read_index(server.url)
    server.stop()
    again = tile_io.read_index(server.url)  # unreachable now: the cached copy, with a warning
    assert again["path"].tolist() == first["path"].tolist()
    assert any("using the cached index" in r.getMessage() for r in caplog.records)


def test_nginx_is_really_serving(big_tile, nginx) -> None:
    """The fixture's server answers range requests itself (206 with the asked bytes)."""
    import urllib.request

    root, tile = big_tile
    server = nginx(root)
    rel = tile.relative_to(root)
    req = urllib.request.Request(f"{server.url}/{rel}", headers={"Range": "bytes=0-99"})
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 206 and len(resp.read()) == 100
    assert shutil.which("nginx") or Path("/usr/sbin/nginx").exists()
