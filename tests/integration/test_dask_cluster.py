"""A real Dask cluster: `dask scheduler` and two `dask worker` processes on loopback.

The workers get nothing but the task graph: tiles are URLs served by nginx, each worker has
its own empty working directory, home and cache, and sends its own HTTP User-Agent, so the
access log shows who read the tiles. The table equals the threaded run's; only the client
reads the index and writes outputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from aef_tiles import smooth_q, write
from pyproj import Transformer

from aether.io import tiles as tile_io

pytest.importorskip("distributed")

DASK = str(Path(sys.executable).with_name("dask"))
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, list[Path]]]:
    """(scheduler address, worker directories) of a scheduler + 2 workers on 127.0.0.1."""
    from distributed import Client

    info = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(info)],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    dirs = []
    address = None
    try:
        deadline = time.monotonic() + 60
        while not info.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        for i in range(2):
            home = tmp_path / f"worker-{i}"
            home.mkdir()
            dirs.append(home)
            env = {"PATH": os.environ["PATH"], "HOME": str(home), "PYTHONPATH": str(ROOT),
                   "AETHER_CACHE_DIR": str(home / "cache"),
                   "GDAL_HTTP_USERAGENT": f"aether-worker-{i}"}
            procs.append(subprocess.Popen(
                [DASK, "worker", "--scheduler-file", str(info), "--host", "127.0.0.1",
                 "--nthreads", "1", "--no-nanny", "--no-dashboard",
                 "--local-directory", str(home / "dask")],
                cwd=home, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        address = json.loads(info.read_text())["address"]
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address, dirs
    finally:
        if address is not None:  # the scheduler closes its workers, then itself: no waiting
            with contextlib.suppress(OSError, TimeoutError), Client(
                    address, timeout="10s", set_as_default=False) as c:
                c.shutdown()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


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
