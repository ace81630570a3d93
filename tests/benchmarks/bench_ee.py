"""Benchmark: the Earth Engine source vs a naive geemap-style loop, against the emulator.

    .venv/bin/python tests/benchmarks/bench_ee.py                 # 20,000 POIs × 2 radii
    .venv/bin/python tests/benchmarks/bench_ee.py --pois 4000     # quicker

The emulator runs as its own process (`aether emulator serve`) over the sample city's tiles
with ``--latency`` seconds added to every compute request, standing in for the round trip
to Earth Engine. Random POIs are drawn inside the tiles.

- aether: ``get_source("ee")`` — server-side buffers, ``Reducer.sum`` + valid band in the
  UTM crs, ``--batch`` features per ``computeFeatures`` request, ``--concurrency`` in flight,
  answers without geometry.
- sequential: aether's own graph, one ``getInfo()`` per 1,000 features, one at a time
  (what batching and concurrency alone buy).
- naive (geemap-style): per radius, buffers made client-side with geopandas, sent as
  GeoJSON through ``geemap.gdf_to_ee``, one ``reduceRegions(Reducer.mean(), scale=10)
  .getInfo()`` per 1,000 features, sequentially.

Prints requests issued, wall time and the ratio, side by side, plus the time the emulator
spent computing (on a 2-core machine its CPU, not the latency, can bound both runs).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np


def random_pois(tiles: Path, n: int, seed: int = 0):
    import geopandas as gpd
    from shapely.geometry import Point

    from aether.io.tiles import read_index

    idx = read_index(tiles)
    w, s = idx.wgs84_west.max(), idx.wgs84_south.max()
    e, nn = idx.wgs84_east.min(), idx.wgs84_north.min()
    pad_x, pad_y = (e - w) * 0.1, (nn - s) * 0.1
    rng = np.random.default_rng(seed)
    lon = rng.uniform(w + pad_x, e - pad_x, n)
    lat = rng.uniform(s + pad_y, nn - pad_y, n)
    return gpd.GeoDataFrame({"poi_id": [f"bench:{i:06d}" for i in range(n)]},
                            geometry=[Point(a, b) for a, b in zip(lon, lat, strict=True)],
                            crs="EPSG:4326")


def start_emulator(tiles: Path, latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "aether", "emulator", "serve", "--tiles", str(tiles),
         "--port", "0", "--latency", str(latency)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "http://127.0.0.1:" in line:
            return proc, line[line.index("http://"):].split()[0]
    raise RuntimeError("the emulator did not start")


def emulator_log(url: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/_emulator/log") as r:
        data = json.load(r)
    return data["requests"]


def compute_requests(log: list[dict], latency: float) -> tuple[int, float]:
    """Compute requests and the seconds the emulator spent on them (latency excluded)."""
    rows = [e for e in log if e.get("route") in ("table:computeFeatures", "value:compute")]
    return len(rows), sum(e.get("ms", 0.0) / 1000.0 - latency for e in rows)


def run_aether(url: str, pois, radii, workdir: Path, batch: int, concurrency: int):
    from aether.embeddings import get_source

    src = get_source("ee", workdir=workdir, ee_url=url, ee_project="bench",
                     ee_batch=batch, ee_concurrency=concurrency)
    return src.point_means(pois, radii, 2024)


def run_naive(url: str, pois, radii, max_requests: int) -> tuple[int, int, int]:
    """geemap-style: client-side buffers, one reduceRegions().getInfo() per 1,000, in turn.

    Stops after ``max_requests`` (it is sequential, so its time per request is steady and
    the whole run is extrapolated from them). Returns (rows, requests done, requests needed).
    """
    import ee
    import geemap

    from aether.core.aef import COLLECTION_ID, utm_epsg

    ee.Reset()
    ee.deprecation._FetchDataCatalogStac = lambda: {}
    ee.Initialize(credentials=None, url=url, project="bench")
    c = pois.geometry.union_all().centroid
    utm = pois.to_crs(f"EPSG:{utm_epsg(c.x, c.y)}")
    image = (ee.ImageCollection(COLLECTION_ID).filterDate("2024-01-01", "2025-01-01")
             .mosaic())
    chunks = [(r, start) for r in radii for start in range(0, len(pois), 1000)]
    rows = 0
    for r, start in chunks[:max_requests]:
        part = utm.iloc[start:start + 1000]
        fc = geemap.gdf_to_ee(part.assign(geometry=part.buffer(r)).to_crs("EPSG:4326"))
        info = image.reduceRegions(collection=fc, reducer=ee.Reducer.mean(),
                                   scale=10).getInfo()
        rows += len(info["features"])
    return rows, min(max_requests, len(chunks)), len(chunks)


def run_sequential(url: str, pois, radii, max_requests: int) -> tuple[int, int, int]:
    """aether's own graph, but one getInfo() per 1,000 features in turn (no concurrency)."""
    import ee

    from aether.embeddings.earthengine.source import make_batches, reduce_regions_graph

    ee.Reset()
    ee.deprecation._FetchDataCatalogStac = lambda: {}
    ee.Initialize(credentials=None, url=url, project="bench")
    batches = make_batches(pois, radii, 2024, 1000)
    rows = 0
    for b in batches[:max_requests]:
        rows += len(reduce_regions_graph(b.items, 2024).getInfo()["features"])
    return rows, min(max_requests, len(batches)), len(batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pois", type=int, default=20_000)
    ap.add_argument("--latency", type=float, default=0.3)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--naive-requests", type=int, default=2,
                    help="baseline requests actually run; the rest is extrapolated")
    ap.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "aether-bench")
    args = ap.parse_args()

    import dask  # noqa: F401  (imports outside the timed runs)
    import ee  # noqa: F401
    import geemap  # noqa: F401

    from aether.sample.city import ensure_sample

    tiles = ensure_sample(args.data_dir).tiles
    pois = random_pois(tiles, args.pois)
    radii = [100.0, 200.0]
    print(f"{args.pois:,} POIs × {len(radii)} radii = {args.pois * len(radii):,} buffers, "
          f"{args.latency * 1000:.0f} ms latency per request")

    results = {}
    baselines = {"naive": run_naive, "sequential": run_sequential}
    for name in ("aether", *baselines):
        proc, url = start_emulator(tiles, args.latency)
        try:
            t0 = time.perf_counter()
            if name == "aether":
                work = args.data_dir / "bench-work"
                shutil.rmtree(work, ignore_errors=True)
                rows = len(run_aether(url, pois, radii, work, args.batch, args.concurrency))
                scale = 1.0
            else:
                rows, done, needed = baselines[name](url, pois, radii, args.naive_requests)
                scale = needed / done
            wall = time.perf_counter() - t0
            n, server_s = compute_requests(emulator_log(url), args.latency)
        finally:
            proc.terminate()
            proc.wait()
        results[name] = (n * scale, wall * scale, server_s * scale, rows * scale)
        if scale != 1.0:
            print(f"{name}: ran {done} of {needed} sequential requests in {wall:.1f} s; "
                  f"its figures below are extrapolated ×{scale:g}")

    names = ["aether", *baselines]
    print(f"{'':22}" + "".join(f"{n:>13}" for n in names) + "   ratios vs aether")
    lat = {"aether": args.latency / args.concurrency}
    for label, i, fmt in (("rows", 3, ",.0f"), ("compute requests", 0, ",.0f"),
                          ("wall time (s)", 1, ".1f"), ("emulator busy (s)", 2, ".1f")):
        vals = [results[n][i] for n in names]
        ratios = "  ".join(f"{v / vals[0]:.1f}×" for v in vals[1:]) if i == 1 else ""
        print(f"{label:22}" + "".join(f"{v:>13{fmt}}" for v in vals) + f"   {ratios}")
    print(f"{'latency waited (s)':22}" + "".join(
        f"{results[n][0] * lat.get(n, args.latency):>13.1f}" for n in names))
    print("naive = geemap-style (client buffers as GeoJSON, Reducer.mean, default projection);"
          " sequential = aether's graph, 1,000 features per getInfo, one at a time")


if __name__ == "__main__":
    main()
