"""Grid throughput (km²/s) and peak memory: local scheduler vs LocalCluster, COG and xee.

    .venv/bin/python tests/benchmarks/bench_grid.py            # sample + generated 100 km²
    .venv/bin/python tests/benchmarks/bench_grid.py --quick    # sample only

Every run is its own process, so its peak RSS (VmHWM) is its own; on a LocalCluster the
workers' peaks are read too. "Δpeak" is the peak above the RSS after imports: what the grid
itself held, to compare with the decoded raster's size (bounded memory = far below it).
The xee runs go through a loopback emulator in a separate process (`aether emulator
serve`); its request log gives the computePixels requests per km², also for xee's plain
layout (the mosaic as one 64-band image: one request per band and chunk) as the baseline.
Generated rasters go to a temp dir, never the repo.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import in_child

CELL = "100m"
SCHEDULERS = ("threads", "cluster:2")
#: A smaller xee chunk (px) than the default, to show peak memory follows the chunk size.
SMALL_CHUNK = 128


def _mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return _mb("VmHWM")


def _run(source: str, opts: dict, place_wkt: str, crs: str, scheduler: str, q) -> None:
    """One grid in this (fresh) process: seconds, peaks, and the cell means."""
    import dask  # noqa: F401
    import distributed  # noqa: F401
    import shapely
    import xee  # noqa: F401

    from aether.core import cells as grids
    from aether.embeddings import get_source
    from aether.execution.cluster import dask_scheduler
    from aether.places.place import Place

    place = Place("bench", "bench", shapely.from_wkt(place_wkt), crs)
    src = get_source(source, **opts)
    base = _mb("VmRSS")
    with dask_scheduler(scheduler) as client:
        t0 = time.perf_counter()
        frame = src.grid(place, 2024, CELL)
        dt = time.perf_counter() - t0
        workers = list(client.run(_peak_mb).values()) if client is not None else []
    values = frame[[c for c in frame.columns if c.startswith("A")]].to_numpy(np.float32)
    km2 = len(frame) * grids.parse_cell(CELL).size ** 2 / 1e6
    q.put((dt, _peak_mb(), base, workers, values, km2))


def _log(url: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/_emulator/log", timeout=30) as r:
        data = json.load(r)
    return data["requests"]


def _pixel_requests(url: str) -> int:
    return sum(e.get("route") == "image:computePixels" for e in _log(url))


def _plain_xee_requests(url: str, place_wkt: str, crs: str) -> int:
    """computePixels requests of xee's plain layout over the same view (all 64 bands)."""
    import ee
    import shapely
    import xarray as xr
    import xee  # noqa: F401

    from aether.core import aef
    from aether.core import cells as grids
    from aether.embeddings.earthengine.session import EESettings, ensure
    from aether.embeddings.xee import View
    from aether.places.place import Place

    session = EESettings(url, "demo-project")
    ensure(session)
    place = Place("bench", "bench", shapely.from_wkt(place_wkt), crs)
    cells = grids.make_cells(place, grids.parse_cell(CELL))
    view = View.over(session, 2024, crs, cells.bounds())
    start, end = aef.year_range_ms(2024)
    mosaic = ee.ImageCollection(aef.COLLECTION_ID).filterDate(start, end).mosaic()
    ds = xr.open_dataset(ee.ImageCollection([mosaic]), engine="ee", crs=crs,
                         crs_transform=(10.0, 0.0, view.x0, 0.0, -10.0, view.y0),
                         shape_2d=(view.width, view.height))
    before = _pixel_requests(url)
    ds.to_array().values  # noqa: B018  (loads every band)
    return _pixel_requests(url) - before


