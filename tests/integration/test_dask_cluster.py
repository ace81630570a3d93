"""A real Dask cluster: `dask scheduler` and two `dask worker` processes on loopback.

The workers get nothing but the task graph: tiles are URLs served by nginx, each worker has
its own empty working directory, home and cache, and sends its own HTTP User-Agent, so the
access log shows who read the tiles. The table equals the threaded run's; only the client
reads the index and writes outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from aef_tiles import smooth_q, write
from pyproj import Transformer
from support import require

from aether.io import tiles as tile_io

require("distributed")



@pytest.fixture
def cluster(dask_cluster) -> tuple[str, list[Path]]:
    """(scheduler address, worker directories): a scheduler and 2 workers on 127.0.0.1, each
    worker with its own User-Agent (the nginx log shows who read the tiles)."""
    return dask_cluster(2, lambda i: {"GDAL_HTTP_USERAGENT": f"aether-worker-{i}"})


def _spread_pois_csv(path: Path, n: int = 60) -> Path:
    rng = np.random.default_rng(1)
    x = rng.uniform(385_200, 395_000, n)
    y = rng.uniform(6_670_200, 6_679_800, n)
    lon, lat = Transformer.from_crs("EPSG:32635", "EPSG:4326", always_xy=True).transform(x, y)
    pd.DataFrame({"poi_id": [f"s{i}" for i in range(n)], "name": "x", "amenity": "cafe",
                  "lon": lon, "lat": lat}).to_csv(path, index=False)
    return path


def _table(data: Path) -> pd.DataFrame:
    (table,) = data.rglob("poi_embeddings.parquet")
    return pd.read_parquet(table).sort_values(["poi_id", "radius_m"]).reset_index(drop=True)


def test_remote_cluster_gives_the_threaded_table(cluster, nginx, tmp_path: Path, cli) -> None:
    address, worker_dirs = cluster
    root = tmp_path / "www"
    rec = write(root, "big-0000000000-0000000000", smooth_q(1024, 1024), "EPSG:32635",
                385_000.0, 6_680_000.0)
    tile_io.write_index([rec], root)
    server = nginx(root)
    csv = _spread_pois_csv(tmp_path / "pois.csv")
    env = {"AETHER_CACHE_DIR": str(tmp_path / "client-cache")}
    threads = cli("extract", "--pois", str(csv), "--source", "cog", "--tiles", server.url,
                  "--data-dir", str(tmp_path / "threads"), "--scheduler", "threads", env=env)
    assert threads.returncode == 0, threads.stderr
    server.clear_log()
    remote = cli("extract", "--pois", str(csv), "--source", "cog", "--tiles", server.url,
                 "--data-dir", str(tmp_path / "cluster"), "--scheduler", address, env=env)
    assert remote.returncode == 0, remote.stderr
    pd.testing.assert_frame_equal(_table(tmp_path / "threads"), _table(tmp_path / "cluster"))
    # the workers read the pixels over HTTP; the client asked for the index and read one
    # tile's header (its block grid: where the windows are cut), no pixel
    reqs = server.requests()
    client = "aether (AlphaEarth POI embeddings)"
    tile_agents = {r.agent for r in reqs if r.uri.endswith(".tiff")}
    assert tile_agents - {client} == {"aether-worker-0", "aether-worker-1"}, tile_agents
    header = sum(r.bytes_sent for r in reqs if r.uri.endswith(".tiff") and r.agent == client)
    pixels = sum(r.bytes_sent for r in reqs if r.uri.endswith(".tiff") and r.agent != client)
    assert header <= 64 * 1024 < pixels, (header, pixels)
    assert {r.agent for r in reqs if r.uri.endswith(".parquet")} == {client}
    # and wrote nothing of aether's: no tables, manifests, checkpoints or caches
    for d in worker_dirs:
        written = [p for p in d.rglob("*") if p.is_file() and "dask" not in p.relative_to(d).parts]
        assert written == [], written
        assert not list(d.rglob("*.parquet")) and not (d / "cache").exists()
