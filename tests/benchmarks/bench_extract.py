"""Extraction on a Singapore-sized raster: aether vs exactextract vs the decode floor, CPU time.

    .venv/bin/python tests/benchmarks/bench_extract.py            # Singapore, 27k POIs, 1 M scaling
    .venv/bin/python tests/benchmarks/bench_extract.py --quick    # a central 12 × 7 km part

The raster is generated (``aether.sample.city.synthetic_tiles_for_bbox``) over the bbox of the
real Singapore POIs in ``/work/shared/data`` (OpenStreetMap, ODbL), in 2,048 px tiles, and
kept in ``--work`` so a re-run reuses it. Every measurement runs in its own spawned process,
which reports its own CPU time (``time.process_time``: all its threads) and peak RSS
(VmHWM), with the load average beside it: on a shared machine CPU time, not wall time, is
what the ratios compare; the floor and aether run ``--repeat`` times, interleaved, and the
least CPU of each counts (timeit's rule: noise only ever adds). Results go to ``--out``
(JSON); ``render_docs.py`` makes docs/benchmarks.md from them.

- **aether**: what ``aether extract`` runs: ``write_point_means(CogSource(tiles), ...)`` on the
  int8 tiles (100 m and 200 m buffers), the table streamed to a Parquet file.
- **exactextract** ``raster-sequential`` on in-memory de-quantised float32 tiles (64
  ``NumPyRasterSource`` bands per tile, decoded before the clock starts), ops ``sum`` and
  ``count`` per tile, combined across tiles into means (a buffer may cross tiles).
- **floors**, each the least any reader of these buffers pays, on the same threads: every
  block a buffer touches inflated once — through GDAL (``gdal``), through libdeflate on the
  stored bytes (``inflate``: the true floor, the fastest bit-identical inflate measured), and
  libdeflate then decoded to float32 through the lookup table (``decode``).
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import queue
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import measured_at, write_results

RADII = (100.0, 200.0)
YEAR = 2024
POIS_ZIP = Path("/work/shared/data/singapore_osm_pois_2023-01-24.zip")
SINGAPORE = (103.59, 1.15, 104.10, 1.48)
QUICK = (103.80, 1.27, 103.91, 1.33)
TILE_PX = 2048
QUAD_SEGS = 128  # 512-gons: their area is within 2.5e-5 of the circle's
#: The floors, each run as its own child (``run_floor``).
FLOORS = ("gdal", "inflate", "decode")


def singapore_pois(bbox: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """lon, lat of the real OSM POIs inside ``bbox``."""
    import pandas as pd

    with zipfile.ZipFile(POIS_ZIP) as z:
        name = next(n for n in z.namelist() if n.endswith(".csv"))
        df = pd.read_csv(io.BytesIO(z.read(name)))
    w, s, e, n = bbox
    df = df[(df.lon >= w) & (df.lon <= e) & (df.lat >= s) & (df.lat <= n)]
    return df.lon.to_numpy(float), df.lat.to_numpy(float)


def clustered(lon: np.ndarray, lat: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """``n`` POIs clustered like the real ones: real POIs drawn again, jittered by ~50 m."""
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(lon), n)
    jit = rng.normal(scale=50 / 111_000, size=(2, n))
    return lon[pick] + jit[0], lat[pick] + jit[1]


def _child(target, *args):
    """Run ``target(*args)`` in a fresh process; its dict result plus CPU, wall, peak, load.

    A child that raises ends the bench with its traceback; one that dies without a word
    (killed, out of memory) ends it with its exit code: never a parent waiting forever.
    """
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_measure, args=(target, args, q))
    p.start()
    while True:
        try:
            res = q.get(timeout=1.0)
            break
        except queue.Empty:
            if not p.is_alive() and q.empty():
                raise SystemExit(f"{target.__name__} died (exit code {p.exitcode})") from None
    p.join()
    if "traceback" in res:
        raise SystemExit(f"{target.__name__} failed in its process:\n{res['traceback']}")
    return res


def _measure(target, args, q) -> None:
    load0 = os.getloadavg()[0]
    c0, t0 = time.process_time(), time.perf_counter()
    try:
        out = target(*args)
    except BaseException:
        q.put({"traceback": traceback.format_exc()})
        return
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    q.put({"cpu_s": cpu, "wall_s": wall, "peak_mb": _peak_mb(),
           "load": round((load0 + os.getloadavg()[0]) / 2, 1), **out})


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_aether(tiles: str, lon: np.ndarray, lat: np.ndarray, keep: int, threads: int) -> dict:
    """What ``aether extract`` does with the COG source: the int8 tiles' buffer means written
    as the poi_embeddings Parquet table (streamed); the means of the first ``keep`` POIs
    are read back from the file after the clock stops."""
    import dask
    import deflate  # noqa: F401  (imports before the clock, as the floors')
    import geopandas as gpd
    import pandas as pd
    import pyarrow.parquet  # noqa: F401
    import pyproj  # noqa: F401
    import rasterio  # noqa: F401

    from aether.core import aef, compiled  # noqa: F401  (numba's machine code loads here)
    from aether.embeddings import write_point_means
    from aether.embeddings.cog import CogSource

    pois = gpd.GeoDataFrame({"poi_id": [f"p{i:07d}" for i in range(len(lon))]},
                            geometry=gpd.points_from_xy(lon, lat), crs="EPSG:4326")
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as work, \
            dask.config.set(num_workers=threads):
        path = Path(work) / "poi_embeddings.parquet"
        c0, t0 = time.process_time(), time.perf_counter()
        rows = write_point_means(CogSource(tiles), pois, RADII, YEAR, path)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        out = []
        if keep:
            df = pd.read_parquet(path, filters=[("poi_id", "in", list(pois.poi_id[:keep]))])
            for r in RADII:
                part = df[(df.radius_m == r)].set_index("poi_id").loc[pois.poi_id[:keep]]
                out.append(part[list(aef.BANDS)].to_numpy(np.float64))
    return {"means": out, "rows": rows, "cpu_s": cpu, "wall_s": wall}


def _tile_xy(tile: object, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from pyproj import Transformer

    x, y = Transformer.from_crs("EPSG:4326", tile.crs, always_xy=True).transform(lon, lat)
    return np.asarray(x), np.asarray(y)


def _touched_blocks(ds, x: np.ndarray, y: np.ndarray) -> list[tuple[int, int]]:
    """(block row, block col) of every block some buffer's bounding box touches."""
    t = ds.transform
    bh, bw = ds.block_shapes[0]
    r = max(RADII)
    touched: set[tuple[int, int]] = set()
    cols = [(x - r - t.c) / t.a, (x + r - t.c) / t.a]
    rows = [(y - r - t.f) / t.e, (y + r - t.f) / t.e]
    c_lo, c_hi = np.floor(np.minimum(*cols)), np.floor(np.maximum(*cols))
    r_lo, r_hi = np.floor(np.minimum(*rows)), np.floor(np.maximum(*rows))
    ok = (c_hi >= 0) & (c_lo < ds.width) & (r_hi >= 0) & (r_lo < ds.height)
    for a, b, c, d in zip(c_lo[ok], c_hi[ok], r_lo[ok], r_hi[ok], strict=True):
        b0, b1 = int(max(a, 0)) // bw, int(min(b, ds.width - 1)) // bw
        r0, r1 = int(max(c, 0)) // bh, int(min(d, ds.height - 1)) // bh
        touched.update((i, j) for i in range(r0, r1 + 1) for j in range(b0, b1 + 1))
    return sorted(touched)