def _dataset(name: str, tmp: Path) -> tuple[Path, str, str]:
    """(tiles, place WKT, crs): the sample, or a generated 100 km² raster and the place
    covering all of it (100km2) or a quarter of it (25km2: same tiles, a quarter the area)."""
    import shapely
    from pyproj import Transformer

    from aether.sample.city import ensure_sample, synthetic_tiles

    if name == "sample":
        s = ensure_sample(tmp / "data")
        return s.tiles, s.place.boundary.wkt, s.place.crs
    crs, west, south, n = "EPSG:32635", 380_000.0, 6_660_000.0, 1000
    tiles = synthetic_tiles(tmp / "synthetic100", crs=crs, west=west, south=south,
                            width_px=n, height_px=n, tile_px=512)
    side, inset = n * 10.0 / (2 if name == "25km2" else 1), 50.0
    tr = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    box = shapely.box(west + inset, south + inset, west + side - inset, south + side - inset)
    ll = shapely.transform(box, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    return tiles, ll.wkt, crs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="sample only")
    ap.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()) / "aether-bench-grid")
    args = ap.parse_args()
    args.tmp.mkdir(parents=True, exist_ok=True)
    print(f"grid of {CELL} cells (km² = cells' area); peaks in MB (main process / each worker);"
          " Δ = above imports; raster MB = the grid's raster, decoded")
    print(f"{'raster':>10} {'source':>7} {'scheduler':>10} {'km²':>6} {'s':>7} {'km²/s':>7} "
          f"{'×base':>6} {'peak':>6} {'Δpeak':>6} {'workers':>13} {'raster MB':>9} {'req/km²':>8} "
          "diff   (×base: km²/s against cog on threads)")
    for name in ("sample",) if args.quick else ("sample", "25km2", "100km2"):
        tiles, wkt, crs = _dataset(name, args.tmp)
        emu = subprocess.Popen([sys.executable, "-m", "aether", "emulator", "serve",
                                "--tiles", str(tiles), "--port", "0"],
                               stdout=subprocess.PIPE, text=True)
        try:
            url = emu.stdout.readline().strip()  # type: ignore[union-attr]
            ref, base_rate, ours = None, None, None
            runs = [("cog", sched, {"tiles": str(tiles)}) for sched in SCHEDULERS] + [
                ("xee", sched, {"ee_url": url, "ee_project": "demo-project"})
                for sched in SCHEDULERS]
            if name == "25km2":  # Δpeak against 100km2: memory does not grow with the area
                runs = [r for r in runs if r[1] == "threads"]
            if name == "100km2":  # memory follows the chunk in flight, not the raster
                runs.append(("xee", "threads", {"ee_url": url, "ee_project": "demo-project",
                                                "xee_chunk": SMALL_CHUNK}))
            for source, sched, opts in runs:
                n0 = _pixel_requests(url)
                dt, peak, base, workers, values, km2 = in_child(_run, source, opts, wkt, crs,
                                                                sched)
                reqs = (_pixel_requests(url) - n0) / km2 if source == "xee" else None
                ref = values if ref is None else ref
                base_rate = base_rate or km2 / dt
                ours = ours or reqs
                diff = float(np.nanmax(np.abs(values - ref)))
                w = "/".join(f"{x:.0f}" for x in workers) or "-"
                raster_mb = km2 * 1e4 * 64 * 4 / 2**20
                label = source + (f"/{opts['xee_chunk']}" if "xee_chunk" in opts else "")
                print(f"{name:>10} {label:>7} {sched:>10} {km2:6.1f} {dt:7.2f} "
                      f"{km2 / dt:7.2f} {km2 / dt / base_rate:6.2f} {peak:6.0f} "
                      f"{peak - base:6.0f} {w:>13} "
                      f"{raster_mb:9.0f} {'' if reqs is None else f'{reqs:8.3f}':>8} "
                      f"{diff:.1e}", flush=True)
            if name == "sample":  # requests per km² do not depend on the raster's size
                n = _plain_xee_requests(url, wkt, crs)
                print(f"{name:>10} xee plain layout (64-band image): {n / km2:.2f} req/km², "
                      f"{n / km2 / ours:.0f}× the requests of ours ({ours:.3f})", flush=True)
        finally:
            emu.terminate()
            emu.wait()


if __name__ == "__main__":
    main()