Block = tuple[str, int, int, int, int, int]


def _block_work(tiles: str, lon: np.ndarray, lat: np.ndarray) -> list[Block]:
    """(path, block row, block col, file offset, byte count, inflated size) of every block a
    buffer touches: what any reader of these buffers must inflate at least once."""
    import rasterio

    from aether.io import tiles as tile_io

    work = []
    for tile in tile_io.read_index(tiles).itertuples():
        with rasterio.open(tile.path) as ds:
            for i, j in _touched_blocks(ds, *_tile_xy(tile, lon, lat)):
                off = ds.get_tag_item(f"BLOCK_OFFSET_{j}_{i}", "TIFF", bidx=1)
                size = ds.get_tag_item(f"BLOCK_SIZE_{j}_{i}", "TIFF", bidx=1)
                bh, bw = ds.block_shapes[0]
                work.append((tile.path, i, j, int(off), int(size), bh * bw * ds.count))
    return work


def run_floor(tiles: str, lon: np.ndarray, lat: np.ndarray, threads: int, how: str) -> dict:
    """Each touched block inflated once, on ``threads`` threads, and nothing else:

    - ``gdal``: through GDAL (``DatasetReader.read``; each thread its own datasets);
    - ``inflate``: its stored bytes through libdeflate (the fastest bit-identical inflate
      measured; what aether uses on local DEFLATE tiles);
    - ``decode``: ``inflate``, then every pixel to float32 through the lookup table (what a
      reader that decodes before it sums pays).
    """
    from concurrent.futures import ThreadPoolExecutor

    import deflate
    import rasterio
    from rasterio.windows import Window

    from aether.core import aef

    lut = np.roll(aef.DEQUANT_LUT, -128)  # indexed by the uint8 view of q
    work = _block_work(tiles, lon, lat)

    def through_gdal(share: list[Block]) -> None:
        open_ds: dict[str, object] = {}
        for path, i, j, *_ in share:
            if path not in open_ds:
                open_ds[path] = rasterio.open(path)
            ds = open_ds[path]
            bh, bw = ds.block_shapes[0]
            win = Window(j * bw, i * bh, min(bw, ds.width - j * bw), min(bh, ds.height - i * bh))
            q = np.empty((int(win.height), int(win.width), aef.N_BANDS), np.int8)
            ds.read(out=np.moveaxis(q, -1, 0), window=win)
        for ds in open_ds.values():
            ds.close()

    def through_libdeflate(share: list[Block]) -> None:
        for path, _, _, off, size, nbytes in share:
            with open(path, "rb") as f:
                plain = deflate.zlib_decompress(os.pread(f.fileno(), size, off), nbytes)
            if how == "decode":
                lut[np.frombuffer(plain, np.uint8)]

    job = through_gdal if how == "gdal" else through_libdeflate
    c0, t0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(job, [work[k::threads] for k in range(threads)]))
    return {"blocks": len(work), "cpu_s": time.process_time() - c0,
            "wall_s": time.perf_counter() - t0}


def run_exactextract(tiles: str, lon: np.ndarray, lat: np.ndarray) -> dict:
    """exactextract sum & count per in-memory float32 tile, combined into means."""
    import geopandas as gpd
    import rasterio
    from exactextract import exact_extract
    from exactextract.raster import NumPyRasterSource

    from aether.io import tiles as tile_io

    sums = [np.zeros((len(lon), 64)) for _ in RADII]
    counts = [np.zeros(len(lon)) for _ in RADII]
    cpu = 0.0
    for tile in tile_io.read_index(tiles).itertuples():
        x, y = _tile_xy(tile, lon, lat)
        with rasterio.open(tile.path) as ds:
            wkt = ds.crs.to_wkt()
        block = tile_io.read_block(tile.path)  # decoded float32, NaN nodata (not timed)
        north_up = block.values if block.dy < 0 else block.values[::-1]
        bands = np.ascontiguousarray(np.moveaxis(north_up, -1, 0))
        del block, north_up
        xmin, ymin, xmax, ymax = tile.utm_west, tile.utm_south, tile.utm_east, tile.utm_north
        near = np.flatnonzero((x + 210 > xmin) & (x - 210 < xmax)
                              & (y + 210 > ymin) & (y - 210 < ymax))
        if len(near) == 0:  # a tile none of the measured POIs reach
            continue
        c0 = time.process_time()
        sources = [NumPyRasterSource(bands[b], xmin, ymin, xmax, ymax, nodata=np.nan,
                                     srs_wkt=wkt, name=f"b{b:02d}") for b in range(64)]
        for k, r in enumerate(RADII):
            circles = gpd.GeoSeries(gpd.points_from_xy(x[near], y[near]), crs=tile.crs)
            gdf = gpd.GeoDataFrame({"i": near}, geometry=circles.buffer(r, quad_segs=QUAD_SEGS))
            df = exact_extract(sources, gdf, ["sum", "count"], output="pandas",
                               strategy="raster-sequential", include_cols=["i"])
            idx = df["i"].to_numpy()
            sums[k][idx] += df[[f"b{b:02d}_sum" for b in range(64)]].to_numpy(np.float64)
            counts[k][idx] += df["b00_count"].to_numpy(np.float64)
        cpu += time.process_time() - c0
        del sources, bands
    with np.errstate(invalid="ignore", divide="ignore"):
        means = [s / c[:, None] for s, c in zip(sums, counts, strict=True)]
    return {"means": means, "exact_cpu_s": cpu}


def scaling(tiles: str, lon: np.ndarray, lat: np.ndarray, sizes: list[int], threads: int
            ) -> list[dict]:
    rows = []
    for n in sizes:
        lo, la = clustered(lon, lat, n, seed=n)
        res = _child(run_aether, tiles, lo, la, 0, threads)
        rows.append({"pois": n, **{k: res[k] for k in ("cpu_s", "wall_s", "peak_mb", "load")}})
        print(f"  {n:>9,} POIs: {res['cpu_s']:7.1f} s CPU, {res['wall_s']:7.1f} s wall, "
              f"peak {res['peak_mb']:6.0f} MB (load {res['load']})", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a central part of Singapore only")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "aether-bench-extract"),
                    help="where the generated raster is kept between runs (never the repo)")
    ap.add_argument("--exact-pois", type=int, default=0,
                    help="exactextract on this many POIs only (0: all)")
    ap.add_argument("--scale", default="", help="POI counts for the scaling run, comma-separated"
                    " (default 100000,250000,1000000; quick: 50000)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="threads of both the floor and aether (default: the CPUs, as aether)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of the floor and of aether, interleaved; the least CPU counts")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "extract.json"))
    args = ap.parse_args()
    from aether.sample.city import synthetic_tiles_for_bbox

    bbox = QUICK if args.quick else SINGAPORE
    lon, lat = singapore_pois(bbox)
    pbox = (lon.min(), lat.min(), lon.max(), lat.max())
    label = "quick" if args.quick else "singapore"
    tiles = str(synthetic_tiles_for_bbox(Path(args.work) / label, pbox, year=YEAR,
                                         tile_px=TILE_PX))
    from aether.io import tiles as tile_io

    index = tile_io.read_index(tiles)
    width = round((index.utm_east.max() - index.utm_west.min()) / 10)
    height = round((index.utm_north.max() - index.utm_south.min()) / 10)
    print(f"# {label}: {len(lon):,} real POIs × {len(RADII)} radii, {len(index)} tiles, "
          f"{width:,} × {height:,} px", flush=True)
    m = len(lon) if not args.exact_pois else min(args.exact_pois, len(lon))

    floors: dict[str, list[dict]] = {how: [] for how in FLOORS}
    runs = []
    for i in range(args.repeat):  # interleaved, so a busy spell of the machine hits all
        for how in FLOORS:
            floors[how].append(_child(run_floor, tiles, lon, lat, args.threads, how))
        runs.append(_child(run_aether, tiles, lon, lat, m if i == 0 else 0, args.threads))
        print(f"{floors['inflate'][-1]['blocks']} blocks; floors: "
              + ", ".join(f"{how} {floors[how][-1]['cpu_s']:.2f} s" for how in FLOORS)
              + f"; aether: {runs[-1]['cpu_s']:.2f} s CPU, {runs[-1]['peak_mb']:.0f} MB",
              flush=True)
    floor = {how: min(rs, key=lambda r: r["cpu_s"]) for how, rs in floors.items()}
    ours = {**min(runs, key=lambda r: r["cpu_s"]), "means": runs[0]["means"]}
    exact = _child(run_exactextract, tiles, lon[:m], lat[:m])
    print(f"exactextract: {exact['exact_cpu_s']:.1f} s CPU in exact_extract "
          f"({exact['cpu_s']:.1f} s with decoding), {exact['peak_mb']:.0f} MB", flush=True)
    ok = [~np.isnan(e[:, 0]) for e in exact["means"]]
    diff = max(float(np.abs(a[o] - e[o]).max())
               for a, e, o in zip(ours["means"], exact["means"], ok, strict=True))
    # per buffer when exactextract ran on a subset
    exact_cpu = exact["exact_cpu_s"] * len(lon) / m
    sizes = [int(s) for s in (args.scale or ("50000" if args.quick else
                                             "100000,250000,1000000")).split(",") if s]
    print("scaling (clustered POIs on the same tiles):", flush=True)
    scale = scaling(tiles, lon, lat, sizes, args.threads)
    payload = {
        "case": label, "pois": len(lon), "radii": list(RADII), "tiles": len(index),
        "width_px": width, "height_px": height, "blocks": floor["inflate"]["blocks"],
        "exact_pois": m,
        "repeat": args.repeat, "threads": args.threads,
        "floors": {how: {k: f[k] for k in ("cpu_s", "wall_s", "peak_mb", "load")}
                   for how, f in floor.items()},
        "aether": {k: ours[k] for k in ("cpu_s", "wall_s", "peak_mb", "load")},
        "runs_cpu_s": {**{how: [r["cpu_s"] for r in rs] for how, rs in floors.items()},
                       "aether": [r["cpu_s"] for r in runs]},
        "exactextract": {"cpu_s": exact["exact_cpu_s"], "cpu_s_all_pois": exact_cpu,
                         "wall_s": exact["wall_s"], "peak_mb": exact["peak_mb"],
                         "load": exact["load"]},
        "vs_exactextract": exact_cpu / ours["cpu_s"],
        "vs_floor": {how: ours["cpu_s"] / f["cpu_s"] for how, f in floor.items()},
        "max_abs_diff": diff,
        "scaling": scale,
        **measured_at(),
    }
    print(json.dumps({k: payload[k] for k in ("vs_exactextract", "vs_floor", "max_abs_diff")}))
    write_results(args.out, payload)


if __name__ == "__main__":
    main()
